"""Bulk generation: latents seeded per image index, decoded through onnxruntime, written as PNGs atomically."""

from __future__ import annotations

import errno
import re
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from animevae.errors import ArgumentError, OutputError
from animevae.fileio import contact_sheet, encode_png, is_complete_png, remove_stale_temps, to_uint8
from animevae.outputs import JobResult, file_digest, prepare_output, write_output_file
from animevae.progress import Reporter, SilentReporter
from animevae.runtime import CPU, OnnxModel, open_model
from animevae.sampling import LatentSampler, check_temperature, open_sampler, prior_path_for
from animevae.shard import Shard
from animevae.writer import PngWriter, WriteFailure, usable_cores, worker_pool, write_pngs, writer_processes

GRID_LIMIT = 64
WORKER_DECODE_BATCH = 32


@dataclass
class GenerateResult(JobResult):
    """What a generate call did, and where its contact sheet is."""

    grid: Path | None = None
    latents: str = ""


def image_name(index: int, count: int) -> str:
    """000000.png, ...: six digits, more only from index 1,000,000 on. Never wider for a larger `count`, so a
    rerun with another count finds the files it wrote."""
    return f"{index:06d}.png"


def generated_images(out_dir: Path) -> list[Path]:
    """The images a generate run wrote into `out_dir` (by their names)."""
    return [path for path in out_dir.glob("*.png") if re.fullmatch(r"[0-9]{6,}\.png", path.name)]


def generate(
    decoder: OnnxModel,
    count: int,
    out_dir: Path,
    seed: int = 0,
    batch_size: int = 256,
    overwrite: bool = False,
    grid: Path | None = None,
    workers: int | None = None,
    reporter: Reporter | None = None,
    shard: Shard = Shard(),
    temperature: float = 1.0,
) -> GenerateResult:
    """Write images 0..count-1 of `seed` into `out_dir`, skipping those already there (a rerun resumes).

    With a shard, only the indices it owns: K shards together write exactly the files of one run."""
    reporter = reporter or SilentReporter()
    if count < 1:
        raise OutputError(f"--count must be at least 1 (got {count})", "pass --count 1000, for example")
    if batch_size < 1:
        raise OutputError(f"--batch-size must be at least 1 (got {batch_size})", "pass --batch-size 256, for example")
    if seed < 0:
        raise ArgumentError(f"--seed must be 0 or more (got {seed})", "pass --seed 0, for example")
    check_temperature(temperature)
    latent_dim = int(decoder.metadata["animevae.latent_dim"])
    prior_path = prior_path_for(decoder.path)
    identity = {"model_sha256": file_digest(decoder.path), "seed": seed, "latent_dim": latent_dim,
                "image_size": int(decoder.metadata["animevae.image_size"])}
    # Each absent where it has no effect, so folders written before these existed still match.
    if prior_path:
        identity["prior_sha256"] = file_digest(prior_path)
    if temperature != 1.0:
        identity["temperature"] = temperature
    prepare_output(out_dir, identity, overwrite, old_outputs=generated_images)
    remove_stale_temps(out_dir)
    mine = [i for i in range(count) if shard.owns_index(i)]
    todo = [i for i in mine if overwrite or not is_complete_png(out_dir / image_name(i, count))]
    start = time.perf_counter()
    reporter.start(f"generating into {out_dir}", len(todo))
    job = _Job(str(decoder.path), seed, count, str(out_dir), temperature)
    try:
        if decoder.provider == CPU and len(todo) > batch_size and workers != 0:
            failures = _generate_in_workers(job, todo, batch_size, workers or usable_cores(), reporter)
        else:
            writers = writer_processes(workers, len(todo), batch_size)
            failures = _generate_here(decoder, job, todo, batch_size, writers, reporter)
    finally:
        reporter.stop()
    if failures:
        _raise_write_failure(failures)
    remove_stale_temps(out_dir)  # again: a writer killed just before this run started may only now be gone
    seconds = time.perf_counter() - start
    shown = [out_dir / image_name(i, count) for i in mine[:GRID_LIMIT]]
    grid_path = _write_grid(shown, grid, overwrite) if grid and shown else None
    return GenerateResult(out_dir, len(todo), len(mine) - len(todo), seconds, decoder.provider, grid=grid_path,
                          latents="diffusion prior" if prior_path else "Gaussian mixture")


