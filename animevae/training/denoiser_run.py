"""`animevae train-denoiser`: open or resume a run of the denoiser alone, load its data, and train it on its own
budget (--max-minutes and/or --steps) with `train`'s clock (budget.py), checkpoints (checkpoint.py) and clean
stop on Ctrl-C or SIGTERM (loop.py). The denoiser starts from the built-in one where it fits (denoiser_start.py),
and the run keeps whichever of the two scores better on its held-out faces (denoiser_judge.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from animevae import FORMAT_VERSION, __version__
from animevae.config import ModelConfig, RunConfig, TrainConfig
from animevae.errors import ArgumentError, ModelError
from animevae.fileio import write_bytes_atomic
from animevae.progress import Reporter, SilentReporter
from animevae.runs import CHECKPOINT_NAME, CONFIG_NAME, claim_run_dir, resolve_run
from animevae.training.checkpoint import Checkpoint, load_checkpoint
from animevae.training.data import load_training_images
from animevae.training.denoiser_start import BUILTIN, FINE_TUNE_LR_SCALE, plan_start
from animevae.training.denoiser_trainer import DenoiserTrainer
from animevae.training.devices import choose_precision, resolve_torch_device
from animevae.training.loop import REPORT_EVERY_S, deferred_interrupt
from animevae.training.train import release_run_dir

DENOISER_KIND = "denoiser"
# The budget of a new run given neither --steps nor --max-minutes.
DEFAULT_MINUTES = 10.0
# A report's cost in scorings of the held-out faces (denoiser_judge.denoiser_scores): the gate's calibration on
# as many training faces costs about one more.
REPORT_COST_IN_SCORINGS = 2.0


@dataclass
class DenoiserRunResult:
    """What a train-denoiser call did. `metrics`: the final report's (empty when the run had already finished)."""

    run_dir: Path
    step: int
    start: str
    metrics: dict[str, Any]
    device: str
    precision: str
    interrupted: bool
    already_finished: bool
    images_per_s: float
    elapsed_s: float


