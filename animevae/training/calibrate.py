"""Calibrating the denoiser's residual gate (shrinkage.py) on training faces: the knee at which lightly
damaged images stop being made worse.

Light cases: JPEG quality 90 and 95 (Pillow's 4:2:0 chroma) and Gaussian noise of sigma 5. The knee is the
smallest on a 0.25 grid at which no face of any light case comes out (rounded to 8 bits, as saved) worse than
it went in (where none does, the one that spares the most); the smallest knee keeps the most of what the
model does to heavier damage. Held-out faces are
never used: they are what `evaluate` scores.
"""

from __future__ import annotations

import numpy as np
import torch

from animevae.shrinkage import gate_residual
from animevae.training.degrade import jpeg_batch
from animevae.training.model import Denoiser, add_noise

LIGHT_JPEG_QUALITIES = (90, 95)
LIGHT_SIGMA = 5.0
KNEES = np.arange(0.0, 32.0 + 1e-9, 0.25)  # 0-255 scale; 0: no gate
CALIBRATION_FACES = 256
NOISE_SEED = 20_251_127


@torch.no_grad()
def calibrate_knee(denoiser: Denoiser, clean: torch.Tensor) -> float:
    """The gate knee for `denoiser` (0-255 scale) from (N, 3, S, S) clean training images in [0, 1] (at most
    CALIBRATION_FACES used)."""
    clean = clean[:CALIBRATION_FACES].float().cpu()
    was_training = denoiser.training
    denoiser.eval()
    generator = torch.Generator().manual_seed(NOISE_SEED)
    light = [jpeg_batch(clean, quality) for quality in LIGHT_JPEG_QUALITIES]
    light.append(add_noise(clean, LIGHT_SIGMA, generator))
    device = next(denoiser.parameters()).device
    cases = []  # (noisy, output, squared error before) per light case
    for noisy in light:
        noisy = torch.round(noisy * 255.0) / 255.0  # as a saved file holds it
        cases.append((noisy, denoiser(noisy.to(device)).float().cpu(), (noisy - clean).pow(2).flatten(1).sum(1)))
    denoiser.train(was_training)
    # Scanned upward, not bisected: the count is not monotone in the knee. A tiny share of the change, rounded
    # to 8 bits, keeps only the model's largest moves, and those can be its mistakes.
    best, fewest = 0.0, None
    for knee in KNEES:
        worse = sum(int((_squared_error(gate_residual(noisy, output, float(knee)), clean) > before).sum())
                    for noisy, output, before in cases)
        if fewest is None or worse < fewest:
            best, fewest = float(knee), worse
        if worse == 0:
            break
    return best


def _squared_error(images: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per-image squared error of `images` rounded to 8 bits, as saved, against `clean`, (N,)."""
    return (torch.round(images.clamp(0.0, 1.0) * 255.0) / 255.0 - clean).pow(2).flatten(1).sum(1)
