"""Degradations of clean images for the blind denoiser's training: noise, JPEG, their mixtures, multi-scale crops.

Pure functions of (images, torch.Generator): the same generator state gives the same batch, so a resumed run
repeats its steps exactly. JPEG goes through Pillow on the CPU, the way real files are made.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Pillow's `subsampling=` values.
CHROMA_444, CHROMA_420 = 0, 2
JPEG_BLOCK = 8


@dataclass(frozen=True)
class Recipe:
    """How a batch is degraded. Each image draws its own path: clean (untouched), or a noise stage
    (Gaussian, Poisson or none) followed, or not, by one or two JPEG passes. Shares are probabilities."""

    clean: float = 0.1  # left untouched, so that clean input is learnt to stay clean
    gaussian: float = 0.5  # of the rest: Gaussian noise, sigma uniform in [0, sigma_max] (0-255 scale)
    poisson: float = 0.2  # of the rest: Poisson (shot) noise, 16 to 1000 photons at white; the remainder: no noise
    grey: float = 0.3  # of the noisy: the same noise on all three channels (as in a greyscale scan)
    jpeg: float = 0.5  # of the rest: JPEG after the noise stage (always when the noise stage added none)
    double_jpeg: float = 0.3  # of the JPEG'd: saved a second time at another quality and grid phase
    quality_min: int = 15
    quality_max: int = 95
    chroma_420: float = 0.5  # of JPEG passes: 4:2:0 chroma subsampling (else 4:4:4)


# The denoiser's training recipe.
REAL = Recipe()
# Window side (as a multiple of the crop side) -> share of crops: 1 is a plain crop; larger windows are
# downscaled to the crop side, so the model also sees line art and flat colours finer than the data's own.
SCALES = {1.0: 0.5, 1.5: 0.25, 2.0: 0.25}


def degrade_batch(clean: torch.Tensor, generator: torch.Generator, sigma_max: float = 55.0,
                  recipe: Recipe = REAL) -> torch.Tensor:
    """(B, 3, H, W) clean images in [0, 1] -> the same degraded, in [0, 1], on clean's device.

    Every random draw comes from `generator` (a CPU generator), in a fixed order."""
    count = len(clean)
    path = torch.rand(5, count, generator=generator)  # one uniform per decision and image
    is_clean = path[0] < recipe.clean
    gaussian = ~is_clean & (path[1] < recipe.gaussian)
    poisson = ~is_clean & ~gaussian & (path[1] < recipe.gaussian + recipe.poisson)
    grey = path[2] < recipe.grey
    jpeg = ~is_clean & ((path[3] < recipe.jpeg) | ~(gaussian | poisson))
    double = jpeg & (path[4] < recipe.double_jpeg)
    image = clean.detach().float().cpu()
    noisy = image.clone()
    if gaussian.any():
        noisy[gaussian] = _gaussian(image[gaussian], grey[gaussian], sigma_max, generator)
    if poisson.any():
        noisy[poisson] = _poisson(image[poisson], grey[poisson], generator)
    for passes in (jpeg, double):
        for index in passes.nonzero().flatten().tolist():
            noisy[index] = jpeg_roundtrip(noisy[index], generator, recipe)
    return noisy.to(clean.device, clean.dtype)


def _gaussian(image: torch.Tensor, grey: torch.Tensor, sigma_max: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise, sigma uniform in [0, sigma_max] per image; grey images get one noise plane for all channels."""
    sigma = torch.rand(len(image), generator=generator) * sigma_max / 255.0
    noise = torch.randn(image.shape, generator=generator)
    noise = torch.where(grey.view(-1, 1, 1, 1), noise[:, :1].expand_as(noise), noise)
    return (image + sigma.view(-1, 1, 1, 1) * noise).clamp(0.0, 1.0)


def _poisson(image: torch.Tensor, grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shot noise: counts ~ Poisson(peak * x), peak 16..1000 (log-uniform); grey images take it on luminance."""
    peak = 10.0 ** (1.2 + 1.8 * torch.rand(len(image), generator=generator)).view(-1, 1, 1, 1)
    luma = (image * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # (B, 1, H, W)
    colour_noise = torch.poisson(image * peak, generator=generator) / peak - image
    grey_noise = torch.poisson(luma * peak, generator=generator) / peak - luma
    noise = torch.where(grey.view(-1, 1, 1, 1), grey_noise.expand_as(image), colour_noise)
    return (image + noise).clamp(0.0, 1.0)


def jpeg_roundtrip(image: torch.Tensor, generator: torch.Generator, recipe: Recipe = REAL) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> the same saved once as JPEG by Pillow and decoded (quality, chroma subsampling and
    block-grid phase drawn from the generator; the grid phase is moved by edge-padding the top left)."""
    quality = int(torch.randint(recipe.quality_min, recipe.quality_max + 1, (1,), generator=generator))
    chroma = CHROMA_420 if torch.rand(1, generator=generator).item() < recipe.chroma_420 else CHROMA_444
    top, left = torch.randint(0, JPEG_BLOCK, (2,), generator=generator).tolist()
    pixels = (image.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)  # (H, W, 3)
    padded = np.pad(pixels, ((top, 0), (left, 0), (0, 0)), mode="edge")
    decoded = jpeg_bytes_roundtrip(padded, quality, chroma)
    return torch.from_numpy(decoded[top:, left:].astype(np.float32) / 255.0).permute(2, 0, 1)


def jpeg_bytes_roundtrip(pixels: np.ndarray, quality: int, subsampling: int = CHROMA_420) -> np.ndarray:
    """(H, W, 3) uint8 -> the same after a JPEG save at `quality` and a decode, (H, W, 3) uint8."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def jpeg_batch(images: torch.Tensor, quality: int, subsampling: int = CHROMA_420) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> each saved as JPEG at `quality` by Pillow and decoded (a fixed, not drawn, case)."""
    pixels = (images.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    decoded = np.stack([jpeg_bytes_roundtrip(image, quality, subsampling) for image in pixels])
    return torch.from_numpy(decoded.astype(np.float32) / 255.0).permute(0, 3, 1, 2).to(images.device, images.dtype)


def multiscale_crop(batch: torch.Tensor, size: int, generator: torch.Generator,
                    scales: dict[float, float] = SCALES) -> torch.Tensor:
    """(B, 3, S, S) -> (B, 3, size, size): per image a random window of scale * size pixels (at most S), resized to
    size x size with antialiasing (a scale-1 window is a plain crop). The batch itself when S <= size."""
    count, side = len(batch), batch.shape[-1]
    if side <= size:
        return batch
    factors = list(scales)
    choice = torch.multinomial(torch.tensor([scales[f] for f in factors]), count, replacement=True, generator=generator)
    where = torch.rand(count, 2, generator=generator)
    out = torch.empty(count, batch.shape[1], size, size, dtype=batch.dtype, device=batch.device)
    for pick, factor in enumerate(factors):
        members = (choice == pick).nonzero().flatten().tolist()
        if not members:
            continue
        window = min(side, round(factor * size))
        corners = (where[members] * (side - window + 1)).long().tolist()
        windows = torch.stack([batch[i, :, t : t + window, l : l + window] for i, (t, l) in zip(members, corners)])
        if window != size:
            windows = F.interpolate(windows.float(), size=(size, size), mode="bilinear", antialias=True,
                                    align_corners=False).clamp(0.0, 1.0).to(batch.dtype)
        out[members] = windows
    return out.contiguous(memory_format=torch.channels_last)
