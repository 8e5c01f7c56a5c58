"""animevae.training.train (runs, metrics, samples, cache, resume), animevae.runs and animevae.training.devices."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from animevae.cli import app
from animevae.config import ModelConfig, TrainConfig
from animevae.prepared_set import prepare_images, save_prepared
from animevae.training.data import split_holdout
from animevae.training.data import TrainingData, load_training_images, split_holdout
from animevae.prepared_set import prepare_images, save_prepared
from animevae.errors import DataError, DeviceError, ModelError
from animevae.progress import SilentReporter
from animevae.runs import check_name, list_runs, next_free_name, resolve_run
from animevae.training.data import TrainingData, load_training_images
from animevae.training.prior_phase import prior_schedule_fraction
from animevae.training.train import train
from helpers import read_jsonl, read_rgb, temp_leftovers
from animevae.training.checkpoint import PRIOR_TRAINED, load_checkpoint
from animevae.training.export import load_run_models
from animevae.training.model import add_noise
from animevae.training.prior_phase import prior_schedule_fraction
from animevae.training.train import train
from helpers import (CPU, assert_cli_error, assert_ok, ctrl_c_after_step, environ_without_debug, read_jsonl, read_rgb,
                     temp_leftovers, write_blobs)

METRIC_FIELDS = {"loss", "mse", "kl", "den_mse", "val_psnr", "denoise_psnr_25", "noisy_psnr_25", "denoise_psnr_50",
                 "noisy_psnr_50", "denoise_knee"}


class RecordingReporter:
    """A Reporter that keeps the log lines and counts training steps; optionally acts on step N."""

    def __init__(self, on_step: int | None = None, action: Any = None) -> None:
        self.logs: list[str] = []
        self.steps = 0
        self.on_step, self.action = on_step, action

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, steps: int = 1, **fields: Any) -> None:
        if "epoch" in fields:  # a training step (not the initial catch-up advance)
            self.steps += steps
            if self.steps == self.on_step:
                self.action()

    def stop(self) -> None:
        pass

    def log(self, message: str) -> None:
        self.logs.append(message)


# --- a finished run's files (the session run, read only) ---------------------------------------


def test_run_folder_holds_config_checkpoint_metrics_and_samples(trained_run) -> None:
    run = trained_run.run_dir
    assert run.name == "run"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "export", "last.safetensors", "metrics.jsonl", "samples"]
    assert temp_leftovers(run) == []

    config = json.loads((run / "config.json").read_text())
    assert config["name"] == "run"
    assert config["model"] == {"image_size": 16, "latent_dim": 8, "channels": [8, 16], "denoiser_width": 8,
                               "denoiser_blocks": 1, "prior_components": 700, "prior_covariance": "diagonal",
                               "prior": "diffusion", "prior_width": 16, "prior_blocks": 1,
                               "prior_sampling_steps": 10, "disc_channels": 4,
                               "classes": [], "class_counts": []}  # a flat folder: no classes
    assert config["train"]["epochs"] == 1 and config["train"]["batch_size"] == 16
    assert config["train"]["precision"] == "fp32"
    assert config["train"]["data_source"] == str(trained_run.data_dir)
    assert config["format_version"] == 1 and config["version"] and config["created"] > 0


def test_metrics_jsonl_has_one_record_per_epoch_with_all_fields(trained_run) -> None:
    records = read_jsonl(trained_run.run_dir / "metrics.jsonl")
    assert len(records) == 1
    record = records[0]
    assert METRIC_FIELDS <= record.keys()
    assert record["epoch"] == 1 and record["step"] == trained_run.steps and record["partial"] is False
    assert all(math.isfinite(record[key]) for key in METRIC_FIELDS)
    # The final report scores samples by sliced Wasserstein distance (one pyramid level for 16x16 images), and
    # the line says how much of the run went on anything but training steps.
    assert record["swd_16"] > 0 and 0 < record["overhead_s"] <= record["elapsed_s"]
    # sigma 25 noise on [0, 1] images is about 20 dB, sigma 50 about 14 dB (a bit more: clipping removes some).
    assert 19.0 < record["noisy_psnr_25"] < 23.0
    assert 13.0 < record["noisy_psnr_50"] < record["noisy_psnr_25"]
    # The same numbers from the saved weights on the held-out images, by a separate computation.
    config, vae, denoiser = load_run_models(trained_run.run_dir)
    loaded = load_training_images(trained_run.data_dir, 16, trained_run.runs_dir / ".cache", SilentReporter())
    images, hashes = loaded.images, loaded.hashes
    clean = torch.from_numpy(images[split_holdout(hashes, len(images), config.train.val_size)[1]])
    clean = clean.permute(0, 3, 1, 2).double() / 255.0  # (4, 3, 16, 16)
    noise = torch.Generator().manual_seed(1234)  # the fixed evaluation noise: sigma 25, then sigma 50
    noisy = {sigma: add_noise(clean.float(), float(sigma), noise).double() for sigma in (25, 50)}

    def mean_psnr(images: torch.Tensor) -> float:
        return (10 * torch.log10(1 / (images.double() - clean).pow(2).flatten(1).mean(1))).mean().item()

    with torch.no_grad():
        assert record["val_psnr"] == pytest.approx(mean_psnr(vae.decoder(vae.encode(clean.float()).mode())), abs=2e-3)
        for sigma in (25, 50):
            assert record[f"noisy_psnr_{sigma}"] == pytest.approx(mean_psnr(noisy[sigma]), abs=2e-3)
            # What `animevae denoise` would save: the output gated by alpha = min(1, (rms / knee)^2) per image
            # (rms: the change's root-mean-square, 0-255 scale), in 8 bits.
            assert record["denoise_knee"] == float(denoiser.knee)
            change = denoiser(noisy[sigma].float()).double() - noisy[sigma]
            rms = change.flatten(1).pow(2).mean(1).sqrt() * 255
            alpha = (rms / float(denoiser.knee)).pow(2).clamp(max=1.0).view(-1, 1, 1, 1)
            saved = torch.round((noisy[sigma] + alpha * change).clamp(0, 1) * 255) / 255
            assert record[f"denoise_psnr_{sigma}"] == pytest.approx(mean_psnr(saved), abs=2e-3)


def test_sample_sheet_shows_validation_reconstructions_and_samples(trained_run) -> None:
    sheet = read_rgb(trained_run.run_dir / "samples" / "epoch_0001.png")
    # 40 images -> 4 held out: 4 originals + 4 reconstructions + 16 samples = 24 tiles, 8 per row, 16 px + 2 px pad.
    assert sheet.shape == (3 * 18 + 2, 8 * 18 + 2, 3)
    assert (sheet[0] == 255).all()  # white padding


def test_steps_per_epoch(trained_run) -> None:
    # 40 images, 4 held out, batches of 16: 16 + 16 + 4.
    assert trained_run.steps == 3


# --- new runs: naming, cache, determinism ------------------------------------------------------


@pytest.mark.slow
def test_runs_are_named_run_then_run_2_and_the_folder_is_prepared_once(
        image_dir: Path, tmp_path: Path, tiny_model_config: ModelConfig, tiny_train_config: TrainConfig) -> None:
    runs = tmp_path / "runs"
    first_reporter, second_reporter = RecordingReporter(), RecordingReporter()
    first = train(image_dir, tiny_model_config, tiny_train_config, runs, device="cpu", reporter=first_reporter)
    second = train(image_dir, tiny_model_config, tiny_train_config, runs, device="cpu", reporter=second_reporter)
    assert (first.run_dir.name, second.run_dir.name) == ("run", "run-2")
    assert [p.name for p in list_runs(runs)] == ["run", "run-2"]
    assert resolve_run(runs, None).name == "run-2"

    cached = sorted((runs / ".cache").glob("*.safetensors"))
    assert len(cached) == 1 and cached[0].name.startswith("faces-")
    assert any("prepared 40 images" in line for line in first_reporter.logs)
    assert any("using the prepared copy" in line for line in second_reporter.logs)
    assert not any("using the prepared copy" in line for line in first_reporter.logs)

    # Same data, config and seed: the same weights and metrics.
    a = load_checkpoint(first.run_dir / "last.safetensors").tensors
    b = load_checkpoint(second.run_dir / "last.safetensors").tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first.metrics == second.metrics

    # A changed folder is prepared again, under a new key.
    (image_dir / "face000.png").unlink()
    third_reporter = RecordingReporter()
    train(image_dir, tiny_model_config, tiny_train_config, runs, name="third", device="cpu", reporter=third_reporter)
    assert len(list((runs / ".cache").glob("*.safetensors"))) == 2
    assert any("prepared 39 images" in line for line in third_reporter.logs)


def test_existing_name_without_resume_is_refused(tmp_path: Path, image_dir: Path, tiny_model_config: ModelConfig,
                                                 tiny_train_config: TrainConfig) -> None:
    runs = tmp_path / "runs"
    (runs / "mine").mkdir(parents=True)
    (runs / "mine" / "config.json").write_text('{"created": 1}')
    with pytest.raises(ModelError, match="already exists") as caught:
        train(image_dir, tiny_model_config, tiny_train_config, runs, name="mine", device="cpu")
    assert "--resume --name mine" in caught.value.hint
    assert (runs / "mine" / "config.json").read_text() == '{"created": 1}'


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x" * 65, "sp ace"])
def test_unsafe_run_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="invalid run name"):
        check_name(name)


def test_run_name_helpers(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert check_name("my-run_1.0") == "my-run_1.0"
    assert next_free_name(runs) == "run"
    (runs / "run").mkdir(parents=True)
    assert next_free_name(runs) == "run-2"
    (runs / "run-2").mkdir()
    (runs / "run-4").mkdir()
    assert next_free_name(runs) == "run-3"
    with pytest.raises(ModelError, match="no runs in") as caught:
        resolve_run(runs, None)  # folders without config.json are not runs
    assert "animevae train" in caught.value.hint
    (runs / "run" / "config.json").write_text(json.dumps({"created": 5.0}))
    (runs / "run-2" / "config.json").write_text(json.dumps({"created": 3.0}))
    assert [p.name for p in list_runs(runs)] == ["run-2", "run"]
    assert resolve_run(runs, None).name == "run"
    with pytest.raises(ModelError, match="no run named 'nope'") as caught:
        resolve_run(runs, "nope")
    assert "run-2, run" in caught.value.hint


# --- data sources ------------------------------------------------------------------------------


def test_train_from_a_prepared_set_and_size_mismatch(image_dir: Path, tmp_path: Path, tiny_model_config: ModelConfig,
                                                     tiny_train_config: TrainConfig) -> None:
    packed = tmp_path / "faces.safetensors"
    save_prepared(prepare_images(image_dir, 16), packed, image_dir)
    result = train(packed, tiny_model_config, tiny_train_config, tmp_path / "runs", device="cpu")
    assert json.loads((result.run_dir / "config.json").read_text())["train"]["data_source"] == str(packed)
    assert not (tmp_path / "runs" / ".cache").exists()  # a prepared set is used as is

    small = tmp_path / "small.safetensors"
    save_prepared(prepare_images(image_dir, 8), small, image_dir)
    with pytest.raises(DataError, match="holds 8x8 images, not 16x16") as caught:
        train(small, tiny_model_config, tiny_train_config, tmp_path / "runs", device="cpu")
    assert "--image-size 8" in caught.value.hint


def test_a_folder_without_usable_images_is_refused(tmp_path: Path, tiny_model_config: ModelConfig,
                                                   tiny_train_config: TrainConfig) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="no usable images"):
        train(empty, tiny_model_config, tiny_train_config, tmp_path / "runs", device="cpu")


def test_failed_train_leaves_no_run_folder(tmp_path: Path, tiny_model_config: ModelConfig,
                                           tiny_train_config: TrainConfig) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a data set")
    runs = tmp_path / "runs"
    with pytest.raises(DataError):
        train(bad, tiny_model_config, tiny_train_config, runs, device="cpu")
    assert next_free_name(runs) == "run"


def test_a_final_batch_of_one_image_joins_the_one_before(image_dir: Path, tmp_path: Path) -> None:
    # 40 images -> 36 for training; batches of 35 would leave one image (BatchNorm needs two) for a last batch.
    config = ModelConfig(image_size=16, latent_dim=8, channels=(8, 8, 8), denoiser_width=8, denoiser_blocks=1,
                         prior_width=16, prior_blocks=1, disc_channels=4)
    assert config.base_size == 2
    result = train(image_dir, config, TrainConfig(epochs=1, batch_size=35, precision="fp32"), tmp_path / "runs",
                   device="cpu")
    assert result.progress.step == 1


def test_a_one_pixel_base_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="base grid"):
        ModelConfig(image_size=16, latent_dim=8, channels=(8, 8, 8, 8)).check()


# --- resume ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint(trained_run, runs_copy: Path, tiny_model_config: ModelConfig) -> None:
    run_dir = runs_copy / "run"
    created = json.loads((run_dir / "config.json").read_text())["created"]
    before = load_checkpoint(run_dir / "last.safetensors")
    reporter = RecordingReporter()
    # The model config passed in is ignored on resume: the stored one wins.
    other_model = replace(tiny_model_config, latent_dim=99)
    result = train(trained_run.data_dir, other_model, TrainConfig(epochs=2, precision="fp32"), runs_copy,
                   name="run", device="cpu", resume=True, reporter=reporter)
    assert any("resuming run at epoch 2, step 3" in line for line in reporter.logs)
    assert result.run_dir == run_dir
    assert result.progress.epoch == 2 and result.progress.step == 2 * trained_run.steps
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0] == read_jsonl(trained_run.run_dir / "metrics.jsonl")[0]
    assert (run_dir / "samples" / "epoch_0002.png").is_file()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["created"] == created and config["model"]["latent_dim"] == 8
    after = load_checkpoint(run_dir / "last.safetensors")
    assert not torch.equal(after.tensors["vae.decoder.conv_out.weight"], before.tensors["vae.decoder.conv_out.weight"])

    # Resuming a finished run (newest run, no --name) does nothing and duplicates nothing.
    again = train(trained_run.data_dir, tiny_model_config, TrainConfig(precision="fp32"), runs_copy, device="cpu",
                  resume=True)
    assert again.progress.step == 2 * trained_run.steps
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]


def test_resume_of_a_missing_run_is_refused(tmp_path: Path, image_dir: Path, tiny_model_config: ModelConfig) -> None:
    with pytest.raises(ModelError, match="no runs in"):
        train(image_dir, tiny_model_config, TrainConfig(epochs=1), tmp_path / "runs", device="cpu", resume=True)
    with pytest.raises(ModelError, match="no run named 'ghost'"):
        train(image_dir, tiny_model_config, TrainConfig(epochs=1), tmp_path / "runs", name="ghost", device="cpu",
              resume=True)


@pytest.mark.slow
def test_ctrl_c_checkpoints_after_the_current_step_and_resume_finishes(
        image_dir: Path, tmp_path: Path, tiny_model_config: ModelConfig, tiny_train_config: TrainConfig) -> None:
    runs = tmp_path / "runs"
    reporter = RecordingReporter(on_step=1, action=lambda: os.kill(os.getpid(), signal.SIGINT))
    result = train(image_dir, tiny_model_config, tiny_train_config, runs, device="cpu", reporter=reporter)
    assert result.interrupted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    checkpoint = load_checkpoint(result.run_dir / "last.safetensors")
    assert (checkpoint.progress.epoch, checkpoint.progress.batch, checkpoint.progress.step) == (0, 1, 1)
    assert not (result.run_dir / "metrics.jsonl").exists()

    resumed = train(image_dir, tiny_model_config, TrainConfig(precision="fp32"), runs, device="cpu", resume=True)
    assert not resumed.interrupted
    assert (resumed.progress.epoch, resumed.progress.step) == (1, 3)
    assert [r["epoch"] for r in read_jsonl(result.run_dir / "metrics.jsonl")] == [1]


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(trained_run, image_dir: Path, tmp_path: Path,
                                                      tiny_model_config: ModelConfig,
                                                      tiny_train_config: TrainConfig) -> None:
    # The session run trained the same 40 images with the same configs in one go.
    runs = tmp_path / "runs"
    reporter = RecordingReporter(on_step=2, action=lambda: os.kill(os.getpid(), signal.SIGINT))
    assert train(image_dir, tiny_model_config, tiny_train_config, runs, device="cpu", reporter=reporter).interrupted
    train(image_dir, tiny_model_config, TrainConfig(precision="fp32"), runs, device="cpu", resume=True)
    resumed = load_checkpoint(runs / "run" / "last.safetensors")
    straight = load_checkpoint(trained_run.run_dir / "last.safetensors")
    assert resumed.progress.step == straight.progress.step
    weights = [k for k in straight.tensors if k.startswith(("vae.", "denoiser.", "optim."))]
    assert weights and resumed.tensors.keys() == straight.tensors.keys()
    for key in weights:
        assert torch.equal(resumed.tensors[key], straight.tensors[key]), key
    strip = ("elapsed_s", "overhead_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in read_jsonl(runs / "run" / "metrics.jsonl")] == [
        {k: v for k, v in r.items() if k not in strip} for r in read_jsonl(trained_run.run_dir / "metrics.jsonl")]


def test_time_budget_stops_with_a_partial_epoch_record(image_dir: Path, tmp_path: Path,
                                                       tiny_model_config: ModelConfig) -> None:
    config = TrainConfig(max_minutes=1e-6, batch_size=16, precision="fp32")
    result = train(image_dir, tiny_model_config, config, tmp_path / "runs", device="cpu")
    assert not result.interrupted
    assert (result.progress.epoch, result.progress.batch, result.progress.step) == (0, 1, 1)
    records = read_jsonl(result.run_dir / "metrics.jsonl")
    assert len(records) == 1 and records[0]["partial"] is True and records[0]["epoch"] == 1
    assert METRIC_FIELDS <= records[0].keys()
    assert load_checkpoint(result.run_dir / "last.safetensors").progress.step == 1


class CheckpointWatcher(RecordingReporter):
    """Reads the step of the checkpoint on disk at every training step (what a kill at that moment would keep)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self.on_disk = path, []

    def advance(self, steps: int = 1, **fields: Any) -> None:
        if "epoch" in fields:
            self.on_disk.append(load_checkpoint(self.path).progress.step)


