"""animevae/outputs.py: the manifest that guards an output folder (resume, refusal, --overwrite), the failure
lists, single output files; and the same guard through generate, denoise and augment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from animevae.cli import app
from helpers import CPU, assert_cli_error, assert_ok, write_blobs


def _model_flags(trained_run) -> list[str]:
    return ["--model", str(trained_run.export_dir), *CPU]


def _pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_a_users_skipped_json_is_neither_removed_nor_replaced(runner, trained_run, tmp_path: Path) -> None:
    noisy, out = tmp_path / "noisy", tmp_path / "out"
    write_blobs(noisy, count=3)
    out.mkdir()
    (out / "skipped.json").write_text("my list of skipped meals")
    assert_cli_error(runner.invoke(app, ["denoise", str(noisy), "--out", str(out), *_model_flags(trained_run)]),
                     "skipped.json")
    assert (out / "skipped.json").read_text() == "my list of skipped meals"
    from animevae.outputs import write_skipped

    write_skipped(out, [])  # a clean run removes only a list of its own
    assert (out / "skipped.json").read_text() == "my list of skipped meals"


def test_overwrite_with_another_seed_leaves_no_stale_images(runner, trained_run, tmp_path: Path) -> None:
    out, reference = tmp_path / "g", tmp_path / "reference"
    flags = _model_flags(trained_run)
    assert_ok(runner.invoke(app, ["generate", "--count", "4", "--seed", "0", "--out", str(out), *flags]))
    assert_ok(runner.invoke(app, ["generate", "--count", "2", "--seed", "1", "--out", str(out), "--overwrite", *flags]))
    assert sorted(_pngs(out)) == ["000000.png", "000001.png"]
    assert_ok(runner.invoke(app, ["generate", "--count", "4", "--seed", "1", "--out", str(out), *flags]))
    assert_ok(runner.invoke(app, ["generate", "--count", "4", "--seed", "1", "--out", str(reference), *flags]))
    assert _pngs(out) == _pngs(reference)


def test_an_interrupted_overwrite_never_leaves_a_mix(generate_models, tmp_path: Path, monkeypatch) -> None:
    import animevae.writer as writer
    from animevae.generate import generate

    decoder, out, reference = generate_models, tmp_path / "g", tmp_path / "reference"
    generate(decoder, 6, out, seed=0, workers=0)
    real_save, calls = writer.save_png_atomic, []

    def save_then_interrupt(path: Path, pixels: np.ndarray) -> None:
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(path)
        real_save(path, pixels)

    monkeypatch.setattr(writer, "save_png_atomic", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        generate(decoder, 6, out, seed=1, overwrite=True, workers=0, batch_size=1)
    monkeypatch.setattr(writer, "save_png_atomic", real_save)
    generate(decoder, 6, out, seed=1, workers=0)  # a plain rerun finishes the interrupted job
    generate(decoder, 6, reference, seed=1, workers=0)
    assert _pngs(out) == _pngs(reference)


def test_denoise_refuses_another_input_and_overwrite_replaces_every_output(runner, trained_run, tmp_path: Path) -> None:
    a, b, out = tmp_path / "A", tmp_path / "B", tmp_path / "X"
    write_blobs(a, count=2, seed=1, prefix="000")
    write_blobs(b, count=1, seed=2, prefix="000")
    flags = _model_flags(trained_run)
    assert_ok(runner.invoke(app, ["denoise", str(a), "--out", str(out), *flags]))
    assert sorted(_pngs(out)) == ["000000.png", "000001.png"]
    assert_cli_error(runner.invoke(app, ["denoise", str(b), "--out", str(out), *flags]), "--overwrite")
    assert_ok(runner.invoke(app, ["denoise", str(b), "--out", str(out), "--overwrite", *flags]))
    reference = tmp_path / "reference"
    assert_ok(runner.invoke(app, ["denoise", str(b), "--out", str(reference), *flags]))
    assert _pngs(out) == _pngs(reference)  # A's 000001.png is gone, 000000.png is B's


def test_augment_refuses_another_input(runner, trained_run, tmp_path: Path) -> None:
    a, b, out = tmp_path / "A", tmp_path / "B", tmp_path / "X"
    write_blobs(a, count=1, seed=1)
    write_blobs(b, count=1, seed=2)
    base = ["--per-image", "1", "--out", str(out), *_model_flags(trained_run)]
    assert_ok(runner.invoke(app, ["augment", str(a), *base]))
    assert_cli_error(runner.invoke(app, ["augment", str(b), *base]), "--overwrite")


def test_write_output_file_creates_missing_folders_and_turns_os_errors_into_output_errors(tmp_path: Path) -> None:
    from animevae.errors import OutputError
    from animevae.outputs import write_output_file

    deep = tmp_path / "a" / "b" / "grid.png"
    write_output_file(deep, b"png", overwrite=False)
    assert deep.read_bytes() == b"png"
    (tmp_path / "plain").write_bytes(b"a file, not a folder")
    with pytest.raises(OutputError, match="cannot write") as caught:
        write_output_file(tmp_path / "plain" / "grid.png", b"png", overwrite=False)
    assert str(tmp_path / "plain" / "grid.png") in str(caught.value) and caught.value.hint


def test_skipped_list_names_of_shards() -> None:
    from animevae.outputs import SKIPPED_NAME, skipped_name

    assert skipped_name() == skipped_name(0, 1) == SKIPPED_NAME
    assert skipped_name(1, 3) == "skipped.shard-1-of-3.json"


@pytest.mark.parametrize("content", ["[1, 2]", "{}", '[{"name": "mine"}]', "a folder"])
def test_a_skipped_json_of_another_shape_is_refused_and_kept(tmp_path: Path, content: str) -> None:
    """Only a list of {path, reason} objects is ours: anything else of that name belongs to the user."""
    from animevae.errors import OutputError
    from animevae.outputs import prepare_output, write_skipped

    out = tmp_path / "out"
    out.mkdir()
    users = out / "skipped.json"
    if content == "a folder":
        users.mkdir()
    else:
        users.write_text(content)
    with pytest.raises(OutputError, match="skipped.json"):
        prepare_output(out, {"task": "denoise"}, overwrite=False)
    write_skipped(out, [])
    assert users.is_dir() if content == "a folder" else users.read_text() == content


def test_file_digest_is_the_sha256_of_the_whole_file(tmp_path: Path) -> None:
    """The digest is what tells one model's output folder from another's: it must cover every byte."""
    import hashlib

    from animevae.outputs import file_digest

    data = bytes(range(256)) * 6144  # 1.5 MiB: more than one read block
    (tmp_path / "model.onnx").write_bytes(data)
    (tmp_path / "other.onnx").write_bytes(data[:-1] + b"x")
    assert file_digest(tmp_path / "model.onnx") == hashlib.sha256(data).hexdigest()
    assert file_digest(tmp_path / "other.onnx") != file_digest(tmp_path / "model.onnx")


def test_prepare_output_creates_a_nested_out_and_refuses_one_it_cannot_write(tmp_path: Path, monkeypatch) -> None:
    from animevae.errors import OutputError
    from animevae.outputs import MANIFEST_NAME, prepare_output

    nested = tmp_path / "new" / "deeper" / "out"
    prepare_output(nested, {"seed": 1}, overwrite=False)
    assert json.loads((nested / MANIFEST_NAME).read_text()) == {"seed": 1}
    # Root passes every permission check, so the folder's permissions are simulated: no write, or no entry.
    for missing in (os.W_OK, os.X_OK):
        monkeypatch.setattr(os, "access", lambda path, mode, missing=missing: not mode & missing)
        with pytest.raises(OutputError, match="not writable") as caught:
            prepare_output(tmp_path / f"locked{missing}", {"seed": 1}, overwrite=False)
        assert caught.value.hint


def test_a_damaged_manifest_is_not_taken_for_a_fresh_folder(tmp_path: Path) -> None:
    """A manifest that cannot be read still says animevae wrote here: refused, and --overwrite clears the old
    outputs, so they are never mixed with the new job's."""
    from animevae.errors import OutputError
    from animevae.outputs import MANIFEST_NAME, prepare_output

    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text('{"seed": 1, "mod')  # cut short
    (out / "000000.png").write_bytes(b"an old job's image")
    with pytest.raises(OutputError, match="another model or settings"):
        prepare_output(out, {"seed": 2}, overwrite=False)
    prepare_output(out, {"seed": 2}, overwrite=True, old_outputs=lambda folder: folder.glob("*.png"))
    assert not (out / "000000.png").exists()
    assert json.loads((out / MANIFEST_NAME).read_text()) == {"seed": 2}