@dataclass(frozen=True)
class _Job:
    """What every batch of one generate call shares (small and picklable, for worker processes)."""

    model_path: str
    seed: int
    count: int
    out_dir: str
    temperature: float = 1.0


def _decode(decoder: OnnxModel, sampler: LatentSampler, job: _Job, indices: list[int]) -> tuple[list[Path], list[np.ndarray]]:
    z = sampler(job.seed, indices)  # (B, latent)
    pixels = to_uint8(decoder.run(z)[0])  # (B, S, S, 3) uint8
    return [Path(job.out_dir) / image_name(i, job.count) for i in indices], list(pixels)


def _generate_here(decoder: OnnxModel, job: _Job, todo: list[int], batch_size: int, writers: int,
                   reporter: Reporter) -> list[WriteFailure]:
    """Decode in this process (the GPU path, and small jobs); PNGs are written by `writers` processes."""
    sampler = open_sampler(decoder, job.temperature)
    failures: list[WriteFailure] = []

    def on_done(written: int, failed: list[WriteFailure]) -> None:
        failures.extend(failed)
        reporter.advance(written)

    with PngWriter(writers, on_done) as writer:
        for begin in range(0, len(todo), batch_size):
            writer.submit(*_decode(decoder, sampler, job, todo[begin : begin + batch_size]))
            if failures:
                break
    return failures


# On the CPU each worker process decodes its own batches (one onnxruntime thread) and writes them: no image
# crosses a process boundary and decoding and encoding share the cores without waiting on each other.
_worker: dict[str, Any] = {}


def _start_worker(job: _Job) -> None:
    decoder = open_model(Path(job.model_path), "decoder", device="cpu", threads=1)
    _worker.update(decoder=decoder, job=job, sampler=open_sampler(decoder, job.temperature, threads=1))


def _worker_batch(indices: list[int]) -> list[WriteFailure]:
    failures = []
    # Small decoder calls: one thread runs them as fast as big ones, and activations stay ~30 MB, not ~600.
    for begin in range(0, len(indices), WORKER_DECODE_BATCH):
        chunk = indices[begin : begin + WORKER_DECODE_BATCH]
        failures += write_pngs(*_decode(_worker["decoder"], _worker["sampler"], _worker["job"], chunk))
    return failures


def _generate_in_workers(job: _Job, todo: list[int], batch_size: int, workers: int,
                         reporter: Reporter) -> list[WriteFailure]:
    failures: list[WriteFailure] = []
    pending: deque[tuple[int, Future[list[WriteFailure]]]] = deque()
    with worker_pool(workers, _start_worker, (job,)) as pool:
        try:
            for begin in range(0, len(todo), batch_size):
                indices = todo[begin : begin + batch_size]
                pending.append((len(indices), pool.submit(_worker_batch, indices)))
                while len(pending) > 2 * workers or (pending and begin + batch_size >= len(todo)):
                    done, future = pending.popleft()
                    failures.extend(future.result())
                    reporter.advance(done)
                if failures:
                    break
        finally:
            for _, future in pending:
                future.cancel()
    return failures


def _raise_write_failure(failures: list[WriteFailure]) -> None:
    path, reason = failures[0]
    full = "No space left" in reason or "Disk quota" in reason or str(errno.ENOSPC) in reason
    raise OutputError(f"stopped: {path}: {reason} ({len(failures)} files not written)",
                      ("free some disk space and run the same command again: finished files are kept"
                       if full else "fix the folder, then run the same command again: finished files are kept"))


def _write_grid(paths: list[Path], grid: Path, overwrite: bool) -> Path:
    shown = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    write_output_file(grid, encode_png(contact_sheet(np.stack(shown))), overwrite)
    return grid
