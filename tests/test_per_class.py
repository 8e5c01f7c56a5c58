"""animevae.per_class: how many images of each class a request asks for, and the metadata.jsonl that labels them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from animevae.errors import ArgumentError, DataError
from animevae.fileio import encode_png, to_uint8
from animevae.generate import generate_by_class
from animevae.labels import ClassInfo
from animevae.outputs import MANIFEST_NAME
from animevae.model_files import open_models
from animevae.per_class import ClassRequest, class_counts, class_image_path, write_metadata
from animevae.prior import LatentPrior
from animevae.runtime import open_model
from helpers import read_rgb

CLASSES = ClassInfo(("cats", "dogs", "rare"), (100, 80, 10))


@pytest.mark.parametrize(("request_", "expected"), [
    (ClassRequest(name="dogs", count=7), {1: 7}),
    (ClassRequest(per_class=5), {0: 5, 1: 5, 2: 5}),
    (ClassRequest(balance=True), {0: 0, 1: 20, 2: 90}),
    (ClassRequest(balance=True, per_class=50), {0: 0, 1: 0, 2: 40}),
    (ClassRequest(name="rare", balance=True), {2: 90}),
])
def test_requests_become_counts_per_class(request_: ClassRequest, expected: dict[int, int]) -> None:
    assert class_counts(CLASSES, request_) == expected


@pytest.mark.parametrize(("request_", "fragment"), [
    (ClassRequest(name="dogs"), "--class needs --count"),
    (ClassRequest(per_class=5, count=3), "--count goes with --class"),
    (ClassRequest(per_class=0), "--per-class must be at least 1"),
])
def test_contradictory_requests_are_refused(request_: ClassRequest, fragment: str) -> None:
    with pytest.raises(ArgumentError, match=fragment):
        class_counts(CLASSES, request_)


def test_an_unknown_class_lists_the_model_classes() -> None:
    with pytest.raises(DataError) as error:
        class_counts(CLASSES, ClassRequest(name="owls", count=1))
    assert "cats, dogs, rare" in error.value.hint


def test_an_unlabelled_model_has_no_classes_to_ask_for() -> None:
    with pytest.raises(ArgumentError, match="without labels"):
        class_counts(None, ClassRequest(per_class=3))


def test_metadata_lists_the_finished_images_on_disk(tmp_path: Path) -> None:
    import numpy as np

    png = encode_png(np.zeros((4, 4, 3), np.uint8))
    for label, index in (("cats", 0), ("cats", 1), ("rare", 0)):
        path = class_image_path(tmp_path, label, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    class_image_path(tmp_path, "dogs", 0).parent.mkdir()
    class_image_path(tmp_path, "dogs", 0).write_bytes(png[:20])  # cut short by a crash: not listed
    assert write_metadata(tmp_path, CLASSES, seed=4, model_sha256="abc") == 3
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert rows[0] == {"file_name": "cats/000000.png", "label": "cats", "seed": 4, "index": 0, "model_sha256": "abc"}
    assert [r["file_name"] for r in rows] == ["cats/000000.png", "cats/000001.png", "rare/000000.png"]


# --- generate by class, end to end on the session's labelled run ------------------------------------------------


def _generate(runner, labelled_run, out: Path, *args: str):
    from animevae.cli import app

    return runner.invoke(app, ["generate", "--out", str(out), "--runs-dir", str(labelled_run.runs_dir), "--device",
                               "cpu", "-q", *args])


def test_per_class_writes_a_tree_that_torchvision_and_hugging_face_read_with_its_labels(
        labelled_run, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "synth"
    result = _generate(runner, labelled_run, out, "--per-class", "3")
    assert result.exit_code == 0, result.output
    assert "per class: cats 3, dogs 3, rare 3" in result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        f"{label}/00000{i}.png" for label in ("cats", "dogs", "rare") for i in range(3)]
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(out))
    assert folder.classes == ["cats", "dogs", "rare"]
    assert [(Path(path).parent.name, label) for path, label in folder.samples][::3] == [("cats", 0), ("dogs", 1), ("rare", 2)]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(loaded) == 9 and loaded["label"] == ["cats"] * 3 + ["dogs"] * 3 + ["rare"] * 3
    assert loaded[4]["index"] == 1 and loaded[4]["image"].size == (16, 16)


def test_image_i_of_class_c_is_the_same_for_any_request_batch_size_and_shard(labelled_run, runner, tmp_path: Path) -> None:
    whole, pieces, one = tmp_path / "whole", tmp_path / "pieces", tmp_path / "one"
    assert _generate(runner, labelled_run, whole, "--per-class", "4").exit_code == 0
    for shard in ("0/3", "1/3", "2/3"):
        assert _generate(runner, labelled_run, pieces, "--per-class", "4", "--batch-size", "1",
                         "--shard", shard).exit_code == 0
    assert _generate(runner, labelled_run, one, "--class", "dogs", "--count", "2").exit_code == 0
    files = {p.relative_to(whole): p.read_bytes() for p in whole.rglob("*.png")}
    assert files == {p.relative_to(pieces): p.read_bytes() for p in pieces.rglob("*.png")}
    assert {p.relative_to(one): p.read_bytes() for p in one.rglob("*.png")} == {
        k: v for k, v in files.items() if k.parent.name == "dogs" and int(k.stem) < 2}
    assert (whole / "metadata.jsonl").read_bytes() == (pieces / "metadata.jsonl").read_bytes()
    assert len(set(files.values())) == len(files)  # every image its own


def test_balance_tops_up_the_rare_class_and_a_rerun_resumes(labelled_run, runner, tmp_path: Path) -> None:
    out = tmp_path / "balanced"
    result = _generate(runner, labelled_run, out, "--balance")
    assert result.exit_code == 0, result.output
    assert "per class: cats 0, dogs 0, rare 12" in result.output
    assert len(list((out / "rare").glob("*.png"))) == 12 and not (out / "cats").exists()
    again = _generate(runner, labelled_run, out, "--balance", "--per-class", "20")
    # To 20 each: cats and dogs (16) get 4, rare (4) gets 16, of which 12 are there already.
    assert "wrote 12 images (12 already there)" in again.output and "cats 4, dogs 4, rare 16" in again.output
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 24


def test_a_labelled_model_still_generates_the_flat_unlabelled_folder_and_says_it_has_classes(
        labelled_run, runner, tmp_path: Path) -> None:
    result = _generate(runner, labelled_run, tmp_path / "flat", "--count", "5")
    assert result.exit_code == 0 and "note: the model has classes (cats, dogs, rare)" in result.output
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == [".animevae.json"] + [f"00000{i}.png" for i in range(5)]


def test_class_options_on_an_unlabelled_model_are_refused(trained_run, runner, tmp_path: Path) -> None:
    from animevae.cli import app
    from helpers import assert_cli_error

    result = runner.invoke(app, ["generate", "--per-class", "3", "--out", str(tmp_path / "x"), "--runs-dir",
                                 str(trained_run.runs_dir), "--device", "cpu", "-q"])
    assert_cli_error(result, "trained without labels", "class folders")


def test_a_metadata_jsonl_animevae_did_not_write_is_not_replaced(labelled_run, runner, tmp_path: Path) -> None:
    from helpers import assert_cli_error

    out = tmp_path / "mine"
    out.mkdir()
    (out / "metadata.jsonl").write_text("{}\n")
    assert_cli_error(_generate(runner, labelled_run, out, "--per-class", "1"), "did not write it", "--overwrite")
    assert (out / "metadata.jsonl").read_text() == "{}\n"


def test_info_lists_the_classes_and_their_training_counts(labelled_run, runner) -> None:
    from animevae.cli import app

    result = runner.invoke(app, ["info", "--runs-dir", str(labelled_run.runs_dir), "--device", "cpu"])
    assert result.exit_code == 0
    assert "classes: 3" in result.output and "rare: 4 images" in result.output and "cats: 16 images" in result.output


# --- a draw by class honours what the unlabelled draw honours: seed, temperature, prior file, shard (issue 32) ---

NAMES = ("cats", "dogs", "rare")


def _expected_class_images(labelled_run, tasks: list[tuple[int, int]], seed: int, temperature: float) -> np.ndarray:
    """(len(tasks), 16, 16, 3) uint8: the decoded class latents of (class, index) pairs at this seed and temperature."""
    decoder = open_model(labelled_run.export_dir / "decoder.onnx", "decoder", device="cpu")
    prior = LatentPrior.from_metadata(decoder.metadata)
    return to_uint8(decoder.run(np.stack([prior.class_latent(seed, c, i, temperature) for c, i in tasks]))[0])


@pytest.mark.parametrize("request_args, tasks", [(["--class", "dogs", "--count", "3"], [(1, 0), (1, 1), (1, 2)]),
                                                 (["--per-class", "2"], [(c, i) for c in range(3) for i in range(2)])])
@pytest.mark.parametrize("seed, temperature", [(0, 1.0), (3, 0.5)])
def test_a_draw_by_class_decodes_the_class_latents_of_its_seed_and_temperature(
        labelled_run, runner, tmp_path: Path, request_args: list[str], tasks: list[tuple[int, int]], seed: int,
        temperature: float) -> None:
    """--temperature and --seed change the images drawn by class, not only what the manifest records."""
    out = tmp_path / "synth"
    result = _generate(runner, labelled_run, out, *request_args, "--seed", str(seed), "--temperature", str(temperature))
    assert result.exit_code == 0, result.output
    expected = _expected_class_images(labelled_run, tasks, seed, temperature)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == sorted(
        f"{NAMES[c]}/{i:06d}.png" for c, i in tasks)
    for (c, i), pixels in zip(tasks, expected):
        assert np.array_equal(read_rgb(out / NAMES[c] / f"{i:06d}.png"), pixels), (c, i)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["seed"] == seed and manifest.get("temperature", 1.0) == temperature


def test_worker_processes_draw_by_class_at_the_asked_seed_and_temperature(labelled_run, tmp_path: Path) -> None:
    """Batches decoded in worker processes (more tasks than a batch, on the CPU) draw as the parent does."""
    models = open_models(labelled_run.runs_dir, labelled_run.run_dir.name, None, ("decoder", "prior"), "cpu")
    out = tmp_path / "synth"
    result = generate_by_class(models, ClassRequest(per_class=3), out, seed=3, batch_size=2, workers=2,
                               temperature=0.5)
    assert result.written == 9
    tasks = [(c, i) for c in range(3) for i in range(3)]
    for (c, i), pixels in zip(tasks, _expected_class_images(labelled_run, tasks, 3, 0.5)):
        assert np.array_equal(read_rgb(out / NAMES[c] / f"{i:06d}.png"), pixels), (c, i)


def test_shards_of_a_cool_draw_by_class_write_the_whole_draw(labelled_run, runner, tmp_path: Path) -> None:
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    args = ["--per-class", "2", "--seed", "4", "--temperature", "0.6"]
    assert _generate(runner, labelled_run, whole, *args).exit_code == 0
    for shard in ("0/2", "1/2"):
        assert _generate(runner, labelled_run, pieces, *args, "--batch-size", "1", "--shard", shard).exit_code == 0
    assert {p.relative_to(whole): p.read_bytes() for p in whole.rglob("*.png")} == {
        p.relative_to(pieces): p.read_bytes() for p in pieces.rglob("*.png")}
    assert (whole / "metadata.jsonl").read_bytes() == (pieces / "metadata.jsonl").read_bytes()


def test_a_prior_file_beside_the_decoder_is_part_of_a_class_trees_identity(labelled_run, trained_run, runner,
                                                                           tmp_path: Path) -> None:
    """As for the unlabelled draw, the folder records the prior.onnx beside the decoder, and another prior is
    refused; the class images still come from each class's own mixture (the diffusion prior is unconditional)."""
    import onnx

    from animevae.cli import app
    from animevae.outputs import file_digest
    from helpers import assert_cli_error

    model, plain, with_prior = tmp_path / "model", tmp_path / "plain", tmp_path / "with-prior"
    shutil.copytree(labelled_run.export_dir, model)

    def draw(out: Path):
        return runner.invoke(app, ["generate", "--out", str(out), "--model", str(model), "--per-class", "1",
                                   "--device", "cpu", "-q"])

    assert draw(plain).exit_code == 0
    shutil.copy(trained_run.export_dir / "prior.onnx", model / "prior.onnx")
    result = draw(with_prior)
    assert result.exit_code == 0, result.output
    assert {p.relative_to(plain): p.read_bytes() for p in plain.rglob("*.png")} == {
        p.relative_to(with_prior): p.read_bytes() for p in with_prior.rglob("*.png")}
    manifest = json.loads((with_prior / MANIFEST_NAME).read_text())
    assert manifest["prior_sha256"] == file_digest(model / "prior.onnx")
    prior = onnx.load(str(model / "prior.onnx"))
    prior.doc_string = "another prior"
    onnx.save(prior, str(model / "prior.onnx"))
    assert_cli_error(draw(with_prior), "prior_sha256", "--overwrite")


