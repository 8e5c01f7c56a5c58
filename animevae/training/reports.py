"""What a run reports while it trains: the fits due, scores on fixed-size held-out sets, a line in
metrics.jsonl and a sample sheet. Each report costs the same whatever the folder's size."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from animevae.fileio import contact_sheet, save_png_atomic, to_uint8, write_bytes_atomic
from animevae.training.evaluate import EVAL_FACES, denoiser_scores, reconstruct, swd_array
from animevae.training.swd import swd
from animevae.training.model import psnr
from animevae.training.trainer import SAMPLE_COUNT, Trainer, sample_rows

# Images a side for the final report's sliced Wasserstein distance: `animevae evaluate` uses more; this many keep
# the final report's cost (and so the reserve the budget keeps for it) small.
SWD_IMAGES = 128


@torch.no_grad()
def evaluate(trainer: Trainer) -> dict[str, float]:
    """On the held-out split, with `animevae evaluate`'s own functions, 256 images at a time: recon PSNR of
    decode(mu), and the denoiser's scores (denoiser_judge.denoiser_scores: sigma 25 and 50 from a fixed seed, so
    reports and runs compare, and JPEG quality 20)."""
    trainer.ema.eval()
    total = 0.0
    held_out = trainer.val_pixels[:EVAL_FACES]
    for begin in range(0, len(held_out), 256):
        clean = held_out[begin : begin + 256].float().div_(255.0)  # (b, 3, S, S)
        total += psnr(reconstruct(trainer.ema, clean), clean).sum().item()
    trainer.ema.train()
    scores = {"val_psnr": round(total / max(1, len(held_out)), 3)} if len(held_out) else {}
    return scores | denoiser_scores(trainer.denoiser, held_out)


@torch.no_grad()
def sample_latents(trainer: Trainer) -> torch.Tensor:
    """The sheet's fixed draws, (SAMPLE_COUNT, latent): through the diffusion prior once trained."""
    if trainer.prior_trained:
        from animevae.training.diffusion import DDIMSampler

        return DDIMSampler(trainer.prior, trainer.config.model.prior_sampling_steps)(trainer.sample_z.to(trainer.device))
    return trainer.ema.sample_latent(trainer.sample_z.to(trainer.device), trainer.sample_u.to(trainer.device))


@torch.no_grad()
def sample_sheet(trainer: Trainer) -> np.ndarray:
    """Row 1: validation images; row 2: their reconstructions; rows 3-4: samples from fixed latents."""
    trainer.ema.eval()
    clean = trainer.val_pixels[:8].float().div_(255.0)
    rows = [clean, trainer.ema.decoder(trainer.ema.encode(clean).mode())] if len(clean) else []
    rows.append(trainer.ema.decoder(sample_latents(trainer)))
    trainer.ema.train()
    return contact_sheet(to_uint8(torch.cat(rows).float().cpu().numpy()))


@torch.no_grad()
def swd_metrics(trainer: Trainer) -> dict[str, float]:
    """SWD per level (swd_64, swd_32, swd_16 for 64x64 images) of SWD_IMAGES samples against as many training
    faces; `animevae evaluate` gives the floor (held-out faces against training faces) beside it."""
    trainer.ema.eval()
    generator = torch.Generator().manual_seed(trainer.config.train.seed + 31)
    eps = torch.randn(SWD_IMAGES, trainer.config.model.latent_dim, generator=generator)
    if trainer.prior_trained:
        from animevae.training.diffusion import DDIMSampler

        latents = DDIMSampler(trainer.prior, trainer.config.model.prior_sampling_steps)(eps.to(trainer.device))
    else:
        uniform = torch.rand(SWD_IMAGES, generator=generator)
        latents = trainer.ema.sample_latent(eps.to(trainer.device), uniform.to(trainer.device))
    samples = trainer.ema.decoder(latents).float().cpu()  # (n, 3, S, S)
    trainer.ema.train()
    rows = sample_rows(len(trainer.train_pixels), SWD_IMAGES, trainer.config.train.seed + 31)
    train_faces = trainer.train_pixels.batch(rows).cpu()  # (n, 3, S, S) in [0, 1]
    count = min(len(samples), len(train_faces))
    scores = swd(swd_array(samples[:count]), swd_array(train_faces[:count]))
    return {f"swd_{side}": value for side, value in scores.items()}


def report(trainer: Trainer, run_dir: Path, losses: dict[str, float], partial: bool, epoch: int | None = None,
           final: bool = False) -> dict[str, float]:
    """Refit what is due, score, and write the metrics line and sample sheet of epoch number `epoch` (default:
    the one running); rank 0 only (the others wait at the next step). Returns the metrics."""
    if not trainer.ctx.is_main:
        return {}
    progress, budget = trainer.progress, trainer.budget
    epoch = progress.epoch + 1 if epoch is None else epoch
    trainer.refresh_fits(final)
    scores = evaluate(trainer)
    judgement = trainer.judge_denoiser(scores)
    if judgement is not None and final:
        trainer.log(judgement.line())
    metrics = {**{k: round(v, 6) for k, v in losses.items()}, **scores, "denoise_knee": float(trainer.denoiser.knee),
               **(judgement.metrics if judgement is not None else {})}
    if final and (trainer.prior is None or trainer.prior_trained):  # a prior phase to come reports again
        trainer.log(f"scoring {SWD_IMAGES} samples by sliced Wasserstein distance ...")
        metrics |= swd_metrics(trainer)
    budget.sync()
    record = {"epoch": epoch, "step": progress.step, "partial": partial, "elapsed_s": round(budget.elapsed_s, 1),
              "overhead_s": round(budget.overhead_s, 1), **metrics}
    append_metrics(run_dir / "metrics.jsonl", record)
    save_png_atomic(run_dir / "samples" / f"epoch_{epoch:04d}.png", sample_sheet(trainer))
    return metrics


def append_metrics(path: Path, record: dict[str, float | int | bool]) -> None:
    """Rewrite metrics.jsonl atomically with `record` last, dropping lines of its step or later: a resumed run
    redoes them, a report made again replaces its line."""
    kept: list[str] = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if json.loads(line)["step"] < record["step"]:
                    kept.append(line)
    kept.append(json.dumps(record, sort_keys=True))
    write_bytes_atomic(path, ("\n".join(kept) + "\n").encode())
