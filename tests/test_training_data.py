"""animevae.training.data: the held-out split, training data loaded from a set or folder, batches gathered."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from animevae.prepared_set import load_prepared, prepare_images, save_prepared
from animevae.progress import SilentReporter
from animevae.training.data import TrainingPixels, load_training_images, rank_share, split_holdout
from helpers import write_blobs


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


# --- the memory-mapped set and batches gathered from it ----------------------------------------


@pytest.fixture
def packed(image_dir: Path, tmp_path: Path) -> Path:
    """The 40 blob faces prepared at 16x16."""
    out = tmp_path / "set.safetensors"
    save_prepared(prepare_images(image_dir, 16), out, image_dir)
    return out


def test_load_prepared_maps_the_pixels_a_full_read_gives(packed: Path) -> None:
    from safetensors.numpy import load_file

    images, hashes = load_prepared(packed)
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and images.shape == (40, 16, 16, 3)
    np.testing.assert_array_equal(images, load_file(str(packed))["images"])
    assert len(hashes) == 40
    before = packed.read_bytes()
    images[0] = 0  # copy-on-write: a caller's writes never reach the file
    assert packed.read_bytes() == before


def test_training_data_from_a_folder_is_memory_mapped_from_the_cache(image_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_training_images(image_dir, 16, cache, SilentReporter())
    second = load_training_images(image_dir, 16, cache, SilentReporter())
    assert isinstance(first.images, np.memmap) and isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(first.images, prepare_images(image_dir, 16).images)
    np.testing.assert_array_equal(second.images, first.images)
    assert second.hashes == first.hashes and len(first.hashes) == 40


def test_training_pixels_gather_what_the_full_copy_held(packed: Path) -> None:
    images, hashes = load_prepared(packed)
    train_idx, val_idx = split_holdout(hashes, len(images), 500)
    full = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S): the old copy
    train, val = TrainingPixels(images, train_idx, torch.device("cpu")), TrainingPixels(images, val_idx, torch.device("cpu"))
    old_train, old_val = full[torch.from_numpy(train_idx)], full[torch.from_numpy(val_idx)]
    assert len(train) == len(old_train) == 36
    picks = torch.tensor([5, 0, 35, 5, 17])
    assert torch.equal(train[picks], old_train[picks])
    assert torch.equal(train[np.array([3, 1])], old_train[[3, 1]])
    assert torch.equal(train[4:20], old_train[4:20]) and train[4:20].is_contiguous()
    assert torch.equal(train.batch(picks), old_train[picks].float().div_(255.0))
    assert torch.equal(val[:], old_val) and val[:].dtype == torch.uint8


class RecordingImages:
    """An (N, S, S, 3) array that records which rows each gather asks for."""

    def __init__(self, images: np.ndarray) -> None:
        self.images, self.reads = images, []

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        self.reads.append(np.asarray(rows).tolist())
        return self.images[rows]


def test_each_rank_gathers_only_its_share_of_a_global_batch() -> None:
    images = np.random.default_rng(0).integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    rows = np.arange(30)[::-1].copy()  # the split's rows are not the set's: gathers map through them
    global_batch = torch.tensor([7, 2, 9, 11, 0, 4, 13, 5, 1, 8])
    shares = []
    for rank in range(3):
        recording = RecordingImages(images)
        batch = TrainingPixels(recording, rows, torch.device("cpu")).batch(rank_share(global_batch, rank, 3))
        expected = rows[global_batch[rank::3].numpy()].tolist()
        assert recording.reads == [expected]  # one gather, of this rank's rows only
        assert len(batch) == len(expected)
        shares.append(expected)
    assert sorted(sum(shares, [])) == sorted(rows[global_batch.numpy()].tolist())  # together: the whole batch
    assert torch.equal(rank_share(global_batch, 0, 1), global_batch)


def _mapped_resident_bytes(path: Path) -> int:
    """Resident bytes of this process's mappings of `path`, from /proc/self/smaps."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's first line: its range, ..., its path
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_gathering_a_whole_mapped_set_keeps_little_of_it_resident(image_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:

    folder = tmp_path / "many"
    write_blobs(folder, count=150, size=64)
    out = tmp_path / "many.safetensors"
    save_prepared(prepare_images(folder, 64), out, folder)  # 150 x 12 KiB
    images, _ = load_prepared(out)
    pixels = TrainingPixels(images, np.arange(len(images)), torch.device("cpu"))
    for begin in range(0, len(pixels), 10):
        pixels[begin : begin + 10]
    # Rows are read with pread, not through the map (whose faults map whole page-cache folios around each row).
    assert _mapped_resident_bytes(out) <= images.nbytes // 4


def test_hash_keys_are_the_sorted_first_60_bits_of_each_hash() -> None:
    from animevae.training.data import hash_keys

    keys = hash_keys(["f" * 64, "0" * 14 + "1" + "f" * 49])
    assert keys.tolist() == [1, 16**15 - 1] and keys.dtype == np.int64
