"""The training loop for the VAE and the denoiser, with checkpoints, resume, metrics and sample grids."""

from __future__ import annotations

import contextlib
import copy
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
from animevae.training.calibrate import KNEES, calibrate_knee, calibration_rows
from animevae.training.checkpoint import PRIOR_TRAINED, TRAIN_KEYS, Checkpoint, Progress, load_checkpoint, save_checkpoint
from animevae.training.adversarial import PatchDiscriminator, adaptive_weight, generator_loss, hinge_discriminator_loss
from animevae.config import ModelConfig, RunConfig, TrainConfig
from animevae.training.data import (TrainingData, TrainingPixels, hash_keys, load_training_images, rank_share,
                                    split_holdout)
from animevae.training.degrade import degrade_batch, multiscale_crop
from animevae.training.devices import choose_precision
from animevae.training.diffusion import DDIMSampler, LatentDiffusion
from animevae.training.distributed import DistContext, init_distributed, shutdown_distributed
from animevae.errors import DataError, ModelError
from animevae.fileio import contact_sheet, save_png_atomic, to_uint8, write_bytes_atomic
from animevae.labels import Labels
from animevae.training.evaluate import NOISE_SEED, degraded_psnrs, reconstruct
from animevae.training.model import VAE, Denoiser, VAELoss, add_noise, psnr
from animevae.progress import Reporter, SilentReporter
from animevae.runs import CHECKPOINT_NAME, CONFIG_NAME, claim_run_dir, resolve_run

EVAL_SIGMAS = (25, 50)
SAMPLE_COUNT = 16
DENOISER_CROP = 32
PRIOR_BATCH = 256
# A run refits the mixture (12 s on 2 cores for faces-dev: 10 s to encode the 11,000 faces and mirror images,
# 2.5 s of EM) at its first epoch's end, then at most this often, and at its end or interruption: between refits
# the sample sheets draw from the last fit. Refitting at every epoch's end cost a 10-minute run about 2 minutes.
MIXTURE_REFIT_S = 300.0
# The denoiser's gate knee is recalibrated (calibrate.py: 3 s for a fresh denoiser on 2 cores, 10 s for a
# trained one) at most this often, and at the run's end: only checkpoints taken between see an older knee.
CALIBRATION_REFRESH_S = 300.0
# Knees from here up (the last two steps of calibrate.KNEES' grid) leave the gate all but shut.
GATE_SHUT_KNEE = float(KNEES[-2])
# Progress.extra key of the dearest epoch end's seconds (see _run_loop).
END_COST = "end_cost_s"
# Progress.extra: the --max-minutes whose budget ended the run. Resumed under the same budget (whatever its epochs),
# it has nothing left to do, even where its clock says a few seconds are left (its final epoch end ran cheaper
# than the reserve kept for it).
FINISHED_UNDER = "finished_under"


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


def cosine_decay(fraction: float) -> float:
    """Learning-rate scale when `fraction` of a run is done: cosine from 1 down to 5%, then flat."""
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))


def prior_schedule_fraction(steps: int, min_steps: int, elapsed_s: float, seconds: float | None) -> float:
    """How much of the prior's phase is done, for its learning-rate schedule. The phase runs `min_steps` steps
    and, with `seconds`, also until that time is spent: it is as far along as the later of the two ends allows,
    so the rate reaches its floor at the phase's end, not at whichever end comes first."""
    by_steps = steps / min_steps
    return by_steps if seconds is None else min(by_steps, elapsed_s / max(seconds, 1e-9))


class Stop(Exception):
    """Raised inside the loop when the time budget is spent."""


