"""Labelled data sets: class folders and metadata tables in, classes stored in the set, the run and the ONNX files,
and one latent mixture per class."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from animevae.cli import app
from animevae.config import ModelConfig, TrainConfig
from animevae.prepared_set import load_prepared_labels, manifest_path, prepare_images, save_prepared
from animevae.images import decode_rgb, pixel_hash, square_resize
from animevae.prepared_set import load_prepared_labels, manifest_path, prepare_images, save_prepared
from animevae.training.data import load_training_images, split_holdout
from animevae.errors import DataError
from animevae.labels import ClassInfo, Labels, check_label, folder_label, metadata_table, read_metadata_labels
from animevae.progress import SilentReporter
from animevae.prior import LatentPrior
from animevae.runtime import open_model
from animevae.training.checkpoint import load_checkpoint
from animevae.training.model import VAE
from animevae.training.train import train
from helpers import LABELLED_COUNTS, TINY_MODEL, assert_ok, write_blobs, write_labelled


def test_class_folders_become_sorted_classes_stored_in_the_set(tmp_path: Path) -> None:
    root = write_labelled(tmp_path / "pets")
    prepared = prepare_images(root, 16)
    assert prepared.layout == "labelled by class folders"
    labels = prepared.labels
    assert labels.classes == ClassInfo(("cats", "dogs", "rare"), (16, 16, 4))
    assert [s.split("/")[0] for s in prepared.sources] == [labels.classes.names[i] for i in labels.index]
    out = tmp_path / "pets.safetensors"
    save_prepared(prepared, out, root)
    loaded = load_prepared_labels(out)
    assert loaded.classes == labels.classes and np.array_equal(loaded.index, labels.index)
    kept = json.loads(manifest_path(out).read_text())["kept"]
    assert kept[0]["label"] == "cats" and kept[-1]["label"] == "rare"


def test_a_flat_folder_stays_one_unlabelled_class_with_the_old_file_format(tmp_path: Path) -> None:
    write_blobs(tmp_path / "flat", count=6)
    prepared = prepare_images(tmp_path / "flat", 16)
    assert prepared.labels is None
    out = tmp_path / "flat.safetensors"
    save_prepared(prepared, out, tmp_path / "flat")
    with safe_open(str(out), framework="numpy") as handle:
        assert list(handle.keys()) == ["images"] and "classes" not in handle.metadata()
    assert load_prepared_labels(out) is None
    assert "label" not in json.loads(manifest_path(out).read_text())["kept"][0]


def test_images_beside_class_folders_leave_the_set_unlabelled(tmp_path: Path) -> None:
    root = write_labelled(tmp_path / "pets")
    write_blobs(root, count=2, seed=9, prefix="stray")
    prepared = prepare_images(root, 16)
    assert prepared.labels is None and "top level" in prepared.layout
    assert len(prepared.sources) == sum(LABELLED_COUNTS.values()) + 2


@pytest.mark.parametrize("table", ["metadata.csv", "metadata.jsonl"])
def test_a_metadata_table_labels_the_images_and_skips_unlisted_ones(tmp_path: Path, table: str) -> None:
    root = tmp_path / "hf"
    names = [p.name for p in write_blobs(root / "train", count=5)]
    rows = [("train/" + name, "odd" if i % 2 else "even") for i, name in enumerate(names[:4])]
    if table.endswith(".csv"):
        (root / table).write_text("file_name,label\n" + "".join(f"{f},{label}\n" for f, label in rows))
    else:
        (root / table).write_text("".join(json.dumps({"file_name": f, "label": label}) + "\n" for f, label in rows))
    prepared = prepare_images(root, 16)
    assert prepared.layout == f"labelled by {table}"
    assert prepared.labels.classes == ClassInfo(("even", "odd"), (2, 2))
    assert [s.path for s in prepared.skipped] == ["train/" + names[4]]
    assert prepared.skipped[0].reason == "not listed in the metadata table"


def test_two_metadata_tables_are_refused(tmp_path: Path) -> None:
    write_blobs(tmp_path / "d", count=2)
    (tmp_path / "d" / "metadata.csv").write_text("file_name,label\n")
    (tmp_path / "d" / "metadata.jsonl").write_text("")
    with pytest.raises(DataError, match="both"):
        prepare_images(tmp_path / "d", 16)


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "a\\b", ".hidden", "", "x" * 101, "tab\there", "ends.", "NUL",
                                 "com1.txt", "metadata.jsonl", "skipped.json"])
def test_label_names_that_cannot_be_folder_names_are_refused_with_a_hint(bad: str) -> None:
    with pytest.raises(DataError) as error:
        check_label(bad)
    assert "letters, digits" in error.value.hint


def test_labels_that_one_folder_on_a_case_insensitive_disk_would_hold_are_refused(tmp_path: Path) -> None:
    write_labelled(tmp_path / "pets", {"Cats": 2, "cats": 2})
    with pytest.raises(DataError, match="differ only in case"):
        prepare_images(tmp_path / "pets", 16)


def test_a_bad_label_in_a_table_names_its_row(tmp_path: Path) -> None:
    write_blobs(tmp_path / "d", count=2)
    (tmp_path / "d" / "metadata.jsonl").write_text(json.dumps({"file_name": "face000.png", "label": "../up"}) + "\n")
    with pytest.raises(DataError, match="row 1"):
        prepare_images(tmp_path / "d", 16)


def test_class_latents_depend_on_seed_class_and_index_alone_and_stay_in_their_class() -> None:
    rng = np.random.default_rng(0)
    k, d = 6, 4
    prior = LatentPrior(rng.random(k).astype(np.float32), rng.standard_normal((k, d)).astype(np.float32),
                        np.full((k, d), 0.01, np.float32), np.array([0, 0, 1, 1, 2, 2]))
    again = LatentPrior(prior.weights, prior.means, prior.scales, prior.classes)
    assert np.array_equal(prior.class_latent(3, 1, 7), again.class_latent(3, 1, 7))
    assert not np.array_equal(prior.class_latent(3, 1, 7), prior.class_latent(3, 2, 7))
    for label in range(3):
        for index in range(20):
            nearest = np.argmin(((prior.means - prior.class_latent(5, label, index)) ** 2).sum(1))
            assert prior.classes[nearest] == label
    # An unlabelled draw is the stream it always was: seeded by (seed, index).
    unlabelled = LatentPrior(prior.weights, prior.means, prior.scales)
    assert np.array_equal(prior.latent(3, 7), unlabelled.latent(3, 7))


def test_one_mixture_per_class_fits_each_class_and_samples_from_it() -> None:
    config = ModelConfig(**{**TINY_MODEL, "classes": ("a", "b"), "class_counts": (60, 20), "prior_components": 2})
    vae = VAE(config)
    labels = torch.tensor([0] * 60 + [1] * 20)
    mu = torch.randn(80, 8) * 0.1 + torch.where(labels[:, None] == 0, -3.0, 3.0)
    vae.fit_prior(mu, torch.full((80, 8), -6.0), labels=labels)
    assert vae.prior_weights[:2].sum().item() == pytest.approx(0.75)
    assert (vae.prior_means[:2][vae.prior_weights[:2] > 0] < 0).all()
    assert (vae.prior_means[2:][vae.prior_weights[2:] > 0] > 0).all()
    z = vae.sample_latent(torch.randn(50, 8), torch.rand(50), torch.tensor([1] * 50))
    assert (z.mean(1) > 2).all()


def test_an_unlabelled_model_keeps_its_checkpoint_keys() -> None:
    assert "prior_classes" not in VAE(ModelConfig(**TINY_MODEL)).state_dict()


def test_a_labelled_run_stores_its_classes_in_config_checkpoint_and_onnx(labelled_run) -> None:
    expected = ClassInfo(("cats", "dogs", "rare"), (16, 16, 4))
    config = json.loads((labelled_run.run_dir / "config.json").read_text())
    assert config["model"]["classes"] == list(expected.names) and config["model"]["class_counts"] == [16, 16, 4]
    assert load_checkpoint(labelled_run.run_dir / "last.safetensors").config.model.classes == expected.names
    for role in ("encoder", "decoder", "denoiser"):
        model = open_model(labelled_run.export_dir / f"{role}.onnx", role, device="cpu")
        assert ClassInfo.from_metadata(model.metadata) == expected
    prior = LatentPrior.from_metadata(open_model(labelled_run.export_dir / "decoder.onnx", "decoder", "cpu").metadata)
    assert sorted(set(prior.classes.tolist())) == [0, 1, 2]


def test_resuming_on_data_with_other_classes_is_refused(labelled_run, tmp_path: Path) -> None:
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(labelled_run.runs_dir, runs)
    other = write_labelled(tmp_path / "other", {"cats": 16, "owls": 16})
    config = ModelConfig(**{**TINY_MODEL, "prior": "mixture"})
    with pytest.raises(DataError, match="owls"):
        train(other, config, TrainConfig(epochs=2, batch_size=16, precision="fp32"), runs, device="cpu", resume=True)



# --- labels stay with their images: nested folders, tables, and every filter on the way (issue 32) ---------------


def _decoded(path: Path) -> np.ndarray:
    return square_resize(decode_rgb(path), 16)


def _assert_labels_follow_their_images(root: Path, out: Path, expected: dict[str, str]) -> None:
    """Prepare `root` (images and labels in one pass), save and reload it: every kept image, in every place the
    labels travel (the list, the saved set, its manifest), carries `expected[its source path]`."""
    prepared = prepare_images(root, 16)
    assert len(prepared.label_names) == len(prepared.sources) == len(prepared.images)
    assert dict(zip(prepared.sources, prepared.label_names)) == expected
    for source, pixels in zip(prepared.sources, prepared.images):
        assert np.array_equal(pixels, _decoded(root / source)), source
    save_prepared(prepared, out, root)
    labels = load_prepared_labels(out)
    kept = json.loads(manifest_path(out).read_text())["kept"]
    assert [k["path"] for k in kept] == prepared.sources
    assert [labels.classes.names[i] for i in labels.index] == [expected[k["path"]] for k in kept]
    assert [k["label"] for k in kept] == [expected[k["path"]] for k in kept]


def test_an_image_in_a_subfolder_of_a_class_folder_belongs_to_that_class(runner, tmp_path: Path) -> None:
    """ImageFolder's convention: DATA/<label>/**/x.png is <label>, however deep (not its innermost folder)."""
    root = tmp_path / "pets"
    write_blobs(root / "cats", count=1, seed=1, prefix="top")
    write_blobs(root / "cats" / "indoor", count=2, seed=2, prefix="in")
    write_blobs(root / "cats" / "outdoor" / "garden", count=1, seed=3, prefix="out")
    write_blobs(root / "dogs" / "puppies", count=2, seed=4, prefix="pup")
    expected = {"cats/top000.png": "cats", "cats/indoor/in000.png": "cats", "cats/indoor/in001.png": "cats",
                "cats/outdoor/garden/out000.png": "cats", "dogs/puppies/pup000.png": "dogs",
                "dogs/puppies/pup001.png": "dogs"}
    prepared = prepare_images(root, 16)
    assert prepared.layout == "labelled by class folders"
    assert prepared.labels.classes == ClassInfo(("cats", "dogs"), (4, 2))
    _assert_labels_follow_their_images(root, tmp_path / "api.safetensors", expected)
    out = tmp_path / "cli.safetensors"
    assert_ok(runner.invoke(app, ["prepare", str(root), "--out", str(out), "--image-size", "16", "-q"]))
    assert {k["path"]: k["label"] for k in json.loads(manifest_path(out).read_text())["kept"]} == expected


