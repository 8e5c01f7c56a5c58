"""Finding, decoding, checking and resizing images; the packed data set (safetensors, no pickle)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps

from animevae import FORMAT_VERSION
from animevae.errors import ArgumentError, DataError, OutputError
from animevae.fileio import atomic_path, write_json_atomic
from animevae.labels import (METADATA_FILES, ClassInfo, Labels, check_label, class_names, folder_label, metadata_table,
                             read_metadata_labels)
from animevae.progress import Reporter

SKIPPED_SHOWN = 20  # skipped files listed one per line when a folder is prepared for training

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Larger than any real face picture, small enough that a "decompression bomb" header is refused before decoding.
MAX_PIXELS = 40_000_000
DATASET_KIND = "animevae-dataset"
T = TypeVar("T")

ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass
class Skipped:
    """A file that was not used, and why."""

    path: str
    reason: str


@dataclass
class ImageListing:
    """Image files under a folder, plus the entries that could not even be listed."""

    root: Path
    files: list[Path]
    skipped: list[Skipped] = field(default_factory=list)

    def relative(self, path: Path) -> str:
        """`path` relative to the root, as text safe to print and store (bad bytes escaped)."""
        return _printable(path.relative_to(self.root))


def find_images(root: Path) -> ImageListing:
    """List image files under `root` recursively, sorted, without following directory links (no loops)."""
    if not root.exists():
        raise DataError(f"{root} does not exist", "pass a folder of images")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder", "pass the folder that holds the images")
    listing = ImageListing(root=root, files=[])

    def on_error(error: OSError) -> None:
        listing.skipped.append(Skipped(_printable(error.filename or root), f"cannot list: {error.strerror}"))

    for folder, dirs, names in os.walk(root, onerror=on_error):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.exists() and not path.is_file():  # a FIFO or a device would block or never end a read
                listing.skipped.append(Skipped(listing.relative(path), "not a regular file"))
            else:
                listing.files.append(path)  # (a dangling link is listed: decoding reports it)
    return listing


def _printable(path: object) -> str:
    """A path as text that prints and stores anywhere: bytes that are not UTF-8 become \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def decode_rgb(path: Path) -> np.ndarray:
    """Decode one image file to (H, W, 3) uint8 RGB: first frame, alpha over white, 16-bit scaled down.

    Raises DataError with a short reason for anything that is not a readable image.
    """
    return _decode(path, _to_rgb_array)


@dataclass
class ImageLayers:
    """A decoded image split for denoising: colour to denoise, and what to give back unchanged."""

    rgb: np.ndarray  # (H, W, 3) uint8; a greyscale image's grey in all three channels
    alpha: np.ndarray | None  # (H, W) uint8, or None for an opaque image
    grey: bool  # the file holds greyscale (1-bit, 8-bit, 16-bit or 32-bit), so the output is greyscale too


def decode_layers(path: Path) -> ImageLayers:
    """Decode one image file keeping its alpha channel and greyness (first frame, 16-bit scaled to 8 bits,
    palette, CMYK and other colour modes converted to RGB). Raises DataError as decode_rgb does."""
    return _decode(path, _to_layers)


def _to_layers(image: Image.Image) -> ImageLayers:
    grey = image.mode in ("1", "L", "LA", "La", "I;16", "I;16B", "I;16L", "I", "F")
    has_alpha = image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info
    if not has_alpha:
        return ImageLayers(_to_rgb_array(image), None, grey)
    rgba = np.asarray(image.convert("RGBA"))  # transparency keys and palette alpha become a real alpha channel
    return ImageLayers(np.ascontiguousarray(rgba[:, :, :3]), np.ascontiguousarray(rgba[:, :, 3]), grey)


def _decode(path: Path, convert: Callable[[Image.Image], T]) -> T:
    """Open `path`'s first frame (size-checked, EXIF-rotated) and `convert` it; DataError for anything unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise DataError(f"image claims {width}x{height} pixels (over {MAX_PIXELS:,}); not decoded")
                image.seek(0)
                image.load()
                return convert(ImageOps.exif_transpose(image))
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"refused as a decompression bomb: {error}") from None
    except PermissionError:
        raise DataError("no read permission") from None
    except Image.UnidentifiedImageError:
        raise DataError("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DataError(f"broken image: {str(error) or type(error).__name__}") from None


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Pillow's own convert() clips 16-bit values at 255; scale by the real range instead.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        gray = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def square_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop (H, W, 3) to a square and resize to (size, size, 3) with a Lanczos filter."""
    height, width, _ = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    return np.asarray(Image.fromarray(np.ascontiguousarray(square)).resize((size, size), Image.Resampling.LANCZOS))


