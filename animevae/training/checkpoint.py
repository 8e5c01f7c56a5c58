"""Checkpoints as safetensors: weights, optimiser state, progress and RNG state. Nothing is ever unpickled."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from animevae import FORMAT_VERSION
from animevae.config import RunConfig
from animevae.errors import ModelError
from animevae.fileio import atomic_path

CHECKPOINT_KIND = "animevae-checkpoint"
# The layout of the checkpoint's own records (progress, budget): any other is refused with its number.
CHECKPOINT_VERSION = 2
# Progress.extra flag: the diffusion prior has had its training phase (train.py sets it, export reads it).
PRIOR_TRAINED = "prior_trained"
# The training split's content-hash keys (data.hash_keys), for evaluate's check that it scores unseen images.
TRAIN_KEYS = "data.train_hash_keys"


@dataclass
class Progress:
    """Where training stands: the next batch to run is `batch` of `epoch`."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_val_psnr: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: Path,
    config: RunConfig,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    progress: Progress,
    rng_state: torch.Tensor,
    budget: dict[str, Any],
    train_keys: torch.Tensor | None = None,
) -> None:
    """Write everything needed to resume, atomically (a kill during the save keeps the old file): the
    `budget` record (budget.Budget.record) and the (N,) content-hash keys of the images trained on
    (data.hash_keys), where the set has hashes."""
    tensors: dict[str, torch.Tensor] = {} if train_keys is None else {TRAIN_KEYS: train_keys.cpu().contiguous()}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
    groups: dict[str, Any] = {}
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        groups[name] = state["param_groups"]
        for index, slots in state["state"].items():
            for slot, value in slots.items():
                tensors[f"optim.{name}.{index}.{slot}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = rng_state.cpu()
    metadata = {
        "kind": CHECKPOINT_KIND,
        "format_version": str(FORMAT_VERSION),
        "checkpoint_version": str(CHECKPOINT_VERSION),
        "config": config.to_json(),
        "progress": json.dumps(asdict(progress)),
        "budget": json.dumps(budget),
        "param_groups": json.dumps(groups),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


@dataclass
class Checkpoint:
    """A loaded checkpoint, still as plain tensors."""

    config: RunConfig
    progress: Progress
    tensors: dict[str, torch.Tensor]
    param_groups: dict[str, Any]
    budget: dict[str, Any] = field(default_factory=dict)

    def module_state(self, name: str) -> dict[str, torch.Tensor]:
        """The state dict saved for module `name`."""
        prefix = f"{name}."
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def optimizer_state(self, name: str) -> dict[str, Any]:
        """The optimiser state dict saved under `name`, ready for `load_state_dict`."""
        prefix = f"optim.{name}."
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in self.tensors.items():
            if key.startswith(prefix):
                index, slot = key[len(prefix) :].split(".", 1)
                state.setdefault(int(index), {})[slot] = value
        return {"state": state, "param_groups": self.param_groups[name]}


def read_train_keys(path: Path) -> torch.Tensor | None:
    """The (N,) content-hash keys of the images a checkpoint's run trained on; None for a set without hashes."""
    _read(path, with_tensors=False)  # the same checks and errors as a full load
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(TRAIN_KEYS) if TRAIN_KEYS in handle.keys() else None


def read_config(path: Path) -> RunConfig:
    """Read only the run config from a checkpoint's header."""
    return _read(path, with_tensors=False).config


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint written by `save_checkpoint`; refuse anything else with a clear error."""
    return _read(path, with_tensors=True)


def _read(path: Path, with_tensors: bool) -> Checkpoint:
    if not path.is_file():
        raise ModelError(f"no checkpoint at {path}", "train a run first: `animevae train FOLDER`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("kind") != CHECKPOINT_KIND:
            raise ModelError(f"{path} is not an animevae checkpoint", "point at runs/NAME/last.safetensors")
        if int(metadata.get("format_version", "0")) > FORMAT_VERSION:
            raise ModelError(f"{path} was written by a newer animevae", "upgrade animevae")
        version = int(metadata.get("checkpoint_version", "1"))
        if version != CHECKPOINT_VERSION:
            newer = version > CHECKPOINT_VERSION
            raise ModelError(f"{path} has checkpoint format {version}; this animevae reads format {CHECKPOINT_VERSION}",
                             "upgrade animevae" if newer else "it was written by an older animevae: start a new run")
        config = RunConfig.from_dict(json.loads(metadata["config"]))
        progress = Progress(**json.loads(metadata["progress"]))
        groups = json.loads(metadata["param_groups"])
        budget = json.loads(metadata["budget"])
        tensors = load_file(str(path)) if with_tensors else {}
    except ModelError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"cannot read checkpoint {path}: {error}", "it may be truncated; train again") from None
    return Checkpoint(config=config, progress=progress, tensors=tensors, param_groups=groups, budget=budget)