@pytest.mark.parametrize("dropped", ["duplicate in its class", "duplicate of another class", "broken file"])
def test_labels_stay_with_their_images_when_a_file_is_dropped(tmp_path: Path, dropped: str) -> None:
    """A file dropped before the last class (a duplicate, a file that does not decode) must not shift the
    labels of the images after it onto their neighbours."""
    root = write_labelled(tmp_path / "pets", {"cats": 3, "dogs": 3, "owls": 2})
    if dropped == "duplicate in its class":
        shutil.copy(root / "cats" / "cats000.png", root / "cats" / "cats000b.png")
    elif dropped == "duplicate of another class":
        shutil.copy(root / "cats" / "cats001.png", root / "dogs" / "dogs000b.png")
    else:
        (root / "cats" / "cats000b.png").write_bytes(b"not a picture")
    expected = {f"{label}/{label}{i:03d}.png": label for label, n in (("cats", 3), ("dogs", 3), ("owls", 2))
                for i in range(n)}
    _assert_labels_follow_their_images(root, tmp_path / "pets.safetensors", expected)


@pytest.mark.parametrize("table", ["metadata.csv", "metadata.jsonl"])
def test_a_metadata_table_labels_nested_paths_and_normalises_dot_slash(tmp_path: Path, table: str) -> None:
    """Table rows name images by '/'-separated paths relative to the table, at any depth, with or without a
    leading './' (as Hugging Face's imagefolder writes and reads them); the folders themselves say nothing."""
    root = tmp_path / "hf"
    paths = [*write_blobs(root / "train" / "a", count=2, seed=1), *write_blobs(root / "train" / "b" / "c", count=2, seed=2),
             *write_blobs(root, count=1, seed=3, prefix="top")]
    names = [p.relative_to(root).as_posix() for p in paths]
    labels = ["z", "y", "z", "x", "y"]  # unrelated to the folders
    spelled = ["./" + names[0], names[1], "./" + names[2], "train//b/c/" + Path(names[3]).name, names[4]]
    if table == "metadata.csv":
        (root / table).write_text("file_name,label\n" + "".join(f"{f},{label}\n" for f, label in zip(spelled, labels)))
    else:
        (root / table).write_text("".join(json.dumps({"file_name": f, "label": label}) + "\n"
                                          for f, label in zip(spelled, labels)))
    prepared = prepare_images(root, 16)
    assert prepared.layout == f"labelled by {table}" and prepared.skipped == []
    _assert_labels_follow_their_images(root, tmp_path / "hf.safetensors", dict(zip(names, labels)))


