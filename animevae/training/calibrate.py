"""Calibrating the denoiser's residual gate (shrinkage.py) on training faces: the knee at which lightly
damaged images stop being made worse.

Light cases: JPEG quality 90 and 95 (Pillow's 4:2:0 chroma) and Gaussian noise of sigma 5, each on the same
CALIBRATION_FACES training images drawn at random (seeded) from the whole training split, so every style is
in them. The knee is the smallest on a 0.25 grid up to 32 at which no image of any light case comes out
(rounded to 8 bits, as saved) worse than it went in; if no knee spares every image, the knee with the fewest
made worse. The smallest knee keeps the most of what the model does to heavier damage. Held-out images are
never used: they are what `evaluate` scores.
"""

from __future__ import annotations

import numpy as np
import torch

from animevae.shrinkage import gate_alpha
from animevae.training.degrade import jpeg_batch
from animevae.training.evaluate import as_saved
from animevae.training.model import Denoiser, add_noise

LIGHT_JPEG_QUALITIES = (90, 95)
LIGHT_SIGMA = 5.0
KNEES = np.arange(0.0, 32.0 + 1e-9, 0.25)  # 0-255 scale; 0: no gate
CALIBRATION_FACES = 512
NOISE_SEED = 20_251_127
# A gated change whose largest move (0-255 scale) stays below this rounds back to the input's 8-bit levels.
ROUNDS_AWAY = 0.49


def calibration_rows(count: int, seed: int = 0, faces: int = CALIBRATION_FACES) -> torch.Tensor:
    """(min(count, faces),) indices of a training split of `count` images, drawn at random (a prepared set keeps
    its files in name order, and so its styles in blocks)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[:faces].sort().values


@torch.no_grad()
def calibrate_knee(denoiser: Denoiser, clean: torch.Tensor) -> float:
    """The gate knee for `denoiser` (0-255 scale) from (N, 3, S, S) clean training images in [0, 1]."""
    clean = clean.float().cpu()
    was_training = denoiser.training
    denoiser.eval()
    generator = torch.Generator().manual_seed(NOISE_SEED)
    light = [jpeg_batch(clean, quality) for quality in LIGHT_JPEG_QUALITIES]
    light.append(add_noise(clean, LIGHT_SIGMA, generator))
    device = next(denoiser.parameters()).device
    noisy = torch.cat([as_saved(images) for images in light])  # as a saved file holds it
    output = torch.cat([denoiser(batch.to(device)).float().cpu() for batch in noisy.split(256)])
    denoiser.train(was_training)
    return _smallest_sparing_knee(noisy, output, clean.repeat(len(light), 1, 1, 1))


def _smallest_sparing_knee(noisy: torch.Tensor, output: torch.Tensor, reference: torch.Tensor) -> float:
    """The knee for (M, 3, S, S) saved inputs, the model's outputs and the clean images they came from (consumed).

    Scanned upward, not bisected: the count made worse is not monotone in the knee. A tiny share of the change,
    rounded to 8 bits, keeps only the model's largest moves, and those can be its mistakes."""
    # On the 0-255 scale, the images sorted by the change's size: the images a knee damps (rms < knee) are then
    # a prefix. Of those, an image whose damped change moves no pixel by half a level rounds back to its input,
    # as good as it was: only the others are gated and scored, so the high knees of the grid cost little.
    base = noisy.flatten(1).mul_(255.0)  # (M, P), 8-bit values
    change = output.flatten(1).mul_(255.0).sub_(base)  # (M, P)
    target = reference.flatten(1).mul_(255.0)
    rms = change.pow(2).mean(1).sqrt()  # (M,)
    rms, order = rms.sort()
    base, change, target = base[order], change[order], target[order]
    peak = change.abs().amax(1)  # (M,) the largest move of each image
    before = _squared_error_255(base.clone(), target)  # (M,)
    ungated_worse = _squared_error_255(base + change, target) > before
    best, fewest = 0.0, None
    for knee in KNEES:
        damped = int(torch.searchsorted(rms, torch.tensor([knee], dtype=rms.dtype)))  # rms < knee: a prefix
        worse = int(ungated_worse[damped:].sum())
        if damped:
            alpha = gate_alpha(rms[:damped], float(knee))  # (damped,)
            # Below 0.49 (not 0.5): the inputs are 8-bit levels only to float32's precision.
            moving = (alpha * peak[:damped] >= ROUNDS_AWAY).nonzero().flatten()
            gated = torch.addcmul(base[moving], change[moving], alpha[moving, None])
            worse += int((_squared_error_255(gated, target[moving]) > before[moving]).sum())
        if fewest is None or worse < fewest:
            best, fewest = float(knee), worse
        if worse == 0:
            break
    return best


def _squared_error_255(images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image squared error of (N, P) 0-255 `images` rounded to 8 bits, as saved, against `target`, (N,)
    float64 (float32 sums of 8-bit squares lose units). In place. Halves round up, as fileio.to_uint8 saves them."""
    return images.add_(0.5).floor_().clamp_(0.0, 255.0).sub_(target).square_().sum(1, dtype=torch.float64)
