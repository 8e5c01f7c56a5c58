"""The prepared set: a folder decoded into one safetensors file of uint8 images, with its manifest (no pickle)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from animevae import FORMAT_VERSION
from animevae.errors import ArgumentError, DataError, OutputError
from animevae.fileio import atomic_path, temp_name, write_json_atomic
from animevae.images import ImageListing, Skipped, decode_rgb, find_images, pixel_hash, square_resize
from animevae.labels import (METADATA_FILES, ClassInfo, Labels, check_label, class_names, folder_label, metadata_table,
                             read_metadata_labels)

DATASET_KIND = "animevae-dataset"
SAFETENSORS_DTYPES = {"U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "F16": "float16",
                      "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "I64": "int64",
                      "F64": "float64", "BOOL": "bool"}  # for messages about a set of the wrong type
CHUNK_BYTES = 16 * 2**20  # pixels copied per write: bounds the memory of writing a set of any size


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


def prepare_images(root: Path, image_size: int, on_file: Callable[[], None] | None = None) -> PreparedSet:
    """Decode, square, resize and deduplicate every image under `root`; bad files are skipped with a reason.
    Holds every image in memory (small folders, tests): `prepare_set` streams a folder of any size to disk.

    Labels come from a metadata table at the top of `root`, else from class folders (see `image_labels`)."""
    kept: list[np.ndarray] = []
    prepared = _scan(root, image_size, kept.append, on_file)
    if kept:
        prepared.images = np.stack(kept)
    return prepared


def prepare_set(root: Path, image_size: int, out: Path, on_file: Callable[[], None] | None = None,
                before_save: Callable[[PreparedSet], None] | None = None) -> PreparedSet:
    """`prepare_images` written to `out` (and its manifest) as it goes, in memory that does not grow with the
    folder: each kept image is appended to a temp file beside `out`, which is then copied behind the header.
    `before_save` sees the record (sources, skips) once every file is read. The result's images are `out`
    memory-mapped."""
    _make_parent(out)
    spool = temp_name(out.with_name(out.name + ".pixels"))
    try:
        with open(spool, "wb") as handle:
            prepared = _scan(root, image_size, lambda pixels: handle.write(pixels.tobytes()), on_file)
        if before_save is not None:
            before_save(prepared)
        _save(prepared, out, root, _file_chunks(spool))
    except OSError as error:
        raise OutputError(f"cannot write {out}: {error.strerror or error}", "check the path and free disk space") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            spool.unlink()
    prepared.images = _map_images(out)
    return prepared


def _scan(root: Path, image_size: int, keep: Callable[[np.ndarray], object],
          on_file: Callable[[], None] | None) -> PreparedSet:
    """Walk `root` in order, hand each new (S, S, 3) image to `keep`, and record sources, hashes, labels,
    duplicates and skips; the record's images stay empty. Only the hashes seen are held, not the pixels."""
    listing = find_images(root)
    labels, layout = image_labels(listing)
    if labels is not None:
        class_names(list(labels.values()))  # refuse clashing names before decoding anything
    prepared = PreparedSet(images=np.empty((0, image_size, image_size, 3), np.uint8), sources=[], hashes=[],
                           layout=layout)
    prepared.skipped.extend(listing.skipped)
    first_seen: dict[str, str] = {}
    for path in listing.files:
        relative = listing.relative(path)
        if labels is not None and relative not in labels:
            prepared.skipped.append(Skipped(relative, "not listed in the metadata table"))
        else:
            _scan_one(path, relative, image_size, prepared, first_seen, keep, labels)
        if on_file is not None:
            on_file()
    return prepared


def _scan_one(path: Path, relative: str, image_size: int, prepared: PreparedSet, first_seen: dict[str, str],
              keep: Callable[[np.ndarray], object], labels: dict[str, str] | None) -> None:
    try:
        pixels = decode_rgb(path)
    except DataError as error:
        prepared.skipped.append(Skipped(relative, error.message))
        return
    digest = pixel_hash(pixels)
    if digest in first_seen:
        prepared.duplicates.append({"path": relative, "duplicate_of": first_seen[digest]})
        return
    first_seen[digest] = relative
    keep(square_resize(pixels, image_size))
    # Source, hash and label are appended together with the image, so the three stay row-aligned.
    prepared.sources.append(relative)
    prepared.hashes.append(digest)
    if labels is not None:
        prepared.label_names.append(labels[relative])


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
    """Write an in-memory packed set and its manifest, each atomically."""
    _refuse_empty(prepared, source_root)
    _make_parent(out)
    flat = prepared.images.reshape(-1)  # (N * S * S * 3,) uint8
    chunks = (flat[begin : begin + CHUNK_BYTES] for begin in range(0, len(flat), CHUNK_BYTES))
    try:
        _save(prepared, out, source_root, chunks)
    except OSError as error:
        raise OutputError(f"cannot write {out}: {error.strerror or error}", "check the path and free disk space") from None


