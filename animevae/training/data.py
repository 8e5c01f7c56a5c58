"""Training data: a folder or prepared set loaded for a run (folders prepared once into runs/.cache), the
held-out split, the content-hash keys a run keeps, and batches gathered from the memory-mapped images."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from animevae.errors import DataError
from animevae.labels import Labels
from animevae.prepared_set import (folder_fingerprint, load_prepared, load_prepared_labels, manifest_path,
                                   prepare_set)
from animevae.progress import Reporter

SKIPPED_SHOWN = 20  # skipped files listed one per line when a folder is prepared for training


def split_holdout(hashes: Iterable[str], count: int, val_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, validation) by content hash, so the split is stable across re-preparing.

    The validation part is `val_size` images, capped at 10% of the set (at least one image when N >= 2).
    """
    ordered = list(hashes)
    if len(ordered) != count:
        ordered = [f"{index:012d}" for index in range(count)]
    held = min(val_size, count // 10) if count >= 20 else (1 if count >= 2 else 0)
    # Rank by a hash of the hash, so the held-out images are spread across styles rather than sorted by file name.
    ranks = sorted(range(count), key=lambda i: hashlib.sha256(ordered[i].encode()).hexdigest())
    validation = np.array(sorted(ranks[:held]), dtype=np.int64)
    train = np.array(sorted(ranks[held:]), dtype=np.int64)
    return train, validation


def hash_keys(hashes: Iterable[str]) -> np.ndarray:
    """(N,) int64 keys, sorted: the first 15 hex digits (60 bits) of each sha256 content hash. A run keeps its
    training split's keys, so evaluate can refuse to score held-out images the run was trained on."""
    return np.sort(np.array([int(h[:15], 16) for h in hashes], dtype=np.int64))


@dataclass
class TrainingData:
    """A loaded training set: (N, S, S, 3) uint8 images, their content hashes, their labels (None: unlabelled)."""

    images: np.ndarray
    hashes: list[str]
    labels: Labels | None = None


def load_training_images(data: Path, image_size: int, cache_dir: Path, reporter: Reporter) -> TrainingData:
    """Images (memory-mapped), hashes and labels from a prepared set, or a folder (prepared once and cached)."""
    if data.is_file():
        images, hashes = load_prepared(data)
        if images.shape[1] != image_size:
            raise DataError(
                f"{data} holds {images.shape[1]}x{images.shape[1]} images, not {image_size}x{image_size}",
                f"pass --image-size {images.shape[1]}, or prepare the folder again with --image-size {image_size}",
            )
        return TrainingData(images, hashes, load_prepared_labels(data))
    cached = cache_dir / f"{data.resolve().name}-{folder_fingerprint(data, image_size)}.safetensors"
    if cached.is_file():
        reporter.log(f"using the prepared copy of {data} in {cached}")
        return TrainingData(*load_prepared(cached), load_prepared_labels(cached))
    reporter.start(f"preparing {data}", None)
    try:
        prepared = prepare_set(data, image_size, cached, on_file=reporter.advance,
                               before_save=lambda _: reporter.stop())
    finally:
        reporter.stop()
    reporter.log(f"prepared {len(prepared.sources)} images ({len(prepared.skipped)} skipped, "
                 f"{len(prepared.duplicates)} duplicates; {prepared.layout}) into {cached}")
    for item in prepared.skipped[:SKIPPED_SHOWN]:
        reporter.log(f"  skipped {item.path}: {item.reason}")
    if prepared.skipped:
        more = len(prepared.skipped) - SKIPPED_SHOWN
        reporter.log(f"  {f'and {more} more; ' if more > 0 else ''}all listed in {manifest_path(cached)}")
    return TrainingData(prepared.images, prepared.hashes, prepared.labels)


def rank_share(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's rows of a global batch of indices (every world_size-th from `rank`), cut before any pixel is
    gathered, so each rank reads only its share of the set."""
    return indices[rank::world_size]


class TrainingPixels:
    """Rows of a set's (N, S, S, 3) uint8 images (in memory or memory-mapped) seen as (len(rows), 3, S, S) uint8,
    gathered on demand: only the rows a batch names are read, so memory does not grow with the set."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, device: torch.device) -> None:
        self.images, self.rows, self.device = images, rows, device

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, 3, S, S) uint8 on the device: the rows `key` picks (a slice or indices into this split)."""
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        pixels = read_rows(self.images, self.rows[key])  # (B, S, S, 3): a copy of just these rows
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(self.device)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 1] on the device."""
        return self[indices].float().div_(255.0)


def float_rows(images: TrainingPixels | torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(len(rows), 3, S, S) float in [0, 1]: `rows` of a split (only those are read) or of images in memory."""
    return images.batch(rows) if isinstance(images, TrainingPixels) else images[rows]


def read_rows(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), S, S, 3) uint8: a copy of `rows` of `images`.

    A memory-mapped set is read with pread, not through the map: a page fault maps whole page-cache folios (up to
    2 MiB) around each row, so random rows read through a map make the process's resident memory grow to the whole
    file; read into a buffer, only the batch is resident."""
    start = _file_start(images)
    if start is None:
        return images[rows]
    out = np.empty((len(rows), *images.shape[1:]), dtype=np.uint8)
    row_bytes = out[0].nbytes if len(rows) else 0
    with open(images.filename, "rb", buffering=0) as handle:  # type: ignore[union-attr]
        for position, row in enumerate(np.asarray(rows).reshape(-1)):
            data = os.pread(handle.fileno(), row_bytes, start + int(row) * row_bytes)
            if len(data) != row_bytes:
                raise DataError(f"{images.filename} ended early (row {int(row)})", "prepare the folder again")
            out[position] = np.frombuffer(data, dtype=np.uint8).reshape(images.shape[1:])
    return out


def _file_start(images: np.ndarray) -> int | None:
    """Where a C-contiguous np.memmap's first byte lies in its file (also for a slice of one, whose `offset` is
    its parent's); None for anything else."""
    mapping = getattr(images, "_mmap", None)
    if not isinstance(images, np.memmap) or images.filename is None or mapping is None \
            or not images.flags.c_contiguous or images.dtype != np.uint8:
        return None
    base = ctypes.addressof(ctypes.c_char.from_buffer(mapping))  # the map's first byte (a copy-on-write map)
    return images.offset - images.offset % mmap.ALLOCATIONGRANULARITY + images.ctypes.data - base
