"""animevae.runtime: execution-provider choice, opening ONNX files, refusing files that are not ours."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import animevae.runtime as runtime
from animevae.cli import app
from animevae.errors import DeviceError, ModelError
from animevae.runtime import CPU, CUDA, check_ran_as_asked, choose_providers, default_threads, open_model
from helpers import CPU as CPU_FLAGS, assert_cli_error, evil_pickle

TRT = "TensorrtExecutionProvider"


# --- provider choice (pure logic, fake provider lists) ------------------------------------------


@pytest.mark.parametrize("available, expected", [
    ([TRT, CUDA, CPU], [CUDA, CPU]),
    ([CUDA, CPU], [CUDA, CPU]),
    ([CPU], [CPU]),
])
def test_auto_prefers_cuda_when_listed(available: list[str], expected: list[str]) -> None:
    assert choose_providers("auto", available) == expected


@pytest.mark.parametrize("available", [[CUDA, CPU], [CPU]])
def test_cpu_never_asks_for_cuda(available: list[str]) -> None:
    assert choose_providers("cpu", available) == [CPU]


def test_cuda_insists_on_cuda() -> None:
    assert choose_providers("cuda", [TRT, CUDA, CPU]) == [CUDA, CPU]
    with pytest.raises(DeviceError, match="no CUDA provider \\(has: CPUExecutionProvider\\)") as caught:
        choose_providers("cuda", [CPU])
    assert "onnxruntime-gpu" in caught.value.hint and "--device cpu" in caught.value.hint


def test_unknown_device_is_refused() -> None:
    with pytest.raises(DeviceError, match="unknown device 'gpu'") as caught:
        choose_providers("gpu", [CPU])
    assert "auto, cpu, cuda" in caught.value.hint


def test_check_ran_as_asked() -> None:
    assert check_ran_as_asked("cpu", [CPU], CPU) is None
    assert check_ran_as_asked("auto", [CPU], CPU) is None
    assert check_ran_as_asked("auto", [CUDA, CPU], CUDA) is None
    assert check_ran_as_asked("cuda", [CUDA, CPU], CUDA) is None
    note = check_ran_as_asked("auto", [CUDA, CPU], CPU)
    assert note is not None and "running on the CPU" in note
    with pytest.raises(DeviceError, match="could not start CUDA") as caught:
        check_ran_as_asked("cuda", [CUDA, CPU], CPU)
    assert caught.value.hint


def test_default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread, asked for on a shared machine, is one thread
    assert default_threads() == 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for ignored in ("zero", "0", "-2", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", ignored)
        assert default_threads() == usable
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == usable


@pytest.mark.parametrize("threads, expected", [(None, "default"), (3, 3)])
def test_sessions_never_busy_wait_and_use_the_asked_threads(trained_run, monkeypatch: pytest.MonkeyPatch,
                                                            threads: int | None, expected: object) -> None:
    """Protects the README's "does not busy-wait": spinning onnxruntime threads would steal the cores that
    PNG encoding needs on small machines. The thread count is the caller's, else default_threads()."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    opened = open_model(trained_run.export_dir / "decoder.onnx", "decoder", device="cpu", threads=threads)
    options = opened.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == (2 if expected == "default" else expected)


