"""Finding and decoding image files: any format to RGB or to layers, square resizing, pixel hashes (torch-free)."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps

from animevae.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Larger than any real face picture, small enough that a "decompression bomb" header is refused before decoding.
MAX_PIXELS = 40_000_000
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
    # A transparency key (a palette entry, or one grey level or colour of an L or RGB file) is alpha too.
    if "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
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

