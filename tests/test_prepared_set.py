"""animevae.prepared_set: a folder prepared into a packed set and its manifest, in memory or streamed to disk."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from animevae.cli import app
from animevae.errors import DataError, OutputError
from animevae.images import decode_rgb, pixel_hash
from animevae.prepared_set import (DATASET_KIND, count_images, folder_fingerprint, load_prepared, manifest_path,
                                   prepare_images, save_prepared)
from helpers import MESSY_GOOD, assert_cli_error, assert_ok, blob_image, locked_is_readable, temp_leftovers, write_blobs


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
    assert prepared.images.shape == (0, 8, 8, 3) and prepared.images.dtype == np.uint8
    with pytest.raises(DataError, match="no usable images") as caught:
        save_prepared(prepared, tmp_path / "x.safetensors", empty)
    assert caught.value.hint and str(empty) in caught.value.message
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


# --- streaming to disk ---------------------------------------------------------------------------


@pytest.fixture
def labelled_mess(tmp_path: Path) -> Path:
    """Class folders with a duplicate across classes, a broken file and a duplicate within a class: skips and
    duplicates that shift every later row, so labels aligned by position alone would slip."""
    root = tmp_path / "mess"
    rng = np.random.default_rng(21)
    for label in ("ants", "bees", "cats"):
        (root / label).mkdir(parents=True)
    base = blob_image(rng, 20, 20)
    base.save(root / "ants" / "a0.png")
    (root / "ants" / "a1.png").write_bytes(b"not an image")
    blob_image(rng, 16, 24).save(root / "ants" / "a2.png")
    base.save(root / "bees" / "b0.bmp")  # a duplicate of ants/a0 in another class: the first one wins
    blob_image(rng, 16, 16).save(root / "bees" / "b1.png")
    blob_image(rng, 24, 16).save(root / "cats" / "c0.png")
    blob_image(rng, 16, 16).save(root / "cats" / "c1.webp", lossless=True)
    (root / "cats" / "c2.png").write_bytes((root / "cats" / "c0.png").read_bytes())
    return root


def _header(path: Path) -> dict:
    length = int.from_bytes(path.read_bytes()[:8], "little")
    return json.loads(path.read_bytes()[8 : 8 + length])


def test_prepare_set_writes_what_the_in_memory_path_writes(labelled_mess: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from animevae.prepared_set import load_prepared_labels, prepare_set

    old = tmp_path / "old.safetensors"
    in_memory = prepare_images(labelled_mess, 8)
    save_prepared(in_memory, old, labelled_mess)
    new = tmp_path / "new.safetensors"
    streamed = prepare_set(labelled_mess, 8, new)

    assert streamed.sources == in_memory.sources == ["ants/a0.png", "ants/a2.png", "bees/b1.png", "cats/c0.png",
                                                     "cats/c1.webp"]
    assert streamed.label_names == ["ants", "ants", "bees", "cats", "cats"]
    assert (streamed.hashes, streamed.duplicates, streamed.skipped) == \
        (in_memory.hashes, in_memory.duplicates, in_memory.skipped)
    np.testing.assert_array_equal(streamed.images, in_memory.images)
    # The files: the same tensors (read by safetensors itself), metadata, labels and manifest.
    old_tensors, new_tensors = load_file(str(old)), load_file(str(new))
    assert old_tensors.keys() == new_tensors.keys() == {"images", "labels"}
    for name in old_tensors:
        np.testing.assert_array_equal(new_tensors[name], old_tensors[name])
    drop_created = lambda header: header | {"__metadata__": header["__metadata__"] | {"created": ""}}  # noqa: E731
    assert drop_created(_header(new)) == drop_created(_header(old))
    assert load_prepared_labels(new).classes == load_prepared_labels(old).classes
    assert json.loads(manifest_path(new).read_text()) == json.loads(manifest_path(old).read_text())
    # Each row's image and label belong to the file the manifest names for that row.
    kept = json.loads(manifest_path(new).read_text())["kept"]
    index = load_prepared_labels(new).index
    for row, entry in enumerate(kept):
        assert entry["label"] == load_prepared_labels(new).classes.names[index[row]] == entry["path"].split("/")[0]
        pixels = decode_rgb(labelled_mess / entry["path"])
        assert pixel_hash(pixels) == entry["sha256"]
    assert temp_leftovers(tmp_path) == []


def test_prepare_set_holds_no_pixels_until_it_writes(image_dir: Path, tmp_path: Path) -> None:
    """The kept images go to a temp file as they are decoded; the record the scan builds holds none of them."""
    from animevae.prepared_set import prepare_set

    out = tmp_path / "set.safetensors"
    seen = {}

    def before_save(prepared) -> None:
        spools = [p for p in temp_leftovers(tmp_path) if ".pixels." in p.name]
        seen.update(rows=len(prepared.images), kept=len(prepared.sources), spool=[p.stat().st_size for p in spools])

    prepared = prepare_set(image_dir, 8, out, before_save=before_save)
    assert seen == {"rows": 0, "kept": 40, "spool": [40 * 8 * 8 * 3]}
    assert isinstance(prepared.images, np.memmap) and prepared.images.shape == (40, 8, 8, 3)
    assert temp_leftovers(tmp_path) == []


def test_prepare_set_failure_keeps_old_file_and_leaves_no_temp(image_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.prepared_set
    from animevae.prepared_set import prepare_set

    out = tmp_path / "set.safetensors"
    prepare_set(image_dir, 8, out)
    before = out.read_bytes()

    def half_write(path, *args, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(animevae.prepared_set, "write_safetensors", half_write)
    with pytest.raises(OutputError, match="disk full"):
        prepare_set(image_dir, 16, out)
    assert out.read_bytes() == before
    assert temp_leftovers(tmp_path) == []


def test_prepare_set_refuses_an_empty_folder_and_writes_nothing(tmp_path: Path) -> None:
    from animevae.prepared_set import prepare_set

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bad.png").write_bytes(b"nope")
    out = tmp_path / "out" / "x.safetensors"
    with pytest.raises(DataError, match="no usable images") as caught:
        prepare_set(empty, 8, out)
    assert str(empty) in caught.value.message
    assert list(out.parent.iterdir()) == []


def test_write_safetensors_writes_what_safetensors_writes(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from animevae.prepared_set import write_safetensors

    images = np.random.default_rng(3).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 0, 2], np.int64)
    metadata = {"kind": DATASET_KIND, "source": "x"}
    for tensors in ({"images": images}, {"images": images, "labels": labels}):
        save_file(tensors, str(tmp_path / "reference"), metadata=metadata)
        flat = images.reshape(-1)
        write_safetensors(tmp_path / "ours", metadata, images.shape, [flat[:7], flat[7:]], tensors.get("labels"))
        reference, ours = (tmp_path / "reference").read_bytes(), (tmp_path / "ours").read_bytes()
        assert _header(tmp_path / "ours") == _header(tmp_path / "reference")  # (safetensors orders metadata freely)
        assert ours[:8] == reference[:8]  # the same padded header length
        start = 8 + int.from_bytes(ours[:8], "little")
        assert ours[start:] == reference[start:]
    with pytest.raises(OSError, match="header promises"):
        write_safetensors(tmp_path / "short", metadata, images.shape, [images.reshape(-1)[:-1]])
    # Labels of another integer type are written as the int64 the header names.
    write_safetensors(tmp_path / "int32", metadata, images.shape, [images.tobytes()], labels.astype(np.int32))
    assert (tmp_path / "int32").read_bytes() == (tmp_path / "ours").read_bytes()


def test_the_prepare_command_lists_skipped_files_before_refusing_an_empty_folder(runner, tmp_path: Path) -> None:
    """The skipped files are shown once every file is read, before the set is written (or refused)."""
    from animevae.cli import app
    from helpers import assert_cli_error

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bad.png").write_bytes(b"x")
    result = runner.invoke(app, ["prepare", str(empty), "--out", str(tmp_path / "set.safetensors"), "-q"])
    assert_cli_error(result, "no usable images")
    assert "skipped 1 files" in result.output and "bad.png" in result.output
    assert result.output.index("skipped 1 files") < result.output.index("error:")
    assert temp_leftovers(tmp_path) == [] and not (tmp_path / "set.safetensors").exists()


# --- the prepare command: refusals, rewrites, a messy folder ---------------------------------------------------


def test_prepare_refuses_to_overwrite_a_file_that_is_not_a_data_set(runner, image_dir: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    assert_cli_error(runner.invoke(app, ["prepare", str(image_dir), "--out", str(notes), "-q"]), "--overwrite")
    assert notes.read_text() == "my notes"
    assert_ok(runner.invoke(app, ["prepare", str(image_dir), "--out", str(notes), "-q", "--overwrite"]))
    from animevae.prepared_set import load_prepared

    assert len(load_prepared(notes)[0]) == 40


def test_prepare_refuses_an_out_inside_its_folder(runner, image_dir: Path) -> None:
    source = image_dir / "face000.png"
    before = source.read_bytes()
    for out in (source, image_dir / "sub" / "set.safetensors"):
        assert_cli_error(runner.invoke(app, ["prepare", str(image_dir), "--out", str(out), "-q", "--overwrite"]),
                         "inside")
    assert source.read_bytes() == before
    assert not (image_dir / "sub").exists()


def test_prepare_rewrites_its_own_data_set_but_not_a_foreign_manifest(runner, image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "faces.safetensors"
    assert_ok(runner.invoke(app, ["prepare", str(image_dir), "--out", str(out), "-q"]))
    assert_ok(runner.invoke(app, ["prepare", str(image_dir), "--out", str(out), "-q"]))  # its own set: a rerun
    other = tmp_path / "set.safetensors"
    (tmp_path / "set.manifest.json").write_text("the user's own file")
    assert_cli_error(runner.invoke(app, ["prepare", str(image_dir), "--out", str(other), "-q"]), "set.manifest.json")
    assert (tmp_path / "set.manifest.json").read_text() == "the user's own file" and not other.exists()


def test_a_data_set_with_a_malformed_version_is_one_clear_error(image_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from animevae.prepared_set import load_prepared
    from animevae.errors import DataError

    path = tmp_path / "odd.safetensors"
    save_file({"images": np.zeros((2, 8, 8, 3), np.uint8)}, str(path),
              metadata={"kind": "animevae-dataset", "format_version": "two"})
    with pytest.raises(DataError, match="format"):
        load_prepared(path)


def test_prepare_skips_and_reports_every_bad_file(messy, runner, tmp_path) -> None:
    folder, odd, broken = messy
    out = tmp_path / "set.safetensors"
    result = runner.invoke(app, ["prepare", str(folder), "--out", str(out), "--image-size", "16", "-q"])
    assert_ok(result)
    assert "Traceback" not in result.output
    manifest = json.loads(out.with_name("set.manifest.json").read_text())
    skipped = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(skipped) >= broken, skipped
    assert "decompression bomb" in skipped["bomb.png"] or "claims 30000x30000" in skipped["bomb.png"]
    kept = {entry["path"] for entry in manifest["kept"]}
    assert {name for name in odd} <= kept, odd - kept
    expected = MESSY_GOOD + len(odd) + (1 if locked_is_readable(folder) else 0)
    assert len(kept) == expected
    if not locked_is_readable(folder):
        assert skipped["locked.png"] == "no read permission"
    for name in broken:
        assert name in result.output  # the summary table names every skipped file


# --- the packed set's labels and hashes, read back (issue 32: labels aligned with their images) --------------------


def _packed(path: Path, images: np.ndarray, labels: np.ndarray | None, classes: str | None) -> Path:
    from safetensors.numpy import save_file

    metadata = {"kind": DATASET_KIND, "format_version": "1"} | ({"classes": classes} if classes else {})
    save_file({"images": images} | ({"labels": labels} if labels is not None else {}), str(path), metadata=metadata)
    return path


TWO_CLASSES = json.dumps([{"name": "a", "count": 2}, {"name": "b", "count": 1}])


@pytest.mark.parametrize("labels", [np.array([0, 1, 2]), np.array([0, -1, 1]), np.array([0, 1], np.int64),
                                    np.array([0, 1, 0, 1]), np.array([0, 1, 0], np.int32), np.array([[0, 1, 0]])],
                         ids=["past the classes", "negative", "fewer than images", "more than images", "int32", "2-d"])
def test_a_set_whose_labels_do_not_fit_its_images_and_classes_is_refused(tmp_path: Path, labels: np.ndarray) -> None:
    from animevae.prepared_set import load_prepared_labels

    path = _packed(tmp_path / "set.safetensors", np.zeros((3, 4, 4, 3), np.uint8), labels, TWO_CLASSES)
    with pytest.raises(DataError, match="do not match") as error:
        load_prepared_labels(path)
    assert error.value.hint


def test_a_set_without_labels_or_classes_reads_as_unlabelled(tmp_path: Path) -> None:
    from animevae.prepared_set import load_prepared_labels

    images = np.zeros((3, 4, 4, 3), np.uint8)
    assert load_prepared_labels(_packed(tmp_path / "a.safetensors", images, None, TWO_CLASSES)) is None
    assert load_prepared_labels(_packed(tmp_path / "b.safetensors", images, np.array([0, 1, 0]), None)) is None
    labels = load_prepared_labels(_packed(tmp_path / "c.safetensors", images, np.array([0, 1, 0]), TWO_CLASSES))
    assert labels.index.tolist() == [0, 1, 0] and labels.classes.names == ("a", "b")
    with pytest.raises(DataError, match="cannot read"):
        load_prepared_labels(tmp_path / "missing.safetensors")


def test_hashes_come_from_the_manifest_only_when_it_lists_every_image(image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "set.safetensors"
    save_prepared(prepare_images(image_dir, 16), out, image_dir)
    images, hashes = load_prepared(out)
    assert len(hashes) == len(images) == 40 and all(len(h) == 64 for h in hashes)
    manifest = json.loads(manifest_path(out).read_text())
    manifest["kept"] = manifest["kept"][:-1]
    manifest_path(out).write_text(json.dumps(manifest))
    assert load_prepared(out)[1] == []
    manifest_path(out).write_text('{"kept": [{"path": "x"}]}')
    assert load_prepared(out)[1] == []


# --- what a set records, its edges, and every refusal (issue 32: prepared_set's mutation run) --------------------


def test_a_saved_set_records_its_settings_and_fsyncs_into_a_new_nested_folder(
        image_dir: Path, tmp_path: Path, fsynced_paths: list[str]) -> None:
    import time

    from safetensors import safe_open

    from animevae import FORMAT_VERSION

    prepared = prepare_images(image_dir, 8)
    out = tmp_path / "new" / "deeper" / "set.safetensors"
    save_prepared(prepared, out, image_dir)
    with safe_open(str(out), framework="numpy") as handle:
        metadata = handle.metadata()
    assert {k: v for k, v in metadata.items() if k != "created"} == {
        "kind": DATASET_KIND, "format_version": str(FORMAT_VERSION), "image_size": "8", "source": str(image_dir)}
    assert 0 <= time.time() - float(metadata["created"]) < 600
    assert json.loads(manifest_path(out).read_text())["layout"] == prepared.layout == "flat folder: one unlabelled class"
    assert any(Path(p).name.startswith(".set.safetensors") for p in fsynced_paths)  # the set, before its rename
    from animevae.prepared_set import prepare_set

    prepare_set(image_dir, 8, tmp_path / "other" / "deeper" / "set.safetensors")


def test_prepare_set_ticks_per_file_and_copies_the_pixels_a_chunk_at_a_time(
        image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.prepared_set
    from animevae.prepared_set import prepare_set, write_safetensors

    chunks: list[int] = []

    def recording_write(path, metadata, shape, image_chunks, labels=None):
        write_safetensors(path, metadata, shape, (chunks.append(len(c)) or c for c in image_chunks), labels)

    monkeypatch.setattr(animevae.prepared_set, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(animevae.prepared_set, "write_safetensors", recording_write)
    ticks = []
    prepare_set(image_dir, 8, tmp_path / "set.safetensors", on_file=lambda: ticks.append(1))
    assert len(ticks) == 40
    assert sum(chunks) == 40 * 8 * 8 * 3 and max(chunks) == 1000


def test_a_spool_that_cannot_be_made_is_one_output_error(image_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.prepared_set
    from animevae.prepared_set import prepare_set

    monkeypatch.setattr(animevae.prepared_set, "temp_name", lambda path: tmp_path / "gone" / "spool")
    with pytest.raises(OutputError, match="cannot write") as caught:
        prepare_set(image_dir, 8, tmp_path / "set.safetensors")
    assert caught.value.hint


def test_a_loaded_set_of_one_image_or_none_is_uint8_and_writes_to_it_stay_in_memory(tmp_path: Path) -> None:
    one = _packed(tmp_path / "one.safetensors", np.full((1, 4, 4, 3), 7, np.uint8), None, None)
    images, _ = load_prepared(one)
    assert images.tolist() == np.full((1, 4, 4, 3), 7).tolist()
    images[0, 0, 0, 0] = 99  # a private copy-on-write map: the file keeps its bytes
    assert load_prepared(one)[0][0, 0, 0, 0] == 7
    empty = _packed(tmp_path / "empty.safetensors", np.zeros((0, 4, 4, 3), np.uint8), None, None)
    images, _ = load_prepared(empty)
    assert images.shape == (0, 4, 4, 3) and images.dtype == np.uint8


def test_labels_all_of_one_class_are_read(tmp_path: Path) -> None:
    from animevae.prepared_set import load_prepared_labels

    path = _packed(tmp_path / "set.safetensors", np.zeros((3, 4, 4, 3), np.uint8), np.array([1, 1, 1]), TWO_CLASSES)
    assert load_prepared_labels(path).index.tolist() == [1, 1, 1]


def test_a_file_that_vanishes_leaves_the_fingerprint_of_the_others(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    paths = write_blobs(folder, count=2)
    (folder / "a-gone.png").symlink_to(folder / "nowhere.png")  # listed first, but cannot be stat'ed
    first = folder_fingerprint(folder, 16)
    paths[1].write_bytes(paths[1].read_bytes() + b"\x00")
    assert folder_fingerprint(folder, 16) != first


def test_a_class_folder_of_a_refused_name_is_named(tmp_path: Path) -> None:
    write_blobs(tmp_path / "faces" / "ok", count=1)
    write_blobs(tmp_path / "faces" / "-bad", count=1)
    with pytest.raises(DataError, match="in folder -bad"):
        prepare_images(tmp_path / "faces", 8)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_an_out_that_is_a_fifo_is_not_taken_for_a_data_set(image_dir: Path, tmp_path: Path) -> None:
    from animevae.prepared_set import check_prepare_target

    fifo = tmp_path / "set.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a data set"):
        check_prepare_target(fifo, image_dir, overwrite=False)


def _versioned(path: Path, version: str) -> Path:
    from safetensors.numpy import save_file

    save_file({"images": np.zeros((1, 4, 4, 3), np.uint8)}, str(path),
              metadata={"kind": DATASET_KIND, "format_version": version})
    return path


def _foreign(path: Path) -> Path:
    from safetensors.numpy import save_file

    save_file({"images": np.zeros((1, 4, 4, 3), np.uint8)}, str(path), metadata={"kind": "something-else"})
    return path


def _no_images(path: Path) -> Path:
    from safetensors.numpy import save_file

    save_file({"labels": np.zeros(1, np.int64)}, str(path), metadata={"kind": DATASET_KIND})
    return path


def _of_dtype(dtype: type) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        from safetensors.numpy import save_file

        save_file({"images": np.zeros((1, 2, 2, 3), dtype)}, str(path), metadata={"kind": DATASET_KIND})
        return path
    return write


@pytest.mark.parametrize("make, fragment", [
    (lambda path: (path.write_bytes(b"\x00" * 3), path)[1], "cannot read data set"),
    (_foreign, "is not a data set written by `animevae prepare`"),
    (lambda path: _versioned(path, "9" * 9), "newer animevae"),
    (lambda path: _versioned(path, "v" * 30), f"malformed format version {'v' * 20!r}"),
    (_no_images, "it holds no images"),
    (_of_dtype(np.float32), "holds float32 images of shape (1, 2, 2, 3)"),
    (_of_dtype(np.uint64), "holds U64 images"),  # a type without a numpy name of ours: its safetensors name
], ids=["garbage", "another kind", "newer", "malformed version", "no images", "float32", "U64"])
def test_every_set_load_refuses_with_the_file_and_a_hint(tmp_path: Path, make, fragment: str) -> None:
    path = make(tmp_path / "set.safetensors")
    with pytest.raises(DataError) as caught:
        load_prepared(path)
    assert fragment in caught.value.message and str(path) in caught.value.message and caught.value.hint
    assert "v" * 21 not in caught.value.message


def test_every_refusal_to_write_a_set_names_the_path_and_has_a_hint(image_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.prepared_set
    from animevae.prepared_set import check_prepare_target, load_prepared_labels, prepare_set

    errors = []
    folder = tmp_path / "a folder"
    folder.mkdir()
    foreign = tmp_path / "notes.txt"
    foreign.write_text("mine")
    for call, path in [(lambda: check_prepare_target(folder, image_dir, overwrite=True), folder),
                       (lambda: check_prepare_target(foreign, image_dir, overwrite=False), foreign),
                       (lambda: save_prepared(prepare_images(image_dir, 8), foreign / "set.safetensors", image_dir),
                        foreign),
                       (lambda: load_prepared_labels(foreign), foreign)]:
        with pytest.raises((DataError, OutputError)) as caught:
            call()
        errors.append((caught.value, path))

    def failing_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(animevae.prepared_set, "write_safetensors", failing_write)
    for call in (lambda out: save_prepared(prepare_images(image_dir, 8), out, image_dir),
                 lambda out: prepare_set(image_dir, 8, out)):
        with pytest.raises(OutputError) as caught:
            call(tmp_path / "set.safetensors")
        errors.append((caught.value, tmp_path / "set.safetensors"))
    for error, path in errors:
        assert str(path) in error.message and error.hint, error