def test_the_cli_makes_openmp_threads_sleep_when_idle() -> None:
    """Protects the other half of no busy-waiting: OMP_WAIT_POLICY=PASSIVE is set before torch or onnxruntime
    load (libgomp spins by default)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", "import os, animevae.cli; print(os.environ['OMP_WAIT_POLICY'])"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "PASSIVE", done.stderr


# --- opening real files ------------------------------------------------------------------------


@pytest.fixture
def cuda_listed_but_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu on a machine with a driver where CUDA still cannot start (say, no cuDNN): CUDA is
    listed, sessions end on the CPU."""
    real_session = runtime.ort.InferenceSession

    def cpu_only_session(path, options=None, providers=None):
        return real_session(path, options, providers=[CPU])

    monkeypatch.setattr(runtime, "available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(runtime, "_preload_cuda_libraries", lambda: None)
    monkeypatch.setattr(runtime, "nvidia_driver_present", lambda: True)
    monkeypatch.setattr(runtime.ort, "InferenceSession", cpu_only_session)


def test_open_model_on_cpu(trained_run) -> None:
    opened = open_model(trained_run.export_dir / "decoder.onnx", "decoder", device="cpu", threads=1)
    assert opened.provider == CPU
    assert opened.fallback_note is None
    assert opened.input_name == "z" and opened.output_names == ["image"]
    assert opened.metadata["animevae.role"] == "decoder"
    z = np.random.default_rng(0).standard_normal((2, 8))
    (images,) = opened.run(z)  # float64, cast to float32 on the way in
    assert images.shape == (2, 3, 16, 16) and images.dtype == np.float32
    import torch

    from animevae.training.export import load_run_models

    _, vae, _ = load_run_models(trained_run.run_dir)
    with torch.no_grad():
        expected = vae.decoder(torch.from_numpy(z.astype(np.float32))).numpy()
    np.testing.assert_allclose(images, expected, atol=1e-4)  # the same function as the PyTorch decoder


def test_auto_falls_back_to_cpu_with_a_note(trained_run, cuda_listed_but_broken) -> None:
    opened = open_model(trained_run.export_dir / "decoder.onnx", "decoder", device="auto")
    assert opened.provider == CPU
    assert opened.fallback_note and "could not start" in opened.fallback_note


def test_cuda_that_falls_back_to_cpu_is_an_error(trained_run, cuda_listed_but_broken) -> None:
    with pytest.raises(DeviceError, match="could not start CUDA"):
        open_model(trained_run.export_dir / "decoder.onnx", "decoder", device="cuda")


def test_cuda_without_the_provider_is_an_error(trained_run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "available_providers", lambda: [CPU])
    with pytest.raises(DeviceError, match="no CUDA provider"):
        open_model(trained_run.export_dir / "decoder.onnx", "decoder", device="cuda")


def test_auto_on_this_machine_reports_what_ran(trained_run) -> None:
    opened = open_model(trained_run.export_dir / "decoder.onnx", "decoder", device="auto")
    if opened.provider == CUDA:
        assert opened.fallback_note is None
    elif CUDA in runtime.available_providers():
        assert opened.fallback_note is not None  # CUDA was asked for and did not start
    else:
        assert opened.fallback_note is None


# --- refusing files that are not ours -----------------------------------------------------------


def _foreign_onnx(path: Path, input_name: str = "x", output_name: str = "y",
                  metadata: dict[str, str] | None = None) -> Path:
    node = helper.make_node("Identity", [input_name], [output_name])
    graph = helper.make_graph(
        [node], "foreign",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _outside(name: str) -> TensorProto:
    """A tensor whose bytes onnxruntime would read from a file the model names."""
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [2], [0.0, 0.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/passwd")
    return tensor


def _sparse(name: str) -> onnx.SparseTensorProto:
    indices = helper.make_tensor(f"{name}_i", TensorProto.INT64, [2], [0, 1])
    return helper.make_sparse_tensor(_outside(name), indices, [4])


def _hide(where: str, graph: onnx.GraphProto, model: onnx.ModelProto) -> None:
    """Put one external tensor in one of the places an ONNX file can hold tensors."""
    inner = helper.make_graph([], "inner", [], [], initializer=[_outside("deep")])
    hidden = {
        "initializer": lambda: graph.initializer.append(_outside("w")),
        "sparse initializer": lambda: graph.sparse_initializer.append(_sparse("s")),
        "attribute": lambda: graph.node.append(helper.make_node("Constant", [], ["c"], value=_outside("c"))),
        "attribute list": lambda: graph.node.append(helper.make_node("Custom", [], [], ts=[_outside("t")])),
        "sparse attribute": lambda: graph.node.append(helper.make_node("Constant", [], ["c"], sparse_value=_sparse("c"))),
        "sparse attribute list": lambda: graph.node.append(helper.make_node("Custom", [], [], ss=[_sparse("t")])),
        "subgraph": lambda: graph.node.append(helper.make_node("Custom", [], [], g=inner)),
        "subgraph list": lambda: graph.node.append(helper.make_node("Custom", [], [], gs=[inner])),
        "function": lambda: model.functions.append(helper.make_function(
            "custom", "f", [], ["c"], [helper.make_node("Constant", [], ["c"], value=_outside("c"))],
            [helper.make_opsetid("", 18)])),
    }
    hidden[where]()


@pytest.mark.parametrize("where", ["initializer", "sparse initializer", "attribute", "attribute list",
                                   "sparse attribute", "sparse attribute list", "subgraph", "subgraph list", "function"])
def test_external_data_is_found_wherever_a_tensor_can_hide(tmp_path: Path, where: str) -> None:
    """Protects "onnxruntime never reads a path a model names": refuse_external_data must look in every place
    a tensor can live, not only the initializers of the main graph."""
    from animevae.runtime import refuse_external_data

    model = onnx.load(str(_foreign_onnx(tmp_path / "plain.onnx")))
    refuse_external_data(tmp_path / "plain.onnx")  # nothing outside: accepted
    _hide(where, model.graph, model)
    onnx.save_model(model, str(tmp_path / "hostile.onnx"))
    with pytest.raises(ModelError, match="external data") as caught:
        refuse_external_data(tmp_path / "hostile.onnx")
    assert caught.value.hint


def test_input_types_follow_the_models_input() -> None:
    from animevae.runtime import input_dtype

    assert input_dtype("tensor(float16)") is np.float16  # a --half decoder
    assert input_dtype("tensor(float)") is np.float32


def test_foreign_onnx_is_refused(tmp_path: Path) -> None:
    path = _foreign_onnx(tmp_path / "foreign.onnx")
    with pytest.raises(ModelError, match=r"is not an animevae decoder \(inputs \['x'\], outputs \['y'\]\)") as caught:
        open_model(path, "decoder", device="cpu")
    assert "animevae export --onnx" in caught.value.hint


def test_foreign_onnx_with_our_role_but_other_names_is_refused(tmp_path: Path) -> None:
    path = _foreign_onnx(tmp_path / "sneaky.onnx", "latent", "pixels", {"animevae.role": "decoder"})
    with pytest.raises(ModelError, match="is not an animevae decoder"):
        open_model(path, "decoder", device="cpu")


def test_our_names_without_our_role_are_refused(tmp_path: Path) -> None:
    path = _foreign_onnx(tmp_path / "named.onnx", "z", "image")
    with pytest.raises(ModelError, match="is not an animevae decoder"):
        open_model(path, "decoder", device="cpu")


def test_a_model_of_another_role_is_refused(trained_run) -> None:
    with pytest.raises(ModelError, match="is not an animevae denoiser"):
        open_model(trained_run.export_dir / "decoder.onnx", "denoiser", device="cpu")
    with pytest.raises(ModelError, match="is not an animevae decoder"):
        open_model(trained_run.export_dir / "encoder.onnx", "decoder", device="cpu")


def test_truncated_onnx_is_refused(trained_run, tmp_path: Path) -> None:
    data = (trained_run.export_dir / "decoder.onnx").read_bytes()
    path = tmp_path / "decoder.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="is not a loadable ONNX model") as caught:
        open_model(path, "decoder", device="cpu")
    assert "truncated" in caught.value.hint


def test_empty_and_missing_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError):
        open_model(empty, "decoder", device="cpu")
    with pytest.raises(ModelError, match="no ONNX file at") as caught:
        open_model(tmp_path / "missing.onnx", "decoder", device="cpu")
    assert "animevae export --onnx" in caught.value.hint


def test_pickle_file_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "decoder.onnx"
    path.write_bytes(evil_pickle(marker))
    with pytest.raises(ModelError, match="is not a loadable ONNX model"):
        open_model(path, "decoder", device="cpu")
    assert not marker.exists()


def test_onnx_of_a_newer_format_is_refused(trained_run, tmp_path: Path) -> None:
    from animevae import FORMAT_VERSION

    proto = onnx.load(str(trained_run.export_dir / "decoder.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "animevae.format_version":
            prop.value = str(FORMAT_VERSION + 1)
    path = tmp_path / "decoder.onnx"
    onnx.save_model(proto, str(path))
    with pytest.raises(ModelError, match="newer animevae") as caught:
        open_model(path, "decoder", device="cpu")
    assert "upgrade" in caught.value.hint


# --- through the CLI ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["generate", "--count", "2", "--out", "synth"], ["denoise", "noisy"]])
def test_cli_refuses_a_pickle_model_without_running_it(runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       command: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "noisy").mkdir()
    marker = tmp_path / "pwned"
    model = tmp_path / "model.pkl"
    model.write_bytes(evil_pickle(marker))
    result = runner.invoke(app, [*command, "--model", str(model), *CPU_FLAGS])
    assert_cli_error(result, "is not a loadable ONNX model")
    assert not marker.exists()
    assert not (tmp_path / "synth").exists()


def test_cli_refuses_a_foreign_onnx(runner, tmp_path: Path) -> None:
    path = _foreign_onnx(tmp_path / "foreign.onnx")
    result = runner.invoke(app, ["generate", "--count", "1", "--out", str(tmp_path / "o"), "--model", str(path),
                                 *CPU_FLAGS])
    assert_cli_error(result, "is not an animevae decoder", "--model builtin")


def test_cli_cuda_without_provider(runner, trained_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "available_providers", lambda: [CPU])
    result = runner.invoke(app, ["generate", "--count", "1", "--out", str(tmp_path / "o"), "--device", "cuda",
                                 "--runs-dir", str(trained_run.runs_dir)])
    assert_cli_error(result, "no CUDA provider", "onnxruntime-gpu")
    assert not (tmp_path / "o").exists()


def test_cli_prints_the_fallback_note(runner, trained_run, tmp_path: Path, cuda_listed_but_broken) -> None:
    result = runner.invoke(app, ["generate", "--count", "2", "--out", str(tmp_path / "o"), "--runs-dir",
                                 str(trained_run.runs_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert "note: CUDA provider is installed but could not start" in result.output
    assert "on CPUExecutionProvider" in result.output


def test_session_export_folder_is_untouched(trained_run, tmp_path: Path) -> None:
    # Opening models never writes beside them (no cache files, no optimised copies).
    before = sorted(p.name for p in trained_run.export_dir.iterdir())
    shutil.copy(trained_run.export_dir / "decoder.onnx", tmp_path / "decoder.onnx")
    open_model(tmp_path / "decoder.onnx", "decoder", device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx"]
    assert sorted(p.name for p in trained_run.export_dir.iterdir()) == before


def test_no_nvidia_driver_means_cpu_for_auto_and_an_error_for_cuda() -> None:
    from animevae.runtime import choose_providers, nvidia_driver_present

    listed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", listed, driver=False) == ["CPUExecutionProvider"]
    with pytest.raises(DeviceError, match="no NVIDIA driver"):
        choose_providers("cuda", listed, driver=False)
    assert isinstance(nvidia_driver_present(), bool)


def test_auto_without_a_driver_says_why_it_runs_on_the_cpu(trained_run, monkeypatch) -> None:
    import animevae.runtime as runtime

    monkeypatch.setattr(runtime, "nvidia_driver_present", lambda: False)
    monkeypatch.setattr(runtime, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    model = runtime.open_model(trained_run.export_dir / "decoder.onnx", "decoder", device="auto")
    assert model.provider == "CPUExecutionProvider"
    assert "no NVIDIA driver" in model.fallback_note


def _decoder_metadata(**changes: str) -> dict[str, str]:
    from animevae.prior import LatentPrior

    return {"animevae.image_size": "16", "animevae.latent_dim": "2", **LatentPrior.standard(2).to_metadata(),
            **changes}


def _packed(values: list[float]) -> str:
    from animevae.prior import pack_array

    return pack_array(np.array(values, np.float32))


@pytest.mark.parametrize("role, metadata, refused", [
    ("decoder", _decoder_metadata(), None),
    ("decoder", _decoder_metadata(**{"animevae.image_size": "1"}), None),  # the smallest size that parses
    ("encoder", {"animevae.image_size": "16", "animevae.latent_dim": "8"}, None),
    ("denoiser", {}, None),  # sizes are for the encoder and decoder only; no knee: ungated
    ("denoiser", {"animevae.residual_knee": "7.25"}, None),
    ("denoiser", {"animevae.residual_knee": "0"}, None),
    ("denoiser", {"animevae.residual_knee": "nan"}, "residual_knee"),
    ("denoiser", {"animevae.residual_knee": "-1"}, "residual_knee"),
    ("denoiser", {"animevae.residual_knee": "seven"}, "residual_knee"),
    ("encoder", {"animevae.image_size": "0", "animevae.latent_dim": "8"}, "image_size"),
    ("encoder", {"animevae.image_size": "16", "animevae.latent_dim": "x"}, "latent_dim"),
    ("decoder", {"animevae.image_size": "16"}, "latent_dim"),
    ("decoder", _decoder_metadata(**{"animevae.prior_weights": _packed([-1.0])}), "invalid numbers"),
    ("decoder", _decoder_metadata(**{"animevae.prior_weights": _packed([0.0])}), "invalid numbers"),
    ("decoder", _decoder_metadata(**{"animevae.prior_means": _packed([np.nan, 0.0])}), "invalid numbers"),
    ("decoder", _decoder_metadata(**{"animevae.prior_means": _packed([0.0])}), "malformed latent prior"),
])
def test_metadata_numbers_are_checked_when_the_model_opens(role: str, metadata: dict[str, str],
                                                           refused: str | None) -> None:
    """Every number a command reads from a model's metadata is checked once, at open, with one clear error."""
    from animevae.model_info import read_model_info
    from animevae.runtime import _check_metadata

    def check() -> None:
        _check_metadata(Path("m.onnx"), role, metadata)  # at open
        if role == "decoder":
            read_model_info(Path("m.onnx"), metadata)  # the decoder's mixture and classes, once per command

    if refused is None:
        check()
        return
    with pytest.raises(ModelError, match=refused) as caught:
        check()
    assert caught.value.hint


@pytest.mark.parametrize("marked_by", ["data_location only", "external_data only"])
def test_a_tensor_marked_external_by_either_field_is_refused(tmp_path: Path, marked_by: str) -> None:
    """Either field alone makes onnxruntime look outside the file, so either alone must be refused."""
    from animevae.runtime import refuse_external_data

    model = onnx.load(str(_foreign_onnx(tmp_path / "plain.onnx")))
    tensor = _outside("w")
    if marked_by == "data_location only":
        tensor.ClearField("external_data")
    else:
        tensor.data_location = TensorProto.DEFAULT
    model.graph.initializer.append(tensor)
    onnx.save_model(model, str(tmp_path / "hostile.onnx"))
    with pytest.raises(ModelError, match="external data"):
        refuse_external_data(tmp_path / "hostile.onnx")


def test_every_external_tensor_of_a_node_is_named(tmp_path: Path) -> None:
    """Two attributes of one node, each holding an external tensor: both are found (none forgotten)."""
    from animevae.runtime import refuse_external_data

    model = onnx.load(str(_foreign_onnx(tmp_path / "plain.onnx")))
    model.graph.node.append(helper.make_node("Custom", [], [], a=_outside("first"), b=_outside("second")))
    onnx.save_model(model, str(tmp_path / "hostile.onnx"))
    with pytest.raises(ModelError, match=r"\(Custom\.a, Custom\.b\)"):
        refuse_external_data(tmp_path / "hostile.onnx")


def _edited_decoder(trained_run, tmp_path: Path, edit) -> Path:
    import onnx

    model = onnx.load(str(trained_run.export_dir / "decoder.onnx"))
    edit(model)
    folder = tmp_path / "hostile"
    folder.mkdir(exist_ok=True)
    path = folder / "decoder.onnx"
    onnx.save(model, str(path))
    return path


def test_a_model_with_external_data_is_refused_before_onnxruntime_opens_it(runner, trained_run, tmp_path: Path,
                                                                            monkeypatch) -> None:
    from onnx import TensorProto

    def point_outside(model) -> None:
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "16")):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value

    path = _edited_decoder(trained_run, tmp_path, point_outside)
    import animevae.runtime as runtime

    opened = []
    real_session = runtime.ort.InferenceSession
    monkeypatch.setattr(runtime.ort, "InferenceSession", lambda *a, **k: opened.append(a) or real_session(*a, **k))
    result = runner.invoke(app, ["generate", "--count", "1", "--out", str(tmp_path / "g"), "--model", str(path),
                                 *CPU_FLAGS])
    assert_cli_error(result, "external data")
    assert opened == []


def test_the_onnxruntime_floor_checks_external_data_paths() -> None:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"onnxruntime-gpu>=1.24' in text and '"onnxruntime>=1.24' in text


@pytest.mark.parametrize("key, value", [("animevae.prior_weights", "not base64 at all!"),
                                        ("animevae.prior_means", "AAAA"),
                                        ("animevae.latent_dim", "eight"),
                                        ("animevae.format_version", "\u00b2")])
def test_malformed_metadata_is_one_clear_error(runner, trained_run, tmp_path: Path, key: str, value: str) -> None:
    def corrupt(model) -> None:
        for entry in model.metadata_props:
            if entry.key == key:
                entry.value = value

    path = _edited_decoder(trained_run, tmp_path, corrupt)
    result = runner.invoke(app, ["generate", "--count", "2", "--out", str(tmp_path / "g"), "--model", str(path),
                                 *CPU_FLAGS])
    assert_cli_error(result, str(path))


def test_odd_thread_counts_fall_back_to_the_cores(monkeypatch) -> None:
    from animevae.runtime import default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "\u00b2")
    assert default_threads() >= 1
