"""Shared helpers for the test suite (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# The tiny model every API-level test trains: fast on 2 CPU cores, still every code path.
# The diffusion prior (an option, off by default) so that the session run exercises prior.onnx end to end.
TINY_MODEL = {"image_size": 16, "latent_dim": 8, "channels": (8, 16), "denoiser_width": 8, "denoiser_blocks": 1,
              "prior_width": 16, "prior_blocks": 1, "disc_channels": 4, "prior": "diffusion"}
# Common CLI flags that keep a command on the CPU and quiet.
CPU = ["--device", "cpu", "-q"]


def blob_image(rng: np.random.Generator, width: int = 16, height: int = 16) -> Image.Image:
    """An RGB picture of a few coloured random blobs on a random background."""
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        radius = int(rng.integers(2, max(3, min(width, height) // 3)))
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def write_blobs(folder: Path, count: int = 40, seed: int = 0, size: int = 16, prefix: str = "face") -> list[Path]:
    """Write `count` distinct size x size blob PNGs into `folder`; return their paths (sorted)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"{prefix}{index:03d}.png"
        blob_image(rng, size, size).save(path)
        paths.append(path)
    return paths


# A labelled set: three class folders, the last one rare (what --balance tops up).
LABELLED_COUNTS = {"cats": 16, "dogs": 16, "rare": 4}


def write_labelled(root: Path, counts: dict[str, int] = LABELLED_COUNTS) -> Path:
    """root/<label>/<label>NNN.png: distinct blob PNGs in one folder per class; returns root."""
    for seed, (label, count) in enumerate(counts.items()):
        write_blobs(root / label, count=count, seed=100 + seed, prefix=label)
    return root


def read_rgb(path: Path) -> np.ndarray:
    """A PNG (or any image) as an (H, W, 3) uint8 array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder` (hidden ones included): relative path -> (mtime_ns, bytes)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def temp_leftovers(folder: Path) -> list[Path]:
    """Temp files of animevae's atomic writes (`.NAME.animevae-tmp-HOST-PID-HEX`) under `folder`."""
    return [p for p in folder.rglob("*") if ".animevae-tmp-" in p.name]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse a .jsonl file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dead_pid() -> int:
    """The id of a process that has just exited (so it is not alive)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def assert_cli_error(result: Any, *fragments: str) -> None:
    """A user-facing failure: exit 1, one `error:` line, a `hint:` line, no traceback, no stray exception, and not
    the CLI's catch-all for unexpected exceptions."""
    output = result.output
    assert result.exit_code == 1, f"exit code {result.exit_code}, output:\n{output}\nexception: {result.exception!r}"
    # CliRunner swallows an uncaught exception into result.exception (exit code 1): that is a crash, not a report.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    # The CLI's safety net for bugs ("error: internal error: ...", "hint: ... report it") is not a user-facing error.
    assert "error: internal error" not in output, output
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, output
    assert any(line.startswith("hint:") for line in output.splitlines()), output
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output}"


def assert_ok(result: Any) -> None:
    """Exit 0 without an exception, with the output shown on failure."""
    assert result.exit_code == 0, f"exit code {result.exit_code}, output:\n{result.output}\nexception: {result.exception!r}"
    assert result.exception is None, repr(result.exception)


def environ_without_debug() -> dict[str, str]:
    """The environment minus ANIMEVAE_DEBUG (which turns error reports into tracebacks)."""
    return {k: v for k, v in os.environ.items() if k != "ANIMEVAE_DEBUG"}