@pytest.mark.parametrize("minutes, on_disk", [(0.0, [0, 1, 2]), (2.0, [0, 0, 0])])
def test_a_checkpoint_is_written_every_checkpoint_minutes_within_an_epoch(
        image_dir: Path, tmp_path: Path, tiny_model_config: ModelConfig, minutes: float, on_disk: list[int]) -> None:
    """Protects the periodic checkpoint: a run killed in the middle of a long epoch loses at most
    checkpoint_minutes (2 by default) of work, not the whole epoch."""
    assert TrainConfig().checkpoint_minutes == 2.0  # the README's "every 2 minutes"
    watcher = CheckpointWatcher(tmp_path / "runs" / "run" / "last.safetensors")
    config = TrainConfig(epochs=1, batch_size=16, precision="fp32", checkpoint_minutes=minutes)
    train(image_dir, tiny_model_config, config, tmp_path / "runs", device="cpu", reporter=watcher)
    # Seen at steps 1, 2, 3: the checkpoint of the step before (saved after every step when the interval is 0),
    # or still the one taken at the start (a 2-minute interval does not pass in a tiny run).
    assert watcher.on_disk == on_disk


# --- devices -----------------------------------------------------------------------------------


def test_torch_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from animevae.training.devices import resolve_torch_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_torch_device("cpu").type == "cpu"
    assert resolve_torch_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="torch sees no CUDA GPU") as caught:
        resolve_torch_device("cuda")
    assert "--device cpu" in caught.value.hint
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_torch_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_torch_device("auto").type == "cuda"
    assert resolve_torch_device("cpu").type == "cpu"


