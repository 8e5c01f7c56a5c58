"""augment: K variations of every image under a folder, drawn from each image's own posterior.

Each image's posterior N(mu, exp(logvar)) is drawn K times at a chosen strength, so a data set grows by
plausible variations of its own faces. Draw k of image `rel` comes from a generator seeded by
(seed, hash(rel), k) alone: reruns give the same bytes and resume where they stopped. The output tree mirrors
the input (class folders, and so labels, are kept). numpy and onnxruntime only: no torch on this path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animevae.bulk import BulkJob, JobSink, MirroredInput, Pending, decode_each, mirror_inputs, run_bulk, sibling_folder
from animevae.images import decode_rgb, square_resize
from animevae.errors import ArgumentError, DataError, ModelError, OutputError
from animevae.latent import decode_latents, encode_images
from animevae.model_files import ModelSet
from animevae.outputs import JobResult, augmented_outputs, file_digest
from animevae.progress import Reporter
from animevae.sampling import check_seed
from animevae.shard import Shard, path_hash


@dataclass
class AugmentResult(JobResult):
    """What an augment call did, and from how many source images."""

    sources: int = 0


def path_key(relative: str) -> int:
    """A stable 63-bit integer for a relative path (the same on every machine and Python run)."""
    return path_hash(relative) >> 1


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


def default_out_dir(src: Path) -> Path:
    """A new folder beside the source: faces -> faces-augmented."""
    return sibling_folder(src, "augmented")


def augment_folder(
    models: ModelSet,
    src: Path,
    out: Path,
    per_image: int,
    strength: float,
    seed: int = 0,
    batch_size: int = 64,
    overwrite: bool = False,
    workers: int | None = None,
    reporter: Reporter | None = None,
    shard: Shard = Shard(),
) -> AugmentResult:
    """Write `per_image` posterior draws of every image under `src` as out/<relative stem>_<k>.png.

    Outputs already there are kept (a rerun resumes); unreadable sources are skipped and listed in
    out/skipped.json (skipped.shard-i-of-K.json for a shard) while the others finish.
    """
    check_augment_args(src, out, per_image, strength, seed, batch_size)
    if models.encoder is None or models.decoder is None:
        raise ModelError("augment needs the encoder and the decoder", "open the models with need_encoder=True")
    mirror = mirror_inputs(src, out, shard, clash="same output names as")
    if not mirror.listed:  # over all shards: a shard that owns no image has nothing to do, which is fine
        raise DataError(f"no images under {src}", "pass a folder of PNG/JPEG/WebP/BMP/GIF images")
    identity = {"task": "augment", "input": str(src.resolve()), "encoder_sha256": file_digest(models.encoder.path),
                "decoder_sha256": file_digest(models.decoder.path), "seed": seed, "strength": float(strength)}
    job = BulkJob("augmenting", out, identity, mirror.inputs,
                  lambda source: [source.output(f"_{k}") for k in range(per_image)],
                  old_outputs=augmented_outputs,
                  skipped=mirror.skipped, shard=shard, writer_threshold=4 * batch_size)

    def compute(chunk: list[Pending[MirroredInput]], sink: JobSink) -> None:
        _augment_chunk(models, chunk, strength, seed, batch_size, sink)

    result = run_bulk(job, compute, models.provider, batch_size, overwrite, workers, reporter)
    return AugmentResult(**vars(result), sources=len(mirror.inputs))


def _augment_chunk(models: ModelSet, chunk: list[Pending[MirroredInput]], strength: float, seed: int,
                   batch_size: int, sink: JobSink) -> None:
    assert models.encoder is not None and models.decoder is not None
    readable = list(decode_each(chunk, lambda path: square_resize(decode_rgb(path), models.image_size), sink))
    if not readable:
        return
    mu, logvar = encode_images(models.encoder, np.stack([pixels for _, pixels in readable]))  # (B, latent) each
    latents, targets = [], []
    for row, (pending, _) in enumerate(readable):
        latents.append(posterior_draws(mu[row], logvar[row], strength, seed, path_key(pending.task.relative),
                                       pending.indices))
        targets.extend(pending.paths)
        pending.task.stem.parent.mkdir(parents=True, exist_ok=True)
    z = np.concatenate(latents)  # (sum of K, latent)
    for begin in range(0, len(z), batch_size):
        images = decode_latents(models.decoder, z[begin : begin + batch_size], batch_size)
        sink.write(targets[begin : begin + batch_size], list(images))
