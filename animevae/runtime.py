"""The only module that imports onnxruntime: provider choice, sessions, batched runs (IO binding on CUDA)."""

from __future__ import annotations

import ctypes
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from animevae import FORMAT_VERSION
from animevae.errors import DeviceError, ModelError
from animevae.shrinkage import RESIDUAL_KNEE_KEY
from animevae.writer import usable_cores

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# ONNX input and output names per role: the file contract of `animevae export`. (ONNX forbids one name for
# both an input and an output, so the denoiser's output is `denoised`.)
CONTRACT = {
    "encoder": (("image",), ("mu", "logvar")),
    "decoder": (("z",), ("image",)),
    "denoiser": (("image",), ("denoised",)),
    "prior": (("noise",), ("z",)),
}
_CUDA_HINT = (
    "install only onnxruntime-gpu (`pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu`), "
    "check `nvidia-smi`, or use --device cpu"
)

# onnxruntime prints a red error for every CUDA library it cannot load; we report the outcome in one line instead.
ort.set_default_logger_severity(4)


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers (not proof that they can run here)."""
    return list(ort.get_available_providers())


def nvidia_driver_present() -> bool:
    """Whether the NVIDIA driver library loads: without it the CUDA provider cannot start, and asking for it
    would only load a few hundred MB of CUDA libraries for nothing."""
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    return True


def choose_providers(device: str, available: list[str], driver: bool = True) -> list[str]:
    """The providers to ask for, in order: auto prefers CUDA, cpu never uses it, cuda insists on it.
    `driver`: whether an NVIDIA driver is present (see nvidia_driver_present)."""
    if device == "cpu":
        return [CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in available and driver else [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise DeviceError(f"--device cuda, but this onnxruntime has no CUDA provider (has: {', '.join(available)})",
                              _CUDA_HINT)
        if not driver:
            raise DeviceError("--device cuda, but no NVIDIA driver (libcuda) was found on this machine", _CUDA_HINT)
        return [CUDA, CPU]
    raise DeviceError(f"unknown device {device!r}", "use one of: auto, cpu, cuda")


def check_ran_as_asked(device: str, asked: list[str], actual: str) -> str | None:
    """Raise if `--device cuda` ended on the CPU; return a fallback note when auto did."""
    if asked[0] == CUDA and actual != CUDA:
        if device == "cuda":
            raise DeviceError("--device cuda, but onnxruntime could not start CUDA and would run on the CPU",
                              _CUDA_HINT)
        return "CUDA provider is installed but could not start (no GPU or CUDA libraries); running on the CPU"
    return None


def default_threads() -> int:
    """onnxruntime intra-op threads: OMP_NUM_THREADS when set, else one per usable core."""
    raw = os.environ.get("OMP_NUM_THREADS", "")
    if re.fullmatch(r"[0-9]{1,4}", raw) and int(raw) > 0:  # ASCII digits: int() refuses "²", isdigit() does not
        return int(raw)
    return usable_cores()


def _preload_cuda_libraries() -> None:
    # onnxruntime-gpu can load the CUDA/cuDNN libraries that torch's nvidia wheels bring; without them a
    # machine with a GPU but no system CUDA would silently fall back to the CPU.
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # noqa: BLE001 - best effort; the session reports what really ran
            pass


@dataclass
class OnnxModel:
    """One ONNX file of ours, opened in an onnxruntime session."""

    path: Path
    role: str
    metadata: dict[str, str]
    session: ort.InferenceSession
    device: str
    fallback_note: str | None = None
    input_name: str = field(init=False)
    output_names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.input_dtype = input_dtype(self.session.get_inputs()[0].type)

    @property
    def latent_dim(self) -> int:
        """Size of the latent vector (an encoder's output, a decoder's input); checked when the file was opened."""
        return int(self.metadata["animevae.latent_dim"])

    @property
    def image_size(self) -> int:
        """Side of the square images an encoder reads and a decoder writes; checked when the file was opened."""
        return int(self.metadata["animevae.image_size"])

    @property
    def residual_knee(self) -> float:
        """A denoiser's gate knee (shrinkage.py; 0-255 scale); 0 (no gate) for a denoiser that carries none."""
        return float(self.metadata.get(RESIDUAL_KNEE_KEY, "0"))

    @property
    def provider(self) -> str:
        """The provider that really runs this session."""
        return self.session.get_providers()[0]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one batch (cast to the model's input type: float32, or float16 for a --half decoder); on CUDA
        through IO binding (one copy in, outputs kept on the device and copied back once)."""
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if self.provider != CUDA:
            return self.session.run(self.output_names, {self.input_name: batch})
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def input_dtype(onnx_type: str) -> type:
    """numpy dtype for an ONNX tensor type string: tensor(float16) -> float16, anything else float32."""
    return np.float16 if onnx_type == "tensor(float16)" else np.float32


def cuda_runs(path: Path) -> bool:
    """Whether onnxruntime really runs `path` on CUDA here (a CUDA provider that is listed may not start)."""
    if CUDA not in available_providers() or not nvidia_driver_present():
        return False
    _preload_cuda_libraries()
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(path), options, providers=[CUDA, CPU])
    except Exception:  # noqa: BLE001 - any failure means: not on CUDA
        return False
    return session.get_providers()[0] == CUDA


def open_model(path: Path, role: str, device: str = "auto", threads: int | None = None) -> OnnxModel:
    """Open `path` as an animevae `role` model; refuse files that are not ours with a clear error."""
    available = available_providers()
    driver = device == "cpu" or CUDA not in available or nvidia_driver_present()
    asked = choose_providers(device, available, driver)
    if CUDA in asked:
        _preload_cuda_libraries()
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = threads or default_threads()
    # Busy-waiting threads steal the cores that PNG encoding and other jobs need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not path.is_file():
        raise ModelError(f"no ONNX file at {path}", "export a run with `animevae export --onnx`")
    refuse_external_data(path)
    try:
        session = ort.InferenceSession(str(path), options, providers=asked)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises several unrelated types for bad files
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ModelError(f"{path} is not a loadable ONNX model ({first})",
                         "it may be truncated or not ONNX at all; export again with `animevae export --onnx`") from None
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    _check_contract(path, role, session, metadata)
    note = check_ran_as_asked(device, asked, session.get_providers()[0])
    if device == "auto" and not driver:
        note = "CUDA provider is installed but no NVIDIA driver was found; running on the CPU"
    return OnnxModel(path, role, metadata, session, device, note)


def refuse_external_data(path: Path) -> None:
    """Refuse a model that keeps any tensor outside the file (external data): onnxruntime would read whatever
    path the file names. Our exports hold every weight inside. Checked before onnxruntime opens the file."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ModelError(f"{path} is not a loadable ONNX model ({first})",
                         "it may be truncated or not ONNX at all; export again with `animevae export --onnx`") from None
    function_nodes = [node for function in model.functions for node in function.node]
    found = _external_tensors(model.graph) + [name for node in function_nodes for name in _external_in_node(node)]
    if found:
        raise ModelError(f"{path} keeps tensors as external data ({', '.join(found[:3])}), which animevae never writes",
                         "use a model written by `animevae export --onnx`, or --model builtin")


