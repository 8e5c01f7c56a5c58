"""Bulk generation: latents seeded per image index, decoded through onnxruntime, written as PNGs atomically."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from animevae.bulk import BulkJob, JobSink, Pending, WorkerPlan, run_bulk
from animevae.errors import ArgumentError
from animevae.fileio import contact_sheet, encode_png, to_uint8
from animevae.outputs import JobResult, file_digest, write_output_file
from animevae.progress import Reporter
from animevae.runtime import CPU, OnnxModel, open_model
from animevae.sampling import LatentSampler, check_seed, check_temperature, open_sampler, prior_path_for
from animevae.shard import Shard
from animevae.writer import WriteFailure, usable_cores, write_pngs

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
    if count < 1:
        raise ArgumentError(f"--count must be at least 1 (got {count})", "pass --count 1000, for example")
    if batch_size < 1:
        raise ArgumentError(f"--batch-size must be at least 1 (got {batch_size})", "pass --batch-size 256, for example")
    check_seed(seed)
    check_temperature(temperature)
    prior_path = prior_path_for(decoder.path)
    identity = {"model_sha256": file_digest(decoder.path), "seed": seed, "latent_dim": decoder.latent_dim,
                "image_size": decoder.image_size}
    # Each absent where it has no effect, so folders written before these existed still match.
    if prior_path:
        identity["prior_sha256"] = file_digest(prior_path)
    if temperature != 1.0:
        identity["temperature"] = temperature
    mine = [i for i in range(count) if shard.owns_index(i)]
    job = BulkJob("generating", out_dir, identity, mine, lambda i: [out_dir / image_name(i, count)],
                  old_outputs=generated_images, shard=shard, stop_on_failure=True)
    draw = _Draw(str(decoder.path), seed, temperature)
    in_workers = None
    if decoder.provider == CPU and workers != 0:
        in_workers = WorkerPlan(workers or usable_cores(), batch_size, _start_worker, (draw,), _worker_batch)
    samplers: list[LatentSampler] = []  # opened on the first batch decoded here

    def compute(chunk: list[Pending[int]], sink: JobSink) -> None:
        samplers[:] = samplers or [open_sampler(decoder, temperature)]
        sink.write(*_decode(decoder, samplers[0], draw.seed, chunk))

    result = run_bulk(job, compute, decoder.provider, batch_size, overwrite, workers, reporter, in_workers)
    shown = [out_dir / image_name(i, count) for i in mine[:GRID_LIMIT]]
    grid_path = _write_grid(shown, grid, overwrite) if grid and shown else None
    return GenerateResult(out_dir, result.written, result.existing, result.seconds, result.provider, grid=grid_path,
                          latents="diffusion prior" if prior_path else "Gaussian mixture")


@dataclass(frozen=True)
class _Draw:
    """How latents are drawn (small and picklable, for worker processes)."""

    model_path: str
    seed: int
    temperature: float = 1.0


def _decode(decoder: OnnxModel, sampler: LatentSampler, seed: int,
            chunk: list[Pending[int]]) -> tuple[list[Path], list[np.ndarray]]:
    z = sampler(seed, [pending.task for pending in chunk])  # (B, latent)
    pixels = to_uint8(decoder.run(z)[0])  # (B, S, S, 3) uint8
    return [pending.paths[0] for pending in chunk], list(pixels)


# On the CPU each worker process decodes its own batches (one onnxruntime thread) and writes them: no image
# crosses a process boundary and decoding and encoding share the cores without waiting on each other.
_worker: dict[str, Any] = {}


def _start_worker(draw: _Draw) -> None:
    decoder = open_model(Path(draw.model_path), "decoder", device="cpu", threads=1)
    _worker.update(decoder=decoder, draw=draw, sampler=open_sampler(decoder, draw.temperature, threads=1))


def _worker_batch(chunk: list[Pending[int]]) -> list[WriteFailure]:
    failures = []
    # Small decoder calls: one thread runs them as fast as big ones, and activations stay ~30 MB, not ~600.
    for begin in range(0, len(chunk), WORKER_DECODE_BATCH):
        part = chunk[begin : begin + WORKER_DECODE_BATCH]
        failures += write_pngs(*_decode(_worker["decoder"], _worker["sampler"], _worker["draw"].seed, part))
    return failures


def _write_grid(paths: list[Path], grid: Path, overwrite: bool) -> Path:
    shown = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    write_output_file(grid, encode_png(contact_sheet(np.stack(shown))), overwrite)
    return grid