def test_labels_from_a_table_stay_aligned_through_unlisted_missing_broken_and_duplicate_rows(tmp_path: Path) -> None:
    root = tmp_path / "hf"
    names = [p.name for p in write_blobs(root, count=6, seed=5)]
    shutil.copy(root / names[1], root / "copy.png")  # listed under another label: dropped as a duplicate
    (root / "broken.png").write_bytes(b"not a picture")
    rows = {names[0]: "a", names[1]: "b", "copy.png": "c", "broken.png": "a", "gone.png": "c", names[3]: "c",
            names[4]: "a", names[5]: "b"}  # names[2] is not listed; gone.png does not exist
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "label": label}) + "\n"
                                                 for f, label in rows.items()))
    prepared = prepare_images(root, 16)
    assert sorted(s.path for s in prepared.skipped) == ["broken.png", names[2]]
    assert [d["path"] for d in prepared.duplicates] == [names[1]]  # the copy sorts first and is kept
    expected = {"copy.png": "c", names[0]: "a", names[3]: "c", names[4]: "a", names[5]: "b"}
    _assert_labels_follow_their_images(root, tmp_path / "hf.safetensors", expected)


def test_labels_that_differ_only_in_case_in_a_table_are_refused(tmp_path: Path) -> None:
    names = [p.name for p in write_blobs(tmp_path / "d", count=2)]
    (tmp_path / "d" / "metadata.csv").write_text(f"file_name,label\n{names[0]},Cat\n{names[1]},cat\n")
    with pytest.raises(DataError, match="differ only in case"):
        prepare_images(tmp_path / "d", 16)


