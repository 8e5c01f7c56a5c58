"""animevae/writer.py: the PNG writer pool, whose workers never outlive the job that started them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import environ_without_debug


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _generate_until_workers_write(trained_run, out: Path) -> tuple[subprocess.Popen, set[int]]:
    command = [sys.executable, "-m", "animevae", "generate", "--count", "20000", "--batch-size", "64", "--out", str(out),
               "--model", str(trained_run.export_dir / "decoder.onnx"), "--device", "cpu", "--quiet"]
    process = subprocess.Popen(command, env=environ_without_debug(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.png"))) < 50 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    workers = _descendants(process.pid)
    assert process.poll() is None and workers, "generate finished or had no workers"
    return process, workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_generate_stopped_by_a_signal_leaves_no_worker_behind(trained_run, tmp_path: Path, sig) -> None:
    process, workers = _generate_until_workers_write(trained_run, tmp_path / "g")
    process.send_signal(sig)
    process.communicate(timeout=30)
    assert process.returncode == (130 if sig == signal.SIGTERM else -signal.SIGKILL)
    deadline = time.monotonic() + 15
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in workers)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_png_writer_workers_die_with_their_parent(tmp_path: Path) -> None:
    from animevae.writer import PngWriter

    with PngWriter(1, lambda count, failed: None) as writer:
        assert writer.pool is not None
        assert writer.pool.submit(_parent_death_signal).result() == signal.SIGKILL


def _parent_death_signal() -> int:
    import ctypes

    value = ctypes.c_int()
    ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
    return value.value
