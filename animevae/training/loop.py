"""The run loop: steps until the epochs or the budget (training/budget.py) are spent, reports along the way,
checkpoints, a clean stop on Ctrl-C or SIGTERM, and the diffusion prior's phase last when the run has one."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from animevae.progress import Reporter
from animevae.runs import CHECKPOINT_NAME
from animevae.training.checkpoint import Progress
from animevae.training.reports import report
from animevae.training.trainer import Trainer

# Reports (metrics line, sample sheet, the fits due) come at each epoch's end and, within an epoch, at least this
# often: an epoch of a big folder can outlast the whole budget, and a run must still show how it goes.
REPORT_EVERY_S = 300.0


@dataclass
class TrainResult:
    """What a training call did."""

    run_dir: Path
    progress: Progress
    metrics: dict[str, float]
    device: str
    precision: str
    interrupted: bool
    images_per_s: float
    is_main: bool = True
    elapsed_s: float = 0.0
    overhead_s: float = 0.0


class Stop(Exception):
    """Raised inside the loop when the time budget is spent."""


class _Session:
    """One session of a run: the trainer, where it writes, and when it last saved and reported."""

    def __init__(self, trainer: Trainer, run_dir: Path, reporter: Reporter) -> None:
        self.trainer, self.run_dir, self.reporter = trainer, run_dir, reporter
        self.config, self.progress, self.budget = trainer.config.train, trainer.progress, trainer.budget
        epochs = self.config.epochs
        self.total_steps = epochs * trainer.batches_per_epoch if epochs else None
        self.last_save = self.last_report = time.monotonic()
        self.losses: dict[str, float] = {}
        self.metrics: dict[str, float] = {}

    def fraction(self) -> float:
        """How much of the run is done: by steps or by the clock, whichever is further."""
        by_steps = self.progress.step / self.total_steps if self.total_steps else 0.0
        return max(by_steps, self.budget.time_fraction())

    def save(self) -> None:
        if self.trainer.ctx.is_main:
            self.trainer.save(self.run_dir / CHECKPOINT_NAME)
        self.last_save = time.monotonic()

    def report(self, partial: bool, final: bool, epoch: int | None = None,
               extra: dict[str, float] | None = None) -> None:
        with self.budget.epoch_end():
            self.metrics = report(self.trainer, self.run_dir, {**self.losses, **(extra or {})}, partial=partial,
                                  epoch=epoch, final=final)
        if self.trainer.full_fit_extra_s is not None:
            self.budget.final_fit_extra_s = self.trainer.full_fit_extra_s
        self.last_report = time.monotonic()

    def agree(self, stop_requested: Callable[[], bool]) -> bool:
        """Share the slowest rank's clock and rank 0's reserve (every rank must agree on the rate and on when to
        stop); returns whether any rank was asked to stop."""
        budget = self.budget
        budget.shared_s, stop, budget.end_cost_s, budget.final_fit_extra_s = self.trainer.ctx.max(
            [budget.now(), float(stop_requested()), budget.end_cost_s, budget.final_fit_extra_s])
        return bool(stop)

    def step(self, indices: torch.Tensor, stop_requested: Callable[[], bool]) -> None:
        """One training step, then what is due: a stop, a checkpoint, a report within the epoch."""
        trainer, budget, config = self.trainer, self.budget, self.config
        trainer.set_lr(self.fraction())
        adversarial = config.adversarial_weight > 0 and self.fraction() >= config.adversarial_start
        with budget.training_step():
            self.losses = trainer.step(indices, adversarial=adversarial)
        self.progress.batch += 1
        self.reporter.advance(1, epoch=self.progress.epoch + 1, **self.losses)
        if self.agree(stop_requested):
            raise KeyboardInterrupt
        if budget.vae_phase_over():
            raise Stop
        if time.monotonic() - self.last_report >= REPORT_EVERY_S and self.progress.batch < trainer.batches_per_epoch:
            self.report(partial=True, final=False)
            self.save()
        elif time.monotonic() - self.last_save > config.checkpoint_minutes * 60:
            self.save()

    def train_vae(self, stop_requested: Callable[[], bool]) -> None:
        """Epochs of VAE and denoiser steps until the epochs or the VAE phase's budget are spent, then the final
        report (also when the budget stops an epoch midway)."""
        config, progress, budget = self.config, self.progress, self.budget
        try:
            while (config.epochs is None or progress.epoch < config.epochs) and self.fraction() < 1.0:
                for indices in self.trainer.epoch_batches(progress.epoch, progress.batch):
                    self.step(indices, stop_requested)
                # Also the last when the final report would not fit after this one.
                last = (config.epochs is not None and progress.epoch + 1 >= config.epochs) or self.fraction() >= 1.0 \
                    or budget.next_end_is_final()
                self.report(partial=False, final=last)
                progress.epoch, progress.batch = progress.epoch + 1, 0
                self.save()
                if last:
                    return
                if self.agree(stop_requested):
                    raise KeyboardInterrupt
                if self.fraction() >= 1.0:
                    # The report itself spent what was left (the first report, whose cost nothing foretold): the
                    # run ends here, and its line is made again with the final fits.
                    self.report(partial=False, final=True, epoch=progress.epoch)
                    self.save()
                    return
        except Stop:
            if self.trainer.prior is None:
                self.report(partial=True, final=True)

    def train_prior(self, stop_requested: Callable[[], bool]) -> None:
        """The diffusion prior's phase, then the last report made again with samples from it. Every rank trains
        the prior (rank 0's is kept): a rank idle at the closing barrier for the prior's share of a long budget
        would outlast the collectives' timeout and end the run in an error."""
        from animevae.training.prior_phase import train_prior

        self.reporter.stop()
        stats = train_prior(self.trainer, self.budget.prior_seconds(), self.reporter, stop_requested)
        partial = self.progress.batch > 0
        self.report(partial=partial, final=True, epoch=self.progress.epoch + (1 if partial else 0), extra=stats)


def run_loop(trainer: Trainer, run_dir: Path, reporter: Reporter) -> TrainResult:
    """Train `trainer` on: from its checkpointed progress to the end of its epochs or budget."""
    session = _Session(trainer, run_dir, reporter)
    config, progress, budget, ctx = session.config, trainer.progress, trainer.budget, trainer.ctx
    budget.start_session()
    if ctx.is_main:
        trainer.log = reporter.log
    steps_before, started = progress.step, time.monotonic()
    interrupted = False
    if progress.step == 0:
        session.save()  # from the first moment, a killed run can be resumed (and its name is not lost)
    reporter.start(f"training {run_dir.name}", session.total_steps)
    reporter.advance(progress.step)
    finished = budget.finished()
    if not finished:
        budget.finished_under = None  # this session trains: an earlier ending no longer holds
    with deferred_interrupt() as stop_requested:
        try:
            if not finished:
                session.train_vae(stop_requested)
                if trainer.prior is not None and not trainer.prior_trained:
                    session.train_prior(stop_requested)
                if config.max_minutes is not None and (config.epochs is None or progress.epoch < config.epochs):
                    budget.finished_under = config.max_minutes  # the budget ended it, not the epochs
        except KeyboardInterrupt:
            interrupted = True
            if ctx.is_main:
                trainer.refresh_fits(final=True)
                if (judgement := trainer.judge_denoiser()) is not None:
                    reporter.log(judgement.line())
        finally:
            reporter.stop()
            session.save()
    images = (progress.step - steps_before) * config.batch_size
    return TrainResult(run_dir, progress, session.metrics, str(trainer.device), config.precision, interrupted,
                       images / max(1e-9, time.monotonic() - started), ctx.is_main, budget.elapsed_s,
                       budget.overhead_s)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Turn the first Ctrl-C or SIGTERM (what schedulers send) into a flag checked between steps, so the
    checkpoint is taken at a clean point.

    A second one interrupts at once. Outside the main thread (no signal handlers there) this does nothing.
    """
    requested = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True

    try:
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        yield lambda: False
        return
    try:
        yield lambda: requested
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