def test_a_table_row_matches_its_file_name_exactly(tmp_path: Path) -> None:
    """A row whose path differs in case from the file names no image (as on a case-sensitive disk, where both
    files may exist): that image is listed as not in the table, never given a guessed label."""
    names = [p.name for p in write_blobs(tmp_path / "d", count=2)]
    (tmp_path / "d" / "metadata.csv").write_text(f"file_name,label\n{names[0].upper()},a\n{names[1]},b\n")
    prepared = prepare_images(tmp_path / "d", 16)
    assert prepared.sources == [names[1]] and prepared.label_names == ["b"]
    assert [s.path for s in prepared.skipped] == [names[0]]


@pytest.mark.parametrize("source", ["folder", "prepared set"])
def test_training_data_keeps_each_label_with_its_image_from_the_cache_and_through_the_split(
        tmp_path: Path, source: str) -> None:
    """What training reads (a folder prepared into the cache, read again from the cache; or a prepared set) and
    the split it makes: row i's label is the class of the image in row i."""
    root = write_labelled(tmp_path / "pets", {"cats": 12, "dogs": 9, "owls": 5})
    shutil.copy(root / "cats" / "cats004.png", root / "cats" / "cats004b.png")
    (root / "dogs" / "dogs000b.png").write_bytes(b"not a picture")
    folder_of: dict[str, str] = {}
    for path in sorted(root.rglob("*.png")):
        with contextlib.suppress(DataError):
            folder_of.setdefault(pixel_hash(decode_rgb(path)), path.parent.name)
    if source == "prepared set":
        save_prepared(prepare_images(root, 16), tmp_path / "pets.safetensors", root)
    data = tmp_path / "pets.safetensors" if source == "prepared set" else root
    loads = [load_training_images(data, 16, tmp_path / "cache", SilentReporter()) for _ in range(2)]
    for loaded in loads:  # the folder's second load comes from the cache
        assert len(loaded.images) == len(loaded.hashes) == len(loaded.labels.index) == 26
        names = [loaded.labels.classes.names[i] for i in loaded.labels.index]
        assert names == [folder_of[h] for h in loaded.hashes]
        train_rows, held_rows = split_holdout(loaded.hashes, len(loaded.images), 3)
        for rows in (train_rows, held_rows):
            assert [loaded.labels.classes.names[i] for i in loaded.labels.subset(rows)] == [
                folder_of[loaded.hashes[r]] for r in rows]
    assert loads[1].labels.classes == ClassInfo(("cats", "dogs", "owls"), (12, 9, 5))


