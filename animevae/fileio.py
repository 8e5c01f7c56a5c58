"""Atomic writes, PNG encoding and contact sheets. numpy and Pillow only: no torch on the generate path."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Level 1 is lossless like every level, and encodes much faster than the default 6 for files only a little larger.
PNG_COMPRESS_LEVEL = 1
_TMP_MARK = ".animevae-tmp-"
# .NAME.animevae-tmp-HOST-PID-TOKEN, exactly: cleanup removes nothing else, so a user's ".draft.tmp-1-v2" is safe.
_TMP_PATTERN = re.compile(r"^\..+\.animevae-tmp-(?P<host>[0-9a-f]{12})-(?P<pid>[0-9]{1,10})-[0-9a-f]{8}$")
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every complete PNG ends with


def host_tag(hostname: str) -> str:
    """12 hex digits from the whole host name: names that share a long prefix (pods) still differ."""
    return hashlib.sha256(hostname.encode("utf-8", "surrogateescape")).hexdigest()[:12]


_HOST = host_tag(socket.gethostname())


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (other threads may be creating files)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        # Some writers (safetensors) create 0600 files: give every output the mode a new file gets here.
        os.chmod(tmp, 0o666 & ~_umask())
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


def remove_stale_temps(*folders: Path) -> int:
    """Delete the temp files that writers of this host, no longer alive, left directly in `folders` (the folders
    a job writes; not recursive); return how many. Only names of exactly our temp pattern are touched: another
    host's temp files are left alone (its writers may still be running), and so is anything a user named."""
    removed = 0
    for folder in dict.fromkeys(folders):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            match = _TMP_PATTERN.match(entry.name)
            if match is None or match["host"] != _HOST or _pid_alive(int(match["pid"])):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def is_complete_png(path: Path) -> bool:
    """Whether `path` is a regular file holding a whole PNG (signature and final IEND chunk): a file cut
    short by a crash or a power loss is not, and a resumed job writes it again."""
    if not path.is_file():  # before opening: a FIFO would block the open
        return False
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            handle.seek(-len(_PNG_END), os.SEEK_END)
            return handle.read() == _PNG_END
    except OSError:
        return False


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


def to_unit_chw(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [0, 1]: what the encoder and denoiser read."""
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
