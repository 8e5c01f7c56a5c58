"""A run's denoiser as it trains, shared by `animevae train` (trainer.py, one denoiser step per VAE step) and
`animevae train-denoiser` (denoiser_run.py): the module and its optimiser, its step on degraded multi-scale crops,
its gate's calibration, and the built-in denoiser it starts from and is judged against (denoiser_judge.py)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F

from animevae.config import RunConfig
from animevae.training.calibrate import calibrate_knee
from animevae.training.checkpoint import Checkpoint
from animevae.training.degrade import degrade_pairs, multiscale_crop, with_synthetic
from animevae.training.denoiser_judge import REFERENCE, Judgement, judge
from animevae.training.evaluate import denoiser_scores
from animevae.training.denoiser_start import BUILTIN, builtin_state
from animevae.training.model import Denoiser

DENOISER_CROP = 32


class DenoiserTraining:
    """The denoiser, its optimiser (stepped through `wrap`'s module: DDP under torchrun) and its reference: the
    built-in denoiser where its shapes fit the run's config, else None."""

    def __init__(self, config: RunConfig, device: torch.device,
                 wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda module: module) -> None:
        self.sigma_max, self.synthetic_share = config.train.noise_sigma_max, config.train.synthetic_share
        self.denoiser = Denoiser(config.model).to(device, memory_format=torch.channels_last)
        state, _ = builtin_state(config.model)
        if state is not None and config.train.denoiser_start == BUILTIN:
            self.denoiser.load_state_dict(state)  # a resumed run's checkpoint replaces these
        self.reference: Denoiser | None = None
        if state is not None:  # a copy, not a new module: building one would draw from the global generator
            self.reference = copy.deepcopy(self.denoiser).eval().requires_grad_(False)
            self.reference.load_state_dict(state)
        self.optimizer = torch.optim.Adam(self.denoiser.parameters(), lr=config.train.denoiser_lr)
        self.stepped = wrap(self.denoiser)
        self._reference_scores: dict[str, float] | None = None

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        """The modules a checkpoint holds, by name: the denoiser, and the reference where there is one."""
        return {"denoiser": self.denoiser, **({REFERENCE: self.reference} if self.reference is not None else {})}

    def restore(self, checkpoint: Checkpoint) -> None:
        """Load the denoiser (and the reference, where the checkpoint has one: a run keeps the reference it was
        judged against, whatever built-in model a later animevae ships) and the optimiser state."""
        self.denoiser.load_state_dict(checkpoint.module_state("denoiser"))
        if self.reference is not None and checkpoint.module_state(REFERENCE):
            self.reference.load_state_dict(checkpoint.module_state(REFERENCE))
            self._reference_scores = None
        self.optimizer.load_state_dict(checkpoint.optimizer_state("denoiser"))

    def step(self, batch: torch.Tensor, generator: torch.Generator,
             autocast: contextlib.AbstractContextManager[None]) -> torch.Tensor:
        """One optimiser step on (B, 3, S, S) clean images in [0, 1]: windows of 1-2 crop sides resized to
        DENOISER_CROP (4x cheaper steps than whole images, the same conv weights), each degraded its own way, every
        draw from `generator`. Returns the loss, detached."""
        crops = multiscale_crop(batch, DENOISER_CROP, generator)  # (B, 3, c, c)
        crops = with_synthetic(crops, self.synthetic_share, generator)
        # The target is the crop itself, or its resampled self when the path resizes it (degrade.py).
        target, noisy = degrade_pairs(crops, generator, self.sigma_max)
        with autocast:
            loss = F.mse_loss(self.stepped(noisy).float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), 1.0)
        self.optimizer.step()
        return loss.detach()

    def calibrate(self, clean: torch.Tensor) -> None:
        """Set the gate's knee (calibrate.py) from (N, 3, S, S) clean training images in [0, 1]."""
        self.denoiser.knee.fill_(calibrate_knee(self.denoiser, clean))

    def judge(self, held_out: torch.Tensor, step: int, run_scores: dict[str, float] | None = None) -> Judgement | None:
        """The run's denoiser against the reference on (N, 3, S, S) uint8 held-out faces (`run_scores`: the run's
        own, where already measured); None without a reference or held-out faces."""
        reference = self.reference_scores(held_out)
        if reference is None:
            return None
        return judge(run_scores or denoiser_scores(self.denoiser, held_out), reference, step)

    def reference_scores(self, held_out: torch.Tensor) -> dict[str, float] | None:
        """The reference's scores on (N, 3, S, S) uint8 held-out faces, taken once (neither changes within a
        session); None without a reference or held-out faces."""
        if self.reference is None or len(held_out) == 0:
            return None
        if self._reference_scores is None:
            self._reference_scores = denoiser_scores(self.reference, held_out)
        return self._reference_scores
