"""Latent-space tools over the exported encoder.onnx and decoder.onnx: augment, interpolate, traverse.

numpy and Pillow only (onnxruntime through animevae.runtime): no torch on these paths.

- augment: each image's posterior N(mu, exp(logvar)) drawn K times at a chosen strength, so a data set grows by
  plausible variations of its own faces. Draw k of image `rel` comes from a generator seeded by
  (seed, hash(rel), k) alone: reruns give the same bytes and resume where they stopped.
- interpolate: a spherical walk between two latents (two encoded images, or two prior draws), centred on the
  fitted prior's mean, where the latents actually live.
- traverse: one row per principal direction of the fitted prior's overall covariance (the training set's latent
  distribution).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from animevae.data import Skipped, decode_rgb, find_images, square_resize
from animevae.errors import ArgumentError, DataError, ModelError, OutputError
from animevae.fileio import contact_sheet, encode_png, is_complete_png, remove_stale_temps, to_uint8
from animevae.outputs import JobResult, WriteTally, file_digest, prepare_output, write_output_file, write_skipped
from animevae.model_files import choose_model
from animevae.prior import LatentPrior
from animevae.progress import Reporter, SilentReporter
from animevae.runtime import OnnxModel, open_model
from animevae.sampling import LatentSampler, open_sampler
from animevae.writer import PngWriter, writer_processes

DECODE_BATCH = 256  # latents per decoder call for strips and grids
GIF_FRAME_MS = 120
# Below this sin(angle) two centred latents count as parallel and slerp falls back to a straight line.
PARALLEL_SIN = 1e-4


# ---------------------------------------------------------------- models


@dataclass
class LatentModels:
    """The decoder (always) and the encoder (when a command needs it) of one exported model."""

    origin: str
    decoder: OnnxModel
    encoder: OnnxModel | None = None

    @property
    def latent_dim(self) -> int:
        """Size of the latent vector."""
        return int(self.decoder.metadata["animevae.latent_dim"])

    @property
    def image_size(self) -> int:
        """Side of the square images the model reads and writes."""
        return int(self.decoder.metadata["animevae.image_size"])

    @cached_property
    def prior(self) -> LatentPrior:
        """The prior fitted to the training latents (N(0, I) for a model without one)."""
        return LatentPrior.from_metadata(self.decoder.metadata, self.latent_dim)

    @cached_property
    def sampler(self) -> LatentSampler:
        """Draws latents as `generate` does (the diffusion prior when the model has one)."""
        return open_sampler(self.decoder)

    @property
    def notes(self) -> list[str]:
        """Fallback notes of the opened sessions (CUDA asked for, CPU used), without repeats."""
        found = [m.fallback_note for m in (self.encoder, self.decoder) if m is not None and m.fallback_note]
        return list(dict.fromkeys(found))

    @property
    def provider(self) -> str:
        """The provider that runs the decoder."""
        return self.decoder.provider


def open_latent_models(runs_dir: Path, run: str | None, model: str | None, device: str = "auto",
                       need_encoder: bool = True) -> LatentModels:
    """Open the decoder (and the encoder) that --run / --model pick, and check that they belong together."""
    choice = choose_model(runs_dir, run, model)
    decoder = open_model(choice.path("decoder"), "decoder", device)
    encoder = open_model(choice.path("encoder"), "encoder", device) if need_encoder else None
    if encoder is not None:
        _check_pair(encoder, decoder)
    return LatentModels(choice.origin, decoder, encoder)


def _check_pair(encoder: OnnxModel, decoder: OnnxModel) -> None:
    for key in ("animevae.image_size", "animevae.latent_dim"):
        if encoder.metadata.get(key) != decoder.metadata.get(key):
            raise ModelError(f"{encoder.path} and {decoder.path} come from different models "
                             f"({key.split('.')[1]} {encoder.metadata.get(key)} vs {decoder.metadata.get(key)})",
                             "pass an export folder that holds both files: --model runs/NAME/export")


def encode_images(encoder: OnnxModel, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, S, S, 3) uint8 -> posterior (mu, logvar), each (B, latent) float32."""
    batch = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # (B, 3, S, S) in [0, 1]
    mu, logvar = encoder.run(batch)
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


# ---------------------------------------------------------------- augment


@dataclass
class AugmentResult(JobResult):
    """What an augment call did, and from how many source images."""

    sources: int = 0


@dataclass
class _Source:
    path: Path
    relative: str  # as printed and hashed: '/'-separated
    stem: Path  # out_dir / relative path without its suffix; outputs are <stem>_<k>.png

    def output(self, k: int) -> Path:
        return self.stem.with_name(f"{self.stem.name}_{k}.png")


