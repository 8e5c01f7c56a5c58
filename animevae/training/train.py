"""`animevae train`: open or resume a run, load its data, and hand a Trainer to the run loop (loop.py)."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path

from animevae import FORMAT_VERSION, __version__
from animevae.config import ModelConfig, RunConfig, TrainConfig
from animevae.training.data import load_training_images
from animevae.errors import DataError, ModelError
from animevae.fileio import write_bytes_atomic
from animevae.labels import Labels
from animevae.progress import Reporter, SilentReporter
from animevae.runs import CHECKPOINT_NAME, CONFIG_NAME, claim_run_dir, resolve_run
from animevae.training.checkpoint import Checkpoint, load_checkpoint
from animevae.training.denoiser_start import BUILTIN, FINE_TUNE_LR_SCALE, plan_start
from animevae.training.devices import choose_precision
from animevae.training.distributed import DistContext, init_distributed, shutdown_distributed
from animevae.training.loop import TrainResult, run_loop
from animevae.training.trainer import Trainer

__all__ = ["TrainResult", "Trainer", "train"]


def release_run_dir(run_dir: Path) -> None:
    """Give back a new run's folder when the run fails before writing anything there."""
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only if still empty


def train(
    data: Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    runs_dir: Path,
    name: str | None = None,
    device: str = "auto",
    resume: bool = False,
    reporter: Reporter | None = None,
    denoiser_from_scratch: bool = False,
) -> TrainResult:
    """Train a VAE and a denoiser on `data` (a folder or a prepared set) into runs_dir/<name>. The denoiser starts
    from the built-in one where its shapes fit, unless `denoiser_from_scratch` (denoiser_start.py).

    Under torchrun (WORLD_SIZE > 1) every rank trains its share of each batch with DDP; rank 0 alone
    creates the run, writes files and reports, so the run folder is what a single process writes.
    """
    ctx = init_distributed(device)
    reporter = (reporter or SilentReporter()) if ctx.is_main else SilentReporter()
    try:
        if ctx.is_main:
            run_dir, config, checkpoint = _open_run(data, model_config, train_config, runs_dir, name, resume,
                                                    denoiser_from_scratch, ctx, reporter)
            try:
                data_set = load_training_images(data, config.model.image_size, runs_dir / ".cache", reporter)
                config = _with_classes(config, data_set.labels, data, resumed=checkpoint is not None)
            except BaseException:
                if checkpoint is None:
                    release_run_dir(run_dir)
                raise
            (run_dir / "samples").mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(run_dir / CONFIG_NAME, (config.to_json() + "\n").encode())
        run_name = ctx.share_text(run_dir.name if ctx.is_main else "")
        if not ctx.is_main:
            run_dir = runs_dir / run_name
            config = RunConfig.from_dict(json.loads((run_dir / CONFIG_NAME).read_text()))
            checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME) if resume else None
            data_set = load_training_images(data, config.model.image_size, runs_dir / ".cache", reporter)
        trainer = Trainer(config, data_set, ctx)
        if checkpoint is not None:
            trainer.restore(checkpoint)
        result = run_loop(trainer, run_dir, reporter)
        del trainer  # its DDP wrappers use the process group: they go before it does
        ctx.barrier()  # an orderly end: every rank has left the last collective while rank 0 wrote the run
        return result
    finally:
        shutdown_distributed()


def _open_run(data: Path, model_config: ModelConfig, train_config: TrainConfig, runs_dir: Path, name: str | None,
              resume: bool, from_scratch: bool, ctx: DistContext,
              reporter: Reporter) -> tuple[Path, RunConfig, Checkpoint | None]:
    """The run folder, its config and (when resuming) its checkpoint; a new run gets a fresh folder."""
    if resume:
        run_dir = resolve_run(runs_dir, name)
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
        stored = checkpoint.config
        if stored.kind != "vae":
            raise ModelError(f"run {run_dir.name!r} trains only a denoiser",
                             f"resume it with `animevae train-denoiser {data} --resume --name {run_dir.name}`")
        config = replace(stored, train=replace(stored.train, epochs=train_config.epochs or stored.train.epochs,
                                               max_minutes=train_config.max_minutes or stored.train.max_minutes))
        reporter.log(f"resuming {run_dir.name} at epoch {checkpoint.progress.epoch + 1}, step {checkpoint.progress.step}")
        return run_dir, config, checkpoint
    if train_config.epochs is None and train_config.max_minutes is None:
        train_config = replace(train_config, epochs=10)
    model_config.check()
    start = plan_start(model_config, from_scratch)
    reporter.log(start.note)
    denoiser_lr = train_config.denoiser_lr * (FINE_TUNE_LR_SCALE if start.start == BUILTIN else 1.0)
    train_config = replace(train_config, precision=choose_precision(train_config.precision, ctx.device),
                           data_source=str(data), world_size=ctx.world_size, denoiser_start=start.start,
                           denoiser_lr=denoiser_lr)
    run_dir = claim_run_dir(runs_dir, name)  # now, not once the data has loaded: two runs never share a folder
    config = RunConfig(name=run_dir.name, model=model_config, train=train_config,
                       created=time.time(), version=__version__, format_version=FORMAT_VERSION)
    return run_dir, config, None


def _with_classes(config: RunConfig, labels: Labels | None, data: Path, resumed: bool) -> RunConfig:
    """The run config with the data's classes; a resumed run must see the classes it started with."""
    names, counts = (labels.classes.names, labels.classes.counts) if labels is not None else ((), ())
    if not resumed:
        return replace(config, model=replace(config.model, classes=names, class_counts=counts))
    if names != config.model.classes:
        raise DataError(f"{data} has classes {list(names) or 'none'}, the run was started on {list(config.model.classes) or 'none'}",
                        "resume with the data the run started on, or start a new run")
    return config
