"""Folder denoising: every image under a folder, through the denoiser in onnxruntime, into a mirrored tree."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from animevae.data import Skipped, decode_rgb, find_images
from animevae.errors import DataError, OutputError
from animevae.fileio import is_complete_png, remove_stale_temps, to_uint8
from animevae.outputs import JobResult, WriteTally, file_digest, prepare_output, skipped_name, write_skipped
from animevae.progress import Reporter, SilentReporter
from animevae.runtime import OnnxModel
from animevae.shard import Shard
from animevae.writer import PngWriter, writer_processes

MULTIPLE = 4  # the denoiser halves twice inside: pad H and W up to a multiple of 4


def default_out_dir(in_dir: Path) -> Path:
    """A new folder beside the input: faces -> faces-denoised (never in place)."""
    resolved = in_dir.resolve()
    return resolved.with_name(f"{resolved.name}-denoised")


def denoise_array(denoiser: OnnxModel, images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, H, W, 3) uint8, padding H and W by edge replication to a multiple of 4."""
    _, height, width, _ = images.shape
    pad_h, pad_w = -height % MULTIPLE, -width % MULTIPLE
    batch = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # (B, 3, H, W)
    if pad_h or pad_w:
        batch = np.pad(batch, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")
    return to_uint8(denoiser.run(batch)[0][:, :, :height, :width])


def plan_outputs(in_dir: Path, out_dir: Path, shard: Shard = Shard()) -> tuple[list[tuple[Path, Path]], list[Skipped]]:
    """Pair each input image (of this shard) with its output path (same relative stem, .png); report clashes.

    Clashes are found over the whole listing, before the shard takes its part, so every shard agrees on
    which file wins; names are compared case-folded, as a case-insensitive disk would."""
    listing = find_images(in_dir)
    pairs, skipped, claimed = [], [], {}
    for path in listing.files:
        relative = listing.relative(path)
        target = out_dir / path.relative_to(in_dir).with_suffix(".png")
        key = str(target).casefold()
        if key in claimed:
            clash = Skipped(relative, f"same output name as {claimed[key]}")
            skipped.extend([clash] if shard.owns_path(relative) else [])
            continue
        claimed[key] = relative
        if shard.owns_path(relative):
            pairs.append((path, target))
    return pairs, [*listing.skipped, *skipped]


def denoise_folder(
    denoiser: OnnxModel,
    in_dir: Path,
    out_dir: Path,
    batch_size: int = 64,
    overwrite: bool = False,
    workers: int | None = None,
    reporter: Reporter | None = None,
    shard: Shard = Shard(),
) -> JobResult:
    """Denoise every image under `in_dir` into `out_dir`; bad files are skipped and listed, the rest finish."""
    reporter = reporter or SilentReporter()
    if batch_size < 1:
        raise OutputError(f"--batch-size must be at least 1 (got {batch_size})", "pass --batch-size 64, for example")
    in_abs, out_abs = in_dir.resolve(), out_dir.resolve()
    if not in_dir.is_dir():
        raise DataError(f"{in_dir} is not a folder" if in_dir.exists() else f"{in_dir} does not exist",
                        "pass the folder that holds the noisy images")
    if out_abs == in_abs or in_abs in out_abs.parents:
        raise OutputError(f"--out {out_dir} is inside the input folder", "pick an output folder outside the input")
    report = skipped_name(shard.index, shard.count)
    identity = {"model_sha256": file_digest(denoiser.path), "task": "denoise", "input": str(in_abs)}
    prepare_output(out_dir, identity, overwrite, old_outputs=lambda folder: folder.rglob("*.png"), report=report)
    pairs, skipped = plan_outputs(in_dir, out_dir, shard)
    folders = [out_dir, *{dst.parent for _, dst in pairs}]
    remove_stale_temps(*folders)
    todo = [(src, dst) for src, dst in pairs if overwrite or not is_complete_png(dst)]
    start = time.perf_counter()
    reporter.start(f"denoising into {out_dir}", len(todo))
    tally = WriteTally(out_dir, skipped, reporter)
    pool_size = writer_processes(workers, len(todo), batch_size)
    try:
        with PngWriter(pool_size, tally) as writer:
            for begin in range(0, len(todo), batch_size):
                _denoise_chunk(denoiser, in_dir, todo[begin : begin + batch_size], writer, skipped, reporter)
    finally:
        reporter.stop()
    remove_stale_temps(*folders)  # again: a writer killed just before this run started may only now be gone
    write_skipped(out_dir, skipped, report)
    seconds = time.perf_counter() - start
    return JobResult(out_dir, tally.written, len(pairs) - len(todo), seconds, denoiser.provider, skipped, report)


def _denoise_chunk(denoiser: OnnxModel, in_dir: Path, chunk: list[tuple[Path, Path]], writer: PngWriter,
                   skipped: list[Skipped], reporter: Reporter) -> None:
    by_shape: dict[tuple[int, ...], list[tuple[Path, np.ndarray]]] = {}
    for src, dst in chunk:
        try:
            pixels = decode_rgb(src)
        except DataError as error:
            skipped.append(Skipped(str(src.relative_to(in_dir)), error.message))
            reporter.advance(1)
            continue
        by_shape.setdefault(pixels.shape, []).append((dst, pixels))
    for group in by_shape.values():
        outputs = denoise_array(denoiser, np.stack([pixels for _, pixels in group]))
        for dst, _ in group:
            dst.parent.mkdir(parents=True, exist_ok=True)
        writer.submit([dst for dst, _ in group], list(outputs))
