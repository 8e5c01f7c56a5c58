"""The training loop for the VAE and the denoiser, with checkpoints, resume, metrics and sample grids."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from animevae import FORMAT_VERSION, __version__
from animevae.checkpoint import Checkpoint, Progress, load_checkpoint, save_checkpoint
from animevae.config import ModelConfig, RunConfig, TrainConfig
from animevae.data import folder_fingerprint, load_prepared, manifest_path, prepare_images, save_prepared, split_holdout
from animevae.degrade import degrade_batch, multiscale_crop
from animevae.devices import choose_precision
from animevae.distributed import DistContext, init_distributed, shutdown_distributed
from animevae.errors import DataError, ModelError
from animevae.fileio import contact_sheet, save_png_atomic, to_uint8, write_bytes_atomic
from animevae.model import VAE, Denoiser, VAELoss, add_noise, psnr
from animevae.progress import Reporter, SilentReporter
from animevae.runs import CHECKPOINT_NAME, CONFIG_NAME, check_name, next_free_name, resolve_run

EVAL_SIGMAS = (25, 50)
EVAL_NOISE_SEED = 1234
SAMPLE_COUNT = 16
DENOISER_CROP = 32
SKIPPED_SHOWN = 20


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


class Stop(Exception):
    """Raised inside the loop when the time budget is spent."""


def load_training_images(data: Path, image_size: int, cache_dir: Path, reporter: Reporter) -> tuple[np.ndarray, list[str]]:
    """(N, S, S, 3) uint8 images and their hashes from a prepared set, or a folder (prepared once and cached)."""
    if data.is_file():
        images, hashes = load_prepared(data)
        if images.shape[1] != image_size:
            raise DataError(
                f"{data} holds {images.shape[1]}x{images.shape[1]} images, not {image_size}x{image_size}",
                f"pass --image-size {images.shape[1]}, or prepare the folder again with --image-size {image_size}",
            )
        return images, hashes
    cached = cache_dir / f"{data.resolve().name}-{folder_fingerprint(data, image_size)}.safetensors"
    if cached.is_file():
        reporter.log(f"using the prepared copy of {data} in {cached}")
        return load_prepared(cached)
    reporter.start(f"preparing {data}", None)
    prepared = prepare_images(data, image_size, on_file=reporter.advance)
    reporter.stop()
    save_prepared(prepared, cached, data)
    reporter.log(f"prepared {len(prepared.sources)} images ({len(prepared.skipped)} skipped, "
                 f"{len(prepared.duplicates)} duplicates) into {cached}")
    for item in prepared.skipped[:SKIPPED_SHOWN]:
        reporter.log(f"  skipped {item.path}: {item.reason}")
    if prepared.skipped:
        more = len(prepared.skipped) - SKIPPED_SHOWN
        reporter.log(f"  {f'and {more} more; ' if more > 0 else ''}all listed in {manifest_path(cached)}")
    return prepared.images, prepared.hashes


class Trainer:
    """Holds the models, optimisers and data of one run and steps them."""

    def __init__(self, config: RunConfig, images: np.ndarray, hashes: list[str], ctx: DistContext) -> None:
        self.config, self.ctx, self.device = config, ctx, ctx.device
        device = ctx.device
        torch.manual_seed(config.train.seed)
        self.vae = VAE(config.model).to(device, memory_format=torch.channels_last)
        self.denoiser = Denoiser(config.model).to(device, memory_format=torch.channels_last)
        # Under torchrun the steps go through DDP wrappers (gradients averaged across ranks); evaluation,
        # sampling and checkpoints use the plain modules.
        self.vae_step, self.den_step = self.vae, self.denoiser
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.vae_step = DistributedDataParallel(self.vae)
            self.den_step = DistributedDataParallel(self.denoiser)
        self.loss_fn = VAELoss()
        self.opt_vae = torch.optim.Adam(self.vae.parameters(), lr=config.train.lr)
        self.opt_den = torch.optim.Adam(self.denoiser.parameters(), lr=config.train.denoiser_lr)
        train_idx, val_idx = split_holdout(hashes, len(images), config.train.val_size)
        if len(train_idx) == 0:
            raise DataError("the data set has no images left for training", "add more images")
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S) uint8
        self.train_pixels = pixels[torch.from_numpy(train_idx)].to(device)
        self.val_pixels = pixels[torch.from_numpy(val_idx)].to(device)
        self.generator = torch.Generator()
        self.sample_z = torch.randn(SAMPLE_COUNT, config.model.latent_dim, generator=self.generator.manual_seed(config.train.seed))
        self.sample_u = torch.rand(SAMPLE_COUNT, generator=self.generator)
        self.progress = Progress()
        self.autocast_dtype = torch.bfloat16 if config.train.precision == "bf16" else None

    @property
    def batch_starts(self) -> list[int]:
        """Where each batch of an epoch begins. A last batch too small to split across the ranks with two
        images each (BatchNorm needs two) joins the one before it."""
        count = len(self.train_pixels)
        starts = list(range(0, count, self.config.train.batch_size))
        if len(starts) > 1 and count - starts[-1] < 2 * self.ctx.world_size:
            starts.pop()
        return starts

    @property
    def batches_per_epoch(self) -> int:
        """Batches in one pass over the training split."""
        return len(self.batch_starts)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Load weights, optimiser state and progress from a checkpoint."""
        try:
            self.vae.load_state_dict(checkpoint.module_state("vae"))
            self.denoiser.load_state_dict(checkpoint.module_state("denoiser"))
            self.opt_vae.load_state_dict(checkpoint.optimizer_state("vae"))
            self.opt_den.load_state_dict(checkpoint.optimizer_state("denoiser"))
        except (RuntimeError, KeyError, ValueError) as error:
            raise ModelError(f"checkpoint does not fit this model: {error}", "start a new run instead") from None
        self.progress = checkpoint.progress

    def save(self, path: Path) -> None:
        """Checkpoint the whole state atomically."""
        save_checkpoint(
            path, self.config, {"vae": self.vae, "denoiser": self.denoiser},
            {"vae": self.opt_vae, "denoiser": self.opt_den}, self.progress, self.generator.get_state(),
        )

    def epoch_batches(self, epoch: int, start: int) -> Iterator[torch.Tensor]:
        """Index tensors of the epoch's batches from `start`: the shuffle depends on (seed, epoch) only."""
        order = torch.randperm(len(self.train_pixels), generator=torch.Generator().manual_seed(
            self.config.train.seed * 1_000_003 + epoch))
        bounds = [*self.batch_starts, len(order)]
        for index in range(start, len(bounds) - 1):
            yield order[bounds[index] : bounds[index + 1]]

    def set_lr(self, fraction: float) -> None:
        """Short linear warm-up, then cosine decay to 5% over the run (`fraction` of it done)."""
        warm = min(1.0, fraction / 0.02) if fraction < 0.02 else 1.0
        scale = warm * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0))))
        for optimizer, base in ((self.opt_vae, self.config.train.lr), (self.opt_den, self.config.train.denoiser_lr)):
            for group in optimizer.param_groups:
                group["lr"] = base * scale

    def step(self, indices: torch.Tensor) -> dict[str, float]:
        """One optimiser step of the VAE and one of the denoiser on the same (global) batch of indices;
        each rank takes its share of it."""
        ctx = self.ctx
        self.generator.manual_seed((self.config.train.seed * 7_919 + self.progress.step) * ctx.world_size + ctx.rank)
        indices = indices[ctx.rank :: ctx.world_size]
        batch = self.train_pixels[indices.to(self.train_pixels.device)].float().div_(255.0)  # (B, 3, S, S)
        flip = torch.rand(len(batch), generator=self.generator) < 0.5
        batch = torch.where(flip.view(-1, 1, 1, 1).to(self.device), batch.flip(3), batch)
        batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            recon, posterior = self.vae_step(batch, self.generator)
            loss, mse, kl = self.loss_fn(batch, recon, posterior)
        self.opt_vae.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_vae.step()
        # (B, 3, c, c) windows of 1-2 c resized to c: 4x cheaper steps than whole images, same conv weights
        clean = multiscale_crop(batch, DENOISER_CROP, self.generator)
        noisy = degrade_batch(clean, self.generator, self.config.train.noise_sigma_max)
        with self._autocast():
            den_loss = F.mse_loss(self.den_step(noisy).float(), clean)
        self.opt_den.zero_grad(set_to_none=True)
        den_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), 1.0)
        self.opt_den.step()
        self.progress.step += 1
        losses = {"loss": loss.item(), "mse": mse.item(), "kl": kl.item(), "den_mse": den_loss.item()}
        return ctx.mean(losses)

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """On the held-out split: recon PSNR of decode(mu), and denoise PSNR beside the noisy input's at
        sigma 25 and 50 (noise from a fixed seed, so epochs and runs compare)."""
        self.vae.eval()
        self.denoiser.eval()
        sums: dict[str, float] = {}
        noise_gen = torch.Generator().manual_seed(EVAL_NOISE_SEED)
        for begin in range(0, len(self.val_pixels), 256):
            clean = self.val_pixels[begin : begin + 256].float().div_(255.0)
            scores = {"val_psnr": psnr(self.vae.decoder(self.vae.encode(clean).mode()), clean)}
            for sigma in EVAL_SIGMAS:
                noisy = add_noise(clean, float(sigma), noise_gen)
                scores[f"denoise_psnr_{sigma}"] = psnr(self.denoiser(noisy), clean)
                scores[f"noisy_psnr_{sigma}"] = psnr(noisy, clean)
            for key, values in scores.items():
                sums[key] = sums.get(key, 0.0) + values.sum().item()
        self.vae.train()
        self.denoiser.train()
        count = max(1, len(self.val_pixels))
        return {key: round(value / count, 3) for key, value in sums.items()}

    @torch.no_grad()
    def fit_prior(self) -> None:
        """Fit the sampling prior to the posteriors of the whole training split (eval mode, no augmentation)."""
        self.vae.eval()
        moments = [self.vae.encoder(self.train_pixels[b : b + 512].float().div_(255.0))
                   for b in range(0, len(self.train_pixels), 512)]
        self.vae.fit_prior(torch.cat([m for m, _ in moments]).float(), torch.cat([v for _, v in moments]).float(),
                           seed=self.config.train.seed)
        self.vae.train()

    @torch.no_grad()
    def sample_sheet(self) -> np.ndarray:
        """Row 1: validation images; row 2: their reconstructions; rows 3-4: samples from fixed latents."""
        self.vae.eval()
        clean = self.val_pixels[:8].float().div_(255.0)
        rows = [clean, self.vae.decoder(self.vae.encode(clean).mode())] if len(clean) else []
        rows.append(self.vae.decoder(self.vae.sample_latent(self.sample_z.to(self.device), self.sample_u.to(self.device))))
        self.vae.train()
        return contact_sheet(to_uint8(torch.cat(rows).float().cpu().numpy()))