def train_denoiser(data: Path, runs_dir: Path, name: str | None = None, model_config: ModelConfig | None = None,
                   train_config: TrainConfig | None = None, device: str = "auto", resume: bool = False,
                   from_scratch: bool = False, reporter: Reporter | None = None) -> DenoiserRunResult:
    """Train only a denoiser on `data` (a folder or a prepared set) into runs_dir/<name>, or resume it. The
    peak learning rate is train_config.denoiser_lr from scratch, FINE_TUNE_LR_SCALE of it for a fine-tune of the
    built-in denoiser; without steps or max_minutes a new run gets DEFAULT_MINUTES."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ArgumentError("train-denoiser runs in one process", "run it without torchrun")
    reporter = reporter or SilentReporter()
    torch_device = resolve_torch_device(device)
    run_dir, config, checkpoint = _open_run(data, model_config or ModelConfig(), train_config or TrainConfig(),
                                            runs_dir, name, resume, from_scratch, torch_device, reporter)
    try:
        data_set = load_training_images(data, config.model.image_size, runs_dir / ".cache", reporter)
        trainer = DenoiserTrainer(config, data_set, torch_device)
    except BaseException:
        if checkpoint is None:
            release_run_dir(run_dir)
        raise
    write_bytes_atomic(run_dir / CONFIG_NAME, (config.to_json() + "\n").encode())
    if checkpoint is not None:
        trainer.restore(checkpoint)
    trainer.log = reporter.log
    steps_before, started = trainer.progress.step, time.monotonic()
    metrics, interrupted, finished = _run(trainer, run_dir, reporter)
    images = (trainer.progress.step - steps_before) * config.train.batch_size
    return DenoiserRunResult(run_dir, trainer.progress.step, config.train.denoiser_start, metrics, str(torch_device),
                             config.train.precision, interrupted, finished,
                             images / max(1e-9, time.monotonic() - started), trainer.budget.elapsed_s)


def _open_run(data: Path, model_config: ModelConfig, train_config: TrainConfig, runs_dir: Path, name: str | None,
              resume: bool, from_scratch: bool, device: torch.device,
              reporter: Reporter) -> tuple[Path, RunConfig, Checkpoint | None]:
    """The run folder, its config and (when resuming) its checkpoint; a new run gets a fresh folder."""
    if resume:
        run_dir = resolve_run(runs_dir, name)
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
        stored = checkpoint.config
        if stored.kind != DENOISER_KIND:
            raise ModelError(f"run {run_dir.name!r} is a run of `animevae train` (a VAE and its denoiser)",
                             f"resume it with `animevae train {data} --resume --name {run_dir.name}`")
        config = replace(stored, train=replace(stored.train, steps=train_config.steps or stored.train.steps,
                                               max_minutes=train_config.max_minutes or stored.train.max_minutes))
        reporter.log(f"resuming {run_dir.name} at step {checkpoint.progress.step} (its denoiser started from "
                     f"{'the built-in one' if stored.train.denoiser_start == BUILTIN else 'scratch'})")
        return run_dir, config, checkpoint
    if model_config.image_size % 4:  # the only size rule without a VAE: the denoiser halves twice
        raise ArgumentError(f"image size {model_config.image_size} is not a multiple of 4", "use 64, or 32, or 128")
    start = plan_start(model_config, from_scratch)
    reporter.log(start.note)
    if train_config.steps is None and train_config.max_minutes is None:
        train_config = replace(train_config, max_minutes=DEFAULT_MINUTES)
    lr = train_config.denoiser_lr * (FINE_TUNE_LR_SCALE if start.start == BUILTIN else 1.0)
    train_config = replace(train_config, epochs=None, lr=lr, denoiser_lr=lr, denoiser_start=start.start,
                           precision=choose_precision(train_config.precision, device), data_source=str(data))
    run_dir = claim_run_dir(runs_dir, name)
    config = RunConfig(name=run_dir.name, model=model_config, train=train_config, created=time.time(),
                       version=__version__, format_version=FORMAT_VERSION, kind=DENOISER_KIND)
    return run_dir, config, None


def _run(trainer: DenoiserTrainer, run_dir: Path, reporter: Reporter) -> tuple[dict[str, Any], bool, bool]:
    """Train from the checkpointed step to the end of the steps or budget, checkpointing from the first moment
    and at the end or a stop. Returns the final metrics, whether a stop cut the run short, and whether an earlier
    session had already finished it."""
    budget, progress = trainer.budget, trainer.progress
    budget.start_session()
    if progress.step == 0:
        trainer.save(run_dir / CHECKPOINT_NAME)  # from the first moment, a killed run can be resumed
    finished = trainer.finished()
    if not finished:
        budget.finished_under = None  # this session trains: an earlier ending no longer holds
    metrics: dict[str, Any] = {}
    interrupted = False
    reporter.start(f"training the denoiser of {run_dir.name}", trainer.config.train.steps)
    reporter.advance(progress.step)
    with deferred_interrupt() as stop_requested:
        try:
            if not finished:
                metrics = _steps(trainer, run_dir, reporter, stop_requested)
        except KeyboardInterrupt:
            interrupted = True
            reporter.stop()
            trainer.calibrate()
            if (judgement := trainer.judge()) is not None:
                reporter.log(judgement.line())
        finally:
            reporter.stop()
            trainer.save(run_dir / CHECKPOINT_NAME)
    return metrics, interrupted, finished


def _steps(trainer: DenoiserTrainer, run_dir: Path, reporter: Reporter,
           stop_requested: Callable[[], bool]) -> dict[str, Any]:
    """Steps until the steps or the budget (less the final report's reserve) are spent, with a report and a
    checkpoint at least every REPORT_EVERY_S and a checkpoint every checkpoint_minutes; then the final report."""
    config, budget, progress = trainer.config.train, trainer.budget, trainer.progress
    checkpoint = run_dir / CHECKPOINT_NAME
    losses: dict[str, float] = {}
    # The reference's scores, needed by every judgement, are taken now: they tell what the final report (a gate
    # calibration and the run's own scores, each about as dear) will cost, which the budget keeps in reserve.
    started = time.monotonic()
    if trainer.score_reference():
        budget.end_cost_s = max(budget.end_cost_s, REPORT_COST_IN_SCORINGS * (time.monotonic() - started))
    last_save = last_report = time.monotonic()
    while not trainer.spent():
        with budget.training_step():
            losses = trainer.step()
        budget.shared_s = budget.now()
        reporter.advance(1, **losses)
        if stop_requested():
            raise KeyboardInterrupt
        if time.monotonic() - last_report >= REPORT_EVERY_S and not trainer.spent():
            with budget.epoch_end():
                trainer.report(run_dir, losses, final=False)
            trainer.save(checkpoint)
            last_report = last_save = time.monotonic()
        elif time.monotonic() - last_save >= config.checkpoint_minutes * 60:
            trainer.save(checkpoint)
            last_save = time.monotonic()
    reporter.stop()
    with budget.epoch_end():
        metrics = trainer.report(run_dir, losses, final=True)
    if config.max_minutes is not None and not (config.steps is not None and progress.step >= config.steps):
        budget.finished_under = config.max_minutes  # the budget ended it, not the steps
    return metrics
