"""animevae.training.data: the held-out split, training data loaded from a set or folder, batches gathered."""

from __future__ import annotations

import numpy as np

from animevae.training.data import split_holdout


def test_split_holdout_is_disjoint_complete_and_sized() -> None:
    hashes = [f"h{i}" for i in range(200)]
    train, val = split_holdout(hashes, 200, val_size=500)
    assert len(val) == 20  # 10% cap
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(200))
    assert set(train.tolist()).isdisjoint(val.tolist())
    _, small_val = split_holdout(hashes, 200, val_size=5)
    assert len(small_val) == 5
    assert len(split_holdout([], 10, 500)[1]) == 1  # under 20 images: one held out
    assert len(split_holdout([], 1, 500)[1]) == 0


def test_split_holdout_follows_content_not_order() -> None:
    hashes = [f"h{i}" for i in range(50)]
    _, val = split_holdout(hashes, 50, 500)
    held = {hashes[i] for i in val}
    reversed_hashes = hashes[::-1]
    _, val_reversed = split_holdout(reversed_hashes, 50, 500)
    assert {reversed_hashes[i] for i in val_reversed} == held
