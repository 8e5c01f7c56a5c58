"""Atomic writes, PNG encoding and contact sheets. numpy and Pillow only: no torch on the generate path."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Level 1 is lossless like every level, encodes ~3x faster than the default 6, and files grow only ~10-20%.
PNG_COMPRESS_LEVEL = 1
_TMP_MARK = ".tmp-"
# This machine's name as it goes into temp file names (no separators, so names parse back).
_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def temp_name(final: Path) -> Path:
    """A hidden sibling of `final` that names this host and process, so a later run can tell a dead writer's
    leftovers, even in a folder that writers on several machines share."""
    return final.with_name(f".{final.name}{_TMP_MARK}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(final: Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path to write; on success rename it onto `final`, so readers never see half a file."""
    tmp = temp_name(final)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(final: Path, data: bytes, fsync: bool = False) -> None:
    """Write `data` to `final` atomically."""
    with atomic_path(final, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(final: Path, obj: Any) -> None:
    """Write `obj` as pretty JSON to `final` atomically."""
    write_bytes_atomic(final, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), fsync=True)


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array (or (H, W) grey, (H, W, 2) grey + alpha, (H, W, 4) RGBA) as a lossless PNG."""
    buffer = io.BytesIO()
    mode = "L" if pixels.ndim == 2 else {2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    Image.fromarray(pixels, mode).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def save_png_atomic(final: Path, pixels: np.ndarray) -> None:
    """Encode uint8 `pixels` (as encode_png takes them) and write them to `final` atomically."""
    write_bytes_atomic(final, encode_png(pixels))


def remove_stale_temps(folder: Path) -> int:
    """Delete temp files left in `folder` (recursively) by writers of this host that are no longer alive;
    return how many. Another host's temp files are left alone: its writers may still be running."""
    removed = 0
    for path in folder.rglob(f".*{_TMP_MARK}*"):
        pid = _writer_pid(path.name)
        if pid is not None and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def _writer_pid(name: str) -> int | None:
    """The writer's pid if the temp file is this host's (HOST-PID-HEX, or PID-HEX from older versions)."""
    parts = name.rsplit(_TMP_MARK, 1)[-1].rsplit("-", 2)
    if len(parts) == 3 and parts[0] != _HOST:
        return None
    pid = parts[-2]
    return int(pid) if pid.isdigit() else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False  # not a writer's pid: os.kill(0, ...) would mean "my process group"
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    # A killed writer whose parent died too may wait unreaped (as a zombie) where nothing reaps orphans.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def contact_sheet(images: np.ndarray, columns: int = 8, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W, 3) uint8 images into one (rows*(H+pad)+pad, cols*(W+pad)+pad, 3) sheet on white."""
    count, height, width, _ = images.shape
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    sheet = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, np.uint8)
    for index in range(count):
        top = pad + (index // columns) * (height + pad)
        left = pad + (index % columns) * (width + pad)
        sheet[top : top + height, left : left + width] = images[index]
    return sheet


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] -> (N, H, W, 3) uint8, rounding to nearest."""
    scaled = np.clip(images, 0.0, 1.0) * 255.0 + 0.5
    return np.ascontiguousarray(scaled.astype(np.uint8).transpose(0, 2, 3, 1))
