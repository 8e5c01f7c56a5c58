"""Latent-space tools over the exported encoder.onnx and decoder.onnx: interpolate and traverse, and the
encode/decode helpers they share with augment.

numpy and Pillow only (onnxruntime through animevae.runtime): no torch on these paths.

- interpolate: a spherical walk between two latents (two encoded images, or two prior draws), centred on the
  fitted prior's mean, where the latents actually live.
- traverse: one row per principal direction of the fitted prior's overall covariance (the training set's latent
  distribution).
"""

from __future__ import annotations

import io
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from animevae.images import decode_rgb, square_resize
from animevae.errors import ArgumentError, DataError, ModelError, OutputError
from animevae.fileio import contact_sheet, encode_png, to_uint8, to_unit_chw
from animevae.model_files import ModelSet, open_models
from animevae.outputs import write_output_file
from animevae.prior import LatentPrior
from animevae.runtime import OnnxModel
from animevae.sampling import check_seed

DECODE_BATCH = 256  # latents per decoder call for strips and grids
GIF_FRAME_MS = 120
# Below this sin(angle) two centred latents count as parallel and slerp falls back to a straight line.
PARALLEL_SIN = 1e-4


# ---------------------------------------------------------------- models


def open_latent_models(runs_dir: Path, run: str | None, model: str | None, device: str = "auto",
                       need_encoder: bool = True) -> ModelSet:
    """The decoder and its prior, and the encoder when the command encodes images (model_files.open_models)."""
    return open_models(runs_dir, run, model, ("decoder", "prior", "encoder") if need_encoder else ("decoder", "prior"),
                       device)


def encode_images(encoder: OnnxModel, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, S, S, 3) uint8 -> posterior (mu, logvar), each (B, latent) float32."""
    mu, logvar = encoder.run(to_unit_chw(pixels))  # from (B, 3, S, S) in [0, 1]
    return mu, logvar


def decode_latents(decoder: OnnxModel, z: np.ndarray, batch_size: int = DECODE_BATCH) -> np.ndarray:
    """(N, latent) -> (N, S, S, 3) uint8, `batch_size` latents per decoder call."""
    parts = [to_uint8(decoder.run(z[i : i + batch_size])[0]) for i in range(0, len(z), batch_size)]
    return np.concatenate(parts)


def load_square(path: Path, size: int) -> np.ndarray:
    """One image file, centre-cropped and resized to (size, size, 3) uint8; DataError with a hint if unreadable."""
    if not path.is_file():
        raise DataError(f"{path} does not exist" if not path.exists() else f"{path} is not a file",
                        "pass the path of an image file (PNG, JPEG, WebP, ...)")
    try:
        return square_resize(decode_rgb(path), size)
    except DataError as error:
        raise DataError(f"{path}: {error.message}", "pass a readable image file (PNG, JPEG, WebP, ...)") from None


# ---------------------------------------------------------------- interpolate


@dataclass
class InterpolateResult:
    """What an interpolate call wrote."""

    strip: Path
    steps: int
    image_size: int
    frames: list[Path]
    gif: Path | None
    linear: bool
    seconds: float
    provider: str


def slerp(start: np.ndarray, end: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, bool]:
    """Spherical interpolation from `start` (t=0) to `end` (t=1), (D,) each -> ((len(ts), D), fell_back).

    Falls back to linear interpolation when the two are nearly parallel (or one is zero), where slerp's
    1/sin(angle) blows up. Computed in float64.
    """
    a, b, t = start.astype(np.float64), end.astype(np.float64), np.asarray(ts, np.float64)[:, None]
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms > 0:
        angle = math.acos(float(np.clip(a @ b / norms, -1.0, 1.0)))
        if math.sin(angle) > PARALLEL_SIN:
            return (np.sin((1.0 - t) * angle) * a + np.sin(t * angle) * b) / math.sin(angle), False
    return (1.0 - t) * a + t * b, True


def interpolation_path(start: np.ndarray, end: np.ndarray, steps: int, mean: np.ndarray) -> tuple[np.ndarray, bool]:
    """`steps` latents from `start` to `end` (both included): slerp around the prior mean. (steps, D) float32."""
    centred, linear = slerp(start - mean, end - mean, np.linspace(0.0, 1.0, steps))
    path = (centred + mean.astype(np.float64)).astype(np.float32)
    path[0], path[-1] = start, end  # exact ends: the first and last frames are the endpoints' own decodes
    return path, linear


def check_interpolate_args(images: list[Path], seeds: list[int | None], steps: int) -> None:
    """Exactly two images, or exactly two seeds, and at least two steps."""
    usage = "pass two images (`animevae interpolate a.png b.png`) or two seeds (`--seed-a 1 --seed-b 2`)"
    given_seeds = [s for s in seeds if s is not None]
    if images and given_seeds:
        raise ArgumentError("pass either two images or two seeds, not both", usage)
    if given_seeds and len(given_seeds) != 2:
        raise ArgumentError("--seed-a and --seed-b go together", usage)
    if not given_seeds and len(images) != 2:
        raise ArgumentError(f"need two endpoints (got {len(images)} image{'s' * (len(images) != 1)})", usage)
    for flag, seed in zip(("--seed-a", "--seed-b"), given_seeds):
        check_seed(seed, flag)
    if steps < 2:
        raise ArgumentError(f"--steps must be at least 2 (got {steps}): both ends are included",
                            "pass --steps 8, for example")


def check_output_file(path: Path, flag: str) -> None:
    """An output file path must not be a folder."""
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder", f"pass a file path for {flag}, such as {flag} out.png")


def endpoint_latents(models: ModelSet, images: list[Path], seeds: list[int | None]) -> np.ndarray:
    """(2, latent): the encoded means of two images, or the latents of image 0 of two seeds, as `generate
    --seed S` draws them."""
    if images:
        if models.encoder is None:
            raise ModelError("interpolating images needs the encoder", "open the models with need_encoder=True")
        pixels = np.stack([load_square(path, models.image_size) for path in images])
        return encode_images(models.encoder, pixels)[0]
    return np.concatenate([models.sampler(int(seed), [0]) for seed in seeds if seed is not None])


def interpolate(models: ModelSet, start: np.ndarray, end: np.ndarray, steps: int, strip: Path,
                frames_dir: Path | None = None, gif: Path | None = None, overwrite: bool = False) -> InterpolateResult:
    """Decode `steps` latents from `start` to `end` into a strip PNG, and optionally frame PNGs and a looping GIF."""
    if steps < 2:
        raise ArgumentError(f"--steps must be at least 2 (got {steps})", "pass --steps 8, for example")
    started = time.perf_counter()
    path, linear = interpolation_path(start, end, steps, models.info.mixture.mean)
    images = decode_latents(models.decoder, path)  # (steps, S, S, 3)
    write_output_file(strip, encode_png(contact_sheet(images, columns=steps)), overwrite)
    frames = _write_frames(frames_dir, images, overwrite) if frames_dir is not None else []
    if gif is not None:
        write_output_file(gif, encode_gif(images), overwrite)
    return InterpolateResult(strip, steps, models.image_size, frames, gif, linear,
                             time.perf_counter() - started, models.provider)


def frame_name(index: int, count: int) -> str:
    """frame_000.png, ...: three digits, more only when the count needs them."""
    return f"frame_{index:0{max(3, len(str(count - 1)))}d}.png"


def _write_frames(folder: Path, images: np.ndarray, overwrite: bool) -> list[Path]:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--frames {folder} is a file, not a folder", "pass a folder path (it is created if missing)")
    paths = [folder / frame_name(i, len(images)) for i in range(len(images))]
    for path, pixels in zip(paths, images):
        write_output_file(path, encode_png(pixels), overwrite)
    if overwrite:  # frames of an earlier, longer walk would read as part of this one
        for stale in set(folder.glob("frame_*.png")) - set(paths):
            if re.fullmatch(r"frame_[0-9]+\.png", stale.name):
                stale.unlink()
    return paths


def encode_gif(images: np.ndarray, frame_ms: int = GIF_FRAME_MS) -> bytes:
    """(N, H, W, 3) uint8 -> an animated GIF that loops forever."""
    frames = [Image.fromarray(pixels, "RGB") for pixels in images]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], loop=0, duration=frame_ms)
    return buffer.getvalue()


# ---------------------------------------------------------------- traverse


@dataclass
class TraverseResult:
    """What a traverse call wrote."""

    grid: Path
    components: int
    steps: int
    span: float
    variance_share: float  # fraction of the latent variance along the shown directions
    image_size: int
    provider: str


def principal_directions(prior: LatentPrior) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (D,) descending and unit eigenvectors as rows (D, D) of the prior's covariance.

    Each eigenvector's sign is fixed (its largest entry positive), so the grid is the same on every machine.
    """
    scale = prior.scale_tril.astype(np.float64)
    values, vectors = np.linalg.eigh(scale @ scale.T)  # ascending; vectors in columns
    order = np.argsort(values)[::-1]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order].T
    signs = np.sign(vectors[np.arange(len(vectors)), np.abs(vectors).argmax(axis=1)])
    return values, vectors * signs[:, None]


