"""animevae.fileio (atomic writes, stale temps, PNGs, contact sheets) and animevae.writer (PNG worker pool)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from animevae.cli import app
from animevae.fileio import (atomic_path, contact_sheet, encode_png, remove_stale_temps, save_png_atomic, temp_name,
                             to_uint8, write_bytes_atomic, write_json_atomic)
from animevae.writer import PngWriter, usable_cores, write_pngs
from helpers import CPU, assert_ok, dead_pid, opened_for_writing, read_rgb, temp_leftovers


# --- atomic writes -----------------------------------------------------------------------------


def test_temp_name_is_a_hidden_sibling_naming_this_process(tmp_path: Path) -> None:
    final = tmp_path / "000001.png"
    first, second = temp_name(final), temp_name(final)
    assert first.parent == tmp_path
    assert first.name.startswith(".000001.png.animevae-tmp-") and f"-{os.getpid()}-" in first.name
    assert first != second


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    final = tmp_path / "f.txt"
    final.write_text("old")
    with atomic_path(final) as tmp:
        tmp.write_text("new")
        assert final.read_text() == "old"  # readers see the old file until the rename
    assert final.read_text() == "new"
    assert temp_leftovers(tmp_path) == []


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "f.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(final, fsync=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert final.read_text() == "old"
    assert temp_leftovers(tmp_path) == []


def test_write_helpers(tmp_path: Path) -> None:
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    write_json_atomic(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "j.json").read_text()
    assert json.loads(text) == {"a": [1, 2], "b": 1}
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')
    assert temp_leftovers(tmp_path) == []


# --- stale temps -------------------------------------------------------------------------------


def _temp_of(pid: object, final: str = "000001.png", host: str | None = None) -> str:
    from animevae.fileio import _HOST

    return f".{final}.animevae-tmp-{host or _HOST}-{pid}-0123abcd"


def test_remove_stale_temps_removes_only_dead_writers_leftovers(tmp_path: Path) -> None:
    dead = dead_pid()
    stale = [tmp_path / _temp_of(dead), tmp_path / _temp_of(dead, "x.json")]
    kept = [
        tmp_path / _temp_of(os.getpid(), "000002.png"),          # this process: alive
        tmp_path / _temp_of(os.getppid(), "000003.png"),         # our parent: alive
        tmp_path / _temp_of("notapid", "000004.png"),            # not our pattern
        tmp_path / f".000006.png.tmp-{dead}-abcd",               # an older pattern, or a user's name: not ours
        tmp_path / "000005.png",                                 # a finished file
        tmp_path / ".hidden",
    ]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 2
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert remove_stale_temps(tmp_path) == 0


def test_remove_stale_temps_survives_an_absurd_pid(tmp_path: Path) -> None:
    odd = tmp_path / _temp_of(9999999999)
    odd.write_bytes(b"x")
    remove_stale_temps(tmp_path)  # must not raise; no process can have this id


# --- PNGs and sheets ---------------------------------------------------------------------------


def test_encode_png_is_lossless(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    data = encode_png(pixels)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    save_png_atomic(tmp_path / "p.png", pixels)
    assert np.array_equal(read_rgb(tmp_path / "p.png"), pixels)
    assert (tmp_path / "p.png").read_bytes() == data  # deterministic bytes


def test_to_uint8_rounds_clips_and_moves_channels_last() -> None:
    images = np.zeros((1, 3, 1, 4), np.float32)
    images[0, 0, 0] = [-0.5, 0.0, 0.5, 2.0]
    images[0, 1, 0] = [1.0, 1.9 / 255, 2.1 / 255, 254.6 / 255]
    out = to_uint8(images)
    assert out.shape == (1, 1, 4, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255]
    assert out[0, 0, :, 1].tolist() == [255, 2, 2, 255]
    assert out[0, 0, :, 2].tolist() == [0, 0, 0, 0]


def test_contact_sheet_layout() -> None:
    tiles = np.stack([np.full((4, 6, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    sheet = contact_sheet(tiles, columns=3, pad=1)
    assert sheet.shape == (2 * 5 + 1, 3 * 7 + 1, 3)
    assert (sheet[1:5, 1:7] == 10).all()          # tile 0 at row 0, column 0
    assert (sheet[1:5, 15:21] == 30).all()        # tile 2 at row 0, column 2
    assert (sheet[6:10, 8:14] == 50).all()        # tile 4 at row 1, column 1
    assert (sheet[6:10, 15:21] == 255).all()      # the empty cell is white
    assert (sheet[0] == 255).all() and (sheet[:, 0] == 255).all()
    assert contact_sheet(tiles[:2], columns=8, pad=0).shape == (4, 12, 3)  # never wider than the count


# --- writer ------------------------------------------------------------------------------------


def test_write_pngs_reports_failures_per_file(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 3), np.uint8)
    failures = write_pngs([tmp_path / "ok.png", tmp_path / "no" / "such" / "dir.png"], [pixels, pixels])
    assert (tmp_path / "ok.png").is_file()
    assert len(failures) == 1
    path, reason = failures[0]
    assert path == tmp_path / "no" / "such" / "dir.png" and reason.startswith("cannot write")


@pytest.mark.parametrize("workers", [0, 1])
def test_png_writer_writes_everything_and_reports_in_order(tmp_path: Path, workers: int) -> None:
    images = [np.full((3, 3, 3), i, np.uint8) for i in range(7)]
    paths = [tmp_path / f"{i}.png" for i in range(7)]
    done: list[tuple[int, list]] = []
    with PngWriter(workers, lambda count, failed: done.append((count, failed))) as writer:
        writer.submit(paths[:4], images[:4])
        writer.submit(paths[4:], images[4:])
    assert sum(count for count, _ in done) == 7
    assert all(failed == [] for _, failed in done)
    for path, pixels in zip(paths, images):
        assert np.array_equal(read_rgb(path), pixels)
    assert temp_leftovers(tmp_path) == []


def test_usable_cores() -> None:
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)


def test_temp_files_of_another_host_are_left_alone(tmp_path) -> None:
    from animevae.fileio import _HOST, remove_stale_temps, temp_name

    mine = temp_name(tmp_path / "a.png")
    assert f".animevae-tmp-{_HOST}-{os.getpid()}-" in mine.name
    foreign = tmp_path / _temp_of(1, "b.png", host="0123456789ab")  # pid 1 is alive here, not that host's pid 1
    dead_here = tmp_path / _temp_of(999999999, "c.png")
    for path in (foreign, dead_here):
        path.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == 1
    assert foreign.exists() and not dead_here.exists()


# --- what atomic writes protect: resume after a kill -------------------------------------------

_KILLED_MIDWAY = """
import os, signal, sys
from pathlib import Path