@pytest.mark.parametrize(("request_", "by_class"), [(ClassRequest(), False), (ClassRequest(name="cats"), True),
                                                    (ClassRequest(per_class=1), True), (ClassRequest(balance=True), True),
                                                    (ClassRequest(count=3), False)])
def test_a_request_is_by_class_when_it_names_a_class_a_count_per_class_or_balance(request_: ClassRequest,
                                                                                  by_class: bool) -> None:
    assert request_.by_class is by_class


@pytest.mark.parametrize(("request_", "expected"), [
    (ClassRequest(balance=True, per_class=0), {0: 0, 1: 0, 2: 0}),
    (ClassRequest(name="cats", per_class=2), {0: 2}),
    (ClassRequest(name="rare", count=1), {2: 1}),
])
def test_more_requests_become_counts_per_class(request_: ClassRequest, expected: dict[int, int]) -> None:
    assert class_counts(CLASSES, request_) == expected


@pytest.mark.parametrize(("request_", "fragment"), [
    (ClassRequest(name="dogs", count=0), "--count must be at least 1"),
    (ClassRequest(balance=True, per_class=-1), "--per-class must be at least 1"),
    (ClassRequest(balance=True, count=3), "--count goes with --class"),
])
def test_more_contradictory_requests_are_refused(request_: ClassRequest, fragment: str) -> None:
    with pytest.raises(ArgumentError, match=fragment) as error:
        class_counts(CLASSES, request_)
    assert error.value.hint


def test_image_c_i_goes_to_its_class_folder(tmp_path: Path) -> None:
    assert class_image_path(tmp_path, "dogs", 12) == tmp_path / "dogs" / "000012.png"


@pytest.mark.parametrize("request_", [ClassRequest(name="dogs"), ClassRequest(per_class=5, count=3),
                                      ClassRequest(per_class=0), ClassRequest(name="owls", count=1)])
def test_every_refused_request_has_a_hint(request_: ClassRequest) -> None:
    with pytest.raises((ArgumentError, DataError)) as error:
        class_counts(CLASSES, request_)
    assert error.value.message and error.value.hint
