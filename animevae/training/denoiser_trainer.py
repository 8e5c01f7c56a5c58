"""The trainer of `animevae train-denoiser`: the denoiser alone (denoiser_training.py) on a set's training split,
its clock, its reports on the held-out split, and its checkpoints.

Each step draws its rows from a generator seeded by (seed, step) alone, never from an epoch's shuffle, so a run
stopped and resumed trains on the same batches as one that never stopped, whatever its budget."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from animevae.config import RunConfig
from animevae.errors import DataError, ModelError
from animevae.training.budget import Budget
from animevae.training.calibrate import CALIBRATION_FACES, calibration_rows
from animevae.training.checkpoint import Checkpoint, Progress, save_checkpoint
from animevae.training.data import TrainingData, TrainingPixels, split_holdout
from animevae.training.denoiser_judge import Judgement
from animevae.training.evaluate import EVAL_FACES, denoiser_scores
from animevae.training.denoiser_training import DenoiserTraining
from animevae.training.reports import append_metrics
from animevae.training.trainer import cosine_decay

# Warm-up: the first share of the run, over which the learning rate climbs linearly to its peak.
WARM_UP = 0.02


class DenoiserTrainer:
    """Holds the denoiser, its optimiser and data, and where the run stands (progress, budget)."""

    def __init__(self, config: RunConfig, data: TrainingData, device: torch.device) -> None:
        self.config, self.device = config, device
        torch.manual_seed(config.train.seed)
        self.den = DenoiserTraining(config, device)
        train_idx, val_idx = split_holdout(data.hashes, len(data.images), config.train.val_size)
        if len(train_idx) == 0:
            raise DataError("the data set has no images left for training", "add more images")
        self.train_pixels = TrainingPixels(data.images, train_idx, device)
        self.held_out = TrainingPixels(data.images, val_idx, device)[:EVAL_FACES]  # (N_val, 3, S, S) uint8
        self.generator = torch.Generator()
        self.progress = Progress()
        self.budget = Budget(max_minutes=config.train.max_minutes)
        self.calibrated_step: int | None = None
        self.log: Callable[[str], None] = lambda message: None
        self.autocast_dtype = torch.bfloat16 if config.train.precision == "bf16" else None

    def restore(self, checkpoint: Checkpoint) -> None:
        """Load weights, optimiser state, progress and the clock from a checkpoint."""
        try:
            self.den.restore(checkpoint)
        except (RuntimeError, KeyError, ValueError) as error:
            raise ModelError(f"checkpoint does not fit this model: {error}", "start a new run instead") from None
        self.progress = checkpoint.progress
        self.budget = Budget.restored(checkpoint.budget, self.budget.max_minutes, 0.0)

    def save(self, path: Path) -> None:
        """Checkpoint the whole state atomically."""
        save_checkpoint(path, self.config, self.den.modules, {"denoiser": self.den.optimizer}, self.progress,
                        self.generator.get_state(), self.budget.record())

    def fraction(self) -> float:
        """How much of the run is done: by steps or by the clock, whichever is further."""
        steps = self.config.train.steps
        return max(self.progress.step / steps if steps else 0.0, self.budget.time_fraction())

    def spent(self) -> bool:
        """Whether the steps or the budget (less the reserve for the final report) are used up."""
        steps = self.config.train.steps
        return (steps is not None and self.progress.step >= steps) or self.budget.vae_phase_over()

    def finished(self) -> bool:
        """Whether an earlier session already ended the run under this session's limits."""
        steps = self.config.train.steps
        return (steps is not None and self.progress.step >= steps) or self.budget.finished()

    def batch_rows(self) -> torch.Tensor:
        """(batch_size,) training rows of this step, drawn (with replacement) by the generator seeded from (seed,
        step) alone; the step's crops and degradations come next from the same generator."""
        train = self.config.train
        self.generator.manual_seed(train.seed * 7_919 + self.progress.step)
        return torch.randint(len(self.train_pixels), (train.batch_size,), generator=self.generator)

    def step(self) -> dict[str, float]:
        """One optimiser step on a batch of training rows drawn by a generator seeded from (seed, step); half the
        images mirrored, as `train` shows them."""
        train = self.config.train
        fraction = self.fraction()
        warm = min(1.0, fraction / WARM_UP)
        for group in self.den.optimizer.param_groups:
            group["lr"] = train.denoiser_lr * warm * cosine_decay(fraction)
        batch = self.train_pixels.batch(self.batch_rows())  # (B, 3, S, S)
        flip = torch.rand(len(batch), generator=self.generator) < 0.5
        batch = torch.where(flip.view(-1, 1, 1, 1).to(self.device), batch.flip(3), batch)
        loss = self.den.step(batch.contiguous(memory_format=torch.channels_last), self.generator, self._autocast())
        self.progress.step += 1
        return {"den_mse": float(loss)}

    def calibrate(self) -> None:
        """Recalibrate the gate's knee on training faces (calibrate.py) unless the weights are as last calibrated."""
        if self.calibrated_step == self.progress.step:
            return
        self.log(f"calibrating the denoiser's gate on {min(len(self.train_pixels), CALIBRATION_FACES):,} faces ...")
        self.den.calibrate(self.train_pixels.batch(calibration_rows(len(self.train_pixels), self.config.train.seed)))
        self.calibrated_step = self.progress.step

    def judge(self, scores: dict[str, float] | None = None) -> Judgement | None:
        """Judge the denoiser against the built-in one on the held-out faces and record which the run keeps."""
        judgement = self.den.judge(self.held_out, self.progress.step, scores)
        if judgement is not None:
            judgement.record(self.progress)
        return judgement

    def score_reference(self) -> bool:
        """Score the built-in reference on the held-out faces now (judgements reuse it); False where there is none."""
        return self.den.reference_scores(self.held_out) is not None

    def report(self, run_dir: Path, losses: dict[str, float], final: bool) -> dict[str, Any]:
        """Calibrate, score on the held-out faces, judge against the built-in denoiser, and write the line of this
        step in metrics.jsonl. Returns the line's metrics."""
        self.calibrate()
        scores = denoiser_scores(self.den.denoiser, self.held_out)
        judgement = self.judge(scores)
        if judgement is not None and final:
            self.log(judgement.line())
        metrics = {**{key: round(value, 6) for key, value in losses.items()}, **scores, "held_out": len(self.held_out),
                   "denoise_knee": float(self.den.denoiser.knee), **(judgement.metrics if judgement else {})}
        self.budget.sync()
        append_metrics(run_dir / "metrics.jsonl", {
            "step": self.progress.step, "final": final, "elapsed_s": round(self.budget.elapsed_s, 1),
            "overhead_s": round(self.budget.overhead_s, 1), **metrics})
        return metrics

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

