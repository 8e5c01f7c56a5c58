"""PNG encoding and atomic writing, in worker processes overlapped with the model, in bounded memory."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from animevae.fileio import save_png_atomic

WriteFailure = tuple[Path, str]


def write_pngs(paths: Sequence[Path], images: Sequence[np.ndarray]) -> list[WriteFailure]:
    """Encode and atomically write each (H, W, 3) uint8 image; return the (path, reason) of each failure."""
    failures = []
    for path, pixels in zip(paths, images):
        try:
            save_png_atomic(path, pixels)
        except OSError as error:
            failures.append((path, f"cannot write: {error.strerror or error}"))
    return failures


def die_with_parent(parent: int) -> None:
    """Run first in every worker process: end it when `parent` (the job) ends, however it ends (SIGTERM,
    SIGKILL by the OOM killer), so no worker goes on writing for a job that is gone. Ctrl-C is the job's to
    handle: it stops the pool in order, so a worker ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the kernel was asked to tell us
        os._exit(1)


def worker_pool(workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes that die with this one; `initializer(*initargs)` runs in each."""
    # spawn, not fork: the parent holds onnxruntime threads, which do not survive a fork safely.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(os.getpid(), initializer, initargs))


def _start_worker(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def usable_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def writer_processes(requested: int | None, images: int, threshold: int) -> int:
    """PNG writer processes for a job: as requested, else one per core when the job has more than
    `threshold` images (below that, starting processes costs more than it saves: write in-process)."""
    if requested is not None:
        return requested
    return usable_cores() if images > threshold else 0


class BoundedQueue:
    """Jobs in a process pool, at most `limit` in flight: `submit` blocks while it is full, so memory stays
    bounded. `on_done(count, result)` runs in this process as jobs finish, in submission order."""

    def __init__(self, pool: ProcessPoolExecutor, limit: int, on_done: Callable[[int, Any], None]) -> None:
        self.pool, self.limit, self.on_done = pool, limit, on_done
        self.pending: deque[tuple[int, Future[Any]]] = deque()

    def submit(self, count: int, function: Callable[..., Any], *args: Any) -> None:
        """Queue `function(*args)`, a job of `count` images; wait for the oldest while more than `limit` are queued."""
        self.pending.append((count, self.pool.submit(function, *args)))
        while len(self.pending) > self.limit:
            self.finish_one()

    def finish_one(self) -> None:
        """Wait for the oldest job and report it."""
        count, job = self.pending.popleft()
        self.on_done(count, job.result())

    def drain(self) -> None:
        """Wait for every queued job."""
        while self.pending:
            self.finish_one()

    def cancel(self) -> None:
        """Drop the jobs that have not started."""
        for _, job in self.pending:
            job.cancel()
        self.pending.clear()


class PngWriter:
    """Writes PNGs in `workers` processes (0: in this process), keeping at most 2 jobs per worker in flight.

    `on_done(written, failures)` is called in this process as jobs finish, in submission order.
    """

    def __init__(self, workers: int, on_done: Callable[[int, list[WriteFailure]], None]) -> None:
        self.workers, self.on_done = workers, on_done
        self.pool: ProcessPoolExecutor | None = worker_pool(workers) if workers > 0 else None
        self.queue = BoundedQueue(self.pool, 2 * workers, on_done) if self.pool is not None else None

    def submit(self, paths: Sequence[Path], images: Sequence[np.ndarray]) -> None:
        """Queue images for writing; blocks while the queue is full, so memory stays bounded."""
        if self.queue is None:
            self.on_done(len(paths), write_pngs(paths, images))
            return
        per_job = max(1, -(-len(paths) // self.workers))
        for begin in range(0, len(paths), per_job):
            part = list(paths[begin : begin + per_job])
            self.queue.submit(len(part), write_pngs, part, list(images[begin : begin + per_job]))

    def __enter__(self) -> "PngWriter":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        try:
            if kind is None and self.queue is not None:
                self.queue.drain()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=kind is not None)