def traversal_latents(prior: LatentPrior, components: int, steps: int, span: float) -> tuple[np.ndarray, float]:
    """(components * steps, D) float32, row-major: mean + t * sqrt(eigval_r) * eigvec_r, t from -span to span.

    Also returns the share of the total variance along the first `components` directions.
    """
    values, vectors = principal_directions(prior)
    ts = np.linspace(-span, span, steps)
    offsets = ts[None, :, None] * (np.sqrt(values[:components])[:, None, None] * vectors[:components, None, :])
    latents = prior.mean.astype(np.float64) + offsets  # (components, steps, D)
    share = float(values[:components].sum() / values.sum()) if values.sum() > 0 else 0.0
    return latents.reshape(components * steps, -1).astype(np.float32), share


def check_traverse_args(components: int, steps: int, span: float, latent_dim: int | None = None) -> None:
    """Refuse grids traverse cannot draw."""
    if components < 1:
        raise ArgumentError(f"--components must be at least 1 (got {components})", "pass --components 8, for example")
    if latent_dim is not None and components > latent_dim:
        raise ArgumentError(f"--components {components} is more than the model's {latent_dim} latent dimensions",
                            f"pass --components {latent_dim} or fewer")
    if steps < 2:
        raise ArgumentError(f"--steps must be at least 2 (got {steps})", "pass --steps 7, for example")
    if not math.isfinite(span) or span <= 0:
        raise ArgumentError(f"--span must be a number above 0 (got {span})",
                            "pass --span 2.0 to walk two standard deviations each way")


def traverse(models: ModelSet, grid: Path, components: int = 8, steps: int = 7, span: float = 2.0,
             overwrite: bool = False) -> TraverseResult:
    """Write a grid whose row r walks the r-th principal direction of the latent distribution."""
    check_traverse_args(components, steps, span, models.latent_dim)
    latents, share = traversal_latents(models.info.mixture, components, steps, span)
    images = decode_latents(models.decoder, latents)
    write_output_file(grid, encode_png(contact_sheet(images, columns=steps)), overwrite)
    return TraverseResult(grid, components, steps, span, share, models.image_size, models.provider)
