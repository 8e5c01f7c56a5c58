"""Degradations of clean images for the blind denoiser's training: noise, JPEG, resampling, their mixtures, and
multi-scale crops.

Pure functions of (images, torch.Generator): the same generator state gives the same batch, so a resumed run
repeats its steps exactly. JPEG goes through Pillow on the CPU, the way real files are made. Resampling (a
published image is rarely at the size it was drawn) is Pillow's scheme, done in float by torch: the target the
denoiser learns to give back is then the resampled image, and only what came after the resampling is damage.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from animevae.training.devices import one_thread

# Pillow's `subsampling=` values.
CHROMA_444, CHROMA_420 = 0, 2
JPEG_BLOCK = 8


@dataclass(frozen=True)
class Recipe:
    """How a batch is degraded. Each image draws its own path: clean (untouched), or a noise stage
    (Gaussian, Poisson or none) followed, or not, by one or two JPEG passes; and, apart from that, whether it
    is resampled. Shares are probabilities."""

    clean: float = 0.1  # left untouched, so that clean input is learnt to stay clean
    gaussian: float = 0.5  # of the rest: Gaussian noise, sigma uniform in [0, sigma_max] (0-255 scale)
    poisson: float = 0.2  # of the rest: Poisson (shot) noise, 16 to 1000 photons at white; the remainder: no noise
    grey: float = 0.3  # of the noisy: the same noise on all three channels (as in a greyscale scan)
    jpeg: float = 0.5  # of the rest: JPEG after the noise stage (always when the noise stage added none)
    double_jpeg: float = 0.3  # of the JPEG'd: saved a second time at another quality and grid phase
    quality_min: int = 15
    quality_max: int = 95
    chroma_420: float = 0.5  # of JPEG passes: 4:2:0 chroma subsampling (else 4:4:4)
    # Of all images: resampled to an intermediate side and back, each way with a kernel drawn from RESAMPLERS.
    # The target is that resampled image. With one save or none, the noise and JPEG come after; with two, the
    # first save is at the intermediate side and the way back falls between the saves (second-order damage).
    resize: float = 0.4
    scale_min: float = 0.5  # the intermediate side over the crop's: log-uniform in [scale_min, scale_max]
    scale_max: float = 2.0


# The denoiser's training recipe.
REAL = Recipe()
# Window side (as a multiple of the crop side) -> share of crops: 1 is a plain crop; larger windows are
# downscaled to the crop side, so the model also sees line art and flat colours finer than the data's own.
SCALES = {1.0: 0.5, 1.5: 0.25, 2.0: 0.25}
RESAMPLERS = ("area", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class Paths:
    """Which degradation each image of a batch takes: (B,) each."""

    clean: torch.Tensor  # bool: noisy is the target
    gaussian: torch.Tensor  # bool
    poisson: torch.Tensor  # bool
    grey: torch.Tensor  # bool: the noise is the same on all channels
    jpeg: torch.Tensor  # bool: saved as JPEG at least once
    double: torch.Tensor  # bool: saved twice
    resize: torch.Tensor  # bool: the target is resampled
    side: torch.Tensor  # long: the intermediate side of a resampled image (never the crop's own)
    kernels: torch.Tensor  # (B, 2) long: indices into RESAMPLERS, there and back

    @property
    def between(self) -> torch.Tensor:
        """Resampled images saved twice: the way back comes between the two saves."""
        return self.resize & self.double


def draw_paths(count: int, side: int, generator: torch.Generator, recipe: Recipe = REAL) -> Paths:
    """Each image's path for crops of `side` pixels, drawn from `generator` before anything else."""
    path = torch.rand(7, count, generator=generator)  # one uniform per decision and image
    is_clean = path[0] < recipe.clean
    gaussian = ~is_clean & (path[1] < recipe.gaussian)
    poisson = ~is_clean & ~gaussian & (path[1] < recipe.gaussian + recipe.poisson)
    jpeg = ~is_clean & ((path[3] < recipe.jpeg) | ~(gaussian | poisson))
    scale = recipe.scale_min * (recipe.scale_max / recipe.scale_min) ** path[6]
    between = (side * scale).round().long().clamp_min(1)
    between = torch.where(between == side, side + 1, between)  # the same side would resample nothing
    kernels = torch.randint(0, len(RESAMPLERS), (count, 2), generator=generator)
    return Paths(is_clean, gaussian, poisson, path[2] < recipe.grey, jpeg, jpeg & (path[4] < recipe.double_jpeg),
                 path[5] < recipe.resize, between, kernels)


def degrade_pairs(clean: torch.Tensor, generator: torch.Generator, sigma_max: float = 55.0,
                  recipe: Recipe = REAL) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, S, S) clean images in [0, 1] -> (target, noisy), each (B, 3, S, S) in [0, 1] on clean's device:
    what the denoiser should give back (`clean`, or its resampled self) and its degraded copy, aligned pixel
    for pixel.

    Every random draw comes from `generator` (a CPU generator), in a fixed order: the paths, the noise of the
    images degraded at the crop's size, their JPEG passes, then each image whose resize falls between saves."""
    with one_thread():
        target, noisy = _degrade(clean.detach().float().cpu(), generator, sigma_max, recipe)
    return target.to(clean.device, clean.dtype), noisy.to(clean.device, clean.dtype)


