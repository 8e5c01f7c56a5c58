"""The diffusion prior's phase (--prior diffusion): trained last, on the final latents, in what the budget
leaves. Imported only by runs that use it."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from animevae.progress import Reporter
from animevae.training.checkpoint import PRIOR_TRAINED
from animevae.training.diffusion import LatentDiffusion
from animevae.training.trainer import Trainer, cosine_decay, sample_rows

PRIOR_BATCH = 256
# Faces (with their mirror images) whose latents the prior trains on: a fixed sample, so the phase's set-up
# costs the same for any folder.
PRIOR_FACES = 16_384


def prior_schedule_fraction(steps: int, min_steps: int, elapsed_s: float, seconds: float | None) -> float:
    """How much of the prior's phase is done, for its learning-rate schedule. The phase runs `min_steps` steps
    and, with `seconds`, also until that time is spent: it is as far along as the later of the two ends allows,
    so the rate reaches its floor at the phase's end, not at whichever end comes first."""
    by_steps = steps / min_steps
    return by_steps if seconds is None else min(by_steps, elapsed_s / max(seconds, 1e-9))


def train_prior(trainer: Trainer, seconds: float | None, reporter: Reporter,
                stop_requested: Callable[[], bool] = lambda: False) -> dict[str, float]:
    """Train the trainer's diffusion prior on the posterior means of a seeded sample of training faces and their
    mirror images, from fresh weights (the latents it models are final): prior_steps steps, or with `seconds`
    (a run on a time budget), at least that many and until the time is spent. Without `seconds` it is
    deterministic."""
    config = trainer.config.train
    rows = sample_rows(len(trainer.train_pixels), PRIOR_FACES, config.seed)
    latents = trainer.posteriors(rows, mirrored=True)[0]  # (2N, latent)
    generator = torch.Generator().manual_seed(config.seed + 17)
    torch.manual_seed(config.seed + 17)
    trainer.prior = prior = LatentDiffusion(trainer.config.model).to(trainer.device)
    prior.set_normalisation(latents)
    trainer.opt_prior = optimizer = torch.optim.Adam(prior.parameters(), lr=config.prior_lr)
    start, steps, total = time.monotonic(), 0, 0.0
    reporter.start("training the latent prior", None)
    while steps < config.prior_steps or (seconds is not None and time.monotonic() - start < seconds):
        done = prior_schedule_fraction(steps, config.prior_steps, time.monotonic() - start, seconds)
        for group in optimizer.param_groups:
            group["lr"] = config.prior_lr * cosine_decay(done)
        batch = latents[torch.randint(len(latents), (PRIOR_BATCH,), generator=generator).to(latents.device)]
        loss = prior.loss(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps, total = steps + 1, total + loss.item()
        reporter.advance(1, prior_loss=loss.item())
        if stop_requested():
            raise KeyboardInterrupt
    reporter.stop()
    prior.eval()
    trainer.progress.extra[PRIOR_TRAINED] = True
    return {"prior_loss": round(total / steps, 5), "prior_steps": steps}