from animevae.fileio import write_bytes_atomic


def write_half_then_die(self, data):
    # The writer is killed (SIGKILL: no cleanup runs) with half of the bytes on disk.
    with open(self, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


Path.write_bytes = write_half_then_die
write_bytes_atomic(Path(sys.argv[1]), b"x" * 100_000)
"""


def test_a_write_killed_midway_is_never_seen_under_its_final_name(tmp_path: Path) -> None:
    """Protects resume after a kill: write_bytes_atomic writes a temp file and renames it, so a killed run
    leaves no half file under the final name (a rerun would keep it as finished)."""
    import signal
    import subprocess
    import sys

    final = tmp_path / "000001.png"
    done = subprocess.run([sys.executable, "-c", _KILLED_MIDWAY, str(final)], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert not final.exists()
    (leftover,) = temp_leftovers(tmp_path)
    assert leftover.stat().st_size == 50_000  # the half file is there, under its temp name only
    assert remove_stale_temps(tmp_path) == 1  # and the next run removes it
    assert list(tmp_path.iterdir()) == []


def test_atomic_writers_never_open_the_final_name_for_writing(tmp_path: Path) -> None:
    """Protects the same promise at any point of a write: only hidden temp names are opened for writing."""
    final = tmp_path / "a.bin"
    final.write_bytes(b"old")
    with opened_for_writing() as opened:
        write_bytes_atomic(final, b"new")
        write_json_atomic(tmp_path / "j.json", {"a": 1})
        save_png_atomic(tmp_path / "p.png", np.zeros((2, 2, 3), np.uint8))
    assert len(opened) == 3, opened
    assert all(Path(p).parent == tmp_path and Path(p).name.startswith(".") and ".animevae-tmp-" in p for p in opened), opened
    assert final.read_bytes() == b"new" and temp_leftovers(tmp_path) == []


def test_pngs_are_written_at_compression_level_1(tmp_path: Path) -> None:
    """Protects the README's PNG level 1 (lossless, ~3x faster to encode than Pillow's default 6): the bytes
    are exactly Pillow's level-1 encoding, and not the default's."""
    import io

    from PIL import Image

    pixels = np.repeat(np.arange(64, dtype=np.uint8), 48).reshape(32, 32, 3)  # compressible: levels differ

    def pillow(level: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    assert pillow(1) != pillow(6)
    assert encode_png(pixels) == pillow(1)
    save_png_atomic(tmp_path / "a.png", pixels)
    write_pngs([tmp_path / "b.png"], [pixels])
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes() == pillow(1)


def test_json_and_fsync_requests_reach_the_disk(tmp_path: Path, fsynced_paths: list[str]) -> None:
    """Protects durability of manifests and checkpoints: write_json_atomic (and write_bytes_atomic when asked)
    fsync the temp file before the rename; plain image writes do not pay for it. JSON is pretty and sorted."""
    write_json_atomic(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    write_bytes_atomic(tmp_path / "synced.bin", b"x", fsync=True)
    write_bytes_atomic(tmp_path / "plain.bin", b"x")
    save_png_atomic(tmp_path / "p.png", np.zeros((2, 2, 3), np.uint8))
    assert [Path(p).name.split(".animevae-tmp-")[0] for p in fsynced_paths] == [".j.json", ".synced.bin"]
    assert (tmp_path / "j.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def _model_flags(trained_run) -> list[str]:
    return ["--model", str(trained_run.export_dir), *CPU]


def test_cleanup_leaves_look_alike_user_files_alone(runner, trained_run, tmp_path: Path) -> None:
    out = tmp_path / "g"
    (out / "sub").mkdir(parents=True)
    lookalikes = [out / "sub" / ".draft.tmp-99999-v2", out / ".thesis.tmp-vm-4242-final", out / ".notes.tmp-old",
                  out / f".000009.png.tmp-{dead_pid()}-abcd"]
    for path in lookalikes:
        path.write_text("keep me")
    assert_ok(runner.invoke(app, ["generate", "--count", "2", "--out", str(out), *_model_flags(trained_run)]))
    assert all(path.read_text() == "keep me" for path in lookalikes)


def test_cleanup_removes_dead_writers_temps_only_in_the_folders_a_job_writes(tmp_path: Path) -> None:
    from animevae.fileio import remove_stale_temps, temp_name

    dead = dead_pid()
    (tmp_path / "sub").mkdir()
    mine_dead = temp_name(tmp_path / "000001.png").name.replace(f"-{os.getpid()}-", f"-{dead}-")
    stale, deeper = tmp_path / mine_dead, tmp_path / "sub" / mine_dead
    live = temp_name(tmp_path / "000002.png")
    for path in (stale, deeper, live):
        path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 1
    assert not stale.exists() and deeper.exists() and live.exists()


def test_host_tags_of_long_host_names_do_not_collide() -> None:
    from animevae.fileio import host_tag

    assert host_tag("a" * 32 + "-pod-1") != host_tag("a" * 32 + "-pod-2")


def test_sets_and_checkpoints_follow_the_umask(image_dir: Path, tmp_path: Path, tiny_model_config,
                                               tiny_train_config) -> None:
    from animevae.prepared_set import prepare_images, save_prepared
    from animevae.training.train import train

    old = os.umask(0o022)
    try:
        save_prepared(prepare_images(image_dir, 16), tmp_path / "set.safetensors", image_dir)
        result = train(tmp_path / "set.safetensors", tiny_model_config, tiny_train_config, tmp_path / "runs",
                       device="cpu")
    finally:
        os.umask(old)
    for path in (tmp_path / "set.safetensors", tmp_path / "set.manifest.json", result.run_dir / "last.safetensors",
                 result.run_dir / "config.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path