def path_key(relative: str) -> int:
    """A stable 63-bit integer for a relative path (the same on every machine and Python run)."""
    digest = hashlib.sha256(relative.replace(os.sep, "/").encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def posterior_draws(mu: np.ndarray, logvar: np.ndarray, strength: float, seed: int, key: int,
                    ks: list[int]) -> np.ndarray:
    """z_k = mu + strength * exp(logvar / 2) * eps_k for each k in `ks`: (len(ks), latent) float32.

    eps_k comes from a generator seeded by (seed, key, k) alone, so a draw never depends on the batch or on
    which other draws were made. Strength 0 gives mu itself.
    """
    sigma = np.exp(0.5 * logvar.astype(np.float32))
    rows = [mu + np.float32(strength) * sigma * np.random.default_rng([seed, key, k]).standard_normal(
        len(mu), dtype=np.float32) for k in ks]
    return np.stack(rows).astype(np.float32)


def check_seed(seed: int, flag: str = "--seed") -> None:
    """Seeds feed numpy's SeedSequence, which takes non-negative integers only."""
    if seed < 0:
        raise ArgumentError(f"{flag} must be 0 or more (got {seed})", f"pass {flag} 0, for example")


def check_augment_args(src: Path, out: Path, per_image: int, strength: float, seed: int, batch_size: int) -> None:
    """Refuse values augment cannot use, before any model is opened."""
    if per_image < 1:
        raise ArgumentError(f"--per-image must be at least 1 (got {per_image})", "pass --per-image 4, for example")
    if not math.isfinite(strength) or strength < 0:
        raise ArgumentError(f"--strength must be a number of 0 or more (got {strength})",
                            "0 gives the reconstruction; 0.5 to 1.5 gives mild to strong variations")
    if batch_size < 1:
        raise ArgumentError(f"--batch-size must be at least 1 (got {batch_size})", "pass --batch-size 64, for example")
    check_seed(seed)
    if not src.exists():
        raise DataError(f"{src} does not exist", "pass a folder of images")
    if not src.is_dir():
        raise DataError(f"{src} is not a folder", "pass the folder that holds the images")
    src_abs, out_abs = src.resolve(), out.resolve()
    if out_abs == src_abs or src_abs in out_abs.parents:
        raise ArgumentError(f"--out {out} is inside the source folder {src}",
                            "pick an output folder outside the source, so reruns do not augment the augmentations")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder", "pass a folder path (it is created if missing)")


def default_augment_dir(src: Path) -> Path:
    """A new folder beside the source: faces -> faces-augmented."""
    resolved = src.resolve()
    return resolved.with_name(f"{resolved.name}-augmented")


def augment_folder(
    models: LatentModels,
    src: Path,
    out: Path,
    per_image: int,
    strength: float,
    seed: int = 0,
    batch_size: int = 64,
    overwrite: bool = False,
    workers: int | None = None,
    reporter: Reporter | None = None,
) -> AugmentResult:
    """Write `per_image` posterior draws of every image under `src` as out/<relative stem>_<k>.png.

    Outputs already there are kept (a rerun resumes); unreadable sources are skipped and listed in
    out/skipped.json while the others finish.
    """
    reporter = reporter or SilentReporter()
    check_augment_args(src, out, per_image, strength, seed, batch_size)
    if models.encoder is None:
        raise ModelError("augment needs the encoder", "open the models with need_encoder=True")
    sources, skipped = _plan_sources(src, out)
    prepare_output(out, _augment_identity(models, src, seed, strength), overwrite,
                   old_outputs=lambda folder: (p for p in folder.rglob("*.png") if re.search(r"_[0-9]+\.png$", p.name)))
    remove_stale_temps(out, *{s.stem.parent for s in sources})
    todo = [(s, [k for k in range(per_image) if overwrite or not is_complete_png(s.output(k))]) for s in sources]
    todo = [(s, ks) for s, ks in todo if ks]
    total = sum(len(ks) for _, ks in todo)
    started = time.perf_counter()
    tally = WriteTally(out, skipped, reporter)
    pool_size = writer_processes(workers, total, 4 * batch_size)
    reporter.start(f"augmenting into {out}", total)
    try:
        with PngWriter(pool_size, tally) as writer:
            for begin in range(0, len(todo), batch_size):
                _augment_chunk(models, todo[begin : begin + batch_size], strength, seed, batch_size, writer,
                               skipped, reporter)
    finally:
        reporter.stop()
    write_skipped(out, skipped)
    existing = len(sources) * per_image - total
    return AugmentResult(out, tally.written, existing, time.perf_counter() - started, models.provider, skipped,
                         sources=len(sources))


def _augment_identity(models: LatentModels, src: Path, seed: int, strength: float) -> dict[str, object]:
    assert models.encoder is not None
    return {"task": "augment", "input": str(src.resolve()), "encoder_sha256": file_digest(models.encoder.path),
            "decoder_sha256": file_digest(models.decoder.path), "seed": seed, "strength": float(strength)}


def _plan_sources(src: Path, out: Path) -> tuple[list[_Source], list[Skipped]]:
    """Every image under `src` with its output stem; sources whose outputs would collide are skipped."""
    listing = find_images(src)
    sources, skipped, claimed = [], list(listing.skipped), {}
    for path in listing.files:
        relative = listing.relative(path).replace(os.sep, "/")
        stem = out / path.relative_to(src).with_suffix("")
        key = str(stem).casefold()  # A.png and a.png would share files on a case-insensitive disk
        if key in claimed:
            skipped.append(Skipped(relative, f"same output names as {claimed[key]}"))
            continue
        claimed[key] = relative
        sources.append(_Source(path, relative, stem))
    if not listing.files and not listing.skipped:
        raise DataError(f"no images under {src}", "pass a folder of PNG/JPEG/WebP/BMP/GIF images")
    return sources, skipped


def _augment_chunk(models: LatentModels, chunk: list[tuple[_Source, list[int]]], strength: float, seed: int,
                   batch_size: int, writer: PngWriter, skipped: list[Skipped], reporter: Reporter) -> None:
    assert models.encoder is not None
    readable, pixels = [], []
    for source, ks in chunk:
        try:
            pixels.append(square_resize(decode_rgb(source.path), models.image_size))
        except DataError as error:
            skipped.append(Skipped(source.relative, error.message))
            reporter.advance(len(ks))
            continue
        readable.append((source, ks))
    if not readable:
        return
    mu, logvar = encode_images(models.encoder, np.stack(pixels))  # (B, latent) each
    latents, targets = [], []
    for row, (source, ks) in enumerate(readable):
        latents.append(posterior_draws(mu[row], logvar[row], strength, seed, path_key(source.relative), ks))
        targets.extend(source.output(k) for k in ks)
        source.stem.parent.mkdir(parents=True, exist_ok=True)
    z = np.concatenate(latents)  # (sum of K, latent)
    for begin in range(0, len(z), batch_size):
        images = decode_latents(models.decoder, z[begin : begin + batch_size], batch_size)
        writer.submit(targets[begin : begin + batch_size], list(images))


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


def endpoint_latents(models: LatentModels, images: list[Path], seeds: list[int | None]) -> np.ndarray:
    """(2, latent): the encoded means of two images, or the latents of image 0 of two seeds, as `generate
    --seed S` draws them."""
    if images:
        if models.encoder is None:
            raise ModelError("interpolating images needs the encoder", "open the models with need_encoder=True")
        pixels = np.stack([load_square(path, models.image_size) for path in images])
        return encode_images(models.encoder, pixels)[0]
    return np.concatenate([models.sampler(int(seed), [0]) for seed in seeds if seed is not None])


def interpolate(models: LatentModels, start: np.ndarray, end: np.ndarray, steps: int, strip: Path,
                frames_dir: Path | None = None, gif: Path | None = None, overwrite: bool = False) -> InterpolateResult:
    """Decode `steps` latents from `start` to `end` into a strip PNG, and optionally frame PNGs and a looping GIF."""
    if steps < 2:
        raise ArgumentError(f"--steps must be at least 2 (got {steps})", "pass --steps 8, for example")
    started = time.perf_counter()
    path, linear = interpolation_path(start, end, steps, models.prior.mean)
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


def traverse(models: LatentModels, grid: Path, components: int = 8, steps: int = 7, span: float = 2.0,
             overwrite: bool = False) -> TraverseResult:
    """Write a grid whose row r walks the r-th principal direction of the latent distribution."""
    check_traverse_args(components, steps, span, models.latent_dim)
    latents, share = traversal_latents(models.prior, components, steps, span)
    images = decode_latents(models.decoder, latents)
    write_output_file(grid, encode_png(contact_sheet(images, columns=steps)), overwrite)
    return TraverseResult(grid, components, steps, span, share, models.image_size, models.provider)
