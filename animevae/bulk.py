"""One skeleton for the folder jobs (generate, denoise, augment).

It holds what every such job must get right the same way: the output manifest, stale temps, resume, shards,
the writer pool, failures and the result. A command brings only what is its own: its tasks (where its inputs
come from and which files each one writes) and what it computes per batch.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from animevae.images import Skipped, find_images
from animevae.errors import DataError, OutputError
from animevae.fileio import is_complete_png, remove_stale_temps
from animevae.outputs import SKIPPED_NAME, JobResult, prepare_output, skipped_name, write_skipped
from animevae.progress import Reporter, SilentReporter
from animevae.shard import Shard
from animevae.writer import BoundedQueue, PngWriter, WriteFailure, worker_pool, writer_processes

T = TypeVar("T")
D = TypeVar("D")


@dataclass
class MirroredInput:
    """An input image, and the stem of its outputs in a tree that mirrors the input folder."""

    path: Path
    relative: str  # '/'-separated: as printed, hashed and sharded
    stem: Path  # out_dir / relative path without its suffix

    def output(self, suffix: str = "") -> Path:
        """The output file `stem + suffix + .png` (a.b.jpg -> a.b.png, or a.b_3.png with suffix "_3")."""
        return self.stem.with_name(f"{self.stem.name}{suffix}.png")


@dataclass
class BulkJob(Generic[T]):
    """What a command brings to run_bulk: where it writes, what guards the folder, its tasks and their files."""

    description: str  # shown with the folder on the progress bar: "generating", "denoising", ...
    out_dir: Path
    identity: dict[str, object]  # the model and settings the folder's images come from (outputs.prepare_output)
    tasks: list[T]  # this shard's tasks, in order
    outputs: Callable[[T], list[Path]]  # the files a task writes
    old_outputs: Callable[[Path], Iterable[Path]]  # an earlier job's images in out_dir, removed by --overwrite
    skipped: list[Skipped] = field(default_factory=list)  # inputs refused while planning
    shard: Shard = Shard()  # the part of the job `tasks` are (each shard lists its failures in its own file)
    # generate has no input to skip past when a write fails (the disk is full): it stops, keeping what is done.
    stop_on_failure: bool = False
    # Writer processes start when more images than this are to be written (default: the batch size).
    writer_threshold: int | None = None

    @property
    def report(self) -> str:
        """Where in out_dir this job lists its failures: skipped.json, or skipped.shard-i-of-K.json (a job that
        stops on a failure writes no list; the name is still kept clear of foreign files)."""
        return SKIPPED_NAME if self.stop_on_failure else skipped_name(self.shard.index, self.shard.count)


@dataclass
class Pending(Generic[T]):
    """A task with the outputs it still has to write (a rerun resumes: finished files are kept)."""

    task: T
    indices: list[int]  # positions in outputs(task)
    paths: list[Path]


@dataclass(frozen=True)
class WorkerPlan:
    """Run the per-batch work in `processes` worker processes instead (each computes and writes its own
    batches) when more than `threshold` tasks remain (below that, starting processes costs more than it saves):
    `initializer(*initargs)` prepares each worker, `work(chunk)` returns the chunk's write failures."""

    processes: int
    threshold: int
    initializer: Callable[..., None]
    initargs: tuple[Any, ...]
    work: Callable[[list[Pending[Any]]], list[WriteFailure]]


class JobSink:
    """Where a command's per-batch work puts its results: images to write, inputs to skip."""

    def __init__(self, writer: PngWriter, tally: "WriteTally") -> None:
        self.writer, self.tally = writer, tally

    def write(self, paths: list[Path], images: list[np.ndarray]) -> None:
        """Queue images for writing (atomically, in the writer pool)."""
        self.writer.submit(paths, images)

    def skip(self, relative: str, reason: str, outputs: int = 1) -> None:
        """List an input that cannot be used; its `outputs` count as done on the progress bar."""
        self.tally.skipped.append(Skipped(relative, reason))
        self.tally.reporter.advance(outputs)


class WriteTally:
    """Counts what the writers finished and records each failed file, relative to out_dir."""

    def __init__(self, out_dir: Path, skipped: list[Skipped], reporter: Reporter) -> None:
        self.out_dir, self.skipped, self.reporter = out_dir, skipped, reporter
        self.written = 0
        self.failures: list[WriteFailure] = []

    def __call__(self, count: int, failed: list[WriteFailure]) -> None:
        self.written += count - len(failed)
        self.failures.extend(failed)
        self.skipped.extend(Skipped(str(path.relative_to(self.out_dir)), reason) for path, reason in failed)
        self.reporter.advance(count)