def _degrade(image: torch.Tensor, generator: torch.Generator, sigma_max: float,
             recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """degrade_pairs on the CPU, in float32."""
    count, side = len(image), image.shape[-1]
    paths = draw_paths(count, side, generator, recipe)
    target, shrunk = image.clone(), {}
    for index in paths.resize.nonzero().flatten().tolist():
        there, back = paths.kernels[index].tolist()
        shrunk[index] = resample(image[index], int(paths.side[index]), RESAMPLERS[there])
        target[index] = resample(shrunk[index], side, RESAMPLERS[back])
    here = ~paths.between
    noisy = _noise_stage(target, paths.gaussian & here, paths.poisson & here, paths.grey, sigma_max, generator)
    for passes in (paths.jpeg & here, paths.double & here):
        for index in passes.nonzero().flatten().tolist():
            noisy[index] = jpeg_roundtrip(noisy[index], generator, recipe)
    for index in paths.between.nonzero().flatten().tolist():
        one = slice(index, index + 1)
        small = _noise_stage(shrunk[index][None], paths.gaussian[one], paths.poisson[one], paths.grey[one], sigma_max,
                             generator)
        once = jpeg_roundtrip(small[0], generator, recipe)
        noisy[index] = jpeg_roundtrip(resample(once, side, RESAMPLERS[int(paths.kernels[index, 1])]), generator, recipe)
    return target, noisy


def _noise_stage(images: torch.Tensor, gaussian: torch.Tensor, poisson: torch.Tensor, grey: torch.Tensor,
                 sigma_max: float, generator: torch.Generator) -> torch.Tensor:
    """(N, 3, H, W) -> the same with Gaussian or Poisson noise on those the (N,) masks pick."""
    noisy = images.clone()
    if gaussian.any():
        noisy[gaussian] = _gaussian(images[gaussian], grey[gaussian], sigma_max, generator)
    if poisson.any():
        noisy[poisson] = _poisson(images[poisson], grey[poisson], generator)
    return noisy


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


def resample(image: torch.Tensor, side: int, kernel: str) -> torch.Tensor:
    """(..., H, W) in [0, 1] -> (..., side, side), resized with `kernel` (one of RESAMPLERS) as Pillow resizes a
    float image (the kernel widened by the factor when shrinking), and clamped to [0, 1] (bicubic and Lanczos
    ring past the edges' values)."""
    rows = resample_matrix(image.shape[-2], side, kernel)  # (side, H)
    columns = resample_matrix(image.shape[-1], side, kernel)  # (side, W)
    return (rows @ image.float() @ columns.T).clamp(0.0, 1.0)


@lru_cache(maxsize=256)
def resample_matrix(size_in: int, size_out: int, kernel: str) -> torch.Tensor:
    """(size_out, size_in) weights: row i resamples one line to its output pixel i (Pillow's precompute_coeffs:
    centres at (i + 0.5) * scale, taps within the kernel's support of it, each row normalised)."""
    support, function = _KERNELS[kernel]
    scale = size_in / size_out
    stretch = max(scale, 1.0)
    centre = (torch.arange(size_out, dtype=torch.float64) + 0.5) * scale  # (out,)
    low = (centre - support * stretch + 0.5).floor().clamp_min(0)
    high = (centre + support * stretch + 0.5).floor().clamp_max(size_in)
    taps = torch.arange(size_in, dtype=torch.float64)  # (in,)
    weight = function((taps[None] - centre[:, None] + 0.5) / stretch)  # (out, in)
    weight = weight * ((taps[None] >= low[:, None]) & (taps[None] < high[:, None]))
    return (weight / weight.sum(dim=1, keepdim=True)).float()


def _box(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x <= 0.5)).double()


def _triangle(x: torch.Tensor) -> torch.Tensor:
    return (1.0 - x.abs()).clamp_min(0.0)


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, 0.0))


def _lanczos(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.abs() < 3.0, torch.sinc(x) * torch.sinc(x / 3.0), 0.0)


# Kernel -> (support in input pixels at scale 1, function): Pillow's BOX, BILINEAR, BICUBIC and LANCZOS.
_KERNELS = {"area": (0.5, _box), "bilinear": (1.0, _triangle), "bicubic": (2.0, _cubic), "lanczos": (3.0, _lanczos)}


def with_synthetic(crops: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, c, c) crops with the first round(share * B) replaced by dead-leaves images (synthetic.py) of the
    same side: procedural images we may ship a model of, whose edges, gradients and textures no face set holds.
    The crops themselves when share is 0 (no draw is made)."""
    count = round(share * len(crops))
    if count == 0:
        return crops
    from animevae.training.synthetic import dead_leaves

    leaves = dead_leaves(count, crops.shape[-1], generator).to(crops.device, crops.dtype)
    return torch.cat([leaves, crops[count:]]).contiguous(memory_format=torch.channels_last)


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
