"""Bulk generation: latents seeded per image index, decoded through onnxruntime, written as PNGs atomically.

Unlabelled: image i is OUT/<i>.png, from (seed, i). By class (a labelled model, see per_class.py): image i of
class c is OUT/<name of c>/<i>.png, from (seed, c, i), and OUT/metadata.jsonl labels the tree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from animevae.bulk import BulkJob, JobSink, Pending, WorkerPlan, run_bulk
from animevae.errors import ArgumentError, OutputError
from animevae.fileio import contact_sheet, encode_png, to_uint8
from animevae.model_files import ModelSet
from animevae.model_info import CLASS_MIXTURE, ModelInfo
from animevae.outputs import MANIFEST_NAME, JobResult, generated_outputs, numbered_png, write_output_file
from animevae.per_class import METADATA_NAME, ClassRequest, class_counts, class_image_path, write_metadata
from animevae.progress import Reporter
from animevae.runtime import CPU, OnnxModel, open_model
from animevae.sampling import LatentSampler, check_seed, check_temperature, open_sampler
from animevae.shard import Shard
from animevae.writer import WriteFailure, usable_cores, write_pngs

GRID_LIMIT = 64
WORKER_DECODE_BATCH = 32


@dataclass
class GenerateResult(JobResult):
    """What a generate call did, and where its contact sheet is."""

    grid: Path | None = None
    latents: str = ""
    # By class: images asked for per class name, and the rows of metadata.jsonl.
    per_class: dict[str, int] | None = None
    labelled: int = 0


def image_name(index: int, count: int) -> str:
    """The file name of image `index` (outputs.numbered_png): never wider for a larger `count`."""
    return numbered_png(index)


def generate(
    models: ModelSet,
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

    `models`: the decoder and, where the model has one, its prior (model_files.open_models). With a shard, only
    the indices it owns: K shards together write exactly the files of one run."""
    if count < 1:
        raise ArgumentError(f"--count must be at least 1 (got {count})", "pass --count 1000, for example")
    _check(batch_size, seed, temperature)
    identity = _identity(models.info, seed, temperature)
    mine = [i for i in range(count) if shard.owns_index(i)]
    job = BulkJob("generating", out_dir, identity, mine, lambda i: [out_dir / image_name(i, count)],
                  old_outputs=generated_outputs, shard=shard, stop_on_failure=True)
    result = _run(models, job, seed, temperature, batch_size, overwrite, workers, reporter)
    shown = [out_dir / image_name(i, count) for i in mine[:GRID_LIMIT]]
    grid_path = _write_grid(shown, grid, overwrite) if grid and shown else None
    return GenerateResult(out_dir, result.written, result.existing, result.seconds, result.provider, grid=grid_path,
                          latents=models.info.latent_source)


