"""`animevae train-denoiser` (training/denoiser_run.py, denoiser_trainer.py) and what it shares with `train`: the
built-in denoiser as a starting point (denoiser_start.py), and the judgement that keeps whichever of the run's and
the built-in denoiser scores better (denoiser_judge.py)."""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from animevae.cli import app
from animevae.config import ModelConfig, RunConfig, TrainConfig
from animevae.runs import list_runs
from animevae.training.checkpoint import Progress, load_checkpoint, save_checkpoint
from animevae.training.data import load_training_images
from animevae.training.denoiser_judge import BUILTIN, KEEP_MEASURE, RUN, judge
from animevae.training.denoiser_run import train_denoiser
from animevae.training.denoiser_start import BUILTIN_DENOISER, builtin_state, plan_start
from animevae.training.denoiser_trainer import DenoiserTrainer
from animevae.training.denoiser_training import DenoiserTraining
from animevae.training.export import load_run_models
from animevae.progress import SilentReporter
from helpers import CPU, assert_cli_error, assert_ok, read_jsonl, read_rgb

# The built-in denoiser's shapes (it fits, so runs fine-tune it) on tiny images; and a denoiser it does not fit.
FITS_BUILTIN = ModelConfig(image_size=16)
TINY_DENOISER = ModelConfig(image_size=16, denoiser_width=8, denoiser_blocks=1)
FAST = ["--image-size", "16", "--batch-size", "8", "--precision", "fp32"]


class LogReporter(SilentReporter):
    """Keeps the log lines."""

    def __init__(self) -> None:
        self.logs: list[str] = []

    def log(self, message: str) -> None:
        self.logs.append(message)


def _run(faces: Path, runs: Path, steps: int = 4, model: ModelConfig = TINY_DENOISER, **options: Any) -> Any:
    train = TrainConfig(steps=steps, batch_size=8, precision="fp32", denoiser_lr=options.pop("lr", 2e-3))
    return train_denoiser(faces, runs, options.pop("name", "d"), model, train, device="cpu", **options)


def _ctrl_c_after_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """SIGINT right after optimiser step `step`, as a user's Ctrl-C would arrive."""
    real_step = DenoiserTrainer.step

    def step_then_ctrl_c(self: DenoiserTrainer) -> dict[str, float]:
        losses = real_step(self)
        if self.progress.step == step:
            os.kill(os.getpid(), signal.SIGINT)
        return losses

    monkeypatch.setattr(DenoiserTrainer, "step", step_then_ctrl_c)


# --- the command, end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_denoiser_then_export_then_denoise(runner, image_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    trained = runner.invoke(app, ["train-denoiser", str(image_dir), "--steps", "3", "--name", "den", *FAST,
                                  "--runs-dir", str(runs), *CPU])
    assert_ok(trained)
    assert "the denoiser starts from the built-in one" in trained.output
    assert "finished: run den, step 3" in trained.output and "started from the built-in denoiser" in trained.output
    assert "next: animevae export --onnx --run den" in trained.output
    config = json.loads((runs / "den" / "config.json").read_text())
    assert config["kind"] == "denoiser" and config["train"]["denoiser_start"] == "builtin"
    assert config["train"]["denoiser_lr"] == pytest.approx(2e-4)  # a fine-tune's peak: a tenth of --lr
    final = read_jsonl(runs / "den" / "metrics.jsonl")[-1]
    assert final["step"] == 3 and final["final"] is True and final["held_out"] == 4
    for case in ("25", "50", "jpeg20"):
        assert math.isfinite(final[f"denoise_psnr_{case}"]) and math.isfinite(final[f"builtin_denoise_psnr_{case}"])
    assert final["noisy_psnr_50"] < final["noisy_psnr_25"] and final["denoiser_kept"] in (RUN, BUILTIN)

    exported = runner.invoke(app, ["export", "--onnx", "--run", "den", "--runs-dir", str(runs)])
    assert_ok(exported)
    assert "trained only a denoiser: exported denoiser.onnx alone" in exported.output
    assert "next: animevae denoise FOLDER --run den" in exported.output
    assert sorted(p.name for p in (runs / "den" / "export").iterdir()) == ["denoiser.onnx", "model.json"]
    # The exported file holds the denoiser the run keeps, with its knee.
    _, vae, kept = load_run_models(runs / "den")
    assert vae is None
    proto = onnx.load(str(runs / "den" / "export" / "denoiser.onnx"))
    initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(initializers["conv_in.weight"], kept.conv_in.weight.detach().numpy())
    assert {p.key: p.value for p in proto.metadata_props}["animevae.residual_knee"] == str(float(kept.knee))

    out = tmp_path / "clean"
    denoised = runner.invoke(app, ["denoise", str(image_dir), "--run", "den", "--out", str(out), "--runs-dir",
                                   str(runs), *CPU])
    assert_ok(denoised)
    assert "model: run 'den'" in denoised.output
    assert len(list(out.glob("*.png"))) == 40 and read_rgb(out / "face000.png").shape == (16, 16, 3)
    # A run without a VAE has nothing to generate from: said plainly.
    assert_cli_error(runner.invoke(app, ["generate", "--count", "2", "--run", "den", "--runs-dir", str(runs), *CPU]),
                     "holds only a denoiser")


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.png").write_bytes(b"broken")
    return tmp_path / "empty"


