"""animevae.bulk (the skeleton of generate, denoise and augment) and progress.LineReporter (plain progress lines)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from animevae.augment import path_key
from animevae.bulk import BulkJob, JobSink, Pending, mirror_inputs, run_bulk, sibling_folder
from animevae.cli import app
from animevae.errors import OutputError
from animevae.fileio import save_png_atomic
from animevae.outputs import MANIFEST_NAME
from animevae.progress import LineReporter
from animevae.shard import Shard, path_hash
from helpers import CPU, assert_ok, snapshot, temp_leftovers, write_blobs


def _toy_job(out: Path, tasks: list[int], stop_on_failure: bool = False) -> BulkJob[int]:
    """Task t writes t_a.png and t_b.png."""
    return BulkJob("toy", out, {"task": "toy"}, tasks, lambda t: [out / f"{t}_a.png", out / f"{t}_b.png"],
                   old_outputs=lambda folder: folder.glob("*_?.png"), stop_on_failure=stop_on_failure)


def _grey(chunk: list[Pending[int]], sink: JobSink, calls: list[list[tuple[int, list[int]]]]) -> None:
    calls.append([(p.task, p.indices) for p in chunk])
    paths = [path for p in chunk for path in p.paths]
    sink.write(paths, [np.full((4, 4, 3), 10 * int(path.name[0]), np.uint8) for path in paths])


def test_run_bulk_resumes_only_the_missing_outputs_in_batches(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    save_png_atomic(out / "1_b.png", np.zeros((4, 4, 3), np.uint8))  # finished by an earlier run
    (out / MANIFEST_NAME).write_text(json.dumps({"task": "toy"}))
    calls: list[list[tuple[int, list[int]]]] = []
    result = run_bulk(_toy_job(out, [0, 1, 2]), lambda c, s: _grey(c, s, calls), "cpu", batch_size=2, workers=0)
    assert calls == [[(0, [0, 1]), (1, [0])], [(2, [0, 1])]]  # 1_b.png kept, batches of 2 tasks
    assert (result.written, result.existing, result.skipped) == (5, 1, [])
    assert sorted(p.name for p in out.glob("*.png")) == ["0_a.png", "0_b.png", "1_a.png", "1_b.png", "2_a.png", "2_b.png"]
    before = snapshot(out)
    again = run_bulk(_toy_job(out, [0, 1, 2]), lambda c, s: _grey(c, s, calls), "cpu", batch_size=2, workers=0)
    assert (again.written, again.existing, len(calls)) == (0, 6, 2) and snapshot(out) == before


def test_run_bulk_lists_failed_writes_or_stops(tmp_path: Path) -> None:
    def compute(chunk: list[Pending[int]], sink: JobSink) -> None:
        for pending in chunk:
            sink.write(pending.paths, [np.zeros((4, 4, 3), np.uint8)] * len(pending.paths))

    out = tmp_path / "listing"
    (out / "1_a.png").mkdir(parents=True)  # a folder where a file must go: that write fails
    (out / MANIFEST_NAME).write_text(json.dumps({"task": "toy"}))
    result = run_bulk(_toy_job(out, [0, 1]), compute, "cpu", batch_size=1, workers=0)
    assert result.written == 3 and [s.path for s in result.skipped] == ["1_a.png"]
    assert [e["path"] for e in json.loads((out / "skipped.json").read_text())] == ["1_a.png"]

    out = tmp_path / "stopping"
    (out / "0_b.png").mkdir(parents=True)
    (out / MANIFEST_NAME).write_text(json.dumps({"task": "toy"}))
    with pytest.raises(OutputError, match=r"stopped: .*0_b.png.*\(1 files not written\)"):
        run_bulk(_toy_job(out, [0, 1, 2], stop_on_failure=True), compute, "cpu", batch_size=1, workers=0)
    assert sorted(p.name for p in out.glob("*.png") if p.is_file()) == ["0_a.png"]  # stopped after the batch
    assert not (out / "skipped.json").exists()


def test_mirror_inputs_shards_and_clashes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_blobs(src / "cats", count=3)
    write_blobs(src / "dogs", count=3)
    (src / "dogs" / "face000.jpg").write_bytes((src / "dogs" / "face000.png").read_bytes())
    mirror = mirror_inputs(src, tmp_path / "out")
    whole, skipped = mirror.inputs, mirror.skipped
    assert mirror.listed == 7
    assert [i.relative for i in whole] == ["cats/face000.png", "cats/face001.png", "cats/face002.png",
                                           "dogs/face000.jpg", "dogs/face001.png", "dogs/face002.png"]
    assert [(s.path, s.reason) for s in skipped] == [("dogs/face000.png", "same output name as dogs/face000.jpg")]
    assert whole[0].output("_2") == tmp_path / "out" / "cats" / "face000_2.png"
    parts = [mirror_inputs(src, tmp_path / "out", Shard(i, 2)).inputs for i in range(2)]
    assert sorted(i.relative for part in parts for i in part) == sorted(i.relative for i in whole)
    assert all(path_hash(i.relative) % 2 == k for k, part in enumerate(parts) for i in part)
    assert sibling_folder(src, "denoised") == tmp_path.resolve() / "src-denoised"


def test_path_hash_is_the_first_8_bytes_of_sha256_of_the_slash_separated_path() -> None:
    assert path_hash("a/b.png") == int.from_bytes(hashlib.sha256(b"a/b.png").digest()[:8], "big")
    assert path_key("a/b.png") == path_hash("a/b.png") >> 1  # augment's draws stay those of earlier versions


@pytest.mark.slow
def test_augment_shards_together_write_one_runs_files(tmp_path: Path) -> None:
    runner = CliRunner()
    write_blobs(tmp_path / "faces" / "a", count=3, size=64)
    write_blobs(tmp_path / "faces" / "b", count=3, size=64, seed=1)
    (tmp_path / "faces" / "b" / "broken.png").write_bytes(b"not a picture")
    common = ["--per-image", "2", "--model", "builtin", *CPU]
    whole = runner.invoke(app, ["augment", str(tmp_path / "faces"), "--out", str(tmp_path / "whole"), *common])
    assert whole.exit_code == 1 and "1 files failed" in whole.output  # the broken file; the rest finished
    codes = [runner.invoke(app, ["augment", str(tmp_path / "faces"), "--out", str(tmp_path / "parts"),
                                 "--shard", f"{i}/2", *common]).exit_code for i in range(2)]
    files = {k: v[1] for k, v in snapshot(tmp_path / "whole").items() if k.endswith(".png")}
    assert len(files) == 12 and files == {k: v[1] for k, v in snapshot(tmp_path / "parts").items() if k.endswith(".png")}
    # Each shard lists its own failures: the one that owns the broken file, in its own file.
    owner = path_hash("b/broken.png") % 2
    assert codes == [1 if i == owner else 0 for i in range(2)]
    assert [p.name for p in (tmp_path / "parts").glob("skipped*.json")] == [f"skipped.shard-{owner}-of-2.json"]
    # A shard that owns none of the images has nothing to do: that is not an error in a job array.
    write_blobs(tmp_path / "one", count=1, size=64)
    idle_shard = 1 - path_hash("face000.png") % 2
    idle = runner.invoke(app, ["augment", str(tmp_path / "one"), "--out", str(tmp_path / "idle"),
                               "--shard", f"{idle_shard}/2", *common])
    assert idle.exit_code == 0 and "wrote 0 variations" in idle.output, idle.output


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_line_reporter_prints_per_epoch_every_interval_and_at_the_end() -> None:
    lines: list[str] = []
    clock = _Clock()
    reporter = LineReporter(lines.append, interval_s=30, clock=clock)
    reporter.start("training run", 100)
    clock.now += 10
    reporter.advance(10, epoch=1, loss=0.5)  # the rate counts from here: 20 steps in the next 25 s
    assert lines == []  # quiet between lines
    clock.now += 25
    reporter.advance(20, epoch=1, loss=0.25)  # 35 s since the start: a timed line
    clock.now += 5
    reporter.advance(10, epoch=2, loss=0.125)  # epoch 1 ended at 30 steps
    clock.now += 1
    reporter.advance(10, epoch=3, loss=0.1)  # epoch 2 ended 1 s after the last epoch line: no line
    reporter.advance(50, epoch=3, loss=0.0625)
    reporter.stop()
    assert lines == [
        "training run: 30/100  0:35 elapsed  ETA 1:27  epoch 1  loss 0.25",
        "training run: 30/100  epoch 1 done  0:40 elapsed  ETA 1:45  epoch 1  loss 0.25",
        "training run: 100/100  done  0:41 elapsed  epoch 3  loss 0.0625",
    ]


def test_line_reporter_eta_ignores_steps_a_resumed_run_reports_at_once() -> None:
    lines: list[str] = []
    clock = _Clock()
    reporter = LineReporter(lines.append, interval_s=30, clock=clock)
    reporter.start("training run", 10000)
    reporter.advance(9000)  # resumed at step 9000
    for _ in range(30):
        clock.now += 1
        reporter.advance(1)  # 1 step/s from here: 970 steps left
    assert lines == ["training run: 9030/10000  0:30 elapsed  ETA 16:10"]


def test_line_reporter_says_stopped_when_cut_short() -> None:
    lines: list[str] = []
    reporter = LineReporter(lines.append, clock=_Clock())
    reporter.start("denoising into out", 10)
    reporter.advance(4)
    reporter.stop()
    reporter.stop()  # a second stop (the finally of a job) prints nothing more
    assert lines == ["denoising into out: 4/10  stopped  0:00 elapsed"]


@pytest.mark.slow
def test_train_without_a_terminal_prints_a_line_per_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_blobs(tmp_path / "faces", count=40)
    result = CliRunner().invoke(app, ["train", "faces", "--image-size", "16", "--latent-dim", "8", "--epochs", "2",
                                      "--batch-size", "16", "--precision", "fp32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    epoch_lines = [line for line in result.output.splitlines() if line.startswith("training run: ")]
    assert [line.split("  ")[:2] for line in epoch_lines] == [["training run: 3/6", "epoch 1 done"],
                                                              ["training run: 6/6", "done"]]
    assert "ETA" in epoch_lines[0] and "loss" in epoch_lines[0]


def _model_flags(trained_run) -> list[str]:
    return ["--model", str(trained_run.export_dir), *CPU]


def _pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_names_differing_only_in_case_clash(onnx_models, tmp_path: Path) -> None:
    from animevae.denoise import denoise_folder
    from animevae.augment import augment_folder
    from animevae.model_files import ModelSet as LatentModels

    noisy = tmp_path / "noisy"
    write_blobs(noisy, count=1, prefix="A")
    write_blobs(noisy, count=1, seed=5, prefix="a")
    result = denoise_folder(onnx_models["denoiser"], noisy, tmp_path / "out", workers=0)
    assert result.written == 1 and [s.path for s in result.skipped] == ["a000.png"]
    models = LatentModels("test", onnx_models["decoder"], onnx_models["encoder"])
    augmented = augment_folder(models, noisy, tmp_path / "aug", per_image=1, strength=1.0, workers=0)
    assert augmented.written == 1 and [s.path for s in augmented.skipped] == ["a000.png"]


def test_a_truncated_png_is_redone_on_resume(runner, trained_run, tmp_path: Path) -> None:
    out, reference, noisy, den = tmp_path / "g", tmp_path / "reference", tmp_path / "noisy", tmp_path / "den"
    flags = _model_flags(trained_run)
    for folder in (out, reference):
        assert_ok(runner.invoke(app, ["generate", "--count", "3", "--out", str(folder), *flags]))
    cut = out / "000001.png"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # as after a power loss
    assert_ok(runner.invoke(app, ["generate", "--count", "3", "--out", str(out), *flags]))
    assert _pngs(out) == _pngs(reference)

    write_blobs(noisy, count=2)
    assert_ok(runner.invoke(app, ["denoise", str(noisy), "--out", str(den), *flags]))
    before = _pngs(den)
    (den / "face001.png").write_bytes(b"")
    assert_ok(runner.invoke(app, ["denoise", str(noisy), "--out", str(den), *flags]))
    assert _pngs(den) == before


class _CountingReporter:
    """A Reporter that remembers how far the bar went."""

    def __init__(self) -> None:
        self.advanced = 0

    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, steps: int = 1, **fields: object) -> None:
        self.advanced += steps

    def stop(self) -> None: ...


def test_write_tally_counts_only_written_files_and_lists_failures_by_relative_path(tmp_path: Path) -> None:
    from animevae.images import Skipped
    from animevae.bulk import WriteTally

    skipped: list[Skipped] = [Skipped("earlier.png", "unreadable")]
    reporter = _CountingReporter()
    tally = WriteTally(tmp_path, skipped, reporter)
    tally(4, [(tmp_path / "sub" / "a.png", "No space left on device")])
    tally(2, [])
    assert tally.written == 5  # 6 handled, 1 failed: the summary must not count a missing file as written
    assert skipped == [Skipped("earlier.png", "unreadable"), Skipped("sub/a.png", "No space left on device")]
    assert reporter.advanced == 6  # failed files still move the bar, or it never reaches the end


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
