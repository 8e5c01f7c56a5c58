"""Messy folders, killed runs and full disks: every command keeps going, says what went wrong, loses nothing."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animevae.cli import app
from helpers import CPU, assert_ok, environ_without_debug, snapshot, temp_leftovers, write_blobs

GOOD = 30


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 30000 x 30000 RGB pixels."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def build_corpus(folder: Path) -> tuple[set[str], set[str]]:
    """Write the bad and odd files of the robustness issue into `folder`; return (odd-but-valid, broken) names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    png, jpeg = _encoded(picture, "PNG"), _encoded(picture, "JPEG")
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
    (folder / "cmyk.jpg").write_bytes(_encoded(picture.convert("CMYK"), "JPEG"))
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with open(os.path.join(os.fsencode(folder), b"latin-\xe9t\xe9.png"), "wb") as handle:
        handle.write(_encoded(Image.new("RGB", (16, 16), (1, 2, 3)), "PNG"))
    locked = folder / "locked.png"
    locked.write_bytes(_encoded(Image.new("RGB", (16, 16), (90, 9, 9)), "PNG"))
    locked.chmod(0)
    os.symlink(folder, folder / "nested" / "loop")  # a directory link back to the top: a loop if followed
    odd_names = set(odd) | {"cmyk.jpg", "animated.gif", "latin-\\xe9t\\xe9.png"}
    return odd_names, set(broken)


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, set[str], set[str]]:
    """tmp_path/messy: 30 good 16x16 faces plus the corpus of bad and odd files."""
    folder = tmp_path / "messy"
    write_blobs(folder, count=GOOD)
    odd, broken = build_corpus(folder)
    yield folder, odd, broken
    (folder / "locked.png").chmod(0o644)


def _locked_is_readable(folder: Path) -> bool:
    return os.access(folder / "locked.png", os.R_OK)  # root reads anything


def test_prepare_skips_and_reports_every_bad_file(messy, runner, tmp_path) -> None:
    folder, odd, broken = messy
    out = tmp_path / "set.safetensors"
    result = runner.invoke(app, ["prepare", str(folder), "--out", str(out), "--image-size", "16", "-q"])
    assert_ok(result)
    assert "Traceback" not in result.output
    manifest = json.loads(out.with_name("set.manifest.json").read_text())
    skipped = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(skipped) >= broken, skipped
    assert "decompression bomb" in skipped["bomb.png"] or "claims 30000x30000" in skipped["bomb.png"]
    kept = {entry["path"] for entry in manifest["kept"]}
    assert {name for name in odd} <= kept, odd - kept
    expected = GOOD + len(odd) + (1 if _locked_is_readable(folder) else 0)
    assert len(kept) == expected
    if not _locked_is_readable(folder):
        assert skipped["locked.png"] == "no read permission"
    for name in broken:
        assert name in result.output  # the summary table names every skipped file


def test_train_on_a_messy_folder(messy, runner, tmp_path, monkeypatch) -> None:
    folder, _, _ = messy
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", str(folder), "--epochs", "1", "--image-size", "16", "--latent-dim", "8",
                                 "--batch-size", "16", "--precision", "fp32", *CPU])
    assert_ok(result)
    assert "skipped empty.png:" in result.output and "manifest.json" in result.output
    assert (tmp_path / "runs" / "run" / "last.safetensors").is_file()


def test_denoise_finishes_the_good_files_and_exits_1(messy, runner, trained_run, tmp_path) -> None:
    folder, odd, broken = messy
    out = tmp_path / "clean"
    result = runner.invoke(app, ["denoise", str(folder), "--out", str(out), "--model",
                                 str(trained_run.export_dir), *CPU])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    written = {str(p.relative_to(out)) for p in out.rglob("*.png")}
    assert len(written) == GOOD + len(odd) + (1 if _locked_is_readable(folder) else 0)
    assert "nested/a/b/inner.png" in written
    with Image.open(out / "wide.png") as image:
        assert image.size == (2000, 20)
    report = {entry["path"] for entry in json.loads((out / "skipped.json").read_text())}
    assert report >= broken


def _generate_command(model: Path, out: Path, count: int) -> list[str]:
    return [sys.executable, "-m", "animevae", "generate", "--count", str(count), "--out", str(out),
            "--model", str(model), "--seed", "11", "--batch-size", "64", "--device", "cpu", "--quiet"]


@pytest.mark.slow
def test_generate_killed_then_rerun_gives_the_bytes_of_an_unbroken_run(trained_run, tmp_path) -> None:
    model, count = trained_run.export_dir / "decoder.onnx", 4000
    reference, broken = tmp_path / "reference", tmp_path / "broken"
    subprocess.run(_generate_command(model, reference, count), check=True, env=environ_without_debug())
    process = subprocess.Popen(_generate_command(model, broken, count), env=environ_without_debug(),
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list(broken.glob("*.png"))) < 200 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the workers too, mid-write
    process.wait()
    assert len(list(broken.glob("*.png"))) < count, "the run finished before it could be killed"
    subprocess.run(_generate_command(model, broken, count), check=True, env=environ_without_debug())
    assert temp_leftovers(broken) == []
    assert {k: v[1] for k, v in snapshot(broken).items()} == {k: v[1] for k, v in snapshot(reference).items()}