@pytest.mark.parametrize("change", ["relabel in the table", "rename a class folder"])
def test_a_cached_set_is_not_reused_once_the_labels_change(tmp_path: Path, change: str) -> None:
    """Training prepares a folder once and caches it; a new label in the table (same files, same sizes) or a
    renamed class folder must prepare it again, not train on the cached set's old labels."""
    root = tmp_path / "pets"
    if change == "relabel in the table":
        names = [p.name for p in write_blobs(root, count=4)]
        table = root / "metadata.csv"
        table.write_text("file_name,label\n" + "".join(f"{n},{'aa' if i < 2 else 'bb'}\n" for i, n in enumerate(names)))
    else:
        write_labelled(root, {"cats": 2, "dogs": 2})
    first = load_training_images(root, 16, tmp_path / "cache", SilentReporter())
    assert first.labels.classes.names in (("aa", "bb"), ("cats", "dogs"))
    if change == "relabel in the table":
        table.write_text(table.read_text().replace("bb", "cc"))
        expected = ("aa", "cc")
    else:
        (root / "dogs").rename(root / "wolves")
        expected = ("cats", "wolves")
    again = load_training_images(root, 16, tmp_path / "cache", SilentReporter())
    assert again.labels.classes.names == expected


# --- labels.py at the API: the names it accepts, the class list in metadata, the tables it reads ----------------


@pytest.mark.parametrize("good", ["cats", "a", "x" * 100, "Maine Coon", "v1.2_b+c-d", "0", "comic", "nul2", "data.jsonl"])
def test_label_names_that_are_safe_folder_names_are_kept(good: str) -> None:
    assert check_label(good) == good


@pytest.mark.parametrize("bad", ["ends ", "lpt9", "AUX.txt", "metadata.csv", "my.JSON", " lead", "-dash"])
def test_more_label_names_that_cannot_be_folder_names_are_refused(bad: str) -> None:
    with pytest.raises(DataError, match="cannot be a folder name"):
        check_label(bad, "metadata.csv, row 2")


def test_a_refused_label_names_where_it_was_found() -> None:
    with pytest.raises(DataError, match=r"\(in metadata.csv, row 7\)"):
        check_label("..", "metadata.csv, row 7")


