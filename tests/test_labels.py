"""Labelled data sets: class folders and metadata tables in, classes stored in the set, the run and the ONNX files,
and one latent mixture per class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from animevae.config import ModelConfig, TrainConfig
from animevae.prepared_set import load_prepared_labels, manifest_path, prepare_images, save_prepared
from animevae.errors import DataError
from animevae.labels import ClassInfo, check_label
from animevae.prior import LatentPrior
from animevae.runtime import open_model
from animevae.training.checkpoint import load_checkpoint
from animevae.training.model import VAE
from animevae.training.train import train
from helpers import LABELLED_COUNTS, TINY_MODEL, write_blobs, write_labelled


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

