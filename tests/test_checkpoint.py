"""animevae.training.checkpoint: safetensors checkpoints (weights, optimiser state, progress), never pickle."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from animevae import FORMAT_VERSION
from animevae.training.checkpoint import CHECKPOINT_KIND, Progress, load_checkpoint, read_config, save_checkpoint
from animevae.config import ModelConfig, RunConfig, TrainConfig
from animevae.errors import ModelError
from animevae.training.model import VAE, Denoiser, VAELoss
from helpers import evil_object, evil_pickle, temp_leftovers


BUDGET = {"elapsed_s": 3.5, "steps_s": 3.0, "end_cost_s": 0.25, "final_fit_extra_s": 1.0, "finished_under": None}


def _trained_state(config: ModelConfig) -> tuple[RunConfig, dict, dict]:
    torch.manual_seed(0)
    vae, denoiser = VAE(config), Denoiser(config)
    opt_vae = torch.optim.Adam(vae.parameters(), lr=1e-3)
    opt_den = torch.optim.Adam(denoiser.parameters(), lr=5e-4)
    batch = torch.rand(4, 3, 16, 16)
    recon, posterior = vae(batch)
    VAELoss()(batch, recon, posterior)[0].backward()
    opt_vae.step()
    torch.nn.functional.mse_loss(denoiser(batch), batch).backward()
    opt_den.step()
    run_config = RunConfig(name="ckpt", model=config, train=TrainConfig(epochs=2, precision="fp32"), created=1.0,
                           version="test", format_version=FORMAT_VERSION)
    return run_config, {"vae": vae, "denoiser": denoiser}, {"vae": opt_vae, "denoiser": opt_den}


@pytest.fixture(autouse=True)
def _own_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test in its own working folder: a relative path that a broken save writes to must not be there for
    a later load to find (under mutmut, a file named "None" did just that)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def saved(tmp_path: Path, tiny_model_config: ModelConfig):
    run_config, modules, optimizers = _trained_state(tiny_model_config)
    path = tmp_path / "run" / "last.safetensors"
    progress = Progress(epoch=1, batch=2, step=7, extra={"note": "x"})
    rng = torch.Generator().manual_seed(42).get_state()
    save_checkpoint(path, run_config, modules, optimizers, progress, rng, BUDGET)
    return path, run_config, modules, optimizers, progress, rng


def test_round_trip_restores_weights_optimisers_and_progress(saved, tiny_model_config: ModelConfig) -> None:
    path, run_config, modules, optimizers, progress, rng = saved
    checkpoint = load_checkpoint(path)
    assert checkpoint.config == run_config
    assert checkpoint.progress == progress
    assert checkpoint.budget == BUDGET
    assert torch.equal(checkpoint.tensors["rng.torch"], rng)

    vae, denoiser = VAE(tiny_model_config), Denoiser(tiny_model_config)
    vae.load_state_dict(checkpoint.module_state("vae"))
    denoiser.load_state_dict(checkpoint.module_state("denoiser"))
    for name, module in (("vae", vae), ("denoiser", denoiser)):
        original = modules[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, original[key]), f"{name}.{key}"

    opt = torch.optim.Adam(vae.parameters(), lr=1.0)
    opt.load_state_dict(checkpoint.optimizer_state("vae"))
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    original_state = optimizers["vae"].state_dict()["state"]
    restored_state = opt.state_dict()["state"]
    assert restored_state.keys() == original_state.keys()
    for index, slots in original_state.items():
        for slot, value in slots.items():
            assert torch.equal(torch.as_tensor(restored_state[index][slot]), torch.as_tensor(value))


def test_read_config_reads_only_the_header(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.training.checkpoint as checkpoint_module

    path, run_config, *_ = saved

    def no_tensors(*args, **kwargs):
        raise AssertionError("read_config loaded the weights")  # a large run's weights: seconds and memory

    monkeypatch.setattr(checkpoint_module, "load_file", no_tensors)
    assert read_config(path) == run_config


def test_a_checkpoint_creates_its_folders_and_reaches_the_disk(tmp_path: Path, tiny_model_config: ModelConfig,
                                                              fsynced_paths: list[str]) -> None:
    """fsync before the rename: after a power cut the checkpoint is the old one or the new one, never empty."""
    run_config, modules, optimizers = _trained_state(tiny_model_config)
    path = tmp_path / "runs" / "new" / "last.safetensors"
    save_checkpoint(path, run_config, modules, optimizers, Progress(step=3), torch.Generator().get_state(),
                    BUDGET)
    assert load_checkpoint(path).progress.step == 3
    assert any(Path(p).name.startswith(".last.safetensors") for p in fsynced_paths)


def test_checkpoint_is_a_plain_safetensors_file(saved) -> None:
    path = saved[0]
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    assert header["__metadata__"]["kind"] == CHECKPOINT_KIND
    assert header["__metadata__"]["format_version"] == str(FORMAT_VERSION)
    assert all(entry["dtype"] for key, entry in header.items() if key != "__metadata__")
    assert temp_leftovers(path.parent) == []


def test_loading_never_unpickles(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading a checkpoint")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    assert load_checkpoint(saved[0]).progress.step == 7


def test_session_run_checkpoint_loads(trained_run, tiny_model_config: ModelConfig) -> None:
    checkpoint = load_checkpoint(trained_run.run_dir / "last.safetensors")
    assert checkpoint.config.model == tiny_model_config
    assert checkpoint.config.name == "run"
    assert checkpoint.progress.epoch == 1 and checkpoint.progress.batch == 0
    assert checkpoint.progress.step == trained_run.steps > 0


def test_pickle_checkpoint_is_refused_without_running_it(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    pickle.loads(evil_pickle(probe))
    assert probe.exists(), "the payload must be live for this test to mean anything"

    marker = tmp_path / "pwned"
    path = tmp_path / "last.safetensors"
    path.write_bytes(evil_pickle(marker))
    with pytest.raises(ModelError, match="cannot read checkpoint") as caught:
        load_checkpoint(path)
    assert caught.value.hint
    assert not marker.exists()

    torch_file = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, torch_file)
    with pytest.raises(ModelError):
        load_checkpoint(torch_file)


def test_non_checkpoint_files_are_refused(tmp_path: Path, saved) -> None:
    from safetensors.torch import save_file

    with pytest.raises(ModelError, match="no checkpoint at") as caught:
        load_checkpoint(tmp_path / "missing.safetensors")
    assert "animevae train" in caught.value.hint

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"kind": "not-ours"})
    with pytest.raises(ModelError, match="is not an animevae checkpoint") as caught:
        load_checkpoint(other)
    assert caught.value.hint

    no_metadata = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(no_metadata))
    with pytest.raises(ModelError, match="is not an animevae checkpoint"):
        load_checkpoint(no_metadata)

    newer = tmp_path / "newer.safetensors"
    save_file({"w": torch.zeros(2)}, str(newer), metadata={"kind": CHECKPOINT_KIND, "format_version": str(FORMAT_VERSION + 1)})
    with pytest.raises(ModelError, match="newer animevae") as caught:
        load_checkpoint(newer)
    assert caught.value.hint

    # A checkpoint of an older layout (no budget record) says so, instead of failing on a missing key.
    older = tmp_path / "older.safetensors"
    header = {k: v for k, v in json.loads(_header(saved[0]))["__metadata__"].items()
              if k not in ("checkpoint_version", "budget")}
    save_file({"w": torch.zeros(2)}, str(older), metadata=header)
    with pytest.raises(ModelError, match="checkpoint format 1") as caught:
        load_checkpoint(older)
    assert "start a new run" in caught.value.hint
    with pytest.raises(ModelError, match="checkpoint format 1"):
        read_config(older)

    truncated = tmp_path / "truncated.safetensors"
    data = saved[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cannot read checkpoint") as caught:
        load_checkpoint(truncated)
    assert "truncated" in caught.value.hint


def _header(path: Path) -> str:
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    return data[8 : 8 + header_len].decode()


def test_failed_save_keeps_the_previous_checkpoint(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.training.checkpoint as checkpoint_module

    path, run_config, modules, optimizers, _, rng = saved
    before = path.read_bytes()

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(before[:100])
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, run_config, modules, optimizers, Progress(step=99), rng, BUDGET)
    assert path.read_bytes() == before
    assert temp_leftovers(path.parent) == []
    assert load_checkpoint(path).progress.step == 7


@pytest.mark.parametrize("name", ["last.pt", "last.pth", "last.bin", "model.ckpt"])
@pytest.mark.parametrize("fmt", ["torch.save", "raw pickle"])
def test_a_hostile_file_is_refused_without_running_it_whatever_its_name(tmp_path: Path, name: str, fmt: str) -> None:
    """Protects "checkpoints load without pickle": no fallback to torch.load(weights_only=False) or pickle for
    .pt/.bin files, whether they hold torch's zip format or bare pickle bytes."""
    marker = tmp_path / "pwned"
    path = tmp_path / name
    if fmt == "torch.save":
        probe = tmp_path / "probe"
        torch.save({"state": evil_object(probe)}, path)
        torch.load(path, weights_only=False)
        assert probe.exists(), "the payload must be live for this test to mean anything"
        torch.save({"state": evil_object(marker)}, path)
    else:
        path.write_bytes(evil_pickle(marker))
    with pytest.raises(ModelError, match="cannot read checkpoint|is not an animevae checkpoint") as caught:
        load_checkpoint(path)
    assert caught.value.hint
    with pytest.raises(ModelError):
        read_config(path)
    assert not marker.exists()
