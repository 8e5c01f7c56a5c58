"""The Typer app: --version, help for every command, prepare and train end to end, error formatting."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from PIL import Image

from animevae import __version__
from animevae.cli import app
from animevae.prepared_set import load_prepared
from helpers import (
    CPU,
    assert_cli_error,
    assert_ok,
    blob_image,
    ctrl_c_after_step,
    environ_without_debug,
    read_jsonl,
    temp_leftovers,
    write_blobs,
)

# The CLI's own model at 16 px: default widths trimmed so the size divides (see cli.train).
TRAIN_FAST = ["--image-size", "16", "--latent-dim", "8", "--epochs", "1", "--batch-size", "16", "--precision", "fp32",
              *CPU]


# --- version and help --------------------------------------------------------------------------


def test_version(runner) -> None:
    result = runner.invoke(app, ["--version"])
    assert_ok(result)
    assert result.output.strip() == f"animevae {__version__}"


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "animevae", "--version"], capture_output=True, text=True,
                          env=environ_without_debug(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"animevae {__version__}"


def test_no_arguments_shows_help(runner) -> None:
    result = runner.invoke(app, [])
    assert "Commands:" in result.output
    for name in ("prepare", "train", "export", "generate", "denoise"):
        assert name in result.output


def _command_name(command: Any) -> str:
    """The name a registered command is called by: Typer turns a function's underscores into dashes."""
    return command.name or command.callback.__name__.replace("_", "-")


def _command_names() -> list[str]:
    return [_command_name(command) for command in app.registered_commands]


def test_the_expected_commands_are_registered() -> None:
    assert {"prepare", "train", "export", "generate", "denoise"} <= set(_command_names())


@pytest.mark.parametrize("name", _command_names())
def test_every_command_has_help(runner, name: str) -> None:
    command = next(c for c in app.registered_commands if _command_name(c) == name)
    doc = (command.callback.__doc__ or "").strip()
    assert doc, f"{name} has no docstring"
    result = runner.invoke(app, [name, "--help"])
    assert_ok(result)
    assert " ".join(doc.split())[:40] in " ".join(result.output.split())
    click_command = typer.main.get_command(app).commands[name]
    for param in click_command.params:
        assert getattr(param, "help", None), f"{name}: {param.name} has no help text"


def test_usage_errors_exit_2(runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args, complaint in ((["generate", "--no-such-option"], "No such option: --no-such-option"),
                            (["prepare", "x", "--image-size", "4"], "Invalid value for '--image-size'"),
                            (["no-such-command"], "No such command 'no-such-command'")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and complaint in result.output, result.output
    assert list(tmp_path.iterdir()) == []  # nothing was started


# --- prepare -----------------------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """10 good images in a tree, in five formats, with one duplicate, one RGBA and one bad file."""
    root = tmp_path / "faces"
    rng = np.random.default_rng(3)
    layout = ["a.png", "b.jpg", "sub/c.webp", "sub/d.bmp", "sub/e.gif", "sub/deep/f.png", "sub/deep/g.png",
              "h.png", "i.png"]
    for relative in layout:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        image = blob_image(rng, 24, 20)
        image.save(path, **({"lossless": True} if path.suffix == ".webp" else {}))
    rgba = blob_image(rng, 20, 20).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "sub" / "alpha.png")
    (root / "sub" / "deep" / "copy_of_a.png").write_bytes((root / "a.png").read_bytes())
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "notes.txt").write_text("ignored")
    return root


def test_prepare_end_to_end(runner, mixed: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", str(mixed), "--image-size", "16", "-q"])
    assert_ok(result)
    out = tmp_path / "faces.safetensors"
    manifest_file = tmp_path / "faces.manifest.json"
    assert "kept 10, duplicates 1, skipped 1" in result.output
    assert f"wrote {out} and {manifest_file}" in result.output
    assert f"next: animevae train {out}" in result.output
    assert "sub/broken.jpg" in result.output  # the skipped table
    assert "Traceback" not in result.output

    images, hashes = load_prepared(out)
    assert images.shape == (10, 16, 16, 3) and len(hashes) == 10
    manifest = json.loads(manifest_file.read_text())
    assert manifest["image_size"] == 16
    assert [k["path"] for k in manifest["kept"]] == [
        "a.png", "b.jpg", "h.png", "i.png", "sub/alpha.png", "sub/c.webp", "sub/d.bmp", "sub/e.gif",
        "sub/deep/f.png", "sub/deep/g.png"]
    assert manifest["duplicates"] == [{"path": "sub/deep/copy_of_a.png", "duplicate_of": "a.png"}]
    assert [s["path"] for s in manifest["skipped"]] == ["sub/broken.jpg"]
    assert manifest["skipped"][0]["reason"]
    # The half-transparent image was composited on white (every pixel >= 128 before the Lanczos resize);
    # on black every pixel would be <= 128.
    alpha = images[[k["path"] for k in manifest["kept"]].index("sub/alpha.png")]
    assert alpha.min() >= 110
    assert temp_leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "faces.manifest.json", "faces.safetensors"]


