"""Training data: a folder or prepared set loaded for a run (folders prepared once into runs/.cache), the
held-out split, the content-hash keys a run keeps, and batches gathered from the memory-mapped images."""

from __future__ import annotations

import hashlib
import mmap
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
# Bytes gathered from a memory-mapped set between hand-backs of its pages: the resident share of the map stays
# below this, whatever the set's size.
RELEASE_BYTES = 256 * 2**20


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
        self._gathered_bytes = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, 3, S, S) uint8 on the device: the rows `key` picks (a slice or indices into this split)."""
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        pixels = self.images[self.rows[key]]  # (B, S, S, 3): a copy of just these rows
        self._count_gathered(pixels.nbytes)
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(self.device)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 1] on the device."""
        return self[indices].float().div_(255.0)

    def _count_gathered(self, count: int) -> None:
        """Hand a memory-mapped set's pages back now and then: they stay in the page cache, but no longer count
        towards this process's resident memory, which would otherwise grow to the whole file."""
        self._gathered_bytes += count
        mapping = getattr(self.images, "_mmap", None)  # np.memmap's mmap object; None for an in-memory array
        if self._gathered_bytes >= RELEASE_BYTES and mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            mapping.madvise(mmap.MADV_DONTNEED)
            self._gathered_bytes = 0
