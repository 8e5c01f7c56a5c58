"""The denoiser's residual gate: how much of the model's change to keep, decided per image from the change's size.

A blind denoiser trained on heavy and light damage alike over-corrects nearly clean input: on faces saved as
JPEG quality 90 about half of what it changes is its own error, and one face in ten came out worse than it
went in. The gate keeps input + alpha * (output - input), alpha = min(1, (rms / knee)^2), where rms is the
root-mean-square change over the whole image on the 0-255 scale. Heavy damage (rms well above the knee)
passes untouched; light damage is damped, quadratically, as a Wiener-like shrinkage would. The knee is
calibrated per run on training faces (training/calibrate.py) and travels in the denoiser's ONNX metadata;
0 turns the gate off. Whole-image, not per tile: a tiled image is gated once, as an untiled run would be.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

# numpy arrays or torch tensors: the same arithmetic serves onnxruntime's outputs and the training side.
Images = TypeVar("Images")
ROWS_PER_CHUNK = 256  # rows of a large uint8 image converted to float at a time: bounded memory
# Where a denoiser file carries its knee: ONNX metadata written by `animevae export`, read by runtime.py.
RESIDUAL_KNEE_KEY = "animevae.residual_knee"


def gate_alpha(rms_255: Images, knee: float) -> Images:
    """The share of the change kept for a change of root-mean-square `rms_255` (0-255 scale), in [0, 1]."""
    return ((rms_255 / knee) ** 2).clip(max=1.0)


def gate_residual(noisy: Images, denoised: Images, knee: float) -> Images:
    """(N, ...) float images in [0, 1], the model's input and output -> the gated output, same shape and type."""
    if knee <= 0:
        return denoised
    change = denoised - noisy
    flat = change.reshape(len(change), -1)
    alpha = gate_alpha((flat * flat).mean(1) ** 0.5 * 255.0, knee)  # (N,)
    return noisy + alpha.reshape((-1,) + (1,) * (change.ndim - 1)) * change


def gate_large_image(noisy: np.ndarray, denoised: np.ndarray, knee: float) -> np.ndarray:
    """(H, W, C) uint8 input and output of one (tiled) image -> the gated output, uint8, a few rows at a time
    (a 4000x3000 image in float would cost 144 MB per copy)."""
    if knee <= 0:
        return denoised
    chunks = range(0, len(noisy), ROWS_PER_CHUNK)
    square_sum = sum(float(np.square(denoised[r : r + ROWS_PER_CHUNK].astype(np.float32)
                                     - noisy[r : r + ROWS_PER_CHUNK]).sum(dtype=np.float64)) for r in chunks)
    alpha = float(gate_alpha(np.float64((square_sum / noisy.size) ** 0.5), knee))
    if alpha >= 1.0:
        return denoised
    out = np.empty_like(denoised)
    for r in chunks:
        source = noisy[r : r + ROWS_PER_CHUNK].astype(np.float32)
        kept = source + alpha * (denoised[r : r + ROWS_PER_CHUNK] - source)
        out[r : r + ROWS_PER_CHUNK] = np.clip(kept + 0.5, 0.0, 255.0).astype(np.uint8)
    return out