def run_bulk(job: BulkJob[T], compute: Callable[[list[Pending[T]], JobSink], None], provider: str,
             batch_size: int, overwrite: bool = False, workers: int | None = None,
             reporter: Reporter | None = None, in_workers: WorkerPlan | None = None) -> JobResult:
    """Claim the output folder, resume, and run `compute` over the missing outputs, `batch_size` tasks at a time.

    Files that fail to write are listed in out_dir/REPORT and the rest finish (or, for stop_on_failure jobs,
    the job stops with an OutputError); stale temp files of killed runs are swept before and after."""
    reporter = reporter or SilentReporter()
    prepare_output(job.out_dir, job.identity, overwrite, old_outputs=job.old_outputs, report=job.report)
    # Only the tasks are kept, not their paths: generate --count 1000000 plans in the memory of a list of ints.
    todo: list[T] = []
    partly_done: dict[int, list[int]] = {}  # position in todo -> the outputs still missing, where some exist
    folders: dict[Path, None] = {job.out_dir: None}
    outputs = missing_outputs = 0
    for task in job.tasks:
        paths = job.outputs(task)
        missing = [i for i, path in enumerate(paths) if overwrite or not is_complete_png(path)]
        folders.update(dict.fromkeys(path.parent for path in paths))
        outputs, missing_outputs = outputs + len(paths), missing_outputs + len(missing)
        if len(missing) < len(paths) and missing:
            partly_done[len(todo)] = missing
        if missing:
            todo.append(task)
    remove_stale_temps(*folders)
    skipped = list(job.skipped)
    tally = WriteTally(job.out_dir, skipped, reporter)
    chunks = (_pending(job, todo, partly_done, begin, batch_size) for begin in range(0, len(todo), batch_size))
    started = time.perf_counter()
    reporter.start(f"{job.description} into {job.out_dir}", missing_outputs)
    try:
        if in_workers is not None and len(todo) > in_workers.threshold:
            _run_in_workers(chunks, in_workers, tally, job.stop_on_failure)
        else:
            writers = writer_processes(workers, missing_outputs, job.writer_threshold or batch_size)
            with PngWriter(writers, tally) as writer:
                sink = JobSink(writer, tally)
                for chunk in chunks:
                    compute(chunk, sink)
                    if job.stop_on_failure and tally.failures:
                        break
    finally:
        reporter.stop()
    if job.stop_on_failure and tally.failures:
        raise _write_failure(tally.failures)
    remove_stale_temps(*folders)  # again: a writer killed just before this run started may only now be gone
    if not job.stop_on_failure:
        write_skipped(job.out_dir, skipped, job.report)
    return JobResult(job.out_dir, tally.written, outputs - missing_outputs, time.perf_counter() - started, provider,
                     skipped, job.report)


def _pending(job: BulkJob[T], todo: list[T], partly_done: dict[int, list[int]], begin: int,
             batch_size: int) -> list[Pending[T]]:
    """The chunk of `todo` from `begin`, each task with the outputs it still has to write."""
    chunk = []
    for position in range(begin, min(begin + batch_size, len(todo))):
        paths = job.outputs(todo[position])
        indices = partly_done.get(position, list(range(len(paths))))
        chunk.append(Pending(todo[position], indices, [paths[i] for i in indices]))
    return chunk


def _run_in_workers(chunks: Iterable[list[Pending[T]]], plan: WorkerPlan, tally: WriteTally,
                    stop_on_failure: bool) -> None:
    with worker_pool(plan.processes, plan.initializer, plan.initargs) as pool:
        queue = BoundedQueue(pool, 2 * plan.processes, tally)
        try:
            for chunk in chunks:
                queue.submit(sum(len(pending.paths) for pending in chunk), plan.work, chunk)
                if stop_on_failure and tally.failures:
                    return  # the batches not started are cancelled: nothing more is written after a failure
            queue.drain()
        finally:
            queue.cancel()


def _write_failure(failures: list[WriteFailure]) -> OutputError:
    path, reason = failures[0]
    full = "No space left" in reason or "Disk quota" in reason or str(errno.ENOSPC) in reason
    return OutputError(f"stopped: {path}: {reason} ({len(failures)} files not written)",
                       ("free some disk space and run the same command again: finished files are kept"
                        if full else "fix the folder, then run the same command again: finished files are kept"))


@dataclass
class Mirror:
    """The inputs of a mirrored job: this shard's images with their output stems, the inputs skipped, and how
    many images the whole listing holds (all shards together)."""

    inputs: list[MirroredInput]
    skipped: list[Skipped]
    listed: int


def mirror_inputs(in_dir: Path, out_dir: Path, shard: Shard = Shard(), clash: str = "same output name as") -> Mirror:
    """Every image under `in_dir` that this shard owns, with its output stem under `out_dir`, and the inputs
    skipped: unreadable listings, and inputs whose outputs would take another's names.

    Clashes are found over the whole listing, before the shard takes its part, so every shard agrees on which
    file wins; names are compared case-folded, as a case-insensitive disk would (A.png and a.jpg clash)."""
    listing = find_images(in_dir)
    inputs, skipped, claimed = [], [], {}
    for path in listing.files:
        relative = listing.relative(path).replace(os.sep, "/")
        stem = out_dir / path.relative_to(in_dir).with_suffix("")
        key = str(stem).casefold()
        if key in claimed:
            if shard.owns_path(relative):
                skipped.append(Skipped(relative, f"{clash} {claimed[key]}"))
            continue
        claimed[key] = relative
        if shard.owns_path(relative):
            inputs.append(MirroredInput(path, relative, stem))
    return Mirror(inputs, [*listing.skipped, *skipped], len(listing.files) + len(listing.skipped))


def decode_each(chunk: list[Pending[MirroredInput]], decode: Callable[[Path], D],
                sink: JobSink) -> Iterator[tuple[Pending[MirroredInput], D]]:
    """Each pending input with its decoded image; one that cannot be read is skipped (listed with its reason)."""
    for pending in chunk:
        try:
            decoded = decode(pending.task.path)
        except DataError as error:
            sink.skip(pending.task.relative, error.message, len(pending.paths))
            continue
        yield pending, decoded


def sibling_folder(in_dir: Path, suffix: str) -> Path:
    """A new folder beside the input: faces -> faces-SUFFIX (outputs never go into the input folder)."""
    resolved = in_dir.resolve()
    return resolved.with_name(f"{resolved.name}-{suffix}")