def _refuse_empty(prepared: PreparedSet, source_root: Path) -> None:
    if not prepared.sources:
        raise DataError(f"no usable images under {source_root}", "check the folder holds PNG/JPEG/WebP/BMP/GIF faces")


def _make_parent(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {out.parent}: {error.strerror}", "pick a folder you can write to") from None


def _save(prepared: PreparedSet, out: Path, source_root: Path, image_chunks: Iterable[np.ndarray | bytes]) -> None:
    """Write `out` (the images from `image_chunks`, in order) and its manifest atomically; OSError on failure."""
    _refuse_empty(prepared, source_root)
    size = prepared.image_size
    metadata = {
        "kind": DATASET_KIND,
        "format_version": str(FORMAT_VERSION),
        "image_size": str(size),
        "source": str(source_root),
        "created": str(time.time()),
    }
    labels = prepared.labels
    if labels is not None:
        metadata["classes"] = labels.classes.to_json()
    shape = (len(prepared.sources), size, size, 3)
    with atomic_path(out, fsync=True) as tmp:
        write_safetensors(tmp, metadata, shape, image_chunks, labels.index if labels is not None else None)
    write_json_atomic(manifest_path(out), _manifest(prepared, source_root))


def write_safetensors(path: Path, metadata: dict[str, str], shape: tuple[int, ...],
                      image_chunks: Iterable[np.ndarray | bytes], labels: np.ndarray | None = None) -> None:
    """Write a safetensors file of `images` (uint8, `shape`, its bytes streamed from `image_chunks`) and, when
    given, `labels` ((N,) int64), as safetensors.numpy.save_file would: an 8-byte little-endian header length, the
    JSON header padded to 8 bytes, then the raw tensors (the 8-byte-aligned one first)."""
    image_bytes = int(np.prod(shape))
    tensors: dict[str, object] = {}
    offset = 0
    if labels is not None:
        tensors["labels"] = {"dtype": "I64", "shape": [len(labels)], "data_offsets": [0, 8 * len(labels)]}
        offset = 8 * len(labels)
    tensors["images"] = {"dtype": "U8", "shape": list(shape), "data_offsets": [offset, offset + image_bytes]}
    header = json.dumps({"__metadata__": dict(sorted(metadata.items())), **tensors}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    written = 0
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        if labels is not None:
            handle.write(np.ascontiguousarray(labels, dtype="<i8").tobytes())
        for chunk in image_chunks:
            handle.write(chunk)
            written += len(chunk)
    if written != image_bytes:
        raise OSError(f"wrote {written} image bytes where the header promises {image_bytes}")


def _file_chunks(path: Path) -> Iterator[bytes]:
    """The bytes of `path`, CHUNK_BYTES at a time."""
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


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
    """Open a packed set: (N, H, W, 3) uint8 images, memory-mapped (pages are read as rows are indexed; writes
    stay private), and their content hashes (empty if the manifest is gone)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:  # checks the header against the file's size
            _check_set_metadata(path, handle.metadata() or {})
            if "images" not in handle.keys():
                raise DataError(f"cannot read data set {path}: it holds no images", "prepare it again with `animevae prepare`")
        images = _map_images(path)
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise DataError(f"cannot read data set {path}: {error}", "prepare it again with `animevae prepare`") from None
    return images, _manifest_hashes(manifest_path(path), len(images))


def _check_set_metadata(path: Path, metadata: dict[str, str]) -> None:
    if metadata.get("kind") != DATASET_KIND:
        raise DataError(f"{path} is not a data set written by `animevae prepare`", "run `animevae prepare FOLDER`")
    version = metadata.get("format_version", "0")
    if not re.fullmatch(r"[0-9]{1,9}", version):
        raise DataError(f"{path} has a malformed format version {version[:20]!r}",
                        "prepare the folder again with `animevae prepare`")
    if int(version) > FORMAT_VERSION:
        raise DataError(f"{path} was written by a newer animevae", "upgrade animevae, or prepare the folder again")


def _map_images(path: Path) -> np.ndarray:
    """The `images` tensor of a safetensors file as a copy-on-write np.memmap at its offset (no read)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        entry = json.loads(handle.read(length))["images"]
    shape, (begin, _) = tuple(entry["shape"]), entry["data_offsets"]
    if entry["dtype"] != "U8" or len(shape) != 4 or shape[3] != 3:
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"])
        raise DataError(f"{path} holds {dtype} images of shape {shape}, not (N, H, W, 3) uint8",
                        "prepare the folder again with `animevae prepare`")
    if 0 in shape:  # an empty map is an error to mmap
        return np.zeros(shape, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="c", offset=8 + length + begin, shape=shape)


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
