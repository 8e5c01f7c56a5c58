"""The inference commands run through onnxruntime alone: with `import torch` made to fail, they still work.

The README promises that torch is never imported on these paths; the light install (no torch) depends on it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import environ_without_debug, write_blobs

# Loaded at interpreter start (and in every worker process) from PYTHONPATH: any import of torch fails, and
# the attempt is logged so that one caught and ignored by an `except ImportError` is still seen.
_BLOCKER = '''
import os, sys


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            with open(os.environ["NO_TORCH_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ImportError(f"{name} is blocked: the inference path must not import torch")
        return None


sys.meta_path.insert(0, _NoTorch())
'''


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose Python processes cannot import torch."""
    folder = tmp_path_factory.mktemp("no_torch")
    (folder / "sitecustomize.py").write_text(_BLOCKER)
    env = environ_without_debug()
    env["PYTHONPATH"] = str(folder) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["NO_TORCH_LOG"] = str(folder / "torch-imports.log")
    return env


def _run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "animevae", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)


def test_the_blocker_really_blocks_torch(no_torch_env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "torch is blocked" in done.stderr
    Path(no_torch_env["NO_TORCH_LOG"]).unlink()


@pytest.mark.slow
def test_inference_commands_never_import_torch(no_torch_env: dict[str, str], trained_run, tmp_path: Path) -> None:
    model = str(trained_run.export_dir)
    cpu = ["--model", model, "--device", "cpu"]
    write_blobs(tmp_path / "faces", count=3)
    commands = [
        ["info", *cpu],
        ["prepare", "faces", "--out", "faces.safetensors", "-q"],
        ["generate", "--count", "5", "--out", "synth", "--grid", "grid.png", *cpu, "-q"],
        ["denoise", "faces", "--out", "clean", *cpu, "-q"],
        ["augment", "faces", "--per-image", "2", "--out", "aug", *cpu, "-q"],
        ["interpolate", "--seed-a", "1", "--seed-b", "2", "--steps", "3", "--out", "walk.png", *cpu],
        ["traverse", "--components", "2", "--steps", "3", "--out", "trav.png", *cpu],
    ]
    for command in commands:
        done = _run(no_torch_env, tmp_path, *command)
        assert done.returncode == 0, f"{command[0]}: {done.stderr[-3000:]}"
    assert len(list((tmp_path / "synth").glob("*.png"))) == 5
    assert len(list((tmp_path / "clean").glob("*.png"))) == 3
    assert len(list((tmp_path / "aug").glob("*.png"))) == 6
    assert all((tmp_path / name).is_file() for name in ("grid.png", "walk.png", "trav.png", "faces.safetensors"))
    log = Path(no_torch_env["NO_TORCH_LOG"])
    assert not log.exists(), f"torch import attempted: {log.read_text()}"


def test_training_commands_without_torch_say_what_to_install(no_torch_env: dict[str, str], tmp_path: Path) -> None:
    env = {**no_torch_env, "NO_TORCH_LOG": str(tmp_path / "attempts.log")}  # attempts expected here: keep them apart
    write_blobs(tmp_path / "faces", count=3)
    for command in (["train", "faces", "--max-minutes", "0.1"], ["export", "--onnx"], ["evaluate", "faces"]):
        done = _run(env, tmp_path, *command)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1, f"{command[0]}: {done.stderr[-2000:]}"
        assert lines[-2].startswith("error: this command needs torch") and "Traceback" not in done.stderr
        assert lines[-1] == 'hint: pip install "animevae[train]" (torch, torchvision, onnxscript), then run it again'
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.slow
def test_generating_by_class_never_imports_torch(no_torch_env: dict[str, str], labelled_run, tmp_path: Path) -> None:
    cpu = ["--model", str(labelled_run.export_dir), "--device", "cpu"]
    for command in (["info", *cpu], ["generate", "--balance", "--out", "tree", *cpu, "-q"],
                    ["prepare", str(labelled_run.data_dir), "--out", "pets.safetensors", "-q"]):
        done = _run(no_torch_env, tmp_path, *command)
        assert done.returncode == 0, f"{command[0]}: {done.stderr[-3000:]}"
    assert len(list((tmp_path / "tree" / "rare").glob("*.png"))) == 12 and (tmp_path / "tree" / "metadata.jsonl").is_file()
    assert not Path(no_torch_env["NO_TORCH_LOG"]).exists()