class Trainer:
    """Holds the models, optimisers and data of one run and steps them."""

    def __init__(self, config: RunConfig, data: TrainingData, ctx: DistContext) -> None:
        self.config, self.ctx, self.device = config, ctx, ctx.device
        device = ctx.device
        torch.manual_seed(config.train.seed)
        self.vae = VAE(config.model).to(device, memory_format=torch.channels_last)
        self.denoiser = Denoiser(config.model).to(device, memory_format=torch.channels_last)
        self.discriminator = PatchDiscriminator(config.model).to(device, memory_format=torch.channels_last)
        # The averaged weights serve evaluation, sampling and export; the raw ones keep training.
        self.ema = copy.deepcopy(self.vae).requires_grad_(False) if config.train.ema_decay > 0 else self.vae
        self.prior = LatentDiffusion(config.model).to(device)
        # Under torchrun the steps go through DDP wrappers (gradients averaged across ranks); evaluation,
        # sampling and checkpoints use the plain modules.
        self.vae_step, self.den_step, self.disc_step = self.vae, self.denoiser, self.discriminator
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.vae_step = DistributedDataParallel(self.vae)
            self.den_step = DistributedDataParallel(self.denoiser)
            self.disc_step = DistributedDataParallel(self.discriminator)
        self.loss_fn = VAELoss()
        self.opt_vae = torch.optim.Adam(self.vae.parameters(), lr=config.train.lr)
        self.opt_den = torch.optim.Adam(self.denoiser.parameters(), lr=config.train.denoiser_lr)
        # VQGAN's discriminator betas: a short momentum keeps up with a moving generator.
        self.opt_disc = torch.optim.Adam(self.discriminator.parameters(), lr=config.train.lr, betas=(0.5, 0.9))
        self.opt_prior = torch.optim.Adam(self.prior.parameters(), lr=config.train.prior_lr)
        train_idx, val_idx = split_holdout(data.hashes, len(data.images), config.train.val_size)
        if len(train_idx) == 0:
            raise DataError("the data set has no images left for training", "add more images")
        # (N_train, 3, S, S) uint8, gathered from the (memory-mapped) set batch by batch
        self.train_pixels = TrainingPixels(data.images, train_idx, device)
        self.train_keys = torch.from_numpy(hash_keys([data.hashes[i] for i in train_idx])) \
            if len(data.hashes) == len(data.images) else None
        self.val_pixels = TrainingPixels(data.images, val_idx, device)[:]  # (N_val, 3, S, S) uint8, small: kept
        # (N_train,) class indices for the per-class mixtures; None for an unlabelled set.
        self.train_labels = torch.from_numpy(data.labels.subset(train_idx)) if data.labels is not None else None
        self.generator = torch.Generator()
        self.sample_z = torch.randn(SAMPLE_COUNT, config.model.latent_dim, generator=self.generator.manual_seed(config.train.seed))
        self.sample_u = torch.rand(SAMPLE_COUNT, generator=self.generator)
        self.progress = Progress()
        self.mixture_fitted_at: float | None = None
        self.mixture_fitted_step: int | None = None
        self.calibrated_at: float | None = None
        self.calibrated_step: int | None = None
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

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        """Every module a checkpoint holds, by name (vae_ema only when it is a separate copy)."""
        modules = {"vae": self.vae, "denoiser": self.denoiser, "discriminator": self.discriminator, "prior": self.prior}
        return modules | ({"vae_ema": self.ema} if self.ema is not self.vae else {})

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimiser a checkpoint holds, by name."""
        return {"vae": self.opt_vae, "denoiser": self.opt_den, "discriminator": self.opt_disc, "prior": self.opt_prior}

    def restore(self, checkpoint: Checkpoint) -> None:
        """Load weights, optimiser state and progress from a checkpoint."""
        try:
            for name, module in self.modules.items():
                module.load_state_dict(checkpoint.module_state(name))
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(checkpoint.optimizer_state(name))
        except (RuntimeError, KeyError, ValueError) as error:
            raise ModelError(f"checkpoint does not fit this model: {error}", "start a new run instead") from None
        self.progress = checkpoint.progress
        # Keys of every image any session of the run trained on: a resume on a grown folder adds to them.
        earlier = checkpoint.tensors.get(TRAIN_KEYS)
        if earlier is not None:
            self.train_keys = earlier if self.train_keys is None else torch.unique(torch.cat([earlier, self.train_keys]))

    def save(self, path: Path) -> None:
        """Checkpoint the whole state atomically."""
        save_checkpoint(path, self.config, self.modules, self.optimizers, self.progress, self.generator.get_state(),
                        self.train_keys)

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
        scale = warm * cosine_decay(fraction)
        for optimizer, base in ((self.opt_vae, self.config.train.lr), (self.opt_den, self.config.train.denoiser_lr),
                                (self.opt_disc, self.config.train.lr)):
            for group in optimizer.param_groups:
                group["lr"] = base * scale

    def step(self, indices: torch.Tensor, adversarial: bool = False) -> dict[str, float]:
        """One optimiser step of the VAE (with the adversarial loss and a discriminator step when
        `adversarial`) and one of the denoiser on the same (global) batch of indices; each rank takes its
        share of it."""
        ctx = self.ctx
        self.generator.manual_seed((self.config.train.seed * 7_919 + self.progress.step) * ctx.world_size + ctx.rank)
        batch = self.train_pixels.batch(rank_share(indices, ctx.rank, ctx.world_size))  # (B, 3, S, S)
        flip = torch.rand(len(batch), generator=self.generator) < 0.5
        batch = torch.where(flip.view(-1, 1, 1, 1).to(self.device), batch.flip(3), batch)
        batch = batch.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            recon, posterior = self.vae_step(batch, self.generator)
            loss, mse, kl = self.loss_fn(batch, recon, posterior)
        losses = {"loss": loss, "mse": mse, "kl": kl}
        total = loss
        if adversarial:
            losses.update(self._adversarial_losses(batch, recon, loss))
            total = loss + losses["adv_weight"] * losses["g_loss"]
        self.opt_vae.zero_grad(set_to_none=True)
        total.backward()
        self.opt_vae.step()
        self._update_ema()
        # A diffusion prior trained on the latents before this step no longer models them (a finished run
        # resumed for longer): it is trained again at the run's end.
        self.progress.extra.pop(PRIOR_TRAINED, None)
        if adversarial:
            losses["d_loss"] = self._discriminator_step(batch, recon.detach())
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
        losses["den_mse"] = den_loss
        return ctx.mean({key: float(value.detach()) for key, value in losses.items()})

    def _adversarial_losses(self, batch: torch.Tensor, recon: torch.Tensor,
                            rec_loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decoder's adversarial loss and its adaptive weight. The plain (not DDP) discriminator, frozen,
        judges the reconstructions, so this backward pass leaves the discriminator's gradients alone."""
        self.discriminator.requires_grad_(False)
        with self._autocast():
            g_loss = generator_loss(self.discriminator(recon))
        weight = adaptive_weight(rec_loss, g_loss, self.vae.decoder.conv_out.weight) * self.config.train.adversarial_weight
        self.discriminator.requires_grad_(True)
        return {"g_loss": g_loss, "adv_weight": weight}

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """One hinge-loss step of the discriminator on the first half of the real images and the second half
        of the reconstructions (half the cost of both in full, and never an image beside its own
        reconstruction), as one batch: one forward per backward, as DDP requires. Returns the loss."""
        half = max(1, len(real) // 2)
        with self._autocast():
            logits = self.disc_step(torch.cat([real[:half], fake[half:]]))  # (B, 1, S/8, S/8)
            d_loss = hinge_discriminator_loss(logits[:half], logits[half:])
        self.opt_disc.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_disc.step()
        return d_loss.detach()

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * weights, with the decay ramped up over the first steps (an early
        average of random weights is worthless); BatchNorm statistics too, never the fitted mixture."""
        if self.ema is self.vae:
            return
        decay = min(self.config.train.ema_decay, (1 + self.progress.step) / (10 + self.progress.step))
        current = self.vae.state_dict()
        for key, value in self.ema.state_dict().items():
            if key.startswith("prior_"):
                continue
            if value.is_floating_point():
                value.lerp_(current[key], 1.0 - decay)
            else:
                value.copy_(current[key])

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """On the held-out split, with `animevae evaluate`'s own functions, 256 images at a time: recon PSNR of
        decode(mu), and denoise PSNR beside the noisy input's at sigma 25 and 50 (noise from a fixed seed, so
        epochs and runs compare)."""
        self.ema.eval()
        self.denoiser.eval()
        sums: dict[str, float] = {}
        generator = torch.Generator().manual_seed(NOISE_SEED)
        for begin in range(0, len(self.val_pixels), 256):
            clean = self.val_pixels[begin : begin + 256].float().div_(255.0)
            scores = {"val_psnr": psnr(reconstruct(self.ema, clean), clean)}
            for sigma in EVAL_SIGMAS:
                noise = lambda batch, sigma=sigma: add_noise(batch, float(sigma), generator)  # noqa: E731
                scores[f"denoise_psnr_{sigma}"], scores[f"noisy_psnr_{sigma}"] = degraded_psnrs(self.denoiser,
                                                                                                clean, noise)
            for key, values in scores.items():
                sums[key] = sums.get(key, 0.0) + values.sum().item()
        self.ema.train()
        self.denoiser.train()
        count = max(1, len(self.val_pixels))
        return {key: round(value / count, 3) for key, value in sums.items()}

    @torch.no_grad()
    def posteriors(self, mirrored: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, latent) mu and logvar of the training split under the averaged weights (eval mode); with
        `mirrored`, of the images flipped left-right too (2N rows), as training shows them."""
        self.ema.eval()
        moments = []
        for flip in (False, True) if mirrored else (False,):
            for begin in range(0, len(self.train_pixels), 512):
                clean = self.train_pixels[begin : begin + 512].float().div_(255.0)
                moments.append(self.ema.encoder(clean.flip(3) if flip else clean))
        self.ema.train()
        return torch.cat([m for m, _ in moments]).float(), torch.cat([v for _, v in moments]).float()

    def calibrate_denoiser(self) -> None:
        """Set the denoiser's residual gate knee (calibrate.py) from training faces, as it now stands."""
        rows = calibration_rows(len(self.train_pixels), self.config.train.seed)
        clean = self.train_pixels[rows.to(self.train_pixels.device)].float().div_(255.0)
        self.denoiser.knee.fill_(calibrate_knee(self.denoiser, clean))
        self.calibrated_at, self.calibrated_step = time.monotonic(), self.progress.step

    def fit_prior(self) -> None:
        """Fit the Gaussian mixture to the posteriors of the whole training split and of its mirror images:
        training flips faces, so both are faces the decoder draws, and twice the points carry twice the
        components before they start to copy (on the 10-minute run, 687 components: diversity 0.89, copying
        0.32%; 200 on the unmirrored latents: 0.85; benchmarks/priors.py)."""
        labels = self.train_labels.repeat(2) if self.train_labels is not None else None
        self.ema.fit_prior(*self.posteriors(mirrored=True), seed=self.config.train.seed, labels=labels)
        self.mixture_fitted_at, self.mixture_fitted_step = time.monotonic(), self.progress.step

    def refresh_fits(self, final: bool) -> None:
        """Refit the mixture and recalibrate the gate where due (see `_due`): at an epoch's end, and on an
        interruption (final), so that a checkpoint's mixture and knee fit its weights."""
        step = self.progress.step
        if _due(self.mixture_fitted_at, self.mixture_fitted_step, step, final, MIXTURE_REFIT_S):
            self.fit_prior()
        # A knee at the top of the grid shuts the gate: the denoiser helped no light case yet (a fresh one, 3 s to
        # calibrate). It is recalibrated at every epoch's end until it helps, so that a mid-run export or
        # metrics line does not carry a shut gate for the first refresh interval.
        shut = float(self.denoiser.knee) >= GATE_SHUT_KNEE
        if _due(self.calibrated_at, self.calibrated_step, step, final, 0.0 if shut else CALIBRATION_REFRESH_S):
            self.calibrate_denoiser()

    def train_prior(self, seconds: float | None, reporter: Reporter,
                    stop_requested: Callable[[], bool] = lambda: False) -> dict[str, float]:
        """Train the diffusion prior on the posterior means of the training split and its mirror image, from
        fresh weights (the latents it models are final): prior_steps steps, or with `seconds` (a run on a time
        budget), at least that many and until the time is spent. Without `seconds` it is deterministic."""
        config = self.config.train
        latents = self.posteriors(mirrored=True)[0]  # (2N, latent)
        generator = torch.Generator().manual_seed(config.seed + 17)
        torch.manual_seed(config.seed + 17)
        self.prior = LatentDiffusion(self.config.model).to(self.device)
        self.prior.set_normalisation(latents)
        self.opt_prior = torch.optim.Adam(self.prior.parameters(), lr=config.prior_lr)
        start, steps, total = time.monotonic(), 0, 0.0
        reporter.start("training the latent prior", None)
        while steps < config.prior_steps or (seconds is not None and time.monotonic() - start < seconds):
            done = prior_schedule_fraction(steps, config.prior_steps, time.monotonic() - start, seconds)
            for group in self.opt_prior.param_groups:
                group["lr"] = config.prior_lr * cosine_decay(done)
            batch = latents[torch.randint(len(latents), (PRIOR_BATCH,), generator=generator).to(latents.device)]
            loss = self.prior.loss(batch, generator)
            self.opt_prior.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_prior.step()
            steps, total = steps + 1, total + loss.item()
            reporter.advance(1, prior_loss=loss.item())
            if stop_requested():
                raise KeyboardInterrupt
        reporter.stop()
        self.prior.eval()
        self.progress.extra[PRIOR_TRAINED] = True
        return {"prior_loss": round(total / steps, 5), "prior_steps": steps}

    @property
    def prior_trained(self) -> bool:
        """Whether samples come from the trained diffusion prior (else from the mixture)."""
        return self.config.model.prior == "diffusion" and bool(self.progress.extra.get(PRIOR_TRAINED))

    @torch.no_grad()
    def sample_latents(self) -> torch.Tensor:
        """The sheet's fixed draws, (SAMPLE_COUNT, latent): through the diffusion prior once trained."""
        if self.prior_trained:
            return DDIMSampler(self.prior, self.config.model.prior_sampling_steps)(self.sample_z.to(self.device))
        return self.ema.sample_latent(self.sample_z.to(self.device), self.sample_u.to(self.device))

    @torch.no_grad()
    def sample_sheet(self) -> np.ndarray:
        """Row 1: validation images; row 2: their reconstructions; rows 3-4: samples from fixed latents."""
        self.ema.eval()
        clean = self.val_pixels[:8].float().div_(255.0)
        rows = [clean, self.ema.decoder(self.ema.encode(clean).mode())] if len(clean) else []
        rows.append(self.ema.decoder(self.sample_latents()))
        self.ema.train()
        return contact_sheet(to_uint8(torch.cat(rows).float().cpu().numpy()))