def _external_tensors(graph: "onnx.GraphProto") -> list[str]:  # noqa: F821 - onnx is imported lazily
    """Names of the tensors in `graph` (initializers, constants, subgraphs) stored as external data."""
    tensors = [*graph.initializer, *(t for s in graph.sparse_initializer for t in (s.values, s.indices))]
    found = [t.name or "?" for t in tensors if _is_external(t)]
    for node in graph.node:
        found += _external_in_node(node)
    return found


def _external_in_node(node: "onnx.NodeProto") -> list[str]:  # noqa: F821
    found = []
    for attribute in node.attribute:
        tensors = [attribute.t, *attribute.tensors, attribute.sparse_tensor.values, attribute.sparse_tensor.indices,
                   *(t for s in attribute.sparse_tensors for t in (s.values, s.indices))]
        found += [f"{node.name or node.op_type}.{attribute.name}" for t in tensors if _is_external(t)]
        for graph in [attribute.g, *attribute.graphs]:
            found += _external_tensors(graph)
    return found


def _is_external(tensor: "onnx.TensorProto") -> bool:  # noqa: F821
    return tensor.data_location == 1 or len(tensor.external_data) > 0  # TensorProto.EXTERNAL


def _check_metadata(path: Path, role: str, metadata: dict[str, str]) -> None:
    """The numbers every command reads from a file's metadata must parse; one clear error if not. (A decoder's
    mixture and classes are checked where they are read: model_info.read_model_info.)"""
    keys = ("animevae.image_size", "animevae.latent_dim") if role in ("encoder", "decoder") else ()
    for key in keys:
        if not re.fullmatch(r"[0-9]{1,6}", metadata.get(key, "")) or int(metadata[key]) < 1:
            raise ModelError(f"{path} has a malformed {key.split('.')[1]} in its metadata ({metadata.get(key, '')[:20]!r})",
                             "export the model again with `animevae export --onnx`")
    if role == "denoiser" and RESIDUAL_KNEE_KEY in metadata:
        try:
            knee = float(metadata[RESIDUAL_KNEE_KEY])
        except ValueError:
            knee = math.nan
        if not (math.isfinite(knee) and knee >= 0):  # NaN would turn every output pixel into NaN
            raise ModelError(f"{path} has a malformed residual_knee in its metadata "
                             f"({metadata[RESIDUAL_KNEE_KEY][:20]!r}; a number >= 0 expected)",
                             "export the model again with `animevae export --onnx`")


def _check_contract(path: Path, role: str, session: ort.InferenceSession, metadata: dict[str, str]) -> None:
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = tuple(o.name for o in session.get_outputs())
    if metadata.get("animevae.role") != role or (inputs, outputs) != CONTRACT[role]:
        raise ModelError(
            f"{path} is not an animevae {role} (inputs {list(inputs)}, outputs {list(outputs)})",
            f"use a {role}.onnx written by `animevae export --onnx`, or --model builtin",
        )
    version = metadata.get("animevae.format_version", "0")
    if not re.fullmatch(r"[0-9]{1,9}", version):
        raise ModelError(f"{path} has a malformed format version in its metadata ({version[:20]!r})",
                         "export the model again with `animevae export --onnx`")
    if int(version) > FORMAT_VERSION:
        raise ModelError(f"{path} was written by a newer animevae (format {version})", "upgrade animevae")
    _check_metadata(path, role, metadata)