def test_prepare_with_out(runner, mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "sets" / "mine.safetensors"
    assert_ok(runner.invoke(app, ["prepare", str(mixed), "--out", str(out), "--image-size", "8", "-q"]))
    assert load_prepared(out)[0].shape == (10, 8, 8, 3)
    assert (tmp_path / "sets" / "mine.manifest.json").is_file()
    assert not (tmp_path / "faces.safetensors").exists()


def test_prepare_errors(runner, tmp_path: Path) -> None:
    assert_cli_error(runner.invoke(app, ["prepare", str(tmp_path / "missing")]), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bad.png").write_bytes(b"x")
    assert_cli_error(runner.invoke(app, ["prepare", str(empty), "-q"]), "no usable images", "PNG/JPEG")
    assert not (tmp_path / "empty.safetensors").exists()


def test_prepare_prints_file_names_verbatim(runner, tmp_path: Path) -> None:
    folder = tmp_path / "faces"
    write_blobs(folder, count=2)
    (folder / "[wip] broken.png").write_bytes(b"not an image")
    result = runner.invoke(app, ["prepare", str(folder), "--image-size", "8", "-q"])
    assert_ok(result)
    assert "[wip] broken.png" in result.output


def test_prepare_out_is_a_folder(runner, tmp_path: Path) -> None:
    folder = tmp_path / "faces"
    write_blobs(folder, count=2)
    (tmp_path / "outdir").mkdir()
    result = runner.invoke(app, ["prepare", str(folder), "--out", str(tmp_path / "outdir"), "-q"])
    assert_cli_error(result, f"error: --out {tmp_path / 'outdir'} is a folder", "hint: pass a file path")
    assert list((tmp_path / "outdir").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces", "outdir"]


# --- train -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_folder_naming_cache_resume_and_refusal(runner, image_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # runs/ by default
    first = runner.invoke(app, ["train", "faces", *TRAIN_FAST])
    assert_ok(first)
    assert "finished: run run, epoch 1, step 3" in first.output
    assert "validation: recon PSNR" in first.output and "denoise PSNR at sigma 25" in first.output
    assert "next: animevae export --onnx --run run" in first.output
    run = tmp_path / "runs" / "run"
    for name in ("config.json", "last.safetensors", "metrics.jsonl", "samples/epoch_0001.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["image_size"] == 16 and config["model"]["latent_dim"] == 8
    assert 16 % 2 ** len(config["model"]["channels"]) == 0
    cached = list((tmp_path / "runs" / ".cache").glob("faces-*.safetensors"))
    assert len(cached) == 1
    cached_bytes = cached[0].read_bytes()

    second = runner.invoke(app, ["train", "faces", *TRAIN_FAST])
    assert_ok(second)
    assert "finished: run run-2" in second.output
    assert "using the prepared copy of faces" in second.output
    assert list((tmp_path / "runs" / ".cache").glob("faces-*.safetensors")) == cached
    assert cached[0].read_bytes() == cached_bytes

    resumed = runner.invoke(app, ["train", "faces", *TRAIN_FAST, "--resume", "--name", "run", "--epochs", "2"])
    assert_ok(resumed)
    assert "resuming run at epoch 2, step 3" in resumed.output
    assert "finished: run run, epoch 2, step 6" in resumed.output
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    assert (run / "samples" / "epoch_0002.png").is_file()

    refused = runner.invoke(app, ["train", "faces", *TRAIN_FAST, "--name", "run"])
    assert_cli_error(refused, "run 'run' already exists", "--resume --name run")
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize("args, message", [
    (["missing-folder"], "does not exist"),
    (["faces", "--image-size", "9"], "must be a multiple"),
    (["faces", "--precision", "fp16"], "unknown precision"),
    (["faces", "--device", "tpu"], "unknown device"),
    (["faces", "--name", "../escape"], "invalid run name"),
    (["faces", "--resume"], "no runs in"),
])
def test_train_errors(runner, image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                      message: str) -> None:
    monkeypatch.chdir(tmp_path)
    # --precision fp32 first (a later --precision wins), so no bf16 timing runs before the error.
    result = runner.invoke(app, ["train", "--precision", "fp32", "--epochs", "1", "-q", *args])
    assert_cli_error(result, message)
    assert not (tmp_path / "runs" / "run").exists()


def test_train_cuda_without_gpu(runner, image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    assert_cli_error(runner.invoke(app, ["train", "faces", "--device", "cuda", "-q"]), "no CUDA GPU", "--device cpu")
    assert not (tmp_path / "runs").exists()


# --- the whole pipeline --------------------------------------------------------------------------


@pytest.mark.slow
def test_prepare_train_export_generate_denoise(runner, image_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_ok(runner.invoke(app, ["prepare", "faces", "--image-size", "16", "-q"]))
    trained = runner.invoke(app, ["train", "faces.safetensors", *TRAIN_FAST])
    assert_ok(trained)
    assert not (tmp_path / "runs" / ".cache").exists()

    exported = runner.invoke(app, ["export", "--onnx"])
    assert_ok(exported)
    assert exported.output.count("max abs difference from PyTorch") == 3  # a mixture run has no prior.onnx

    info = runner.invoke(app, ["info", "--device", "cpu"])
    assert_ok(info)
    assert "model: run 'run'" in info.output
    assert "latent_dim: 8" in info.output and "image_size: 16" in info.output
    assert "--device cpu runs on: CPUExecutionProvider" in info.output
    assert "latents: Gaussian mixture (decoder metadata)" in info.output
    assert re.search(r"the mixture: \d+ components with diagonal covariances", info.output)

    generated = runner.invoke(app, ["generate", "--count", "6", *CPU])
    assert_ok(generated)
    assert "model: run 'run'" in generated.output
    assert "wrote 6 images (0 already there) to synth/" in generated.output
    assert "on CPUExecutionProvider" in generated.output

    denoised = runner.invoke(app, ["denoise", "synth", *CPU])
    assert_ok(denoised)
    assert "wrote 6 images (0 already there)" in denoised.output
    clean = sorted((tmp_path / "synth-denoised").glob("*.png"))
    assert [p.name for p in clean] == [f"{i:06d}.png" for i in range(6)]
    with Image.open(clean[0]) as image:
        assert image.size == (16, 16)


# --- error formatting --------------------------------------------------------------------------


def test_errors_are_two_lines_without_traceback(runner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "--onnx", "--runs-dir", str(tmp_path)])
    assert_cli_error(result)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: no runs in {tmp_path}", "hint: train one first: `animevae train FOLDER`"]


def test_animevae_debug_shows_the_exception(runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from animevae.errors import ModelError

    monkeypatch.setenv("ANIMEVAE_DEBUG", "1")
    result = runner.invoke(app, ["export", "--onnx", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, ModelError)


def test_train_refuses_an_image_size_the_denoiser_cannot_take(runner, image_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", str(image_dir), "--image-size", "10", "--epochs", "1", "--device", "cpu"])
    assert_cli_error(result, "error: image size 10 must be a multiple of 4", "hint: use an image size that is a multiple of 16")
    assert not (tmp_path / "runs").exists()  # refused before anything is prepared or created


@pytest.mark.slow
def test_ctrl_c_prints_a_resume_command_that_finishes_the_run(runner, image_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Protects the README's Ctrl-C promise: the step finishes, a checkpoint is saved, and the printed
    `--resume` command continues the same run to its end."""
    import shlex

    monkeypatch.chdir(tmp_path)
    ctrl_c_after_step(monkeypatch, 1)
    interrupted = runner.invoke(app, ["train", "faces", *TRAIN_FAST])
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert interrupted.exit_code == 130, interrupted.output  # so `train && export` stops
    assert "interrupted; checkpoint saved: run run, epoch 0, step 1" in interrupted.output
    (command,) = [line[len("next: "):] for line in interrupted.output.splitlines() if line.startswith("next: ")]
    assert command == "animevae train faces --resume --name run"
    resumed = runner.invoke(app, [*shlex.split(command)[1:], "-q"])
    assert_ok(resumed)
    assert "finished: run run, epoch 1, step 3" in resumed.output
    assert [r["epoch"] for r in read_jsonl(tmp_path / "runs" / "run" / "metrics.jsonl")] == [1]