def _due(done_at: float | None, done_step: int | None, step: int, final: bool, every_s: float) -> bool:
    """Whether a fit last done at monotonic time `done_at`, at step `done_step`, is due again at `step`: never
    when the weights have not changed since; else at the end of the run, the first time, or when it is `every_s`
    old (epochs can be seconds)."""
    if done_step == step:
        return False
    if final or done_at is None:
        return True
    return time.monotonic() - done_at >= every_s


def _release_run_dir(run_dir: Path) -> None:
    """Give back a new run's folder when the run fails before writing anything there."""
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only if still empty


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
            try:
                data_set = load_training_images(data, config.model.image_size, runs_dir / ".cache", reporter)
                config = _with_classes(config, data_set.labels, data, resumed=checkpoint is not None)
            except BaseException:
                if checkpoint is None:
                    _release_run_dir(run_dir)
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
        result = _run_loop(trainer, run_dir, reporter)
        del trainer  # its DDP wrappers use the process group: they go before it does
        ctx.barrier()  # an orderly end: every rank has left the last collective while rank 0 wrote the run
        return result
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


def _run_loop(trainer: Trainer, run_dir: Path, reporter: Reporter) -> TrainResult:
    config, progress, ctx = trainer.config.train, trainer.progress, trainer.ctx
    total_steps = config.epochs * trainer.batches_per_epoch if config.epochs else None
    budget_s = config.max_minutes * 60.0 if config.max_minutes else None
    with_prior = trainer.config.model.prior == "diffusion"
    # The VAE phase leaves the last prior_share of the budget to the diffusion prior.
    vae_budget_s = budget_s * (1.0 - config.prior_share) if budget_s and with_prior else budget_s
    session_start, last_save = time.monotonic(), time.monotonic()
    elapsed_before, steps_before = progress.elapsed_s, progress.step
    metrics: dict[str, float] = {}
    losses: dict[str, float] = {}
    interrupted = False
    # The slowest rank's clock: every rank must agree on the learning rate and on when to stop.
    shared_elapsed = elapsed_before
    # The dearest epoch end so far (mixture fit, gate calibration, evaluation, sample sheet; rank 0's, shared,
    # and kept in the checkpoint, so a finished run resumed does not train on into its reserve): a run on a time
    # budget stops that much early, so that its final epoch end fits in the budget too.
    end_cost = float(progress.extra.get(END_COST, 0.0))

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - session_start

    def fraction() -> float:
        by_steps = progress.step / total_steps if total_steps else 0.0
        by_time = (shared_elapsed + end_cost) / vae_budget_s if vae_budget_s else 0.0
        return max(by_steps, by_time)

    def prior_seconds() -> float | None:
        return max(0.0, budget_s - elapsed() - end_cost) if budget_s else None

    def end_epoch(**options: object) -> dict[str, float]:
        started = time.monotonic()
        result = _end_epoch(trainer, run_dir, **options)
        progress.extra[END_COST] = max(progress.extra.get(END_COST, 0.0), time.monotonic() - started)
        return result

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
    finished = config.max_minutes is not None and progress.extra.get(FINISHED_UNDER) == config.max_minutes
    if not finished:
        progress.extra.pop(FINISHED_UNDER, None)  # this session trains: an earlier ending no longer holds
    with _deferred_interrupt() as stop_requested:
        try:
            try:
                while not finished and (config.epochs is None or progress.epoch < config.epochs) and fraction() < 1.0:
                    for indices in trainer.epoch_batches(progress.epoch, progress.batch):
                        trainer.set_lr(fraction())
                        adversarial = config.adversarial_weight > 0 and fraction() >= config.adversarial_start
                        losses = trainer.step(indices, adversarial=adversarial)
                        progress.batch += 1
                        reporter.advance(1, epoch=progress.epoch + 1, **losses)
                        shared_elapsed, stop, end_cost = ctx.max([elapsed(), float(stop_requested()),
                                                                  progress.extra.get(END_COST, 0.0)])
                        if stop:
                            raise KeyboardInterrupt
                        if vae_budget_s and shared_elapsed + end_cost >= vae_budget_s:
                            raise Stop
                        if time.monotonic() - last_save > config.checkpoint_minutes * 60:
                            save()
                    progress.elapsed_s = elapsed()
                    # Also the last when the final epoch end would not fit after this one.
                    last = (config.epochs is not None and progress.epoch + 1 >= config.epochs) or fraction() >= 1.0 \
                        or bool(vae_budget_s and shared_elapsed + 2 * end_cost >= vae_budget_s)
                    metrics = end_epoch(losses=losses, partial=False, final=last)
                    progress.epoch, progress.batch = progress.epoch + 1, 0
                    save()
                    if last:
                        break
            except Stop:
                progress.elapsed_s = elapsed()
                if not with_prior:
                    metrics = end_epoch(losses=losses, partial=True, final=True)
            # Every rank trains the prior (rank 0's is kept): a rank idle at the closing barrier for the prior's
            # share of a long budget would outlast the collectives' timeout and end the run in an error.
            if with_prior and not trainer.prior_trained:
                reporter.stop()
                prior_stats = trainer.train_prior(prior_seconds(), reporter, stop_requested)
                progress.elapsed_s = elapsed()
                # The report of the last (possibly partial) epoch, made again with samples from the new prior.
                metrics = end_epoch(losses={**losses, **prior_stats}, partial=progress.batch > 0, final=True,
                                    epoch=progress.epoch + (1 if progress.batch > 0 else 0))
            if config.max_minutes is not None and (config.epochs is None or progress.epoch < config.epochs):
                progress.extra[FINISHED_UNDER] = config.max_minutes  # the budget ended it, not the epochs
        except KeyboardInterrupt:
            interrupted = True
            if ctx.is_main:
                trainer.refresh_fits(final=True)
        finally:
            reporter.stop()
            save()
    images = (progress.step - steps_before) * config.batch_size
    return TrainResult(run_dir, progress, metrics, str(trainer.device), config.precision, interrupted,
                       images / max(1e-9, time.monotonic() - session_start), ctx.is_main)


def _end_epoch(trainer: Trainer, run_dir: Path, losses: dict[str, float], partial: bool,
               epoch: int | None = None, final: bool = False) -> dict[str, float]:
    """Fit the mixture when due, evaluate, write metrics and samples for epoch number `epoch` (default: the
    one running): rank 0 only (the others wait at the next step)."""
    if not trainer.ctx.is_main:
        return {}
    progress = trainer.progress
    epoch = progress.epoch + 1 if epoch is None else epoch
    trainer.refresh_fits(final)
    metrics = {**{k: round(v, 6) for k, v in losses.items()}, **trainer.evaluate(),
               "denoise_knee": float(trainer.denoiser.knee)}
    record = {"epoch": epoch, "step": progress.step, "partial": partial,
              "elapsed_s": round(progress.elapsed_s, 1), **metrics}
    _append_metrics(run_dir / "metrics.jsonl", record)
    save_png_atomic(run_dir / "samples" / f"epoch_{epoch:04d}.png", trainer.sample_sheet())
    return metrics


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], bool]]:
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
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        yield lambda: False
        return
    try:
        yield lambda: requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