class _Payload:
    """Unpickling this creates the file `marker`: proof that something ran pickle.load on it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def evil_object(marker: Path) -> object:
    """An object whose unpickling (torch.save of it, then torch.load without weights_only) creates `marker`."""
    return _Payload(marker)


def evil_pickle(marker: Path) -> bytes:
    """Pickle bytes whose loading creates `marker` (a stand-in for arbitrary code execution)."""
    import pickle

    return pickle.dumps(_Payload(marker))


_WRITE_OPENS: list[list[str]] = []


def _record_write_opens(event: str, args: tuple[Any, ...]) -> None:
    # Audit hook (cannot be removed once added): records files opened for writing while a recorder is active.
    if event != "open" or not _WRITE_OPENS or args[0] is None or isinstance(args[0], int):
        return
    path, mode, flags = args
    writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR))
    if writing:
        _WRITE_OPENS[-1].append(os.fsdecode(path))


sys.addaudithook(_record_write_opens)


@contextlib.contextmanager
def opened_for_writing() -> Iterator[list[str]]:
    """The paths this process opens for writing inside the block (through Python's open, os.open or pathlib)."""
    opened: list[str] = []
    _WRITE_OPENS.append(opened)
    try:
        yield opened
    finally:
        _WRITE_OPENS.pop()


def ctrl_c_after_step(monkeypatch: Any, step: int) -> None:
    """Make training send itself SIGINT right after optimiser step `step` (as a user's Ctrl-C would arrive)."""
    import os
    import signal

    import animevae.training.train as train_module

    real_step = train_module.Trainer.step

    def step_then_ctrl_c(self: Any, indices: Any, **options: Any) -> dict[str, float]:
        losses = real_step(self, indices, **options)
        if self.progress.step == step:
            os.kill(os.getpid(), signal.SIGINT)
        return losses

    monkeypatch.setattr(train_module.Trainer, "step", step_then_ctrl_c)


# The good faces of the messy folder (conftest's `messy` fixture) beside build_corpus's bad and odd files.
MESSY_GOOD = 30


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 30000 x 30000 RGB pixels."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    """`image` encoded as a `fmt` file's bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def build_corpus(folder: Path) -> tuple[set[str], set[str]]:
    """Write the bad and odd files of the robustness issue into `folder`; return (odd-but-valid, broken) names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    png, jpeg = encoded(picture, "PNG"), encoded(picture, "JPEG")
    broken = {
        "empty.png": b"",
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "badcrc.png": png[:29] + bytes([png[29] ^ 0xFF]) + png[30:],  # the IHDR checksum
        "text.png": b"this is not an image\n",
        "bomb.png": _bomb_png(),
    }
    for name, data in broken.items():
        (folder / name).write_bytes(data)
    alpha = np.zeros((20, 20, 4), np.uint8)
    alpha[5:15, 5:15] = (255, 0, 0, 255)
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    odd = {
        "gray.png": Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L"),
        "rgba.png": Image.fromarray(alpha, "RGBA"),
        "palette.png": picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
        "one-pixel.png": Image.new("RGB", (1, 1), (10, 200, 30)),
        "wide.png": Image.fromarray(rng.integers(0, 256, (20, 2000, 3), dtype=np.uint8)),
        "deep.png": Image.fromarray((rng.integers(0, 65536, (20, 20))).astype(np.uint16)),
        "nested/a/b/inner.webp": picture,
    }
    for name, image in odd.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name)
    (folder / "cmyk.jpg").write_bytes(encoded(picture.convert("CMYK"), "JPEG"))
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with open(os.path.join(os.fsencode(folder), b"latin-\xe9t\xe9.png"), "wb") as handle:
        handle.write(encoded(Image.new("RGB", (16, 16), (1, 2, 3)), "PNG"))
    locked = folder / "locked.png"
    locked.write_bytes(encoded(Image.new("RGB", (16, 16), (90, 9, 9)), "PNG"))
    locked.chmod(0)
    os.symlink(folder, folder / "nested" / "loop")  # a directory link back to the top: a loop if followed
    odd_names = set(odd) | {"cmyk.jpg", "animated.gif", "latin-\\xe9t\\xe9.png"}
    return odd_names, set(broken)


def locked_is_readable(folder: Path) -> bool:
    """Whether build_corpus's locked.png can be read all the same (root reads anything)."""
    return os.access(folder / "locked.png", os.R_OK)  # root reads anything
