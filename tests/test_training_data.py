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


@pytest.mark.parametrize("count, held", [(0, 0), (1, 0), (2, 1), (5, 1), (19, 1), (20, 2), (29, 2), (30, 3)])
def test_split_holdout_holds_one_image_from_two_on_and_a_tenth_from_twenty_on(count: int, held: int) -> None:
    train, val = split_holdout([f"h{i}" for i in range(count)], count, val_size=500)
    assert (len(train), len(val)) == (count - held, held)
    assert train.dtype == val.dtype == np.int64  # also when empty: they index arrays


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
    assert hash_keys([]).dtype == np.int64


# --- loading a run's data: a prepared set, or a folder through the cache (issue 32: the mutation run) ------------


class RecordingReporter:
    """A Reporter that keeps what it was told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def start(self, description: str, total: int | None) -> None:
        self.events.append(("start", description))

    def advance(self, steps: int = 1, **fields) -> None:
        self.events.append(("advance", steps))

    def stop(self) -> None:
        self.events.append(("stop", None))

    def log(self, message: str) -> None:
        self.events.append(("log", message))


def test_training_data_from_a_prepared_set_is_the_set_with_its_labels(tmp_path: Path) -> None:
    from animevae.errors import DataError
    from helpers import write_labelled

    folder = write_labelled(tmp_path / "pets")
    out = tmp_path / "pets.safetensors"
    prepared = prepare_images(folder, 8)
    save_prepared(prepared, out, folder)
    data = load_training_images(out, 8, tmp_path / "cache", SilentReporter())
    images, hashes = load_prepared(out)
    np.testing.assert_array_equal(data.images, images)
    assert data.hashes == hashes == prepared.hashes
    assert data.labels.index.tolist() == prepared.labels.index.tolist() and data.labels.classes == prepared.labels.classes
    with pytest.raises(DataError) as caught:
        load_training_images(out, 16, tmp_path / "cache", SilentReporter())
    assert caught.value.message == f"{out} holds 8x8 images, not 16x16"
    assert "--image-size 8" in caught.value.hint and "--image-size 16" in caught.value.hint
    assert not (tmp_path / "cache").exists()


def test_a_folder_is_prepared_once_per_size_with_its_labels_and_a_report(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.prepared_set
    import animevae.training.data
    from animevae.prepared_set import write_safetensors
    from helpers import write_labelled

    folder = write_labelled(tmp_path / "pets")
    for name in ("bad0.png", "bad1.png", "bad2.png"):
        (folder / "cats" / name).write_bytes(b"not an image")
    monkeypatch.setattr(animevae.training.data, "SKIPPED_SHOWN", 2)
    reporter = RecordingReporter()
    monkeypatch.setattr(animevae.prepared_set, "write_safetensors",
                        lambda *args: (reporter.events.append(("write", None)), write_safetensors(*args))[1])
    cache = tmp_path / "cache"
    first = load_training_images(folder, 8, cache, reporter)
    [cached] = list(cache.glob("*.safetensors"))
    files = len(list(folder.rglob("*.png")))
    kinds = [kind for kind, _ in reporter.events]
    assert reporter.events[0] == ("start", f"preparing {folder}")
    # The bar moves once per file and stops when every file is read, before the set is written.
    assert kinds[1:] == ["advance"] * files + ["stop", "write", "stop", "log", "log", "log", "log"]
    logs = [message for kind, message in reporter.events if kind == "log"]
    assert logs[0] == (f"prepared {len(first.hashes)} images (3 skipped, 0 duplicates; labelled by class folders) "
                       f"into {cached}")
    assert logs[1:3] == ["  skipped cats/bad0.png: not an image Pillow can read",
                         "  skipped cats/bad1.png: not an image Pillow can read"]
    assert logs[3] == f"  and 1 more; all listed in {cached.with_name(cached.stem + '.manifest.json')}"
    assert first.labels is not None and first.labels.classes.names == ("cats", "dogs", "rare")

    reporter.events.clear()
    again = load_training_images(folder, 8, cache, reporter)
    assert reporter.events == [("log", f"using the prepared copy of {folder} in {cached}")]
    assert again.labels.index.tolist() == first.labels.index.tolist()
    # Another size is another cached set, never the first one's.
    assert load_training_images(folder, 4, cache, SilentReporter()).images.shape[1:] == (4, 4, 3)


def test_as_many_skipped_files_as_are_shown_need_no_and_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.training.data

    folder = tmp_path / "faces"
    write_blobs(folder, count=2)
    for name in ("bad0.png", "bad1.png"):
        (folder / name).write_bytes(b"not an image")
    monkeypatch.setattr(animevae.training.data, "SKIPPED_SHOWN", 2)
    reporter = RecordingReporter()
    load_training_images(folder, 8, tmp_path / "cache", reporter)
    assert [m for kind, m in reporter.events if kind == "log"][-1].startswith("  all listed in ")


def test_read_rows_of_one_row_none_and_a_strided_view_match_the_array(packed: Path) -> None:
    from animevae.training.data import read_rows

    images, _ = load_prepared(packed)
    assert np.array_equal(read_rows(images, np.array([7])), np.asarray(images)[[7]])
    empty = read_rows(images, np.array([], np.int64))
    assert empty.shape == (0, 16, 16, 3) and empty.dtype == np.uint8
    every_other = images[::2]  # a view that is not one run of rows in the file
    assert np.array_equal(read_rows(every_other, np.array([1, 4])), np.asarray(images)[[2, 8]])
    pixels = TrainingPixels(images, np.arange(3), torch.device("meta"))
    assert pixels[0:2].device.type == "meta"  # the batch goes to the device it was asked for


def test_a_set_cut_short_under_its_map_is_one_clear_error(packed: Path) -> None:
    from animevae.errors import DataError
    from animevae.training.data import read_rows

    images, _ = load_prepared(packed)
    with open(packed, "r+b") as handle:
        handle.truncate(packed.stat().st_size - 100)
    with pytest.raises(DataError) as caught:
        read_rows(images, np.array([0, 39]))
    assert caught.value.message == f"{packed} ended early (row 39)" and caught.value.hint
