"""Shared helpers for the test suite (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
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