def test_overwrite_for_another_job_removes_its_failure_lists_but_not_the_users(tmp_path: Path) -> None:
    """An old job's skipped.json would list failures the new job never had."""
    from animevae.outputs import MANIFEST_NAME, prepare_output, write_skipped
    from animevae.images import Skipped

    out = tmp_path / "out"
    prepare_output(out, {"seed": 1}, overwrite=False)
    write_skipped(out, [Skipped("a.png", "truncated")])
    write_skipped(out, [Skipped("b.png", "truncated")], "skipped.shard-1-of-2.json")
    (out / "skipped-notes.json").write_text('{"mine": true}')
    prepare_output(out, {"seed": 2}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "skipped-notes.json"]


# --- files in an output tree that no animevae job wrote (issue 32): every depth, every job -----------------------


def _generate_by_class(runner, labelled_run, out: Path, *args: str):
    return runner.invoke(app, ["generate", "--out", str(out), "--runs-dir", str(labelled_run.runs_dir), "--device",
                               "cpu", "-q", *args])


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _entries(folder: Path) -> list[str]:
    """Every file and folder below `folder`, folders with a trailing /."""
    return sorted(f"{p.relative_to(folder)}{'/' if p.is_dir() else ''}" for p in folder.rglob("*"))


def _users_png(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_blobs(path.parent, count=1, seed=99, prefix="tmp-users")
    (path.parent / "tmp-users000.png").rename(path)
    return path.read_bytes()


@pytest.mark.parametrize("users_file", ["cats/mine.png", "cats/000000.png", "elsewhere/deeper/000001.png"])
def test_a_class_tree_refuses_pngs_it_did_not_write_at_any_depth(runner, labelled_run, tmp_path: Path,
                                                                  users_file: str) -> None:
    """A folder with no manifest holding PNGs anywhere below it is the user's: generate by class neither adopts
    one as a finished image (resume) nor writes over it."""
    out = tmp_path / "synth"
    mine = _users_png(out / users_file)
    assert_cli_error(_generate_by_class(runner, labelled_run, out, "--per-class", "2"), "did not generate",
                     "--overwrite")
    assert _tree(out) == [users_file] and (out / users_file).read_bytes() == mine


@pytest.mark.parametrize("command", ["denoise", "augment"])
def test_a_mirrored_tree_refuses_pngs_it_did_not_write_in_its_subfolders(runner, trained_run, tmp_path: Path,
                                                                         command: str) -> None:
    """denoise and augment mirror the input tree: a user's PNG where an output of a subfolder would go, or
    anywhere else below --out, is neither taken for a finished output nor replaced."""
    noisy, out = tmp_path / "noisy", tmp_path / "out"
    write_blobs(noisy / "sub", count=2)
    name = "sub/face000.png" if command == "denoise" else "sub/face000_0.png"
    mine = _users_png(out / name)
    extra = ["--per-image", "1"] if command == "augment" else []
    assert_cli_error(runner.invoke(app, [command, str(noisy), "--out", str(out), *extra, *_model_flags(trained_run)]),
                     "did not generate", "--overwrite")
    assert _tree(out) == [name] and (out / name).read_bytes() == mine


def test_a_users_png_in_a_class_folder_survives_resume_and_overwrite_and_is_never_labelled(
        runner, labelled_run, tmp_path: Path) -> None:
    """In a class tree animevae wrote, only its numbered images are its own: a file the user added to a class
    folder is not listed in metadata.jsonl on a rerun, and --overwrite for another seed leaves it alone."""
    out = tmp_path / "synth"
    assert_ok(_generate_by_class(runner, labelled_run, out, "--per-class", "2"))
    mine = _users_png(out / "cats" / "mine.png")
    assert_ok(_generate_by_class(runner, labelled_run, out, "--per-class", "3"))
    listed = [json.loads(line)["file_name"] for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert listed == [f"{label}/00000{i}.png" for label in ("cats", "dogs", "rare") for i in range(3)]
    reference = tmp_path / "reference"
    assert_ok(_generate_by_class(runner, labelled_run, out, "--per-class", "1", "--seed", "5", "--overwrite"))
    assert_ok(_generate_by_class(runner, labelled_run, reference, "--per-class", "1", "--seed", "5"))
    assert (out / "cats" / "mine.png").read_bytes() == mine
    assert {k: v for k, v in _pngs(out).items() if k != "cats/mine.png"} == _pngs(reference)
    assert (out / "metadata.jsonl").read_bytes() == (reference / "metadata.jsonl").read_bytes()


@pytest.mark.parametrize("first, then", [(["--count", "3"], ["--per-class", "1"]),
                                         (["--per-class", "2"], ["--count", "2"])])
def test_overwrite_into_the_other_layout_leaves_no_image_of_the_old_job(runner, labelled_run, tmp_path: Path,
                                                                        first: list[str], then: list[str]) -> None:
    """A flat folder overwritten by a run by class (or the reverse) holds the new job's images only."""
    out, reference = tmp_path / "synth", tmp_path / "reference"
    assert_ok(_generate_by_class(runner, labelled_run, out, *first))
    assert_ok(_generate_by_class(runner, labelled_run, out, *then, "--seed", "1", "--overwrite"))
    assert_ok(_generate_by_class(runner, labelled_run, reference, *then, "--seed", "1"))
    assert _pngs(out) == _pngs(reference)
    # Nor a class tree's metadata.jsonl or emptied class folders, which would label images that are gone.
    assert _entries(out) == _entries(reference)


@pytest.mark.parametrize("command", ["denoise", "augment"])
def test_overwrite_for_another_input_removes_the_old_outputs_in_subfolders(runner, trained_run, tmp_path: Path,
                                                                           command: str) -> None:
    """The old job's outputs in a mirrored tree's subfolders go too: none is left to pass for the new job's."""
    a, b, out, reference = tmp_path / "A", tmp_path / "B", tmp_path / "X", tmp_path / "reference"
    write_blobs(a / "sub" / "deeper", count=2, seed=1)
    write_blobs(b / "sub", count=1, seed=2)
    extra = ["--per-image", "1"] if command == "augment" else []
    flags = [*extra, *_model_flags(trained_run)]
    assert_ok(runner.invoke(app, [command, str(a), "--out", str(out), *flags]))
    assert_ok(runner.invoke(app, [command, str(b), "--out", str(out), "--overwrite", *flags]))
    assert_ok(runner.invoke(app, [command, str(b), "--out", str(reference), *flags]))
    assert _pngs(out) == _pngs(reference)


@pytest.mark.parametrize("name, numbered", [("000000.png", True), ("1234567.png", True), ("00001.png", False),
                                            ("000001.PNG", False), ("a000001.png", False), ("000001.png.tmp", False),
                                            ("000001_0.png", False), ("mine.png", False)])
def test_numbered_names_are_the_ones_generate_writes(name: str, numbered: bool) -> None:
    from animevae.outputs import is_numbered_png, numbered_png

    assert is_numbered_png(name) is numbered
    assert numbered_png(7) == "000007.png" and numbered_png(1_234_567) == "1234567.png"


def test_a_job_result_reports_images_per_second(tmp_path: Path) -> None:
    from animevae.outputs import JobResult

    assert JobResult(tmp_path, written=10, existing=0, seconds=2.0, provider="cpu").images_per_s == 5.0
    assert JobResult(tmp_path, written=0, existing=3, seconds=0.0, provider="cpu").images_per_s == 0.0


def test_a_truncated_image_in_a_class_folder_is_redone_on_resume(runner, labelled_run, tmp_path: Path) -> None:
    """Resume in a class tree takes only complete images for finished, as in a flat folder."""
    out, reference = tmp_path / "synth", tmp_path / "reference"
    for folder in (out, reference):
        assert_ok(_generate_by_class(runner, labelled_run, folder, "--per-class", "2"))
    cut = out / "dogs" / "000001.png"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    assert_ok(_generate_by_class(runner, labelled_run, out, "--per-class", "2"))
    assert _pngs(out) == _pngs(reference)
    assert (out / "metadata.jsonl").read_bytes() == (reference / "metadata.jsonl").read_bytes()


def test_a_shards_failure_list_of_another_shape_is_refused_and_kept(tmp_path: Path) -> None:
    from animevae.errors import OutputError
    from animevae.outputs import prepare_output, skipped_name

    out = tmp_path / "out"
    out.mkdir()
    users = out / skipped_name(0, 2)
    users.write_text('{"mine": true}')
    with pytest.raises(OutputError, match="skipped.shard-0-of-2.json"):
        prepare_output(out, {"task": "denoise"}, overwrite=False, report=skipped_name(0, 2))
    prepare_output(out, {"task": "denoise"}, overwrite=False, report=skipped_name(1, 2))  # not this shard's list
    assert users.read_text() == '{"mine": true}'


def test_a_refusal_names_only_the_settings_that_changed_with_digests_cut_to_12_characters(tmp_path: Path) -> None:
    from animevae.errors import OutputError
    from animevae.outputs import prepare_output

    out = tmp_path / "out"
    prepare_output(out, {"model_sha256": "b" * 64, "seed": 1, "task": "generate"}, overwrite=False)
    with pytest.raises(OutputError) as error:
        prepare_output(out, {"model_sha256": "a" * 64, "seed": 2, "task": "generate"}, overwrite=False)
    assert f"(model_sha256 {'b' * 12}, now {'a' * 12}, seed 1, now 2)" in error.value.message
    assert "b" * 13 not in error.value.message and "task" not in error.value.message


GENERATED = {"model_sha256": "a" * 64, "seed": 0}


@pytest.mark.parametrize("old_job, old_files, new_job, kept", [
    # A class tree's labels and its folders go with its images, whichever job claims the folder.
    ({**GENERATED, "layout": "classes"}, ["metadata.jsonl", "cats/000000.png", "dogs/000000.png", "cats/mine.png"],
     {**GENERATED, "seed": 1}, ["cats/", "cats/mine.png"]),
    ({**GENERATED, "layout": "classes"}, ["metadata.jsonl", "cats/000000.png"], {"task": "denoise", "input": "x"}, []),
    # A flat folder's metadata.jsonl is not generate's: the user's.
    (GENERATED, ["metadata.jsonl", "000000.png"], {**GENERATED, "layout": "classes"}, ["metadata.jsonl"]),
    # Another command's outputs, which the new job's own names would not find.
    ({"task": "augment", "input": "x"}, ["sub/face_0.png", "face_1.png", "face.png"], GENERATED, ["face.png"]),
    ({"task": "denoise", "input": "x"}, ["sub/deeper/face.png", "000000_0.png"], {"task": "augment", "input": "y"}, []),
    ({"task": "denoise", "input": "x"}, ["sub/face.png", "000000.png"], GENERATED, []),
    # A manifest of a job this version does not know leaves everything but the new job's own names.
    ({**GENERATED, "task": "later"}, ["sub/deeper/face_1.png", "000000.png", "face_0.png"],
     {"task": "augment", "input": "y"}, ["000000.png"]),
])
def test_overwrite_removes_what_the_old_job_wrote_whatever_job_comes_next(
        tmp_path: Path, old_job: dict, old_files: list[str], new_job: dict, kept: list[str]) -> None:
    """--overwrite for a job of another command or layout removes the old job's files as that job names them (its
    images, a class tree's metadata.jsonl) and the folders that leaves empty, and nothing else."""
    from animevae.outputs import MANIFEST_NAME, augmented_outputs, generated_outputs, prepare_output

    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text(json.dumps(old_job))
    for name in old_files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"old")
    own_names = {"augment": augmented_outputs, "denoise": lambda folder: folder.rglob("*.png")}
    prepare_output(out, new_job, overwrite=True, old_outputs=own_names.get(new_job.get("task"), generated_outputs))
    assert _entries(out) == sorted([MANIFEST_NAME, *kept])