def _new_run_dir(runs_dir: Path, name: str | None) -> Path:
    """The folder for a new run (created only once its data has loaded, so a failed start leaves nothing)."""
    run_name = check_name(name) if name else next_free_name(runs_dir)
    run_dir = runs_dir / run_name
    if (run_dir / CONFIG_NAME).exists():
        raise ModelError(f"run {run_name!r} already exists in {runs_dir}",
                         f"continue it with `--resume --name {run_name}`, or pick another --name")
    return run_dir


def _append_metrics(path: Path, record: dict[str, float | int | bool]) -> None:
    """Rewrite metrics.jsonl atomically, dropping lines a resumed run is about to redo."""
    kept: list[str] = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                if json.loads(line)["epoch"] < record["epoch"]:
                    kept.append(line)
    kept.append(json.dumps(record, sort_keys=True))
    write_bytes_atomic(path, ("\n".join(kept) + "\n").encode())


def train(
    data: Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    runs_dir: Path,
    name: str | None = None,
    device: str = "auto",
    resume: bool = False,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train a VAE and a denoiser on `data` (a folder or a prepared set) into runs_dir/<name>.

    Under torchrun (WORLD_SIZE > 1) every rank trains its share of each batch with DDP; rank 0 alone
    creates the run, writes files and reports, so the run folder is what a single process writes.
    """
    ctx = init_distributed(device)
    reporter = (reporter or SilentReporter()) if ctx.is_main else SilentReporter()
    try:
        if ctx.is_main:
            run_dir, config, checkpoint = _open_run(data, model_config, train_config, runs_dir, name, resume, ctx, reporter)
            images, hashes = load_training_images(data, config.model.image_size, runs_dir / ".cache", reporter)
            (run_dir / "samples").mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(run_dir / CONFIG_NAME, (config.to_json() + "\n").encode())
        run_name = ctx.share_text(run_dir.name if ctx.is_main else "")
        if not ctx.is_main:
            run_dir = runs_dir / run_name
            config = RunConfig.from_dict(json.loads((run_dir / CONFIG_NAME).read_text()))
            checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME) if resume else None
            images, hashes = load_training_images(data, config.model.image_size, runs_dir / ".cache", reporter)
        trainer = Trainer(config, images, hashes, ctx)
        if checkpoint is not None:
            trainer.restore(checkpoint)
        return _run_loop(trainer, run_dir, reporter)
    finally:
        shutdown_distributed()


def _open_run(data: Path, model_config: ModelConfig, train_config: TrainConfig, runs_dir: Path, name: str | None,
              resume: bool, ctx: DistContext, reporter: Reporter) -> tuple[Path, RunConfig, Checkpoint | None]:
    """The run folder, its config and (when resuming) its checkpoint; a new run gets a fresh folder."""
    if resume:
        run_dir = resolve_run(runs_dir, name)
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
        stored = checkpoint.config
        config = replace(stored, train=replace(stored.train, epochs=train_config.epochs or stored.train.epochs,
                                               max_minutes=train_config.max_minutes or stored.train.max_minutes))
        reporter.log(f"resuming {run_dir.name} at epoch {checkpoint.progress.epoch + 1}, step {checkpoint.progress.step}")
        return run_dir, config, checkpoint
    if train_config.epochs is None and train_config.max_minutes is None:
        train_config = replace(train_config, epochs=10)
    model_config.check()
    train_config = replace(train_config, precision=choose_precision(train_config.precision, ctx.device),
                           data_source=str(data), world_size=ctx.world_size)
    run_dir = _new_run_dir(runs_dir, name)
    config = RunConfig(name=run_dir.name, model=model_config, train=train_config,
                       created=time.time(), version=__version__, format_version=FORMAT_VERSION)
    return run_dir, config, None


def _run_loop(trainer: Trainer, run_dir: Path, reporter: Reporter) -> TrainResult:
    config, progress, ctx = trainer.config.train, trainer.progress, trainer.ctx
    total_steps = config.epochs * trainer.batches_per_epoch if config.epochs else None
    budget_s = config.max_minutes * 60.0 if config.max_minutes else None
    session_start, last_save = time.monotonic(), time.monotonic()
    elapsed_before, steps_before = progress.elapsed_s, progress.step
    metrics: dict[str, float] = {}
    losses: dict[str, float] = {}
    interrupted = False
    # The slowest rank's clock: every rank must agree on the learning rate and on when to stop.
    shared_elapsed = elapsed_before

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - session_start

    def fraction() -> float:
        by_steps = progress.step / total_steps if total_steps else 0.0
        by_time = shared_elapsed / budget_s if budget_s else 0.0
        return max(by_steps, by_time)

    def save() -> None:
        nonlocal last_save
        if ctx.is_main:
            progress.elapsed_s = elapsed()
            trainer.save(run_dir / CHECKPOINT_NAME)
        last_save = time.monotonic()

    if progress.step == 0:
        save()  # from the first moment, a killed run can be resumed (and its name is not lost)
    reporter.start(f"training {run_dir.name}", total_steps if total_steps else None)
    reporter.advance(progress.step)
    with _deferred_interrupt() as stop_requested:
        try:
            while (config.epochs is None or progress.epoch < config.epochs) and fraction() < 1.0:
                for indices in trainer.epoch_batches(progress.epoch, progress.batch):
                    trainer.set_lr(fraction())
                    losses = trainer.step(indices)
                    progress.batch += 1
                    reporter.advance(1, epoch=progress.epoch + 1, **losses)
                    shared_elapsed, stop = ctx.max([elapsed(), float(stop_requested())])
                    if stop:
                        raise KeyboardInterrupt
                    if budget_s and shared_elapsed >= budget_s:
                        raise Stop
                    if time.monotonic() - last_save > config.checkpoint_minutes * 60:
                        save()
                progress.elapsed_s = elapsed()
                metrics = _end_epoch(trainer, run_dir, losses, partial=False)
                progress.epoch, progress.batch = progress.epoch + 1, 0
                save()
        except Stop:
            progress.elapsed_s = elapsed()
            metrics = _end_epoch(trainer, run_dir, losses, partial=True)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            reporter.stop()
            save()
    images = (progress.step - steps_before) * config.batch_size
    return TrainResult(run_dir, progress, metrics, str(trainer.device), config.precision, interrupted,
                       images / max(1e-9, time.monotonic() - session_start), ctx.is_main)


def _end_epoch(trainer: Trainer, run_dir: Path, losses: dict[str, float], partial: bool) -> dict[str, float]:
    """Fit the prior, evaluate, write metrics and samples: rank 0 only (the others wait at the next step)."""
    if not trainer.ctx.is_main:
        return {}
    progress = trainer.progress
    trainer.fit_prior()
    metrics = {**{k: round(v, 6) for k, v in losses.items()}, **trainer.evaluate()}
    record = {"epoch": progress.epoch + 1, "step": progress.step, "partial": partial,
              "elapsed_s": round(progress.elapsed_s, 1), **metrics}
    _append_metrics(run_dir / "metrics.jsonl", record)
    save_png_atomic(run_dir / "samples" / f"epoch_{progress.epoch + 1:04d}.png", trainer.sample_sheet())
    return metrics


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Turn the first Ctrl-C into a flag checked between steps, so the checkpoint is taken at a clean point.

    A second Ctrl-C interrupts at once. Outside the main thread (no signal handlers there) this does nothing.
    """
    requested = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:
        yield lambda: False
        return
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)
