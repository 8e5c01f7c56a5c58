"""The Trainer: one run's models, optimisers and data, its training step, and the fits that follow the weights
(the latent mixture, the denoiser's gate). The adversarial and diffusion-prior modules are built, checkpointed
and even imported only when the run asks for them."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from animevae.config import ModelConfig, RunConfig
from animevae.training.data import TrainingData, TrainingPixels, hash_keys, rank_share, split_holdout
from animevae.errors import DataError, ModelError
from animevae.training.budget import Budget
from animevae.training.calibrate import CALIBRATION_FACES, KNEES, calibration_rows
from animevae.training.checkpoint import PRIOR_TRAINED, TRAIN_KEYS, Checkpoint, Progress, save_checkpoint
from animevae.training.denoiser_judge import JUDGED, Judgement
from animevae.training.evaluate import EVAL_FACES
from animevae.training.denoiser_training import DenoiserTraining
from animevae.training.distributed import DistContext
from animevae.training.model import VAE, DIAGONAL_POINTS_PER_COMPONENT, VAELoss

SAMPLE_COUNT = 16
# Fits follow the weights by the clock, not by epochs: an epoch of a big folder outlasts a whole run, one of a
# small folder takes seconds. The mixture is fitted at the first report, then at most this often, and at the
# run's end or interruption; between fits the sample sheets draw from the last one.
MIXTURE_REFIT_S = 300.0
# Faces (each with its mirror image) whose latents the run's final mixture is fitted on: enough for the default
# mixture's components at DIAGONAL_POINTS_PER_COMPONENT latents each, and a fixed cost whatever the folder's
# size. A seeded sample of the whole split, so every style is in it.
MIXTURE_FACES = ModelConfig().prior_components * DIAGONAL_POINTS_PER_COMPONENT // 2
# The fits before the final one only serve sample sheets and mid-run checkpoints: smaller samples keep them
# cheap (a sheet's 16 draws need no more; the final fits, which export uses, take the full counts).
SHEET_MIXTURE_FACES = 256
MIDRUN_CALIBRATION_FACES = 128
# The gate knee is recalibrated (calibrate.py, on a fixed number of faces) at most this often, and at the run's
# end: only checkpoints taken between see an older knee.
CALIBRATION_REFRESH_S = 300.0
# Knees from here up (the last two steps of calibrate.KNEES' grid) leave the gate all but shut.
GATE_SHUT_KNEE = float(KNEES[-2])
# A shut gate is recalibrated sooner, but at most this often: a small folder's epochs end every few seconds, and a
# calibration that finds no sparing knee scans the whole grid.
SHUT_GATE_REFRESH_S = 60.0


def cosine_decay(fraction: float) -> float:
    """Learning-rate scale when `fraction` of a run is done: cosine from 1 down to 5%, then flat."""
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))


def sample_rows(count: int, size: int, seed: int) -> torch.Tensor:
    """(min(count, size),) sorted indices of a seeded sample of `count` rows (a prepared set keeps its files in
    name order, and so its styles in blocks)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:size].sort().values


