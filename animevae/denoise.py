"""Folder denoising: every image under a folder, through the denoiser in onnxruntime, into a mirrored tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from animevae.bulk import BulkJob, JobSink, MirroredInput, Pending, decode_each, mirror_inputs, run_bulk, sibling_folder
from animevae.images import ImageLayers, Skipped, decode_layers
from animevae.errors import ArgumentError, DataError
from animevae.fileio import to_uint8, to_unit_chw
from animevae.outputs import JobResult, file_digest
from animevae.progress import Reporter
from animevae.runtime import OnnxModel
from animevae.shard import Shard
from animevae.shrinkage import gate_large_image, gate_residual
from animevae.tiling import Tiling, run_tiled

MULTIPLE = 4  # the denoiser halves twice inside: pad H and W up to a multiple of 4


def default_out_dir(in_dir: Path) -> Path:
    """A new folder beside the input: faces -> faces-denoised (never in place)."""
    return sibling_folder(in_dir, "denoised")


def denoise_array(denoiser: OnnxModel, images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, H, W, 3) uint8 in one model call (untiled), each image through the model's
    residual gate (shrinkage.py)."""
    batch = to_unit_chw(images)  # (B, 3, H, W)
    return to_uint8(gate_residual(batch, run_padded(denoiser, batch), denoiser.residual_knee))


def run_padded(denoiser: OnnxModel, batch: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> the same denoised, padding H and W by edge replication to a multiple of 4."""
    height, width = batch.shape[2:]
    pad_h, pad_w = -height % MULTIPLE, -width % MULTIPLE
    if pad_h or pad_w:
        batch = np.pad(batch, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")
    return denoiser.run(batch)[0][:, :, :height, :width]


def denoise_image(denoiser: OnnxModel, rgb: np.ndarray, tiling: Tiling = Tiling()) -> np.ndarray:
    """(H, W, 3) uint8 of any size -> denoised (H, W, 3) uint8: whole when it fits one tile, else tiled."""
    height, width, _ = rgb.shape
    if tiling.fits(height, width):
        return denoise_array(denoiser, rgb[None])[0]
    # Padded as a whole, as an untiled run pads it: the tiles at the bottom and right then see the same border.
    pad_h, pad_w = -height % MULTIPLE, -width % MULTIPLE
    padded = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else rgb
    tiled = np.ascontiguousarray(run_tiled(lambda tiles: denoiser.run(tiles)[0], padded, tiling)[:height, :width])
    return gate_large_image(rgb, tiled, denoiser.residual_knee)


def compose_output(layers: ImageLayers, denoised: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """The array to save: `denoised` (H, W, 3) blended with the input by `strength` (1: all denoised, 0: the input),
    back to grey for a grey file, with the file's alpha channel unchanged. (H, W), (H, W, 2), (H, W, 3) or
    (H, W, 4) uint8."""
    if strength < 1.0:
        source = layers.rgb.astype(np.float32)
        denoised = np.round(source + strength * (denoised.astype(np.float32) - source)).astype(np.uint8)
    channels = [denoised]
    if layers.grey:  # the three channels of a grey input come out nearly equal: their mean is the grey
        channels = [((denoised.astype(np.uint16).sum(axis=2, keepdims=True) + 1) // 3).astype(np.uint8)]
    if layers.alpha is not None:
        channels.append(layers.alpha[:, :, None])
    out = np.concatenate(channels, axis=2) if len(channels) > 1 else channels[0]
    return out[:, :, 0] if out.shape[2] == 1 else out


def plan_outputs(in_dir: Path, out_dir: Path, shard: Shard = Shard()) -> tuple[list[tuple[Path, Path]], list[Skipped]]:
    """Pair each input image (of this shard) with its output path (same relative stem, .png); report clashes
    (bulk.mirror_inputs: found over the whole listing, names compared case-folded)."""
    mirror = mirror_inputs(in_dir, out_dir, shard)
    return [(item.path, item.output()) for item in mirror.inputs], mirror.skipped


def denoise_folder(
    denoiser: OnnxModel,
    in_dir: Path,
    out_dir: Path,
    batch_size: int = 64,
    overwrite: bool = False,
    workers: int | None = None,
    reporter: Reporter | None = None,
    shard: Shard = Shard(),
    strength: float = 1.0,
    tiling: Tiling = Tiling(),
) -> JobResult:
    """Denoise every image under `in_dir` into `out_dir`; bad files are skipped and listed, the rest finish.
    `batch_size` images are decoded at a time; `strength` blends input (0) and denoised output (1)."""
    if batch_size < 1:
        raise ArgumentError(f"--batch-size must be at least 1 (got {batch_size})", "pass --batch-size 64, for example")
    if not 0.0 <= strength <= 1.0:
        raise ArgumentError(f"--strength must be between 0 and 1 (got {strength})", "pass --strength 0.5, for example")
    tiling.check()
    in_abs, out_abs = in_dir.resolve(), out_dir.resolve()
    if not in_dir.is_dir():
        raise DataError(f"{in_dir} is not a folder" if in_dir.exists() else f"{in_dir} does not exist",
                        "pass the folder that holds the noisy images")
    if out_abs == in_abs or in_abs in out_abs.parents:
        raise ArgumentError(f"--out {out_dir} is inside the input folder", "pick an output folder outside the input")
    identity: dict[str, object] = {"model_sha256": file_digest(denoiser.path), "task": "denoise", "input": str(in_abs)}
    if strength != 1.0:  # part of what the files are: a rerun at another strength must not mix with them
        identity["strength"] = strength
    mirror = mirror_inputs(in_dir, out_dir, shard)
    job = BulkJob("denoising", out_dir, identity, mirror.inputs, lambda item: [item.output()],
                  old_outputs=lambda folder: folder.rglob("*.png"), skipped=mirror.skipped, shard=shard)

    def compute(chunk: list[Pending[MirroredInput]], sink: JobSink) -> None:
        _denoise_chunk(denoiser, chunk, sink, tiling, strength)

    return run_bulk(job, compute, denoiser.provider, batch_size, overwrite, workers, reporter)


def _denoise_chunk(denoiser: OnnxModel, chunk: list[Pending[MirroredInput]], sink: JobSink, tiling: Tiling,
                   strength: float) -> None:
    """Images that fit one tile go through the model in same-size groups of at most tiling.pixel_budget pixels;
    larger ones are tiled at once, so at most one large image is held decoded."""
    by_shape: dict[tuple[int, int], list[tuple[Path, ImageLayers]]] = {}

    def write(group: list[tuple[Path, ImageLayers]], outputs: list[np.ndarray]) -> None:
        for dst, _ in group:
            dst.parent.mkdir(parents=True, exist_ok=True)
        sink.write([dst for dst, _ in group],
                   [compose_output(layers, out, strength) for (_, layers), out in zip(group, outputs)])

    def flush(shape: tuple[int, int]) -> None:
        group = by_shape.pop(shape)
        write(group, list(denoise_array(denoiser, np.stack([layers.rgb for _, layers in group]))))

    for pending, layers in decode_each(chunk, decode_layers, sink):
        dst = pending.paths[0]
        height, width, _ = layers.rgb.shape
        if not tiling.fits(height, width):
            write([(dst, layers)], [denoise_image(denoiser, layers.rgb, tiling)])
            continue
        group = by_shape.setdefault((height, width), [])
        group.append((dst, layers))
        if (len(group) + 1) * height * width > tiling.pixel_budget:
            flush((height, width))
    for shape in list(by_shape):
        flush(shape)
