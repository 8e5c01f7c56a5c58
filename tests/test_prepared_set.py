"""animevae.prepared_set: a folder prepared into a packed set and its manifest, in memory or streamed to disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from animevae.errors import DataError, OutputError
from animevae.images import decode_rgb, pixel_hash
from animevae.prepared_set import (DATASET_KIND, count_images, folder_fingerprint, load_prepared, manifest_path,
                                   prepare_images, save_prepared)
from helpers import blob_image, temp_leftovers, write_blobs


# --- prepare_images ----------------------------------------------------------------------------


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """A tree of formats, duplicates and a bad file."""
    root = tmp_path / "mixed"
    rng = np.random.default_rng(5)
    (root / "sub" / "deeper").mkdir(parents=True)
    base = blob_image(rng, 24, 16)
    base.save(root / "a.png")
    base.save(root / "sub" / "a_copy.bmp")          # same pixels, other format: a duplicate
    base.save(root / "sub" / "deeper" / "a_again.png")  # and another
    blob_image(rng, 20, 20).save(root / "sub" / "b.jpg", quality=90)
    blob_image(rng, 16, 16).save(root / "sub" / "deeper" / "c.webp")
    blob_image(rng, 16, 16).convert("P").save(root / "d.gif")
    rgba = blob_image(rng, 16, 16).convert("RGBA")
    rgba.putalpha(0)
    rgba.save(root / "e_transparent.png")
    (root / "sub" / "broken.png").write_bytes(b"garbage, not a PNG")
    (root / "readme.txt").write_text("ignored")
    return root


def test_prepare_images_decodes_dedupes_and_skips(mixed_folder: Path) -> None:
    ticks = []
    prepared = prepare_images(mixed_folder, 8, on_file=lambda: ticks.append(1))
    assert len(ticks) == count_images(mixed_folder) == 8
    assert prepared.sources == ["a.png", "d.gif", "e_transparent.png", "sub/b.jpg", "sub/deeper/c.webp"]
    assert prepared.images.shape == (5, 8, 8, 3) and prepared.images.dtype == np.uint8
    assert prepared.image_size == 8
    # os.walk order: the root's files, then sub/, then sub/deeper/ (folders sorted).
    assert prepared.duplicates == [
        {"path": "sub/a_copy.bmp", "duplicate_of": "a.png"},
        {"path": "sub/deeper/a_again.png", "duplicate_of": "a.png"},
    ]
    assert [(s.path, s.reason) for s in prepared.skipped] == [("sub/broken.png", "not an image Pillow can read")]
    # A fully transparent image becomes white.
    assert (prepared.images[2] == 255).all()
    # Hashes are of the decoded pixels, before resizing.
    assert prepared.hashes[0] == pixel_hash(decode_rgb(mixed_folder / "a.png"))
    assert len(set(prepared.hashes)) == 5


def test_save_prepared_writes_set_and_manifest_atomically(mixed_folder: Path, tmp_path: Path) -> None:
    prepared = prepare_images(mixed_folder, 8)
    out = tmp_path / "out" / "set.safetensors"
    save_prepared(prepared, out, mixed_folder)
    assert sorted(p.name for p in out.parent.iterdir()) == ["set.manifest.json", "set.safetensors"]
    assert temp_leftovers(out.parent) == []
    assert manifest_path(out) == out.parent / "set.manifest.json"

    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["source"] == str(mixed_folder)
    assert manifest["image_size"] == 8
    assert manifest["kept"] == [{"path": p, "sha256": h} for p, h in zip(prepared.sources, prepared.hashes)]
    assert manifest["duplicates"] == prepared.duplicates
    assert manifest["skipped"] == [{"path": "sub/broken.png", "reason": "not an image Pillow can read"}]

    images, hashes = load_prepared(out)
    np.testing.assert_array_equal(images, prepared.images)
    assert hashes == prepared.hashes


def test_save_prepared_failure_keeps_old_file_and_leaves_no_temp(image_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.prepared_set

    out = tmp_path / "set.safetensors"
    save_prepared(prepare_images(image_dir, 8), out, image_dir)
    before = out.read_bytes()

    def half_write(path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(animevae.prepared_set, "write_safetensors", half_write)
    with pytest.raises(OutputError, match="disk full"):
        save_prepared(prepare_images(image_dir, 16), out, image_dir)
    assert out.read_bytes() == before
    assert temp_leftovers(tmp_path) == []


def test_save_prepared_refuses_an_empty_set(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bad.png").write_bytes(b"nope")
    prepared = prepare_images(empty, 8)
    assert prepared.images.shape == (0, 8, 8, 3)
    with pytest.raises(DataError, match="no usable images") as caught:
        save_prepared(prepared, tmp_path / "x.safetensors", empty)
    assert caught.value.hint
    assert not (tmp_path / "x.safetensors").exists()


def test_load_prepared_without_manifest_returns_no_hashes(image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "set.safetensors"
    save_prepared(prepare_images(image_dir, 8), out, image_dir)
    manifest_path(out).unlink()
    images, hashes = load_prepared(out)
    assert images.shape == (40, 8, 8, 3)
    assert hashes == []


def test_load_prepared_refuses_other_files(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 3)
    with pytest.raises(DataError, match="cannot read data set"):
        load_prepared(garbage)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"images": np.zeros((1, 4, 4, 3), np.uint8)}, str(foreign), metadata={"kind": "something-else"})
    with pytest.raises(DataError, match="not a data set written by"):
        load_prepared(foreign)

    wrong_shape = tmp_path / "wrong.safetensors"
    save_file({"images": np.zeros((1, 4, 4), np.uint8)}, str(wrong_shape), metadata={"kind": DATASET_KIND})
    with pytest.raises(DataError, match="not \\(N, H, W, 3\\) uint8"):
        load_prepared(wrong_shape)

    with pytest.raises(DataError):
        load_prepared(tmp_path / "missing.safetensors")


def test_folder_fingerprint_changes_with_content(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    paths = write_blobs(folder, count=3)
    first = folder_fingerprint(folder, 16)
    assert folder_fingerprint(folder, 16) == first
    assert folder_fingerprint(folder, 32) != first
    write_blobs(folder, count=1, seed=9, prefix="extra")
    added = folder_fingerprint(folder, 16)
    assert added != first
    paths[0].write_bytes(paths[0].read_bytes() + b"\x00")
    assert folder_fingerprint(folder, 16) != added