def test_train_on_cuda_without_a_gpu_fails_before_creating_anything(
        monkeypatch: pytest.MonkeyPatch, image_dir: Path, tmp_path: Path, tiny_model_config: ModelConfig,
        tiny_train_config: TrainConfig) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError):
        train(image_dir, tiny_model_config, tiny_train_config, tmp_path / "runs", device="cuda")
    assert not (tmp_path / "runs").exists()


def test_training_writes_nothing_into_the_data_folder(trained_run) -> None:
    # The data folder is read, never written (the prepared copy goes to runs/.cache, not beside the folder).
    assert sorted(p.name for p in trained_run.data_dir.iterdir()) == [f"face{i:03d}.png" for i in range(40)]


@pytest.mark.parametrize("speedup, expected", [(1.0, "fp32"), (1.29, "fp32"), (1.31, "bf16"), (3.0, "bf16")])
def test_precision_auto_on_the_cpu_takes_bf16_only_when_measured_faster(
        monkeypatch: pytest.MonkeyPatch, speedup: float, expected: str) -> None:
    """Protects --precision auto: CPUs that emulate bf16 slowly keep fp32 (bf16 only when clearly faster)."""
    import animevae.training.devices as devices

    monkeypatch.setattr(devices, "_cpu_bf16_speedup", lambda: speedup)
    assert devices.choose_precision("auto", torch.device("cpu")) == expected
    assert devices.choose_precision("fp32", torch.device("cpu")) == "fp32"
    assert devices.choose_precision("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_precision_auto_on_cuda_follows_bf16_support(monkeypatch: pytest.MonkeyPatch, supported: bool,
                                                     expected: str) -> None:
    from animevae.training.devices import choose_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)
    assert choose_precision("auto", torch.device("cuda")) == expected


