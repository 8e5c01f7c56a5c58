"""animevae.training.nearest: the nearest training face (or its mirror image), in memory and chunk by chunk from
a memory-mapped set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import animevae.training.nearest as nearest
from animevae.prepared_set import load_prepared, save_prepared, prepare_images
from animevae.training.data import TrainingPixels
from animevae.training.nearest import nearest_distances, nearest_training_faces
from helpers import write_blobs


def test_nearest_distances_find_the_closest_reference() -> None:
    references = torch.stack([torch.full((3, 2, 2), v) for v in (0.0, 0.5, 1.0)])
    queries = torch.stack([torch.full((3, 2, 2), 0.45), torch.full((3, 2, 2), 0.9)])
    distance, index = nearest_distances(queries, references)
    assert index.tolist() == [1, 2]
    assert torch.allclose(distance, torch.tensor([0.05, 0.1]), atol=1e-6)


def test_a_mirrored_training_face_is_as_near_as_the_face_itself() -> None:
    """Training flips faces and the prior is fitted on both orientations: a sample that is a training face
    mirrored is a copy, and copying must see it (against the unmirrored faces alone it looks novel)."""
    generator = torch.Generator().manual_seed(0)
    train_images = torch.rand(6, 3, 8, 8, generator=generator)
    mirrored_copy = train_images[4:5].flip(3)
    assert nearest_distances(mirrored_copy, train_images)[0].item() > 0.2
    distance, index = nearest_training_faces(mirrored_copy, train_images)
    assert distance.item() < 1e-6 and index.tolist() == [4]


def test_the_chunked_search_of_a_mapped_set_finds_what_a_whole_copy_finds(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 4 faces over 23 training rows (the last chunk short), read from the memory map: the same
    nearest faces and float64 distances as the search of the whole float copy, mirror images included."""
    write_blobs(tmp_path / "faces", count=30, seed=5)
    save_prepared(prepare_images(tmp_path / "faces", 16), tmp_path / "set.safetensors", tmp_path / "faces")
    images, _ = load_prepared(tmp_path / "set.safetensors")
    rows = np.arange(30)[::-1][:23].copy()  # a split's rows are not the set's
    whole = torch.from_numpy(np.array(images[rows])).permute(0, 3, 1, 2).float() / 255.0  # (23, 3, 16, 16)
    generator = torch.Generator().manual_seed(1)
    queries = torch.cat([whole[[2, 20]].flip(3), whole[[9]], torch.rand(5, 3, 16, 16, generator=generator)])
    expected, expected_index = nearest_distances(queries, torch.cat([whole, whole.flip(3)]))
    monkeypatch.setattr(nearest, "CHUNK_FACES", 4)
    chunks: list[int] = []
    distance, index = nearest_training_faces(queries, TrainingPixels(images, rows, torch.device("cpu")), chunks.append)
    assert chunks == [4] * 5 + [3]
    assert index.tolist() == (expected_index % 23).tolist() and index[:3].tolist() == [2, 20, 9]
    assert torch.allclose(distance, expected, atol=1e-6) and distance[:3].abs().max() < 1e-7