def _not_a_set(tmp_path: Path) -> Path:
    (tmp_path / "faces.safetensors").write_bytes(b"not a data set")
    return tmp_path / "faces.safetensors"


@pytest.mark.parametrize("bad", [lambda tmp: tmp / "missing", _empty, _not_a_set],
                         ids=["missing", "no usable images", "not a prepared set"])
def test_bad_data_is_one_error_line_and_leaves_no_run(runner, tmp_path: Path, bad: Any) -> None:
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train-denoiser", str(bad(tmp_path)), "--steps", "1", *FAST, "--runs-dir",
                                 str(runs), *CPU])
    assert_cli_error(result)
    assert not list_runs(runs) and not [p for p in runs.glob("*") if p.name != ".cache"]


def test_a_run_of_the_other_command_is_not_resumed(runner, image_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run(image_dir, runs, steps=1, name="den")
    refused = runner.invoke(app, ["train", str(image_dir), "--resume", "--name", "den", "--runs-dir", str(runs), *CPU])
    assert_cli_error(refused, "trains only a denoiser", "animevae train-denoiser")
    vae_run = RunConfig(name="vae")  # what `train` writes: a config.json and a checkpoint of kind "vae"
    (runs / "vae").mkdir()
    (runs / "vae" / "config.json").write_text(vae_run.to_json())
    save_checkpoint(runs / "vae" / "last.safetensors", vae_run, {}, {}, Progress(), torch.zeros(1), {})
    refused = runner.invoke(app, ["train-denoiser", str(image_dir), "--resume", "--name", "vae", "--runs-dir",
                                  str(runs), *CPU])
    assert_cli_error(refused, "is a run of `animevae train`")


# --- budget, stop and resume ----------------------------------------------------------------------------------


def test_a_stopped_and_resumed_run_ends_with_the_weights_of_an_unbroken_one(
        image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = _run(image_dir, tmp_path / "straight", steps=4)
    _ctrl_c_after_step(monkeypatch, 2)
    stopped = _run(image_dir, tmp_path / "stopped", steps=4)
    assert stopped.interrupted and stopped.step == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    monkeypatch.undo()
    resumed = train_denoiser(image_dir, tmp_path / "stopped", "d", train_config=TrainConfig(), device="cpu",
                             resume=True)
    assert not resumed.interrupted and resumed.step == straight.step == 4
    a = load_checkpoint(tmp_path / "straight" / "d" / "last.safetensors").tensors
    b = load_checkpoint(tmp_path / "stopped" / "d" / "last.safetensors").tensors
    weights = [key for key in a if key.startswith(("denoiser.", "optim."))]
    assert weights and a.keys() == b.keys()
    for key in weights:
        assert torch.equal(a[key], b[key]), key
    strip = ("elapsed_s", "overhead_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in read_jsonl(tmp_path / "straight" / "d" / "metrics.jsonl")] \
        == [{k: v for k, v in r.items() if k not in strip} for r in read_jsonl(tmp_path / "stopped" / "d" / "metrics.jsonl")]


def test_ctrl_c_judges_and_saves_says_so_and_exits_130(runner, image_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    _ctrl_c_after_step(monkeypatch, 2)
    result = runner.invoke(app, ["train-denoiser", str(image_dir), "--steps", "50", *FAST, "--runs-dir", str(runs), *CPU])
    assert result.exit_code == 130, result.output
    assert "interrupted; checkpoint saved: run run, step 2" in result.output
    assert f"next: animevae train-denoiser {image_dir} --resume --name run" in result.output
    # The stop is a run's end too: the weights as they are were judged, so an export of them is never worse.
    assert "kept the " in result.output
    extra = load_checkpoint(runs / "run" / "last.safetensors").progress.extra
    assert extra["denoiser_kept"] in (RUN, BUILTIN) and extra["denoiser_judged"]["step"] == 2


def test_a_finished_run_goes_on_only_with_a_larger_budget(image_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert _run(image_dir, runs, steps=2).step == 2
    again = train_denoiser(image_dir, runs, "d", train_config=TrainConfig(), device="cpu", resume=True)
    assert again.already_finished and again.step == 2 and again.metrics == {}
    more = train_denoiser(image_dir, runs, "d", train_config=TrainConfig(steps=5), device="cpu", resume=True)
    assert not more.already_finished and more.step == 5
    assert [(r["step"], r["final"]) for r in read_jsonl(runs / "d" / "metrics.jsonl")] == [(2, True), (5, True)]
    assert json.loads((runs / "d" / "config.json").read_text())["train"]["steps"] == 5


def test_a_step_trains_on_rows_drawn_from_its_step_alone(image_dir: Path, tmp_path: Path) -> None:
    data = load_training_images(image_dir, 16, tmp_path / "cache", SilentReporter())
    config = RunConfig(name="d", model=TINY_DENOISER, train=TrainConfig(batch_size=8, seed=3), kind="denoiser")
    one, other = DenoiserTrainer(config, data, torch.device("cpu")), DenoiserTrainer(config, data, torch.device("cpu"))
    one.step()  # one trainer has stepped, the other not: the rows of step 7 are the same
    one.progress.step = other.progress.step = 7
    assert torch.equal(one.batch_rows(), other.batch_rows())
    other.progress.step = 8
    assert not torch.equal(one.batch_rows(), other.batch_rows())


def test_a_time_budget_ends_the_run_and_is_kept_for_a_resume(image_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    train = TrainConfig(max_minutes=0.03, batch_size=8, precision="fp32")
    first = train_denoiser(image_dir, runs, "t", TINY_DENOISER, train, device="cpu")
    assert not first.interrupted and first.step > 0 and first.metrics["denoise_psnr_25"] > 0
    again = train_denoiser(image_dir, runs, "t", train_config=TrainConfig(), device="cpu", resume=True)
    assert again.already_finished and again.step == first.step
    longer = train_denoiser(image_dir, runs, "t", train_config=TrainConfig(max_minutes=0.06), device="cpu",
                            resume=True)
    assert longer.step > first.step


# --- where the denoiser starts ------------------------------------------------------------------------------


def test_a_fine_tune_starts_from_exactly_the_built_in_weights_and_knee() -> None:
    from animevae.runtime import open_model

    proto = onnx.load(str(BUILTIN_DENOISER))
    initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    knee = float({p.key: p.value for p in proto.metadata_props}["animevae.residual_knee"])
    config = RunConfig(name="x", model=FITS_BUILTIN, train=TrainConfig(denoiser_start="builtin"))
    denoiser = DenoiserTraining(config, torch.device("cpu")).denoiser.eval()
    for key, value in denoiser.state_dict().items():
        if key == "knee":
            assert float(value) == knee > 0
        else:
            np.testing.assert_array_equal(value.numpy(), initializers[key], err_msg=key)
    image = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    expected = open_model(BUILTIN_DENOISER, "denoiser", device="cpu").run(image.numpy())[0]
    with torch.no_grad():
        assert np.abs(denoiser(image).numpy() - expected).max() < 1e-4

    scratch = DenoiserTraining(replace(config, train=TrainConfig(denoiser_start="scratch")), torch.device("cpu"))
    assert float(scratch.denoiser.knee) == 0.0 and not scratch.denoiser.conv_out.weight.any()
    assert scratch.reference is not None  # judged against the built-in one all the same


def test_the_start_is_the_built_in_denoiser_unless_asked_otherwise_or_it_does_not_fit(tmp_path: Path) -> None:
    assert plan_start(FITS_BUILTIN, from_scratch=False).start == "builtin"
    asked = plan_start(FITS_BUILTIN, from_scratch=True)
    assert asked.start == "scratch" and "as asked" in asked.note
    misfit = plan_start(TINY_DENOISER, from_scratch=False)
    assert misfit.start == "scratch" and "does not fit" in misfit.note and "conv_in.weight" in misfit.note
    assert builtin_state(FITS_BUILTIN, tmp_path / "none.onnx") == (None, "this installation has no built-in denoiser")


def test_a_denoiser_the_built_in_one_does_not_fit_starts_from_scratch_and_says_so(image_dir: Path,
                                                                                    tmp_path: Path) -> None:
    reporter = LogReporter()
    result = _run(image_dir, tmp_path / "runs", steps=1, reporter=reporter)
    assert result.start == "scratch"
    assert any("starts from scratch, since the built-in one does not fit" in line for line in reporter.logs)
    assert not any(k.startswith("denoiser_reference.") for k in load_checkpoint(result.run_dir / "last.safetensors").tensors)
    assert "denoiser_kept" not in result.metrics  # nothing to judge it against


def test_from_scratch_leaves_the_built_in_weights_alone(runner, image_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert_ok(runner.invoke(app, ["train-denoiser", str(image_dir), "--steps", "1", "--from-scratch", *FAST,
                                  "--runs-dir", str(runs), *CPU]))
    config = json.loads((runs / "run" / "config.json").read_text())["train"]
    assert config["denoiser_start"] == "scratch" and config["denoiser_lr"] == pytest.approx(2e-3)
    trained = load_checkpoint(runs / "run" / "last.safetensors").module_state("denoiser")
    builtin, _ = builtin_state(FITS_BUILTIN)
    assert not torch.equal(trained["conv_in.weight"], builtin["conv_in.weight"])


# --- never worse than the built-in denoiser --------------------------------------------------------------------


def test_the_judgement_keeps_the_run_unless_it_scores_below_the_built_in() -> None:
    def scores(value: float) -> dict[str, float]:
        return {KEEP_MEASURE: value, "denoise_psnr_25": 40.0}

    assert judge(scores(30.0), scores(31.0), 5).kept == BUILTIN
    assert judge(scores(31.0), scores(31.0), 5).kept == RUN
    assert judge(scores(31.5), scores(31.0), 5).kept == RUN
    assert judge(scores(float("nan")), scores(31.0), 5).kept == BUILTIN


def test_a_run_that_scores_below_the_built_in_keeps_the_built_in(image_dir: Path, tmp_path: Path) -> None:
    reporter = LogReporter()
    # A learning rate that wrecks the weights in two steps.
    result = _run(image_dir, tmp_path / "runs", steps=3, model=FITS_BUILTIN, lr=5.0, reporter=reporter)
    metrics = result.metrics
    assert metrics["denoiser_kept"] == BUILTIN and metrics[KEEP_MEASURE] < metrics[f"builtin_{KEEP_MEASURE}"]
    assert any(line.startswith("kept the built-in denoiser") for line in reporter.logs)
    # What export writes (and evaluate scores): the built-in weights and knee.
    _, _, kept = load_run_models(result.run_dir)
    builtin, _ = builtin_state(FITS_BUILTIN)
    for key, value in kept.state_dict().items():
        assert torch.equal(value, builtin[key]), key
    # The run's own weights stay in the checkpoint: a resumed run trains them on.
    own = load_checkpoint(result.run_dir / "last.safetensors").module_state("denoiser")
    assert not torch.equal(own["conv_in.weight"], builtin["conv_in.weight"])


def test_synthetic_puts_dead_leaves_images_in_each_batch_and_the_run_records_its_share(
        runner, image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.training.synthetic as synthetic_module

    drawn: list[tuple[int, int]] = []
    dead_leaves = synthetic_module.dead_leaves
    monkeypatch.setattr(synthetic_module, "dead_leaves",
                        lambda count, size, generator, *a: (drawn.append((count, size)),
                                                            dead_leaves(count, size, generator, *a))[1])
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train-denoiser", str(image_dir), "--steps", "2", "--synthetic", "0.5", "--name", "syn",
                                 "--runs-dir", str(runs), "--device", "cpu", *FAST])
    assert result.exit_code == 0, result.output
    assert drawn == [(4, 16), (4, 16)]  # half of each batch of 8, at the crop side (whole 16 px images here)
    assert RunConfig.from_dict(json.loads((runs / "syn" / "config.json").read_text())).train.synthetic_share == 0.5
    refused = runner.invoke(app, ["train-denoiser", str(image_dir), "--synthetic", "1.5", "--runs-dir", str(runs)])
    assert refused.exit_code != 0 and "--synthetic" in refused.output