def test_two_generate_processes_into_one_folder(trained_run, tmp_path) -> None:
    model, out, reference = trained_run.export_dir / "decoder.onnx", tmp_path / "shared", tmp_path / "reference"
    processes = [subprocess.Popen(_generate_command(model, out, 600), env=environ_without_debug()) for _ in range(2)]
    assert [p.wait() for p in processes] == [0, 0]
    subprocess.run(_generate_command(model, reference, 600), check=True, env=environ_without_debug())
    assert {k: v[1] for k, v in snapshot(out).items()} == {k: v[1] for k, v in snapshot(reference).items()}


def test_full_disk_stops_cleanly_and_a_rerun_completes(trained_run, runner, tmp_path, monkeypatch) -> None:
    import animevae.writer as writer

    out, reference = tmp_path / "out", tmp_path / "reference"
    real_save, calls = writer.save_png_atomic, {"n": 0}

    def save_until_full(path: Path, pixels: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] > 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_save(path, pixels)

    args = ["generate", "--count", "50", "--seed", "3", "--batch-size", "64", "--model",
            str(trained_run.export_dir), *CPU]
    monkeypatch.setattr(writer, "save_png_atomic", save_until_full)
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 1
    assert "No space left" in result.output and "hint:" in result.output and "Traceback" not in result.output
    assert len(list(out.glob("*.png"))) == 20
    assert temp_leftovers(out) == []
    monkeypatch.setattr(writer, "save_png_atomic", real_save)
    assert_ok(runner.invoke(app, [*args, "--out", str(out)]))
    assert_ok(runner.invoke(app, [*args, "--out", str(reference)]))
    assert {k: v[1] for k, v in snapshot(out).items()} == {k: v[1] for k, v in snapshot(reference).items()}


@pytest.mark.slow
def test_train_killed_then_resumed(tmp_path) -> None:
    faces = tmp_path / "faces"
    write_blobs(faces, count=40)
    command = [sys.executable, "-m", "animevae", "train", str(faces), "--image-size", "16", "--latent-dim", "8",
               "--batch-size", "8", "--precision", "fp32", "--device", "cpu", "--quiet", "--runs-dir",
               str(tmp_path / "runs"), "--name", "killed"]
    checkpoint = tmp_path / "runs" / "killed" / "last.safetensors"
    first_epoch = tmp_path / "runs" / "killed" / "metrics.jsonl"  # its checkpoint is saved right after
    process = subprocess.Popen([*command, "--epochs", "500"], env=environ_without_debug())
    deadline = time.monotonic() + 120
    while not first_epoch.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    from animevae.training.checkpoint import load_checkpoint

    saved = load_checkpoint(checkpoint).progress
    assert saved.step > 0
    subprocess.run([*command, "--resume", "--epochs", str(saved.epoch + 1)], check=True, env=environ_without_debug())
    resumed = load_checkpoint(checkpoint).progress
    assert resumed.epoch == saved.epoch + 1 and resumed.step > saved.step


@pytest.mark.slow
def test_a_run_killed_before_its_first_epoch_ends_can_be_resumed(tmp_path) -> None:
    from animevae.training.checkpoint import load_checkpoint

    faces = tmp_path / "faces"
    write_blobs(faces, count=40)
    command = [sys.executable, "-m", "animevae", "train", str(faces), "--image-size", "16", "--latent-dim", "8",
               "--batch-size", "8", "--precision", "fp32", "--device", "cpu", "--quiet", "--runs-dir",
               str(tmp_path / "runs"), "--name", "early"]
    checkpoint = tmp_path / "runs" / "early" / "last.safetensors"
    process = subprocess.Popen([*command, "--epochs", "500"], env=environ_without_debug())
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:  # written before the first step
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "runs" / "early" / "metrics.jsonl").exists(), "killed too late to test this"
    subprocess.run([*command, "--resume", "--epochs", "1"], check=True, env=environ_without_debug())
    assert load_checkpoint(checkpoint).progress.epoch == 1


_PREPARE_AS_NOBODY = """
import json, os, sys
from pathlib import Path

from PIL import Image

from animevae.prepared_set import prepare_images

Image.init()  # load Pillow's plugins before giving up root's rights to read them
if os.geteuid() == 0:  # root reads anything: drop to an ordinary user for the check
    os.setgid(65534)
    os.setuid(65534)
prepared = prepare_images(Path(sys.argv[1]), 16)
print(json.dumps({"sources": prepared.sources, "skipped": [[s.path, s.reason] for s in prepared.skipped]}))
"""


def test_an_unreadable_file_is_skipped_as_no_read_permission_even_for_root_ci() -> None:
    """Protects the skip reason for a file the user cannot read. As root (as CI runs) a child process drops
    to user nobody first, so the case is checked there too instead of being skipped."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="animevae-perm-"))  # not under pytest's private (0700) tmp
    try:
        folder.chmod(0o755)
        write_blobs(folder, count=2)
        locked = folder / "locked.png"
        locked.write_bytes(_encoded(Image.new("RGB", (16, 16), (90, 9, 9)), "PNG"))
        locked.chmod(0)
        done = subprocess.run([sys.executable, "-c", _PREPARE_AS_NOBODY, str(folder)], capture_output=True,
                              text=True, timeout=120, env=environ_without_debug())
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout) == {"sources": ["face000.png", "face001.png"],
                                           "skipped": [["locked.png", "no read permission"]]}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