def test_the_class_list_travels_as_json_and_back() -> None:
    classes = ClassInfo(("cats", "dogs"), (3, 5))
    assert json.loads(classes.to_json()) == [{"name": "cats", "count": 3}, {"name": "dogs", "count": 5}]
    assert ClassInfo.from_json(classes.to_json()) == classes
    assert ClassInfo.from_metadata({"animevae.classes": classes.to_json()}) == classes
    assert ClassInfo.from_metadata({}) is None and ClassInfo.from_metadata({"animevae.classes": ""}) is None
    assert classes.index("dogs") == 1


@pytest.mark.parametrize("text", ["not json", '[{"name": "cats"}]', '[{"count": 1}]', '[{"name": "cats", "count": "x"}]',
                                  "[]", '[{"name": "a", "count": 1}, {"name": "a", "count": 2}]',
                                  '[{"name": "../up", "count": 1}]', "[1]"])
def test_a_malformed_class_list_in_metadata_is_one_clear_error(text: str) -> None:
    with pytest.raises(DataError) as error:
        ClassInfo.from_json(text)
    assert error.value.hint


def test_labels_number_names_in_sorted_order_and_count_them() -> None:
    labels = Labels.from_names(["dogs", "cats", "dogs", "owls", "dogs"])
    assert labels.classes == ClassInfo(("cats", "dogs", "owls"), (1, 3, 1))
    assert labels.index.tolist() == [1, 0, 1, 2, 1] and labels.index.dtype == np.int64
    assert labels.subset(np.array([4, 1])).tolist() == [1, 0]


def test_a_metadata_table_is_found_only_at_the_top(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "metadata.csv").write_text("file_name,label\n")
    assert metadata_table(tmp_path) is None
    (tmp_path / "metadata.jsonl").write_text("")
    assert metadata_table(tmp_path) == tmp_path / "metadata.jsonl"


@pytest.mark.parametrize("table, content, fragment", [
    ("metadata.csv", "file_name,label\na.png,ok\nb.png,../up\n", "row 3"),
    ("metadata.csv", "path,label\na.png,ok\n", "row 2: no file_name and label"),
    ("metadata.jsonl", '{"file_name": "a.png", "label": "ok"}\n\n{"file_name": "b.png"}\n', "row 2: no file_name"),
    ("metadata.jsonl", '["a.png", "ok"]\n', "row 1: no file_name"),
    ("metadata.jsonl", '{"file_name": "a.png", "label": "ok"}\n{not json\n', "cannot read"),
    ("metadata.csv", b"file_name,label\n\xff\xfe.png,x\n", "cannot read"),
])
def test_a_bad_metadata_table_is_one_clear_error_naming_its_row(tmp_path: Path, table: str, content, fragment: str) -> None:
    path = tmp_path / table
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=fragment) as error:
        read_metadata_labels(path)
    assert error.value.hint


def test_the_folder_label_is_the_top_folder_of_the_relative_path() -> None:
    assert folder_label("cats/x.png") == "cats" and folder_label("x.png") is None
    assert folder_label(str(Path("cats") / "sub" / "x.png")) == "cats"


def test_every_labels_error_has_a_message_and_a_hint(tmp_path: Path) -> None:
    """What the CLI prints as `error:` and `hint:`: neither may be empty (a long label is cut to 60 characters)."""
    errors = []
    for call in (lambda: check_label(".."), lambda: check_label("y" * 101), lambda: ClassInfo.from_json("[]"),
                 lambda: ClassInfo.from_json("not json"), lambda: ClassInfo(("a",), (1,)).index("b"),
                 lambda: Labels.from_names(["Cat", "cat"])):
        with pytest.raises(DataError) as error:
            call()
        errors.append(error.value)
    (tmp_path / "metadata.csv").write_text("")
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(DataError) as error:
        metadata_table(tmp_path)
    errors.append(error.value)
    assert all(e.message and e.hint for e in errors), [(e.message, e.hint) for e in errors]
    assert errors[0].message == "label '..' cannot be a folder name"
    assert repr("y" * 60) in errors[1].message
    assert [fragment in e.message for e, fragment in zip(errors[2:], (
        "empty or repeats", "malformed class list", "no class 'b'", "differ only in case", "both"))] == [True] * 5
