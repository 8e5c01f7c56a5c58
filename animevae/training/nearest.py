"""Nearest training faces: for each query image, its nearest face of a training split or that face's mirror image
(training flips faces and the prior is fitted on both, so a mirrored training face is a copy too), by RMS pixel
distance.

The search covers every training face, since a copy of any one of them must be found, but reads them a chunk at
a time from the memory-mapped set (`TrainingPixels`): memory stays flat whatever the set's size, and time grows
with it only through one float32 product per chunk. The distances reported are recomputed exactly (float64) for
each query's nearest face."""

from __future__ import annotations

from collections.abc import Callable

import torch

from animevae.training.data import TrainingPixels

# Training faces read and compared per chunk: (CHUNK_FACES, 3, S, S) float32 and its mirror image, about 100 MB
# at 64x64, and a (queries, 2 * CHUNK_FACES) block of distances.
CHUNK_FACES = 1024


def nearest_distances(queries: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RMS pixel distance from each (Q, 3, S, S) query to its nearest (R, 3, S, S) reference, and that
    reference's index, (Q,) each; float64 throughout."""
    q, r = queries.flatten(1).double(), references.flatten(1).double()
    best, where = [], []
    for chunk in q.split(512):
        squared = (chunk**2).sum(1, keepdim=True) - 2 * chunk @ r.T + (r**2).sum(1)[None, :]
        value, index = squared.clamp(min=0).min(dim=1)
        best.append((value / q.shape[1]).sqrt())
        where.append(index)
    return torch.cat(best).float(), torch.cat(where)


def nearest_training_faces(queries: torch.Tensor, train: TrainingPixels | torch.Tensor,
                           on_chunk: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `nearest_distances`, against every training face and its mirror image; indices are into `train`
    (a split of a memory-mapped set, or (N, 3, S, S) images in [0, 1]). `on_chunk(faces)` is called after each
    chunk of faces searched."""
    flat = queries.flatten(1).float()  # (Q, D)
    query_norms = flat.square().sum(1, keepdim=True)  # (Q, 1)
    best = torch.full((len(flat),), float("inf"))
    where = torch.zeros(len(flat), dtype=torch.int64)  # into [faces, mirrored faces]: index + len(train) if mirrored
    for begin in range(0, len(train), CHUNK_FACES):
        faces = _faces(train, begin, min(len(train), begin + CHUNK_FACES))  # (C, 3, S, S)
        for mirrored, references in ((0, faces), (1, faces.flip(3))):
            refs = references.flatten(1)  # (C, D)
            squared = query_norms - 2 * flat @ refs.T + refs.square().sum(1)[None, :]  # (Q, C)
            value, index = squared.min(dim=1)
            better = value < best
            best = torch.where(better, value, best)
            where = torch.where(better, index + begin + mirrored * len(train), where)
        if on_chunk is not None:
            on_chunk(len(faces))
    index = where % max(1, len(train))
    return _exact_distances(queries, train, index, where >= len(train)), index


def _faces(train: TrainingPixels | torch.Tensor, begin: int, end: int) -> torch.Tensor:
    """(end - begin, 3, S, S) float in [0, 1] on the CPU: rows begin..end of the split."""
    if isinstance(train, TrainingPixels):
        return train.batch(torch.arange(begin, end)).cpu()
    return train[begin:end].float().cpu()


def _exact_distances(queries: torch.Tensor, train: TrainingPixels | torch.Tensor, index: torch.Tensor,
                     mirrored: torch.Tensor) -> torch.Tensor:
    """(Q,) float64-exact RMS distance from each query to training face `index` (flipped where `mirrored`)."""
    distances = []
    for rows in torch.arange(len(queries)).split(CHUNK_FACES):
        faces = train.batch(index[rows]).cpu() if isinstance(train, TrainingPixels) else train[index[rows]].float()
        faces = torch.where(mirrored[rows].view(-1, 1, 1, 1), faces.flip(3), faces)
        difference = queries[rows].flatten(1).double() - faces.flatten(1).double()  # (b, D)
        distances.append(difference.square().mean(1).sqrt())
    return torch.cat(distances).float() if distances else torch.zeros(0)
