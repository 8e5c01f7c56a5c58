"""The built-in denoiser (animevae/builtin/denoiser.onnx) as a run's starting point and as the reference its own
denoiser must beat (denoiser_judge.py). Its weights are read back from the ONNX file's initializers, which carry
the state_dict names (`conv_in.weight`, ...), and its gate's knee from the file's metadata."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from onnx import load_model, numpy_helper

from animevae.config import ModelConfig
from animevae.errors import ModelError
from animevae.model_files import BUILTIN_DIR
from animevae.shrinkage import RESIDUAL_KNEE_KEY
from animevae.training.model import Denoiser

BUILTIN_DENOISER = BUILTIN_DIR / "denoiser.onnx"
BUILTIN, SCRATCH = "builtin", "scratch"
# A fine-tune's peak learning rate as a share of a from-scratch run's: at the full peak the first steps, on fresh
# Adam moments, undo much of what the built-in weights learnt, where a tenth of it still adapts them to other
# faces as far in a short run (docs/results.md).
FINE_TUNE_LR_SCALE = 0.1


@dataclass(frozen=True)
class DenoiserStart:
    """Where a run's denoiser starts (BUILTIN or SCRATCH) and the line that says why, for the log."""

    start: str
    note: str


@functools.lru_cache(maxsize=4)
def _read_onnx_state(path: Path, mtime_ns: int) -> dict[str, torch.Tensor]:
    try:
        proto = load_model(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - onnx raises its own and protobuf's errors: one message for all
        raise ModelError(f"cannot read {path}: {error}".splitlines()[0], "reinstall animevae") from None
    state = {tensor.name: torch.from_numpy(numpy_helper.to_array(tensor).copy()) for tensor in proto.graph.initializer}
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    state["knee"] = torch.tensor(float(metadata.get(RESIDUAL_KNEE_KEY, "0")))
    return state


def read_denoiser_onnx(path: Path) -> dict[str, torch.Tensor]:
    """Every initializer of an exported denoiser.onnx by name (the module's parameters under their state_dict
    names, beside the graph's own constants), and its gate's knee as `knee`. Read once per file version."""
    return dict(_read_onnx_state(path, path.stat().st_mtime_ns))


def builtin_state(config: ModelConfig, path: Path | None = None) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The state dict (knee included) of the built-in denoiser (or the one at `path`) when every tensor of
    `config`'s denoiser has its name and shape there, else None and why not."""
    path = path or BUILTIN_DENOISER
    if not path.is_file():
        return None, "this installation has no built-in denoiser"
    state, expected = read_denoiser_onnx(path), Denoiser(config).state_dict()
    for key, value in expected.items():
        if key not in state or state[key].shape != value.shape:
            found = "missing" if key not in state else tuple(state[key].shape)
            return None, (f"{key} is {found} there and {tuple(value.shape)} in this run's denoiser (width "
                          f"{config.denoiser_width}, blocks {config.denoiser_blocks})")
    return {key: state[key] for key in expected}, ""


def plan_start(config: ModelConfig, from_scratch: bool) -> DenoiserStart:
    """Where a new run's denoiser starts: from the built-in weights unless `from_scratch` or they do not fit."""
    if from_scratch:
        return DenoiserStart(SCRATCH, "the denoiser starts from scratch, as asked")
    state, why = builtin_state(config)
    if state is None:
        return DenoiserStart(SCRATCH, f"the denoiser starts from scratch, since the built-in one does not fit: {why}")
    return DenoiserStart(BUILTIN, f"the denoiser starts from the built-in one (knee "
                                  f"{float(state['knee']):g}) and fine-tunes it")

