"""Shared fixtures: tiny blob images, a tiny model config, and one trained + exported run per session."""

from __future__ import annotations

import os

# As the CLI does, before torch/onnxruntime load: idle threads sleep instead of spinning (2-core machines).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist each worker is one of as many processes as there are cores: one compute thread each, so
# that workers do not oversubscribe the cores (their subprocesses inherit it).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import MESSY_GOOD, TINY_MODEL, build_corpus, write_blobs, write_labelled


@dataclass(frozen=True)
class TrainedRun:
    """A run trained for one epoch and exported once per session. Tests must not modify it."""

    data_dir: Path
    runs_dir: Path
    run_dir: Path
    export_dir: Path
    steps: int
    max_abs_diff: dict[str, float]


@pytest.fixture(autouse=True)
def _no_debug_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """ANIMEVAE_DEBUG=1 in the caller's shell would turn every error report into a traceback."""
    monkeypatch.delenv("ANIMEVAE_DEBUG", raising=False)


@pytest.fixture
def fsynced_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths animevae.fileio fsyncs during the test, in order (each fsync still runs)."""
    import animevae.fileio as fileio

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", recording_fsync)
    return synced


@pytest.fixture
def runner() -> CliRunner:
    """A Typer CliRunner (stdout and stderr both in result.output)."""
    return CliRunner()


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """tmp_path/faces holding 40 distinct 16x16 PNGs of coloured blobs."""
    folder = tmp_path / "faces"
    write_blobs(folder, count=40)
    return folder


@pytest.fixture
def tiny_model_config():
    """image_size=16, latent_dim=8, channels=(8, 16), denoiser_width=8, denoiser_blocks=1."""
    from animevae.config import ModelConfig

    return ModelConfig(**TINY_MODEL)


@pytest.fixture
def tiny_train_config():
    """One epoch, batches of 16, fp32 (no bf16 measurement), on a fixed seed."""
    from animevae.config import TrainConfig

    return TrainConfig(epochs=1, batch_size=16, seed=0, precision="fp32")


def _session_run(tmp_path_factory: pytest.TempPathFactory, name: str, data: Callable[[Path], Path],
                 prior: str) -> TrainedRun:
    """Train the tiny model (with `prior`) for 1 epoch on `data(folder)` and export it, once per session."""
    from animevae.config import ModelConfig, TrainConfig
    from animevae.training.export import export_run
    from animevae.training.train import train

    # benchmarks/mutation.py runs a fresh session per mutant: it names a folder here so that the run is trained
    # once, unmutated, then restored for each session at the same path (exports record absolute paths).
    cache = Path(os.environ["ANIMEVAE_TEST_RUN_CACHE"]) / name if os.environ.get("ANIMEVAE_TEST_RUN_CACHE") else None
    base = cache / "live" if cache else tmp_path_factory.mktemp(name)
    if cache and (cache / "run.json").is_file():
        shutil.rmtree(base, ignore_errors=True)
        shutil.copytree(cache / "pristine", base)
        stored = json.loads((cache / "run.json").read_text())
        return TrainedRun(**{k: base / v if k.endswith("_dir") else v for k, v in stored.items()})
    if cache:
        shutil.rmtree(base, ignore_errors=True)  # what an interrupted build left
    data_dir = data(base)
    runs_dir = base / "runs"
    result = train(data_dir, ModelConfig(**{**TINY_MODEL, "prior": prior}),
                   TrainConfig(epochs=1, batch_size=16, seed=0, precision="fp32"), runs_dir, device="cpu")
    report = export_run(result.run_dir)
    run = TrainedRun(data_dir, runs_dir, result.run_dir, report.folder, result.progress.step, report.max_abs_diff)
    if cache:
        shutil.copytree(base, cache / "pristine")
        fields = {k: str(v.relative_to(base)) if isinstance(v, Path) else v for k, v in asdict(run).items()}
        (cache / "run.json").write_text(json.dumps(fields))
    return run


def _blob_faces(base: Path) -> Path:
    write_blobs(base / "faces", count=40)
    return base / "faces"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """Train the tiny model for 1 epoch on 40 blob images and export it, once for the whole session."""
    return _session_run(tmp_path_factory, "session_run", _blob_faces, TINY_MODEL["prior"])


@pytest.fixture
def runs_copy(trained_run: TrainedRun, tmp_path: Path) -> Path:
    """A private copy of the session's runs folder (for tests that resume, re-export or delete)."""
    target = tmp_path / "runs"
    shutil.copytree(trained_run.runs_dir, target)
    return target


@pytest.fixture(scope="session")
def onnx_models(trained_run: TrainedRun) -> dict[str, object]:
    """The session run's encoder, decoder, denoiser and latent prior opened on the CPU."""
    from animevae.runtime import open_model

    return {role: open_model(trained_run.export_dir / f"{role}.onnx", role, device="cpu")
            for role in ("encoder", "decoder", "denoiser", "prior")}


@pytest.fixture(scope="session")
def generate_models(onnx_models: dict[str, object]) -> object:
    """The session run's decoder and prior as `generate` takes them (a model_files.ModelSet)."""
    from animevae.model_files import ModelSet

    return ModelSet("session run", decoder=onnx_models["decoder"], prior=onnx_models["prior"])


@pytest.fixture(scope="session")
def labelled_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """The tiny model (mixture prior) trained for 1 epoch on three class folders and exported, once per session."""
    return _session_run(tmp_path_factory, "labelled_run", lambda base: write_labelled(base / "pets"), "mixture")


@pytest.fixture
def denoiser_run(image_dir: Path, tmp_path: Path) -> Path:
    """A run of `train-denoiser` (one step of a denoiser the built-in one does not fit: never judged)."""
    from animevae.config import ModelConfig, TrainConfig
    from animevae.training.denoiser_run import train_denoiser

    model = ModelConfig(image_size=16, denoiser_width=8, denoiser_blocks=1)
    return train_denoiser(image_dir, tmp_path / "runs", "den", model, TrainConfig(steps=1, batch_size=8,
                                                                                  precision="fp32"), "cpu").run_dir


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, set[str], set[str]]:
    """tmp_path/messy: 30 good 16x16 faces plus the corpus of bad and odd files."""
    folder = tmp_path / "messy"
    write_blobs(folder, count=MESSY_GOOD)
    odd, broken = build_corpus(folder)
    yield folder, odd, broken
    (folder / "locked.png").chmod(0o644)