def generate_by_class(
    models: ModelSet,
    request: ClassRequest,
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
    """Write images 0..n_c-1 of each class c the request asks for (per_class.class_counts) into OUT/<class name>/,
    then OUT/metadata.jsonl listing every finished image of the tree with its label; a rerun resumes.

    K shards split the job by position in its task list, so they together write exactly one run's files."""
    classes = models.info.classes
    counts = class_counts(classes, request)
    assert classes is not None  # class_counts refuses a model without classes
    _check(batch_size, seed, temperature)
    if (out_dir / METADATA_NAME).exists() and not (out_dir / MANIFEST_NAME).exists() and not overwrite:
        raise OutputError(f"{out_dir / METADATA_NAME} exists and animevae did not write it",
                          "use a new --out folder, or pass --overwrite to replace it")
    # "layout" keeps a class tree and a flat folder of the same model and seed apart.
    identity = {**_identity(models.info, seed, temperature), "layout": "classes"}
    tasks = [(c, i) for c, n in sorted(counts.items()) for i in range(n)]
    mine = [task for position, task in enumerate(tasks) if shard.owns_index(position)]
    job = BulkJob("generating", out_dir, identity, mine,
                  lambda task: [class_image_path(out_dir, classes.names[task[0]], task[1])],
                  old_outputs=generated_outputs, shard=shard, stop_on_failure=True)
    result = _run(models, job, seed, temperature, batch_size, overwrite, workers, reporter)
    labelled = write_metadata(out_dir, classes, seed, models.info.digest)
    shown = [class_image_path(out_dir, classes.names[c], i) for c, i in _round_robin(mine)[:GRID_LIMIT]]
    grid_path = _write_grid(shown, grid, overwrite) if grid and shown else None
    return GenerateResult(out_dir, result.written, result.existing, result.seconds, result.provider, grid=grid_path,
                          latents=CLASS_MIXTURE,
                          per_class={classes.names[c]: n for c, n in sorted(counts.items())}, labelled=labelled)


def _round_robin(tasks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The tasks reordered class by class in turn, so a contact sheet shows every class."""
    by_class: dict[int, list[tuple[int, int]]] = {}
    for task in tasks:
        by_class.setdefault(task[0], []).append(task)
    columns = list(by_class.values())
    return [column[row] for row in range(max(map(len, columns), default=0)) for column in columns if row < len(column)]


def _check(batch_size: int, seed: int, temperature: float) -> None:
    if batch_size < 1:
        raise ArgumentError(f"--batch-size must be at least 1 (got {batch_size})", "pass --batch-size 256, for example")
    check_seed(seed)
    check_temperature(temperature)


def _identity(info: ModelInfo, seed: int, temperature: float) -> dict[str, object]:
    """What guards the output folder: the model and the settings its images depend on."""
    identity: dict[str, object] = {"model_sha256": info.digest, "seed": seed,
                                   "latent_dim": info.latent_dim, "image_size": info.image_size}
    # Each only where it changes the images: a folder's identity stays that of the images in it.
    if info.prior_digest is not None:
        identity["prior_sha256"] = info.prior_digest
    if temperature != 1.0:
        identity["temperature"] = temperature
    return identity


def _run(models: ModelSet, job: BulkJob[Any], seed: int, temperature: float, batch_size: int, overwrite: bool,
         workers: int | None, reporter: Reporter | None) -> Any:
    """The job through the bulk skeleton: decoded in worker processes on the CPU, here on CUDA."""
    decoder = models.decoder
    assert decoder is not None, "generate needs the decoder"
    assert models.prior_file is None or models.prior is not None, "open the models with the prior role"
    draw = _Draw(models.info, seed, temperature)
    in_workers = None
    if decoder.provider == CPU and workers != 0:
        in_workers = WorkerPlan(workers or usable_cores(), batch_size, _start_worker, (draw,), _worker_batch)
    sampler = LatentSampler(models.info.mixture, models.prior, temperature)

    def compute(chunk: list[Pending[Any]], sink: JobSink) -> None:
        sink.write(*_decode(decoder, sampler, draw.seed, chunk))

    return run_bulk(job, compute, decoder.provider, batch_size, overwrite, workers, reporter, in_workers)


@dataclass(frozen=True)
class _Draw:
    """How latents are drawn (picklable: worker processes get the model's description as it is)."""

    info: ModelInfo
    seed: int
    temperature: float = 1.0


def _decode(decoder: OnnxModel, sampler: LatentSampler, seed: int,
            chunk: list[Pending[Any]]) -> tuple[list[Path], list[np.ndarray]]:
    """Latents of the chunk's tasks (image indices, or (class, index) pairs), decoded to (B, S, S, 3) uint8."""
    tasks = [pending.task for pending in chunk]
    by_class = isinstance(tasks[0], tuple)
    z = sampler.class_latents(seed, tasks) if by_class else sampler(seed, tasks)  # (B, latent)
    pixels = to_uint8(decoder.run(z)[0])  # (B, S, S, 3) uint8
    paths = [pending.paths[0] for pending in chunk]
    for folder in dict.fromkeys(path.parent for path in paths) if by_class else ():
        folder.mkdir(exist_ok=True)  # OUT/<class>/, once the folder is claimed
    return paths, list(pixels)


# On the CPU each worker process decodes its own batches (one onnxruntime thread) and writes them: no image
# crosses a process boundary and decoding and encoding share the cores without waiting on each other.
_worker: dict[str, Any] = {}


def _start_worker(draw: _Draw) -> None:
    decoder = open_model(draw.info.decoder_file, "decoder", device="cpu", threads=1)
    _worker.update(decoder=decoder, draw=draw, sampler=open_sampler(draw.info, draw.temperature, "cpu", threads=1))


def _worker_batch(chunk: list[Pending[Any]]) -> list[WriteFailure]:
    failures = []
    # Small decoder calls: one thread runs them as fast as big ones, and the activations stay small.
    for begin in range(0, len(chunk), WORKER_DECODE_BATCH):
        part = chunk[begin : begin + WORKER_DECODE_BATCH]
        failures += write_pngs(*_decode(_worker["decoder"], _worker["sampler"], _worker["draw"].seed, part))
    return failures


def _write_grid(paths: list[Path], grid: Path, overwrite: bool) -> Path:
    shown = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    write_output_file(grid, encode_png(contact_sheet(np.stack(shown))), overwrite)
    return grid