def test_precision_auto_is_resolved_before_it_is_stored(image_dir: Path, tmp_path: Path,
                                                        tiny_model_config: ModelConfig,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.training.devices as devices

    monkeypatch.setattr(devices, "_cpu_bf16_speedup", lambda: 1.0)
    result = train(image_dir, tiny_model_config, TrainConfig(epochs=1, batch_size=16, precision="auto"),
                   tmp_path / "runs", device="cpu")
    assert result.precision == "fp32"
    assert json.loads((result.run_dir / "config.json").read_text())["train"]["precision"] == "fp32"


# --- adversarial loss, weight averaging, latent prior --------------------------------------------------


def _trainer(tiny_model_config: ModelConfig, **train_options: Any):
    from animevae.training.distributed import DistContext
    from animevae.config import RunConfig
    from animevae.training.train import Trainer
    from helpers import blob_image
    import numpy as np

    rng = np.random.default_rng(0)
    images = np.stack([np.asarray(blob_image(rng)) for _ in range(24)])  # (24, 16, 16, 3) uint8
    config = RunConfig(name="t", model=tiny_model_config, train=TrainConfig(batch_size=8, precision="fp32", val_size=4,
                                                                            **train_options))
    return Trainer(config, TrainingData(images, [f"{i:064x}" for i in range(24)]), DistContext())


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_adversarial_steps_train_the_discriminator_and_plain_steps_leave_it(tiny_model_config: ModelConfig) -> None:
    trainer = _trainer(tiny_model_config, adversarial_weight=0.5)
    before = _weights(trainer.discriminator)
    losses = trainer.step(torch.arange(8), adversarial=False)
    assert "d_loss" not in losses and all(torch.equal(before[k], v) for k, v in trainer.discriminator.state_dict().items())
    losses = trainer.step(torch.arange(8), adversarial=True)
    assert {"g_loss", "d_loss", "adv_weight"} <= losses.keys() and losses["adv_weight"] > 0
    changed = [k for k, v in trainer.discriminator.state_dict().items() if not torch.equal(before[k], v)]
    assert "layers.0.weight" in changed
    assert all(p.requires_grad for p in trainer.discriminator.parameters())  # unfrozen after the decoder's pass


def test_ema_follows_the_weights_at_the_ramped_decay_and_keeps_the_fitted_mixture(tiny_model_config: ModelConfig) -> None:
    trainer = _trainer(tiny_model_config, ema_decay=0.9)
    trainer.ema.prior_means.fill_(7.0)  # stands for a fitted mixture: the average must never overwrite it
    for _ in range(3):
        old_ema = _weights(trainer.ema)
        step = trainer.progress.step
        trainer.step(torch.arange(8))
        decay = min(0.9, (1 + step) / (10 + step))
        new = trainer.vae.state_dict()
        for key, value in trainer.ema.state_dict().items():
            if key.startswith("prior_"):
                assert torch.equal(value, old_ema[key])
            elif value.is_floating_point():
                torch.testing.assert_close(value, old_ema[key] * decay + new[key] * (1 - decay))
    assert (trainer.ema.prior_means == 7.0).all()
    assert _trainer(tiny_model_config, ema_decay=0.0).ema is not None


def test_the_prior_trains_on_the_final_latents_and_exports_beside_the_decoder(trained_run) -> None:
    from animevae.training.export import load_run_sampler

    checkpoint = load_checkpoint(trained_run.run_dir / "last.safetensors")
    assert checkpoint.progress.extra["prior_trained"] is True
    records = read_jsonl(trained_run.run_dir / "metrics.jsonl")
    assert records[-1]["prior_steps"] == 1000 and records[-1]["prior_loss"] > 0
    sampler = load_run_sampler(trained_run.run_dir)
    assert sampler is not None and len(sampler.schedule) == 10
    assert (trained_run.export_dir / "prior.onnx").is_file()


def test_a_resumed_run_keeps_the_keys_of_every_image_it_trained_on(tiny_model_config: ModelConfig, tmp_path: Path) -> None:
    from animevae.training.checkpoint import TRAIN_KEYS

    first = _trainer(tiny_model_config)
    assert first.train_keys is not None and len(first.train_keys) == 22  # 24 images, 2 held out
    first.train_keys = torch.arange(22) * 7 + 5  # stand-ins for real hashes' keys (the helper's are all 0)
    first.save(tmp_path / "last.safetensors")
    earlier = load_checkpoint(tmp_path / "last.safetensors").tensors[TRAIN_KEYS]
    assert earlier.tolist() == first.train_keys.tolist()
    grown = _trainer(tiny_model_config)
    grown.train_keys = earlier[:11] + 1_000_003  # a grown folder's split: new images, and one face trained on
    grown.train_keys = torch.cat([grown.train_keys, earlier[:1]])
    grown.restore(load_checkpoint(tmp_path / "last.safetensors"))
    assert grown.train_keys.tolist() == sorted(set(earlier.tolist()) | set((earlier[:11] + 1_000_003).tolist()))


def test_a_step_of_the_vae_marks_a_trained_prior_stale(tiny_model_config: ModelConfig) -> None:
    # A finished diffusion run resumed for longer trains the VAE on: its prior must then be trained again.
    trainer = _trainer(replace(tiny_model_config, prior="diffusion"))
    trainer.progress.extra[PRIOR_TRAINED] = True
    assert trainer.prior_trained
    trainer.step(torch.arange(8))
    assert not trainer.prior_trained


@pytest.mark.parametrize(("steps", "elapsed", "seconds", "expected"), [
    (500, 5.0, None, 0.5),  # no budget: by steps alone
    (1000, 5.0, 50.0, 0.1),  # the steps are done long before the time: the time decides
    (250, 50.0, 40.0, 0.25),  # the time is spent before the steps: the steps decide
    (300, 0.1, 0.0, 0.3),  # no time left for the prior: by steps
])
def test_the_prior_schedule_follows_whichever_end_of_its_phase_comes_last(steps, elapsed, seconds, expected) -> None:
    assert prior_schedule_fraction(steps, 1000, elapsed, seconds) == pytest.approx(expected)


def test_a_mixture_run_trains_no_prior_and_exports_none(image_dir: Path, tmp_path: Path,
                                                          tiny_model_config: ModelConfig) -> None:
    from animevae.training.export import export_run, load_run_sampler

    config = replace(tiny_model_config, prior="mixture")
    result = train(image_dir, config, TrainConfig(epochs=1, batch_size=16, precision="fp32"), tmp_path / "runs",
                   device="cpu")
    assert "prior_steps" not in read_jsonl(result.run_dir / "metrics.jsonl")[-1]
    assert load_run_sampler(result.run_dir) is None
    export_run(result.run_dir)
    assert not (result.run_dir / "export" / "prior.onnx").exists()


@pytest.mark.slow
def test_a_time_budget_includes_the_final_epoch_end(image_dir: Path, tmp_path: Path, tiny_model_config: ModelConfig,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--max-minutes covers everything: the run stops early by what its dearest epoch end cost, so the final
    epoch end (mixture fit, calibration, evaluation, sample sheet) starts early enough to end within the budget,
    not one epoch end after it. Each epoch end but the final one is made at least 2 s dearer, in a 15 s budget
    (2 s, not less: the margin must outlast a busy machine's slower final epoch end)."""
    import time as time_module

    import animevae.training.loop as loop_module

    report = loop_module.report
    monkeypatch.setattr(loop_module, "report", lambda *args, **kwargs: (
        time_module.sleep(0.0 if kwargs.get("final") else 2.0), report(*args, **kwargs))[1])
    config = replace(tiny_model_config, prior="mixture")
    result = train(image_dir, config, TrainConfig(max_minutes=0.25, batch_size=16, precision="fp32"),
                   tmp_path / "runs", device="cpu")
    final = read_jsonl(result.run_dir / "metrics.jsonl")[-1]
    assert final["elapsed_s"] < 14.5  # without the reserve the final epoch end starts at 15 s
    assert result.elapsed_s < 16.0  # and it ends about when the budget does
    # The finished run, resumed, has nothing left to train, though its cheap final epoch end left a few seconds
    # of the reserve unspent; resumed with a longer budget, it trains on.
    lines = len(read_jsonl(result.run_dir / "metrics.jsonl"))
    resumed = train(image_dir, config, TrainConfig(max_minutes=0.25, batch_size=16, precision="fp32"),
                    tmp_path / "runs", name=result.run_dir.name, device="cpu", resume=True)
    assert resumed.progress.step == result.progress.step
    assert len(read_jsonl(result.run_dir / "metrics.jsonl")) == lines
    more_epochs = train(image_dir, config, TrainConfig(epochs=100, max_minutes=0.25, batch_size=16, precision="fp32"),
                        tmp_path / "runs", name=result.run_dir.name, device="cpu", resume=True)
    assert more_epochs.progress.step == result.progress.step  # the budget, not the epochs, ended it
    longer = train(image_dir, config, TrainConfig(max_minutes=0.35, batch_size=16, precision="fp32"),
                   tmp_path / "runs", name=result.run_dir.name, device="cpu", resume=True)
    assert longer.progress.step > result.progress.step


def test_the_mixture_fits_mirrored_latents_first_last_and_on_interrupt_not_every_epoch(
        image_dir: Path, tmp_path: Path, tiny_model_config: ModelConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.training.train as train_module
    import animevae.training.trainer as trainer_module
    from animevae.training.model import DIAGONAL_POINTS_PER_COMPONENT

    monkeypatch.setattr(trainer_module, "MIXTURE_REFIT_S", 1e9)  # only the first fit and the final one
    fits: list[tuple[int, int]] = []  # (step, rows fitted)
    fit_at = train_module.Trainer.fit_prior
    fit_rows = trainer_module.VAE.fit_prior
    steps: list[int] = []
    monkeypatch.setattr(train_module.Trainer, "fit_prior",
                        lambda self, *a: (steps.append(self.progress.step), fit_at(self, *a))[1])
    monkeypatch.setattr(trainer_module.VAE, "fit_prior",
                        lambda self, mu, *a, **k: (fits.append((steps[-1], len(mu))), fit_rows(self, mu, *a, **k))[1])
    config = replace(tiny_model_config, prior="mixture", prior_components=50)
    result = train(image_dir, config, TrainConfig(epochs=3, batch_size=16, precision="fp32"), tmp_path / "runs",
                   device="cpu")
    train_count = 40 - 4  # a tenth held out
    per_epoch = result.progress.step // 3
    assert fits == [(per_epoch, 2 * train_count), (3 * per_epoch, 2 * train_count)]  # each face and its mirror
    _, vae, _ = load_run_models(result.run_dir)
    assert int((vae.prior_weights > 0).sum()) == 2 * train_count // DIAGONAL_POINTS_PER_COMPONENT

    # Ctrl-C before any epoch ends: the checkpoint's mixture is fitted on the weights it holds.
    fits.clear()
    reporter = RecordingReporter(on_step=1, action=lambda: os.kill(os.getpid(), signal.SIGINT))
    interrupted = train(image_dir, config, TrainConfig(epochs=3, batch_size=16, precision="fp32"), tmp_path / "runs",
                        name="stopped", device="cpu", reporter=reporter)
    assert interrupted.interrupted and fits == [(1, 2 * train_count)]
    _, stopped_vae, _ = load_run_models(interrupted.run_dir)
    assert int((stopped_vae.prior_weights > 0).sum()) == 2 * train_count // DIAGONAL_POINTS_PER_COMPONENT


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on one: CI has none)")
def test_one_epoch_on_cuda_with_every_piece(image_dir: Path, tmp_path: Path, tiny_model_config: ModelConfig) -> None:
    """Each CUDA-only failure seen so far mixed a CPU generator or tensor into GPU work (posterior draws, the
    mixture fit, the DDIM sampler's time biases): one epoch with the adversarial loss and the diffusion prior,
    in bf16, then an export checked against PyTorch, goes through all of them."""
    from animevae.training.export import export_run

    config = TrainConfig(epochs=1, batch_size=16, seed=0, precision="bf16", adversarial_weight=0.5,
                         adversarial_start=0.0, prior_steps=20)
    result = train(image_dir, replace(tiny_model_config, prior="diffusion"), config, tmp_path / "runs", device="cuda")
    assert result.device.startswith("cuda") and result.precision == "bf16"
    assert {"d_loss", "prior_loss"} <= set(read_jsonl(result.run_dir / "metrics.jsonl")[-1])
    assert set(export_run(result.run_dir).max_abs_diff) >= {"encoder", "decoder", "denoiser", "prior"}


_DEFAULT_RUN = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from helpers import TINY_MODEL, write_blobs
from animevae.config import ModelConfig, TrainConfig
from animevae.training.checkpoint import load_checkpoint
from animevae.training.train import train

write_blobs(Path(sys.argv[1]), count=40)
model = ModelConfig(**{**TINY_MODEL, "prior": "mixture"})  # the defaults: mixture prior, adversarial weight 0
result = train(Path(sys.argv[1]), model, TrainConfig(epochs=1, batch_size=16, precision="fp32"), Path(sys.argv[2]),
               device="cpu")
keys = load_checkpoint(result.run_dir / "last.safetensors").tensors
print("KEYS", " ".join(sorted({key.split(".")[0] + "." + key.split(".")[1] for key in keys})))
print("MODULES", " ".join(sorted(name for name in sys.modules if name.startswith("animevae.training."))))
"""


def test_a_default_run_builds_imports_and_checkpoints_no_rejected_feature(tmp_path: Path) -> None:
    """With default flags the patch discriminator (--adversarial-weight 0) and the diffusion prior (--prior
    mixture) cost nothing: not built, not in the checkpoint, not even imported (a fresh process shows it)."""
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    done = subprocess.run([sys.executable, "-c", _DEFAULT_RUN, str(tmp_path / "faces"), str(tmp_path / "runs"),
                           str(tests)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("KEYS", "MODULES")))
    keys, modules = lines["KEYS"].split(), lines["MODULES"].split()
    assert "vae.encoder" in keys and "optim.vae" in keys and "optim.denoiser" in keys  # the probe sees keys
    assert not [k for k in keys if k.startswith(("discriminator.", "prior.", "optim.discriminator", "optim.prior"))]
    assert "animevae.training.trainer" in modules
    assert not {"animevae.training.adversarial", "animevae.training.diffusion",
                "animevae.training.prior_phase"} & set(modules)


def test_an_adversarial_diffusion_trainer_builds_and_checkpoints_both(tiny_model_config: ModelConfig,
                                                                      tmp_path: Path) -> None:
    trainer = _trainer(replace(tiny_model_config, prior="diffusion"), adversarial_weight=0.5)
    assert {"discriminator", "prior"} <= trainer.modules.keys() and {"discriminator", "prior"} <= trainer.optimizers.keys()
    trainer.save(tmp_path / "last.safetensors")
    keys = load_checkpoint(tmp_path / "last.safetensors").tensors
    assert any(k.startswith("discriminator.") for k in keys) and any(k.startswith("prior.") for k in keys)
    plain = _trainer(replace(tiny_model_config, prior="mixture"))
    assert plain.discriminator is None and plain.prior is None
    assert not {"discriminator", "prior"} & (plain.modules.keys() | plain.optimizers.keys())


def test_overhead_is_recorded_and_a_resume_keeps_counting_it(image_dir: Path, tmp_path: Path,
                                                             tiny_model_config: ModelConfig,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """overhead_s: the seconds outside training steps, summed over every session of the run (each report here
    made 0.5 s dearer, so the sum shows)."""
    import time as time_module

    import animevae.training.loop as loop_module

    report = loop_module.report
    monkeypatch.setattr(loop_module, "report", lambda *args, **kwargs: (time_module.sleep(0.5),
                                                                        report(*args, **kwargs))[1])
    config = replace(tiny_model_config, prior="mixture")
    first = train(image_dir, config, TrainConfig(epochs=1, batch_size=16, precision="fp32"), tmp_path / "runs",
                  device="cpu")
    record = read_jsonl(first.run_dir / "metrics.jsonl")[-1]
    assert 0.5 <= record["overhead_s"] <= record["elapsed_s"]
    assert first.overhead_s >= record["overhead_s"] - 0.05  # the record rounds to 0.1 s
    kept = load_checkpoint(first.run_dir / "last.safetensors").budget
    assert kept["steps_s"] > 0 and kept["elapsed_s"] - kept["steps_s"] == pytest.approx(first.overhead_s, abs=0.05)
    again = train(image_dir, config, TrainConfig(epochs=2, batch_size=16, precision="fp32"), tmp_path / "runs",
                  name=first.run_dir.name, device="cpu", resume=True)
    records = read_jsonl(first.run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["overhead_s"] >= records[0]["overhead_s"] + 0.5  # the second session's report added on
    assert again.elapsed_s > first.elapsed_s


def test_the_mixture_fits_a_bounded_sample_of_faces_whatever_the_folder(
        image_dir: Path, tmp_path: Path, tiny_model_config: ModelConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "MIXTURE_FACES", 10)
    monkeypatch.setattr(trainer_module, "SHEET_MIXTURE_FACES", 6)
    monkeypatch.setattr(trainer_module, "MIXTURE_REFIT_S", 0.0)  # refit at every report
    fitted: list[int] = []
    fit = trainer_module.VAE.fit_prior
    monkeypatch.setattr(trainer_module.VAE, "fit_prior",
                        lambda self, mu, *a, **k: (fitted.append(len(mu)), fit(self, mu, *a, **k))[1])
    reporter = RecordingReporter()
    config = replace(tiny_model_config, prior="mixture", prior_components=2)
    train(image_dir, config, TrainConfig(epochs=3, batch_size=16, precision="fp32"), tmp_path / "runs", device="cpu",
          reporter=reporter)
    # 36 training faces: the fits before the final one on 6 of them and their mirror images, the final on 10.
    assert fitted == [12, 12, 20]
    assert sum("fitting the latent mixture on 20 latents" in line for line in reporter.logs) == 1


def test_a_report_comes_within_an_epoch_when_the_last_is_old(image_dir: Path, tmp_path: Path,
                                                             tiny_model_config: ModelConfig,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch of a big folder can outlast the run: reports come by the clock too (here after every step)."""
    import animevae.training.loop as loop_module

    monkeypatch.setattr(loop_module, "REPORT_EVERY_S", 0.0)
    config = replace(tiny_model_config, prior="mixture")
    result = train(image_dir, config, TrainConfig(epochs=1, batch_size=16, precision="fp32"), tmp_path / "runs",
                   device="cpu")
    records = read_jsonl(result.run_dir / "metrics.jsonl")
    steps = result.progress.step
    # Mid-epoch reports after steps 1 and 2 (partial), the epoch's own after the last.
    assert [(r["step"], r["partial"], r["epoch"]) for r in records] == [(1, True, 1), (2, True, 1), (steps, False, 1)]
    assert steps == 3


def test_a_shut_gate_waits_its_own_interval_between_calibrations(image_dir: Path, tmp_path: Path,
                                                                  tiny_model_config: ModelConfig,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A small folder's epochs end every few seconds: a gate that stays shut is not recalibrated at each."""
    import animevae.training.denoiser_training as denoiser_module
    import animevae.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "SHUT_GATE_REFRESH_S", 1e9)
    monkeypatch.setattr(denoiser_module, "calibrate_knee", lambda denoiser, clean: 32.0)  # it stays shut
    steps: list[int] = []
    calibrate = trainer_module.Trainer.calibrate_denoiser
    monkeypatch.setattr(trainer_module.Trainer, "calibrate_denoiser",
                        lambda self, full=True: (steps.append(self.progress.step), calibrate(self, full))[1])
    result = train(image_dir, replace(tiny_model_config, prior="mixture"),
                   TrainConfig(epochs=3, batch_size=16, precision="fp32"), tmp_path / "runs", device="cpu")
    per_epoch = result.progress.step // 3
    assert steps == [per_epoch, 3 * per_epoch]  # the first report, then the run's end


def test_a_report_that_spends_the_rest_of_the_budget_is_followed_by_the_final_fits(
        image_dir: Path, tmp_path: Path, tiny_model_config: ModelConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first report's cost is foretold by nothing: when it runs past the budget, the run still ends with the
    final fits (the full mixture) and the final line, at the same step."""
    import time as time_module

    import animevae.training.loop as loop_module

    report = loop_module.report
    finals: list[bool] = []
    monkeypatch.setattr(loop_module, "report", lambda *args, **kwargs: (
        finals.append(kwargs["final"]), time_module.sleep(0.0 if kwargs["final"] else 2.0), report(*args, **kwargs))[2])
    result = train(image_dir, replace(tiny_model_config, prior="mixture"),
                   TrainConfig(max_minutes=0.02, batch_size=16, precision="fp32"), tmp_path / "runs", device="cpu")
    records = read_jsonl(result.run_dir / "metrics.jsonl")
    assert finals[-1] is True and len(records) == 1  # the final line replaced the first at the same step
    assert records[0]["step"] == result.progress.step and "swd_16" in records[0]
def test_ctrl_c_during_train_saves_says_so_and_exits_130(runner, image_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from animevae.training.checkpoint import load_checkpoint

    ctrl_c_after_step(monkeypatch, 2)
    result = runner.invoke(app, ["train", str(image_dir), "--image-size", "16", "--latent-dim", "8", "--batch-size", "8",
                                 "--precision", "fp32", "--epochs", "50", "--runs-dir", str(tmp_path / "runs"), *CPU])
    assert result.exit_code == 130, result.output
    assert "interrupted; checkpoint saved" in result.output
    progress = load_checkpoint(tmp_path / "runs" / "run" / "last.safetensors").progress
    assert progress.step == 2
    # Its denoiser (the default's shapes: the built-in one fits) was judged as the stop left it.
    assert progress.extra["denoiser_judged"]["step"] == 2 and "kept the " in result.output


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


@pytest.mark.slow
def test_train_fine_tunes_the_built_in_denoiser_unless_told_not_to(runner, image_dir: Path, tmp_path: Path) -> None:
    """The default denoiser's shapes fit the built-in one: it starts from it at a tenth of the peak learning rate,
    or from scratch with --denoiser-from-scratch; either way it is judged against it at the end."""
    from animevae.training.denoiser_start import builtin_state

    runs = tmp_path / "runs"
    for flags, start, said in (([], "builtin", "starts from the built-in one"),
                               (["--denoiser-from-scratch"], "scratch", "starts from scratch, as asked")):
        result = runner.invoke(app, ["train", str(image_dir), "--image-size", "16", "--latent-dim", "8", "--epochs", "1",
                                     "--batch-size", "16", "--precision", "fp32", "--runs-dir", str(runs), "--name",
                                     start, *flags, *CPU])
        assert_ok(result)
        assert said in result.output
        config = json.loads((runs / start / "config.json").read_text())["train"]
        assert config["denoiser_start"] == start
        assert config["denoiser_lr"] == pytest.approx(2e-3 * (0.1 if start == "builtin" else 1.0))
        record = read_jsonl(runs / start / "metrics.jsonl")[-1]
        assert record["denoiser_kept"] in ("run", "builtin") and "builtin_denoise_psnr_25" in record
        assert "kept the " in result.output
        reference = load_checkpoint(runs / start / "last.safetensors").module_state("denoiser_reference")
        assert torch.equal(reference["conv_in.weight"], builtin_state(ModelConfig())[0]["conv_in.weight"])


def test_train_refuses_a_runs_dir_inside_its_data_folder(runner, image_dir: Path) -> None:
    result = runner.invoke(app, ["train", str(image_dir), "--runs-dir", str(image_dir / "runs"), *CPU])
    assert_cli_error(result, "inside")
    assert not (image_dir / "runs").exists()


def test_train_on_a_messy_folder(messy, runner, tmp_path, monkeypatch) -> None:
    folder, _, _ = messy
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", str(folder), "--epochs", "1", "--image-size", "16", "--latent-dim", "8",
                                 "--batch-size", "16", "--precision", "fp32", *CPU])
    assert_ok(result)
    assert "skipped empty.png:" in result.output and "manifest.json" in result.output
    assert (tmp_path / "runs" / "run" / "last.safetensors").is_file()


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