def pixel_hash(pixels: np.ndarray) -> str:
    """Content hash of decoded pixels (shape included), so the same picture in two formats matches."""
    digest = hashlib.sha256(str(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


@dataclass
class PreparedSet:
    """A packed training set: (N, H, W, 3) uint8 images and where each came from."""

    images: np.ndarray
    sources: list[str]
    hashes: list[str]
    duplicates: list[dict[str, str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # One label per kept image (empty for an unlabelled set), and where the labels came from.
    label_names: list[str] = field(default_factory=list)
    layout: str = "flat folder: one unlabelled class"

    @property
    def image_size(self) -> int:
        """Side of the square images."""
        return int(self.images.shape[1])

    @property
    def labels(self) -> Labels | None:
        """The kept images' classes, or None for an unlabelled set."""
        return Labels.from_names(self.label_names) if self.label_names else None


def prepare_images(
    root: Path, image_size: int, on_file: Callable[[], None] | None = None
) -> PreparedSet:
    """Decode, square, resize and deduplicate every image under `root`; bad files are skipped with a reason.

    Labels come from a metadata table at the top of `root`, else from class folders (see `image_labels`)."""
    listing = find_images(root)
    labels, layout = image_labels(listing)
    if labels is not None:
        class_names(list(labels.values()))  # refuse clashing names before decoding anything
    images: list[np.ndarray] = []
    prepared = PreparedSet(images=np.empty((0, image_size, image_size, 3), np.uint8), sources=[], hashes=[],
                           layout=layout)
    prepared.skipped.extend(listing.skipped)
    first_seen: dict[str, str] = {}
    for path in listing.files:
        relative = listing.relative(path)
        if labels is not None and relative not in labels:
            prepared.skipped.append(Skipped(relative, "not listed in the metadata table"))
            if on_file is not None:
                on_file()
            continue
        try:
            pixels = decode_rgb(path)
        except DataError as error:
            prepared.skipped.append(Skipped(relative, error.message))
        else:
            digest = pixel_hash(pixels)
            if digest in first_seen:
                prepared.duplicates.append({"path": relative, "duplicate_of": first_seen[digest]})
            else:
                first_seen[digest] = relative
                images.append(square_resize(pixels, image_size))
                prepared.sources.append(relative)
                prepared.hashes.append(digest)
                if labels is not None:
                    prepared.label_names.append(labels[relative])
        if on_file is not None:
            on_file()
    if images:
        prepared.images = np.stack(images)
    return prepared


def image_labels(listing: ImageListing) -> tuple[dict[str, str] | None, str]:
    """Each listed image's label by its relative path (None: unlabelled), and a line saying where they came from.

    A metadata.csv or metadata.jsonl at the top wins; else, when every image sits in a folder below the top,
    each top folder is a class (ImageFolder); else the set is one unlabelled class, as a flat folder always was."""
    table = metadata_table(listing.root)
    relatives = [listing.relative(path) for path in listing.files]
    if table is not None:
        listed = read_metadata_labels(table)  # by '/'-separated path, as the table writes them on any system
        posix = {relative: relative.replace(os.sep, "/") for relative in relatives}
        return {k: listed[v] for k, v in posix.items() if v in listed}, f"labelled by {table.name}"
    by_folder = {relative: folder_label(relative) for relative in relatives}
    if relatives and all(by_folder.values()):
        return {k: check_label(v, f"folder {v}") for k, v in by_folder.items() if v}, "labelled by class folders"
    if any(by_folder.values()):
        return None, "one unlabelled class (images at the top level beside folders; put every image in a class folder to label them)"
    return None, "flat folder: one unlabelled class"


def count_images(root: Path) -> int:
    """How many image files `prepare_images` would look at."""
    return len(find_images(root).files)


def manifest_path(dataset: Path) -> Path:
    """The JSON manifest that sits beside a packed set."""
    return dataset.with_name(dataset.name.removesuffix(".safetensors") + ".manifest.json")


def check_prepare_target(out: Path, source_root: Path, overwrite: bool) -> None:
    """Refuse an --out inside the source folder (it would join the next preparation, or replace a source
    image), and, unless `overwrite`, an existing file that is not a data set of ours or its manifest."""
    out_abs, root_abs = out.resolve(), source_root.resolve()
    if root_abs == out_abs or root_abs in out_abs.parents:
        raise ArgumentError(f"--out {out} is inside the folder {source_root}",
                          "write the set outside the folder it is made from, such as beside it")
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder", "pass a file path such as faces.safetensors")
    if overwrite:
        return
    if out.exists() and not _is_data_set(out):
        raise OutputError(f"{out} exists and is not a data set written by `animevae prepare`",
                          "pick another --out, or pass --overwrite to replace it")
    manifest = manifest_path(out)
    if manifest.exists() and not _is_set_manifest(manifest):
        raise OutputError(f"{manifest} exists and is not the manifest of an animevae data set",
                          "pick another --out, or pass --overwrite to replace it")


def _is_data_set(path: Path) -> bool:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return (handle.metadata() or {}).get("kind") == DATASET_KIND
    except (SafetensorError, OSError, ValueError):
        return False


def _is_set_manifest(path: Path) -> bool:
    try:
        return path.is_file() and isinstance(json.loads(path.read_text()).get("kept"), list)
    except (OSError, ValueError, AttributeError):
        return False


def save_prepared(prepared: PreparedSet, out: Path, source_root: Path) -> None:
    """Write the packed set and its manifest, each atomically."""
    from safetensors.numpy import save_file

    if not len(prepared.sources):
        raise DataError(f"no usable images under {source_root}", "check the folder holds PNG/JPEG/WebP/BMP/GIF faces")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {out.parent}: {error.strerror}", "pick a folder you can write to") from None
    metadata = {
        "kind": DATASET_KIND,
        "format_version": str(FORMAT_VERSION),
        "image_size": str(prepared.image_size),
        "source": str(source_root),
        "created": str(time.time()),
    }
    tensors = {"images": prepared.images}
    labels = prepared.labels
    if labels is not None:
        tensors["labels"] = labels.index
        metadata["classes"] = labels.classes.to_json()
    try:
        with atomic_path(out, fsync=True) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        write_json_atomic(manifest_path(out), _manifest(prepared, source_root))
    except OSError as error:
        raise OutputError(f"cannot write {out}: {error.strerror or error}", "check the path and free disk space") from None


def _manifest(prepared: PreparedSet, source_root: Path) -> dict[str, object]:
    return {
        "source": str(source_root),
        "image_size": prepared.image_size,
        "layout": prepared.layout,
        "kept": [{"path": p, "sha256": h} | ({"label": prepared.label_names[i]} if prepared.label_names else {})
                 for i, (p, h) in enumerate(zip(prepared.sources, prepared.hashes))],
        "duplicates": prepared.duplicates,
        "skipped": [{"path": s.path, "reason": s.reason} for s in prepared.skipped],
    }


def load_prepared(path: Path) -> tuple[np.ndarray, list[str]]:
    """Load a packed set: (N, H, W, 3) uint8 images and their content hashes (empty if the manifest is gone)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("kind") != DATASET_KIND:
                raise DataError(f"{path} is not a data set written by `animevae prepare`", "run `animevae prepare FOLDER`")
            version = metadata.get("format_version", "0")
            if not re.fullmatch(r"[0-9]{1,9}", version):
                raise DataError(f"{path} has a malformed format version {version[:20]!r}",
                                "prepare the folder again with `animevae prepare`")
            if int(version) > FORMAT_VERSION:
                raise DataError(f"{path} was written by a newer animevae", "upgrade animevae, or prepare the folder again")
            images = handle.get_tensor("images")
    except (SafetensorError, OSError, KeyError) as error:
        raise DataError(f"cannot read data set {path}: {error}", "prepare it again with `animevae prepare`") from None
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise DataError(f"{path} holds {images.dtype} images of shape {images.shape}, not (N, H, W, 3) uint8")
    return images, _manifest_hashes(manifest_path(path), len(images))


def load_prepared_labels(path: Path) -> Labels | None:
    """The labels of a packed set, or None for an unlabelled one (or one written before labels existed)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            text = (handle.metadata() or {}).get("classes")
            if not text or "labels" not in handle.keys():
                return None
            index = handle.get_tensor("labels")
            count = handle.get_slice("images").get_shape()[0]
    except (SafetensorError, OSError) as error:
        raise DataError(f"cannot read data set {path}: {error}", "prepare it again with `animevae prepare`") from None
    classes = ClassInfo.from_json(text)
    # One label per image, or each label after a missing or extra one would name its neighbour's class.
    if index.shape != (count,) or index.dtype != np.int64 or (count and not 0 <= index.min() <= index.max() < len(classes.names)):
        raise DataError(f"{path} holds labels that do not match its class list", "prepare the folder again")
    return Labels(classes, index)


def _manifest_hashes(path: Path, count: int) -> list[str]:
    if not path.is_file():  # before reading: a FIFO would block
        return []
    try:
        kept = json.loads(path.read_text())["kept"]
        hashes = [entry["sha256"] for entry in kept]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return hashes if len(hashes) == count else []


def folder_fingerprint(root: Path, image_size: int) -> str:
    """A key that changes when any image under `root`, or its metadata table, is added, removed or modified (by
    size and mtime)."""
    # "labels": sets cached before labels were read must not stand in for a labelled folder.
    digest = hashlib.sha256(f"{root.resolve()}|{image_size}|{FORMAT_VERSION}|labels".encode())
    table = [path for path in (root / name for name in METADATA_FILES) if path.is_file()]
    for path in [*table, *find_images(root).files]:
        try:
            stat = path.stat()
        except OSError:
            continue
        digest.update(f"{os.fsencode(path)!r}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def split_holdout(hashes: Iterable[str], count: int, val_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, validation) by content hash, so the split is stable across re-preparing.

    The validation part is `val_size` images, capped at 10% of the set (at least one image when N >= 2).
    """
    ordered = list(hashes)
    if len(ordered) != count:
        ordered = [f"{index:012d}" for index in range(count)]
    held = min(val_size, count // 10) if count >= 20 else (1 if count >= 2 else 0)
    # Rank by a hash of the hash, so the held-out images are spread across styles rather than sorted by file name.
    ranks = sorted(range(count), key=lambda i: hashlib.sha256(ordered[i].encode()).hexdigest())
    validation = np.array(sorted(ranks[:held]), dtype=np.int64)
    train = np.array(sorted(ranks[held:]), dtype=np.int64)
    return train, validation


def hash_keys(hashes: Iterable[str]) -> np.ndarray:
    """(N,) int64 keys, sorted: the first 15 hex digits (60 bits) of each sha256 content hash. A run keeps its
    training split's keys, so evaluate can refuse to score held-out images the run was trained on."""
    return np.sort(np.array([int(h[:15], 16) for h in hashes], dtype=np.int64))


@dataclass
class TrainingData:
    """A loaded training set: (N, S, S, 3) uint8 images, their content hashes, their labels (None: unlabelled)."""

    images: np.ndarray
    hashes: list[str]
    labels: Labels | None = None


def load_training_images(data: Path, image_size: int, cache_dir: Path, reporter: Reporter) -> TrainingData:
    """Images, hashes and labels from a prepared set, or a folder (prepared once and cached)."""
    if data.is_file():
        images, hashes = load_prepared(data)
        if images.shape[1] != image_size:
            raise DataError(
                f"{data} holds {images.shape[1]}x{images.shape[1]} images, not {image_size}x{image_size}",
                f"pass --image-size {images.shape[1]}, or prepare the folder again with --image-size {image_size}",
            )
        return TrainingData(images, hashes, load_prepared_labels(data))
    cached = cache_dir / f"{data.resolve().name}-{folder_fingerprint(data, image_size)}.safetensors"
    if cached.is_file():
        reporter.log(f"using the prepared copy of {data} in {cached}")
        return TrainingData(*load_prepared(cached), load_prepared_labels(cached))
    reporter.start(f"preparing {data}", None)
    prepared = prepare_images(data, image_size, on_file=reporter.advance)
    reporter.stop()
    save_prepared(prepared, cached, data)
    reporter.log(f"prepared {len(prepared.sources)} images ({len(prepared.skipped)} skipped, "
                 f"{len(prepared.duplicates)} duplicates; {prepared.layout}) into {cached}")
    for item in prepared.skipped[:SKIPPED_SHOWN]:
        reporter.log(f"  skipped {item.path}: {item.reason}")
    if prepared.skipped:
        more = len(prepared.skipped) - SKIPPED_SHOWN
        reporter.log(f"  {f'and {more} more; ' if more > 0 else ''}all listed in {manifest_path(cached)}")
    return TrainingData(prepared.images, prepared.hashes, prepared.labels)