class Trainer:
    """Holds the models, optimisers and data of one run and steps them."""

    def __init__(self, config: RunConfig, data: TrainingData, ctx: DistContext) -> None:
        self.config, self.ctx, self.device = config, ctx, ctx.device
        device = ctx.device
        torch.manual_seed(config.train.seed)
        self.vae = VAE(config.model).to(device, memory_format=torch.channels_last)
        # Under torchrun the steps go through DDP wrappers (gradients averaged across ranks); evaluation,
        # sampling and checkpoints use the plain modules.
        self.den = DenoiserTraining(config, device, self._wrapped)
        self.denoiser, self.opt_den = self.den.denoiser, self.den.optimizer
        # The averaged weights serve evaluation, sampling and export; the raw ones keep training.
        self.ema = copy.deepcopy(self.vae).requires_grad_(False) if config.train.ema_decay > 0 else self.vae
        self.loss_fn = VAELoss()
        self.opt_vae = torch.optim.Adam(self.vae.parameters(), lr=config.train.lr)
        self.vae_step = self._wrapped(self.vae)
        self.discriminator = self.disc_step = self.opt_disc = None
        if config.train.adversarial_weight > 0:
            self._build_discriminator()
        self.prior = self.opt_prior = None
        if config.model.prior == "diffusion":
            from animevae.training.diffusion import LatentDiffusion

            self.prior = LatentDiffusion(config.model).to(device)
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
        self.budget = Budget(config.train.max_minutes, config.train.prior_share if self.prior is not None else 0.0)
        # Where the long fits say what they are doing (the loop points it at its reporter).
        self.log: Callable[[str], None] = lambda message: None
        self.mixture_fitted_at: float | None = None
        self.mixture_fitted_step: int | None = None
        self.mixture_full = False
        # Seconds the full fit is expected to cost beyond the last smaller one (None until one ran): the budget
        # keeps them in reserve for the final report.
        self.full_fit_extra_s: float | None = None
        self.calibrated_at: float | None = None
        self.calibrated_step: int | None = None
        self.autocast_dtype = torch.bfloat16 if config.train.precision == "bf16" else None

    def _wrapped(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.ctx.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module)

    def _build_discriminator(self) -> None:
        from animevae.training.adversarial import PatchDiscriminator

        self.discriminator = PatchDiscriminator(self.config.model).to(self.device, memory_format=torch.channels_last)
        self.disc_step = self._wrapped(self.discriminator)
        # VQGAN's discriminator betas: a short momentum keeps up with a moving generator.
        self.opt_disc = torch.optim.Adam(self.discriminator.parameters(), lr=self.config.train.lr, betas=(0.5, 0.9))

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
        """Every module a checkpoint holds, by name (vae_ema only when it is a separate copy; the discriminator
        and the prior only when the run uses them; the denoiser's reference only where the built-in one fits)."""
        modules = {"vae": self.vae, **self.den.modules, "discriminator": self.discriminator, "prior": self.prior}
        modules |= {"vae_ema": self.ema} if self.ema is not self.vae else {}
        return {name: module for name, module in modules.items() if module is not None}

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimiser a checkpoint holds, by name."""
        optimizers = {"vae": self.opt_vae, "denoiser": self.opt_den, "discriminator": self.opt_disc,
                      "prior": self.opt_prior}
        return {name: optimizer for name, optimizer in optimizers.items() if optimizer is not None}

    def restore(self, checkpoint: Checkpoint) -> None:
        """Load weights, optimiser state and progress from a checkpoint."""
        try:
            for name, module in self.modules.items():
                if name not in self.den.modules:
                    module.load_state_dict(checkpoint.module_state(name))
            for name, optimizer in self.optimizers.items():
                if optimizer is not self.opt_den:
                    optimizer.load_state_dict(checkpoint.optimizer_state(name))
            self.den.restore(checkpoint)
        except (RuntimeError, KeyError, ValueError) as error:
            raise ModelError(f"checkpoint does not fit this model: {error}", "start a new run instead") from None
        self.progress = checkpoint.progress
        self.budget = Budget.restored(checkpoint.budget, self.budget.max_minutes, self.budget.prior_share)
        # Keys of every image any session of the run trained on: a resume on a grown folder adds to them.
        earlier = checkpoint.tensors.get(TRAIN_KEYS)
        if earlier is not None:
            self.train_keys = earlier if self.train_keys is None else torch.unique(torch.cat([earlier, self.train_keys]))

    def save(self, path: Path) -> None:
        """Checkpoint the whole state atomically."""
        save_checkpoint(path, self.config, self.modules, self.optimizers, self.progress, self.generator.get_state(),
                        self.budget.record(), self.train_keys)

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
            for group in optimizer.param_groups if optimizer is not None else ():
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
        losses["den_mse"] = self.den.step(batch, self.generator, self._autocast())
        self.progress.step += 1
        return ctx.mean({key: float(value.detach()) for key, value in losses.items()})

    def _adversarial_losses(self, batch: torch.Tensor, recon: torch.Tensor,
                            rec_loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decoder's adversarial loss and its adaptive weight. The plain (not DDP) discriminator, frozen,
        judges the reconstructions, so this backward pass leaves the discriminator's gradients alone."""
        from animevae.training.adversarial import adaptive_weight, generator_loss

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
        from animevae.training.adversarial import hinge_discriminator_loss

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

    @property
    def prior_trained(self) -> bool:
        """Whether samples come from the trained diffusion prior (else from the mixture)."""
        return self.prior is not None and bool(self.progress.extra.get(PRIOR_TRAINED))

    @torch.no_grad()
    def posteriors(self, rows: torch.Tensor, mirrored: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, latent) mu and logvar of the training split's (N,) `rows` under the averaged weights (eval mode);
        with `mirrored`, of the images flipped left-right too (2N rows: all unflipped first), as training shows
        them."""
        self.ema.eval()
        moments = []
        for flip in (False, True) if mirrored else (False,):
            for chunk in rows.split(512):
                clean = self.train_pixels.batch(chunk)  # (b, 3, S, S)
                moments.append(self.ema.encoder(clean.flip(3) if flip else clean))
        self.ema.train()
        return torch.cat([m for m, _ in moments]).float(), torch.cat([v for _, v in moments]).float()

    def calibrate_denoiser(self, full: bool = True) -> None:
        """Set the denoiser's residual gate knee (calibrate.py) from training faces, as it now stands: on
        CALIBRATION_FACES of them, or MIDRUN_CALIBRATION_FACES unless `full`."""
        faces = CALIBRATION_FACES if full else MIDRUN_CALIBRATION_FACES
        rows = calibration_rows(len(self.train_pixels), self.config.train.seed, faces)
        self.den.calibrate(self.train_pixels.batch(rows))
        self.calibrated_at, self.calibrated_step = time.monotonic(), self.progress.step

    def judge_denoiser(self, run_scores: dict[str, float] | None = None) -> Judgement | None:
        """Judge the denoiser against the built-in one on EVAL_FACES held-out faces (`run_scores`: its own scores
        there, where a report has them) and record which the run keeps (denoiser_judge.py); None where the
        built-in one does not fit, nothing is held out, or the weights were judged as they are."""
        if run_scores is None and self.progress.extra.get(JUDGED, {}).get("step") == self.progress.step:
            return None
        judgement = self.den.judge(self.val_pixels[:EVAL_FACES], self.progress.step, run_scores)
        if judgement is not None:
            judgement.record(self.progress)
        return judgement

    def fit_prior(self, full: bool = True) -> None:
        """Fit the Gaussian mixture to the posteriors of a seeded sample of training faces (MIXTURE_FACES, or
        SHEET_MIXTURE_FACES unless `full`) and of their mirror images: training flips faces, so both are faces
        the decoder draws, and twice the points carry twice the components before they copy."""
        started = time.monotonic()
        faces = MIXTURE_FACES if full else SHEET_MIXTURE_FACES
        rows = sample_rows(len(self.train_pixels), faces, self.config.train.seed)
        labels = self.train_labels[rows].repeat(2) if self.train_labels is not None else None
        self.ema.fit_prior(*self.posteriors(rows, mirrored=True), seed=self.config.train.seed, labels=labels)
        self.mixture_fitted_at, self.mixture_fitted_step = time.monotonic(), self.progress.step
        self.mixture_full = full
        if not full:  # encoding dominates a fit: its cost grows about as the faces do
            ratio = min(len(self.train_pixels), MIXTURE_FACES) / max(1, min(len(self.train_pixels), faces))
            self.full_fit_extra_s = (time.monotonic() - started) * (ratio - 1.0)

    def refresh_fits(self, final: bool) -> None:
        """Refit the mixture and recalibrate the gate where due (see `_due`): at a report, and at the run's end
        or interruption (final), so that a checkpoint's mixture and knee fit its weights.

        The final fit is full; those before, on fewer faces, only serve sample sheets and mid-run checkpoints
        (and tell the budget what the full one will cost)."""
        step = self.progress.step
        if _due(self.mixture_fitted_at, self.mixture_fitted_step, step, final, MIXTURE_REFIT_S) \
                or (final and not self.mixture_full):
            faces = min(len(self.train_pixels), MIXTURE_FACES if final else SHEET_MIXTURE_FACES)
            self.log(f"fitting the latent mixture on {2 * faces:,} latents (faces and their mirror images) ...")
            self.fit_prior(final)
        # A knee at the top of the grid shuts the gate: the denoiser helped no light case yet. It is recalibrated
        # sooner until it helps, so that a mid-run export or metrics line does not carry a shut gate for the
        # first refresh interval.
        shut = float(self.denoiser.knee) >= GATE_SHUT_KNEE
        every_s = min(SHUT_GATE_REFRESH_S, CALIBRATION_REFRESH_S) if shut else CALIBRATION_REFRESH_S
        if _due(self.calibrated_at, self.calibrated_step, step, final, every_s):
            faces = min(len(self.train_pixels), CALIBRATION_FACES if final else MIDRUN_CALIBRATION_FACES)
            self.log(f"calibrating the denoiser's gate on {faces:,} faces ...")
            self.calibrate_denoiser(final)

def _due(done_at: float | None, done_step: int | None, step: int, final: bool, every_s: float) -> bool:
    """Whether a fit last done at monotonic time `done_at`, at step `done_step`, is due again at `step`: never
    when the weights have not changed since; else at the end of the run, the first time, or when it is `every_s`
    old."""
    if done_step == step:
        return False
    if final or done_at is None:
        return True
    return time.monotonic() - done_at >= every_s
