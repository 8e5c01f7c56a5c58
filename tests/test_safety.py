"""Data safety (issue 13): no command destroys or mixes up a user's files; signals end runs cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animevae.cli import app
from helpers import (CPU, TINY_MODEL, assert_cli_error, assert_ok, ctrl_c_after_step, dead_pid, environ_without_debug,
                     read_rgb, write_blobs)


def _model_flags(trained_run) -> list[str]:
    return ["--model", str(trained_run.export_dir), *CPU]


def _pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


# --- 1. prepare never overwrites a file that is not its own ---------------------------------------


def test_prepare_refuses_to_overwrite_a_file_that_is_not_a_data_set(runner, image_dir: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert_cli_error(runner.invoke(app, ["prepare", str(image_dir), "--out", str(notes), "-q"]), "--overwrite")
    assert notes.read_text() == "my notes"
    assert_ok(runner.invoke(app, ["prepare", str(image_dir), "--out", str(notes), "-q", "--overwrite"]))
    from animevae.prepared_set import load_prepared

    assert len(load_prepared(notes)[0]) == 40


def test_prepare_refuses_an_out_inside_its_folder(runner, image_dir: Path) -> None:
    source = image_dir / "face000.png"
    before = source.read_bytes()
    for out in (source, image_dir / "sub" / "set.safetensors"):
        assert_cli_error(runner.invoke(app, ["prepare", str(image_dir), "--out", str(out), "-q", "--overwrite"]),
                         "inside")
    assert source.read_bytes() == before
    assert not (image_dir / "sub").exists()


def test_prepare_rewrites_its_own_data_set_but_not_a_foreign_manifest(runner, image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "faces.safetensors"
    assert_ok(runner.invoke(app, ["prepare", str(image_dir), "--out", str(out), "-q"]))
    assert_ok(runner.invoke(app, ["prepare", str(image_dir), "--out", str(out), "-q"]))  # its own set: a rerun
    other = tmp_path / "set.safetensors"
    (tmp_path / "set.manifest.json").write_text("the user's own file")
    assert_cli_error(runner.invoke(app, ["prepare", str(image_dir), "--out", str(other), "-q"]), "set.manifest.json")
    assert (tmp_path / "set.manifest.json").read_text() == "the user's own file" and not other.exists()


# --- 2. temp-file cleanup touches only its own temp names -----------------------------------------


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


def test_a_users_skipped_json_is_neither_removed_nor_replaced(runner, trained_run, tmp_path: Path) -> None:
    noisy, out = tmp_path / "noisy", tmp_path / "out"
    write_blobs(noisy, count=3)
    out.mkdir()
    (out / "skipped.json").write_text("my list of skipped meals")
    assert_cli_error(runner.invoke(app, ["denoise", str(noisy), "--out", str(out), *_model_flags(trained_run)]),
                     "skipped.json")
    assert (out / "skipped.json").read_text() == "my list of skipped meals"
    from animevae.outputs import write_skipped

    write_skipped(out, [])  # a clean run removes only a list of its own
    assert (out / "skipped.json").read_text() == "my list of skipped meals"


# --- 3. two train runs started together get two folders -------------------------------------------


def test_two_runs_started_together_get_their_own_folders(tiny_model_config, tiny_train_config, image_dir: Path,
                                                          tmp_path: Path, monkeypatch) -> None:
    import animevae.training.train as train_module

    runs = tmp_path / "runs"
    real_load, nested, started = train_module.load_training_images, [], []

    def load_and_start_another(*args, **kwargs):
        if not started:  # the second run starts while the first loads its data
            started.append(True)
            nested.append(train_module.train(image_dir, tiny_model_config, tiny_train_config, runs, device="cpu"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(train_module, "load_training_images", load_and_start_another)
    first = train_module.train(image_dir, tiny_model_config, tiny_train_config, runs, device="cpu")
    assert first.run_dir != nested[0].run_dir
    for result in (first, nested[0]):
        assert json.loads((result.run_dir / "config.json").read_text())["name"] == result.run_dir.name


def test_a_failed_start_leaves_no_run_folder(tiny_model_config, tiny_train_config, tmp_path: Path) -> None:
    from animevae.errors import DataError
    from animevae.training.train import train

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError):
        train(empty, tiny_model_config, tiny_train_config, tmp_path / "runs", device="cpu")
    runs = tmp_path / "runs"
    assert not runs.exists() or [p.name for p in runs.iterdir() if not p.name.startswith(".")] == []


# --- 4. manifests keep outputs of one job only -----------------------------------------------------


def test_overwrite_with_another_seed_leaves_no_stale_images(runner, trained_run, tmp_path: Path) -> None:
    out, reference = tmp_path / "g", tmp_path / "reference"
    flags = _model_flags(trained_run)
    assert_ok(runner.invoke(app, ["generate", "--count", "4", "--seed", "0", "--out", str(out), *flags]))
    assert_ok(runner.invoke(app, ["generate", "--count", "2", "--seed", "1", "--out", str(out), "--overwrite", *flags]))
    assert sorted(_pngs(out)) == ["000000.png", "000001.png"]
    assert_ok(runner.invoke(app, ["generate", "--count", "4", "--seed", "1", "--out", str(out), *flags]))
    assert_ok(runner.invoke(app, ["generate", "--count", "4", "--seed", "1", "--out", str(reference), *flags]))
    assert _pngs(out) == _pngs(reference)


def test_an_interrupted_overwrite_never_leaves_a_mix(generate_models, tmp_path: Path, monkeypatch) -> None:
    import animevae.writer as writer
    from animevae.generate import generate

    decoder, out, reference = generate_models, tmp_path / "g", tmp_path / "reference"
    generate(decoder, 6, out, seed=0, workers=0)
    real_save, calls = writer.save_png_atomic, []

    def save_then_interrupt(path: Path, pixels: np.ndarray) -> None:
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(path)
        real_save(path, pixels)

    monkeypatch.setattr(writer, "save_png_atomic", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        generate(decoder, 6, out, seed=1, overwrite=True, workers=0, batch_size=1)
    monkeypatch.setattr(writer, "save_png_atomic", real_save)
    generate(decoder, 6, out, seed=1, workers=0)  # a plain rerun finishes the interrupted job
    generate(decoder, 6, reference, seed=1, workers=0)
    assert _pngs(out) == _pngs(reference)


def test_denoise_refuses_another_input_and_overwrite_replaces_every_output(runner, trained_run, tmp_path: Path) -> None:
    a, b, out = tmp_path / "A", tmp_path / "B", tmp_path / "X"
    write_blobs(a, count=2, seed=1, prefix="000")
    write_blobs(b, count=1, seed=2, prefix="000")
    flags = _model_flags(trained_run)
    assert_ok(runner.invoke(app, ["denoise", str(a), "--out", str(out), *flags]))
    assert sorted(_pngs(out)) == ["000000.png", "000001.png"]
    assert_cli_error(runner.invoke(app, ["denoise", str(b), "--out", str(out), *flags]), "--overwrite")
    assert_ok(runner.invoke(app, ["denoise", str(b), "--out", str(out), "--overwrite", *flags]))
    reference = tmp_path / "reference"
    assert_ok(runner.invoke(app, ["denoise", str(b), "--out", str(reference), *flags]))
    assert _pngs(out) == _pngs(reference)  # A's 000001.png is gone, 000000.png is B's


def test_augment_refuses_another_input(runner, trained_run, tmp_path: Path) -> None:
    a, b, out = tmp_path / "A", tmp_path / "B", tmp_path / "X"
    write_blobs(a, count=1, seed=1)
    write_blobs(b, count=1, seed=2)
    base = ["--per-image", "1", "--out", str(out), *_model_flags(trained_run)]
    assert_ok(runner.invoke(app, ["augment", str(a), *base]))
    assert_cli_error(runner.invoke(app, ["augment", str(b), *base]), "--overwrite")


# --- 5. sharded denoise finds name clashes over the whole listing ---------------------------------


def test_shards_report_the_clashes_of_the_whole_listing(tmp_path: Path) -> None:
    from animevae.denoise import plan_outputs
    from animevae.shard import Shard

    noisy = tmp_path / "noisy"
    noisy.mkdir()
    rng = np.random.default_rng(0)
    for index in range(12):  # enough names that the clashing pair lands in different shards
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(noisy / f"g{index}.png")
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(noisy / f"g{index}.jpg")
    whole_pairs, whole_skipped = plan_outputs(noisy, tmp_path / "out")
    parts = [plan_outputs(noisy, tmp_path / "out", Shard(i, 2)) for i in range(2)]
    assert sorted(p for pairs, _ in parts for p in pairs) == sorted(whole_pairs)
    assert sorted(s.path for _, skipped in parts for s in skipped) == sorted(s.path for s in whole_skipped)
    assert len(whole_skipped) == 12


# --- 6 and 7. Ctrl-C and SIGTERM -------------------------------------------------------------------


def test_ctrl_c_during_train_saves_says_so_and_exits_130(runner, image_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from animevae.training.checkpoint import load_checkpoint

    ctrl_c_after_step(monkeypatch, 2)
    result = runner.invoke(app, ["train", str(image_dir), "--image-size", "16", "--latent-dim", "8", "--batch-size", "8",
                                 "--precision", "fp32", "--epochs", "50", "--runs-dir", str(tmp_path / "runs"), *CPU])
    assert result.exit_code == 130, result.output
    assert "interrupted; checkpoint saved" in result.output
    assert load_checkpoint(tmp_path / "runs" / "run" / "last.safetensors").progress.step == 2


def _train_command(faces: Path, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "animevae", "train", str(faces), "--image-size", "16", "--latent-dim", "8",
            "--batch-size", "8", "--precision", "fp32", "--device", "cpu", "--quiet", "--runs-dir", str(runs), *extra]


@pytest.mark.slow
def test_sigterm_to_train_saves_a_checkpoint_and_exits_130(tmp_path: Path) -> None:
    from animevae.training.checkpoint import load_checkpoint

    faces, runs = tmp_path / "faces", tmp_path / "runs"
    write_blobs(faces, count=40)
    metrics = runs / "t" / "metrics.jsonl"
    process = subprocess.Popen(_train_command(faces, runs, "--name", "t", "--epochs", "500"),
                               env=environ_without_debug(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not metrics.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "interrupted; checkpoint saved" in output
    # Saved at the stop, past the end of the first epoch (whose save came first): mid-epoch, or during a later
    # epoch's report.
    progress = load_checkpoint(runs / "t" / "last.safetensors").progress
    assert (progress.epoch, progress.batch) > (1, 0)


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


# --- 8. evaluate on small sets -------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 5, 19])
def test_evaluate_on_a_small_set_reports_what_it_can(runner, runs_copy: Path, tmp_path: Path, count: int) -> None:
    small = tmp_path / "small"
    write_blobs(small, count=count, seed=3)
    result = runner.invoke(app, ["evaluate", str(small), "--run", "run", "--samples", "10", "--classifier-images", "4",
                                 "--runs-dir", str(runs_copy)])
    assert_ok(result)
    assert "not measurable" in result.output
    report = json.loads((runs_copy / "run" / "evaluation.json").read_text())
    assert report["held_out"] == 1 and report["realism_samples_accuracy"] is None
    assert report["realism_recon_auc"] is None and report["sample_diversity"] is None
    assert {"realism_samples_accuracy", "realism_recon_accuracy", "sample_diversity"} <= set(report["not_measurable"])
    assert report["recon_psnr"] > 0


# --- 9. hostile --model files and odd numbers -------------------------------------------------------


def _edited_decoder(trained_run, tmp_path: Path, edit) -> Path:
    import onnx

    model = onnx.load(str(trained_run.export_dir / "decoder.onnx"))
    edit(model)
    folder = tmp_path / "hostile"
    folder.mkdir(exist_ok=True)
    path = folder / "decoder.onnx"
    onnx.save(model, str(path))
    return path


def test_a_model_with_external_data_is_refused_before_onnxruntime_opens_it(runner, trained_run, tmp_path: Path,
                                                                            monkeypatch) -> None:
    from onnx import TensorProto

    def point_outside(model) -> None:
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "16")):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value

    path = _edited_decoder(trained_run, tmp_path, point_outside)
    import animevae.runtime as runtime

    opened = []
    real_session = runtime.ort.InferenceSession
    monkeypatch.setattr(runtime.ort, "InferenceSession", lambda *a, **k: opened.append(a) or real_session(*a, **k))
    result = runner.invoke(app, ["generate", "--count", "1", "--out", str(tmp_path / "g"), "--model", str(path), *CPU])
    assert_cli_error(result, "external data")
    assert opened == []


def test_the_onnxruntime_floor_checks_external_data_paths() -> None:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"onnxruntime-gpu>=1.24' in text and '"onnxruntime>=1.24' in text


@pytest.mark.parametrize("key, value", [("animevae.prior_weights", "not base64 at all!"),
                                        ("animevae.prior_means", "AAAA"),
                                        ("animevae.latent_dim", "eight"),
                                        ("animevae.format_version", "\u00b2")])
def test_malformed_metadata_is_one_clear_error(runner, trained_run, tmp_path: Path, key: str, value: str) -> None:
    def corrupt(model) -> None:
        for entry in model.metadata_props:
            if entry.key == key:
                entry.value = value

    path = _edited_decoder(trained_run, tmp_path, corrupt)
    result = runner.invoke(app, ["generate", "--count", "2", "--out", str(tmp_path / "g"), "--model", str(path), *CPU])
    assert_cli_error(result, str(path))


@pytest.mark.parametrize("spec", ["\u00b2/3", "0/\u00b3", "\u0661/3"])
def test_a_shard_of_non_ascii_digits_is_one_clear_error(runner, trained_run, tmp_path: Path, spec: str) -> None:
    result = runner.invoke(app, ["generate", "--count", "2", "--out", str(tmp_path / "g"), "--shard", spec,
                                 *_model_flags(trained_run)])
    assert_cli_error(result, "--shard")


# --- 10. distributed runs end in order ------------------------------------------------------------


@pytest.mark.slow
def test_two_process_runs_under_load_always_exit_0(tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    write_blobs(faces, count=24)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for attempt in range(3):
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                       "-m", "animevae", "train", str(faces), "--image-size", "16", "--latent-dim", "8",
                       "--batch-size", "8", "--precision", "fp32", "--device", "cpu", "--quiet", "--epochs", "1",
                       "--runs-dir", str(tmp_path / "runs"), "--name", f"load-{attempt}"]
            env = {**environ_without_debug(), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
            assert done.returncode == 0, f"attempt {attempt}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    finally:
        hog.kill()
        hog.wait()


# --- 11. smaller ones -----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_not_an_input(onnx_models, tmp_path: Path) -> None:
    from animevae.images import find_images
    from animevae.denoise import denoise_folder

    noisy = tmp_path / "noisy"
    write_blobs(noisy, count=2)
    fifo = noisy / "x.png"
    os.mkfifo(fifo)
    # Old code blocks reading the FIFO; a writer that never arrives would hang the test, so one feeds it once.
    def feed() -> None:
        with contextlib.suppress(BrokenPipeError):  # the release below opens and closes before it writes
            fifo.write_bytes(b"not a picture")

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        listing = find_images(noisy)
        assert fifo not in listing.files and [s.path for s in listing.skipped] == ["x.png"]
        assert "not a regular file" in listing.skipped[0].reason
        result = denoise_folder(onnx_models["denoiser"], noisy, tmp_path / "out", workers=0)
        assert result.written == 2 and [s.path for s in result.skipped] == ["x.png"]
    finally:
        with open(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), "rb"):  # release a still-waiting feeder
            pass
        feeder.join(timeout=5)


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


def test_image_names_do_not_depend_on_the_count() -> None:
    from animevae.generate import image_name

    assert image_name(5, 10) == image_name(5, 10_000_001) == "000005.png"
    assert image_name(1_234_567, 2_000_000) == "1234567.png"


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


# --- relatives ------------------------------------------------------------------------------------


def test_interpolate_overwrite_with_fewer_steps_removes_the_extra_frames(runner, trained_run, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    base = ["interpolate", "--seed-a", "1", "--seed-b", "2", "--out", str(tmp_path / "s.png"), "--frames", str(frames),
            "--model", str(trained_run.export_dir), "--device", "cpu"]
    assert_ok(runner.invoke(app, [*base, "--steps", "5"]))
    assert_ok(runner.invoke(app, [*base, "--steps", "3", "--overwrite"]))
    assert sorted(p.name for p in frames.iterdir()) == ["frame_000.png", "frame_001.png", "frame_002.png"]


def test_a_data_set_with_a_malformed_version_is_one_clear_error(image_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from animevae.prepared_set import load_prepared
    from animevae.errors import DataError

    path = tmp_path / "odd.safetensors"
    save_file({"images": np.zeros((2, 8, 8, 3), np.uint8)}, str(path),
              metadata={"kind": "animevae-dataset", "format_version": "two"})
    with pytest.raises(DataError, match="format"):
        load_prepared(path)


def test_train_refuses_a_runs_dir_inside_its_data_folder(runner, image_dir: Path) -> None:
    result = runner.invoke(app, ["train", str(image_dir), "--runs-dir", str(image_dir / "runs"), *CPU])
    assert_cli_error(result, "inside")
    assert not (image_dir / "runs").exists()


def test_odd_thread_counts_fall_back_to_the_cores(monkeypatch) -> None:
    from animevae.runtime import default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "\u00b2")
    assert default_threads() >= 1


# --- outputs.py: failure lists, single files and the folder guard, at the API -----------------------


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


def test_write_output_file_creates_missing_folders_and_turns_os_errors_into_output_errors(tmp_path: Path) -> None:
    from animevae.errors import OutputError
    from animevae.outputs import write_output_file

    deep = tmp_path / "a" / "b" / "grid.png"
    write_output_file(deep, b"png", overwrite=False)
    assert deep.read_bytes() == b"png"
    (tmp_path / "plain").write_bytes(b"a file, not a folder")
    with pytest.raises(OutputError, match="cannot write") as caught:
        write_output_file(tmp_path / "plain" / "grid.png", b"png", overwrite=False)
    assert str(tmp_path / "plain" / "grid.png") in str(caught.value) and caught.value.hint


def test_skipped_list_names_of_shards() -> None:
    from animevae.outputs import SKIPPED_NAME, skipped_name

    assert skipped_name() == skipped_name(0, 1) == SKIPPED_NAME
    assert skipped_name(1, 3) == "skipped.shard-1-of-3.json"


@pytest.mark.parametrize("content", ["[1, 2]", "{}", '[{"name": "mine"}]', "a folder"])
def test_a_skipped_json_of_another_shape_is_refused_and_kept(tmp_path: Path, content: str) -> None:
    """Only a list of {path, reason} objects is ours: anything else of that name belongs to the user."""
    from animevae.errors import OutputError
    from animevae.outputs import prepare_output, write_skipped

    out = tmp_path / "out"
    out.mkdir()
    users = out / "skipped.json"
    if content == "a folder":
        users.mkdir()
    else:
        users.write_text(content)
    with pytest.raises(OutputError, match="skipped.json"):
        prepare_output(out, {"task": "denoise"}, overwrite=False)
    write_skipped(out, [])
    assert users.is_dir() if content == "a folder" else users.read_text() == content


def test_file_digest_is_the_sha256_of_the_whole_file(tmp_path: Path) -> None:
    """The digest is what tells one model's output folder from another's: it must cover every byte."""
    import hashlib

    from animevae.outputs import file_digest

    data = bytes(range(256)) * 6144  # 1.5 MiB: more than one read block
    (tmp_path / "model.onnx").write_bytes(data)
    (tmp_path / "other.onnx").write_bytes(data[:-1] + b"x")
    assert file_digest(tmp_path / "model.onnx") == hashlib.sha256(data).hexdigest()
    assert file_digest(tmp_path / "other.onnx") != file_digest(tmp_path / "model.onnx")


def test_prepare_output_creates_a_nested_out_and_refuses_one_it_cannot_write(tmp_path: Path, monkeypatch) -> None:
    from animevae.errors import OutputError
    from animevae.outputs import MANIFEST_NAME, prepare_output

    nested = tmp_path / "new" / "deeper" / "out"
    prepare_output(nested, {"seed": 1}, overwrite=False)
    assert json.loads((nested / MANIFEST_NAME).read_text()) == {"seed": 1}
    # Root passes every permission check, so the folder's permissions are simulated: no write, or no entry.
    for missing in (os.W_OK, os.X_OK):
        monkeypatch.setattr(os, "access", lambda path, mode, missing=missing: not mode & missing)
        with pytest.raises(OutputError, match="not writable") as caught:
            prepare_output(tmp_path / f"locked{missing}", {"seed": 1}, overwrite=False)
        assert caught.value.hint


def test_a_damaged_manifest_is_not_taken_for_a_fresh_folder(tmp_path: Path) -> None:
    """A manifest that cannot be read still says animevae wrote here: refused, and --overwrite clears the old
    outputs, so they are never mixed with the new job's."""
    from animevae.errors import OutputError
    from animevae.outputs import MANIFEST_NAME, prepare_output

    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text('{"seed": 1, "mod')  # cut short
    (out / "000000.png").write_bytes(b"an old job's image")
    with pytest.raises(OutputError, match="another model or settings"):
        prepare_output(out, {"seed": 2}, overwrite=False)
    prepare_output(out, {"seed": 2}, overwrite=True, old_outputs=lambda folder: folder.glob("*.png"))
    assert not (out / "000000.png").exists()
    assert json.loads((out / MANIFEST_NAME).read_text()) == {"seed": 2}


def test_overwrite_for_another_job_removes_its_failure_lists_but_not_the_users(tmp_path: Path) -> None:
    """An old job's skipped.json would list failures the new job never had."""
    from animevae.outputs import MANIFEST_NAME, prepare_output, write_skipped
    from animevae.images import Skipped

    out = tmp_path / "out"
    prepare_output(out, {"seed": 1}, overwrite=False)
    write_skipped(out, [Skipped("a.png", "truncated")])
    write_skipped(out, [Skipped("b.png", "truncated")], "skipped.shard-1-of-2.json")
    (out / "skipped-notes.json").write_text('{"mine": true}')
    prepare_output(out, {"seed": 2}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "skipped-notes.json"]
