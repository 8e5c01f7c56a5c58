"""animevae.training.export: the ONNX file contract (names, shapes, dynamic axes, metadata) and the PyTorch check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from animevae import FORMAT_VERSION, __version__
from animevae.cli import app
from animevae.denoise import denoise_array
from animevae.errors import ModelError
from animevae.training.export import MAX_ABS_DIFF, export_run, load_run_models
from animevae.fileio import to_uint8
from animevae.shrinkage import gate_residual
from helpers import assert_cli_error, assert_ok, snapshot, temp_leftovers

ROLES = ("encoder", "decoder", "denoiser", "prior")


def _dims(value_info: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def protos(trained_run) -> dict[str, onnx.ModelProto]:
    return {role: onnx.load(str(trained_run.export_dir / f"{role}.onnx")) for role in ROLES}


def test_export_writes_four_models_and_a_report(trained_run) -> None:
    names = sorted(p.name for p in trained_run.export_dir.iterdir())
    assert names == ["decoder.onnx", "denoiser.onnx", "encoder.onnx", "model.json", "prior.onnx"]
    assert temp_leftovers(trained_run.export_dir) == []
    assert set(trained_run.max_abs_diff) == set(ROLES)
    assert all(0.0 <= diff <= MAX_ABS_DIFF for diff in trained_run.max_abs_diff.values())
    report = json.loads((trained_run.export_dir / "model.json").read_text())
    assert report["max_abs_diff"] == pytest.approx(trained_run.max_abs_diff)
    assert report["config"]["model"]["latent_dim"] == 8


def test_onnx_files_pass_the_checker(protos) -> None:
    for proto in protos.values():
        onnx.checker.check_model(proto)


def test_encoder_contract(protos) -> None:
    graph = protos["encoder"].graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["mu", "logvar"]
    image = _dims(graph.input[0])
    assert image[0] == "batch" and image[1:] == [3, 16, 16]  # only the batch axis is dynamic
    for output in graph.output:
        dims = _dims(output)
        assert isinstance(dims[0], str) and dims[1:] == [8]


def test_decoder_contract(protos) -> None:
    graph = protos["decoder"].graph
    assert [i.name for i in graph.input] == ["z"]
    assert [o.name for o in graph.output] == ["image"]
    assert _dims(graph.input[0]) == ["batch", 8]
    out = _dims(graph.output[0])
    assert isinstance(out[0], str) and out[1:] == [3, 16, 16]


def test_denoiser_contract(protos) -> None:
    graph = protos["denoiser"].graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["denoised"]
    dims = _dims(graph.input[0])
    assert dims[0] == "batch" and dims[1] == 3
    assert all(isinstance(d, str) for d in dims[2:]), dims  # H and W are dynamic too
    assert len(_dims(graph.output[0])) == 4


def test_metadata(protos, trained_run) -> None:
    for role, proto in protos.items():
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["animevae.role"] == role
        assert meta["animevae.version"] == __version__
        assert meta["animevae.format_version"] == str(FORMAT_VERSION)
        assert meta["animevae.image_size"] == "16"
        assert meta["animevae.latent_dim"] == "8"
        assert meta["animevae.run"] == "run"
        assert json.loads(meta["animevae.config"])["model"]["channels"] == [8, 16]
        assert meta["animevae.training_data"] == str(trained_run.data_dir)
        # Only the decoder carries the fitted prior, and it is the checkpoint's.
        for key in ("animevae.prior_weights", "animevae.prior_means", "animevae.prior_scales"):
            assert (key in meta) == (role == "decoder")


def test_decoder_prior_matches_the_checkpoint(protos, trained_run) -> None:
    from animevae.prior import LatentPrior

    _, vae, _ = load_run_models(trained_run.run_dir)
    meta = {p.key: p.value for p in protos["decoder"].metadata_props}
    prior = LatentPrior.from_metadata(meta, 8)
    used = vae.prior_weights > 0  # the fit pads to 700 components; the decoder carries the ones it uses
    assert 0 < int(used.sum()) == len(prior.weights) < len(vae.prior_weights)
    np.testing.assert_array_equal(prior.weights, vae.prior_weights[used].numpy())
    np.testing.assert_array_equal(prior.means, vae.prior_means[used].numpy())
    np.testing.assert_array_equal(prior.scales, vae.prior_component_scales[used].numpy())
    padded = LatentPrior(vae.prior_weights.numpy(), vae.prior_means.numpy(), vae.prior_component_scales.numpy())
    for index in range(200):  # the same draws as the checkpoint's whole mixture
        np.testing.assert_array_equal(prior.latent(0, index), padded.latent(0, index))


def test_encoder_and_decoder_have_a_dynamic_batch_only(onnx_models) -> None:
    encoder, decoder = onnx_models["encoder"], onnx_models["decoder"]
    for batch in (1, 5):
        mu, logvar = encoder.run(np.random.default_rng(batch).random((batch, 3, 16, 16), dtype=np.float32))
        assert mu.shape == logvar.shape == (batch, 8)
        (images,) = decoder.run(np.zeros((batch, 8), np.float32))
        assert images.shape == (batch, 3, 16, 16)
        assert images.min() >= 0.0 and images.max() <= 1.0
    with pytest.raises(InvalidArgument, match="invalid dimensions"):  # H and W are fixed
        encoder.run(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(InvalidArgument, match="invalid dimensions"):
        decoder.run(np.zeros((1, 9), np.float32))


def test_onnx_matches_pytorch(onnx_models, trained_run) -> None:
    _, vae, denoiser = load_run_models(trained_run.run_dir)
    generator = torch.Generator().manual_seed(7)
    z = torch.randn(4, 8, generator=generator)
    image = torch.rand(2, 3, 16, 16, generator=generator)
    noisy = torch.rand(2, 3, 12, 20, generator=generator)
    with torch.no_grad():
        expected_images = vae.decoder(z).numpy()
        expected_mu, expected_logvar = (t.numpy() for t in vae.encoder(image))
        expected_clean = denoiser(noisy).numpy()
    np.testing.assert_allclose(onnx_models["decoder"].run(z.numpy())[0], expected_images, atol=MAX_ABS_DIFF)
    mu, logvar = onnx_models["encoder"].run(image.numpy())
    np.testing.assert_allclose(mu, expected_mu, atol=MAX_ABS_DIFF)
    np.testing.assert_allclose(logvar, expected_logvar, atol=MAX_ABS_DIFF)
    np.testing.assert_allclose(onnx_models["denoiser"].run(noisy.numpy())[0], expected_clean, atol=MAX_ABS_DIFF)


@pytest.mark.parametrize("height, width, batch", [(16, 24, 1), (20, 20, 3), (13, 17, 2), (4, 4, 1)])
def test_denoiser_runs_at_any_size(onnx_models, trained_run, height: int, width: int, batch: int) -> None:
    rng = np.random.default_rng(height * 100 + width)
    images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    out = denoise_array(onnx_models["denoiser"], images)
    assert out.shape == images.shape and out.dtype == np.uint8

    # The same as PyTorch on the edge-padded image, cropped back, then gated over the image's own pixels
    # (+-1 for rounding at .5).
    _, _, denoiser = load_run_models(trained_run.run_dir)
    source = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    padded = np.pad(source, ((0, 0), (0, 0), (0, -height % 4), (0, -width % 4)), mode="edge")
    with torch.no_grad():
        raw = denoiser(torch.from_numpy(padded)).numpy()[:, :, :height, :width]
    expected = to_uint8(gate_residual(source, raw, float(denoiser.knee)))
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_export_refuses_a_run_without_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "empty"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no checkpoint at"):
        export_run(run)
    assert not (run / "export" / "decoder.onnx").exists()


def test_a_model_that_differs_from_pytorch_is_removed(runs_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.training.export as export_module

    shutil.rmtree(runs_copy / "run" / "export")
    monkeypatch.setattr(export_module, "MAX_ABS_DIFF", -1.0)  # any difference (even 0) is now too much
    with pytest.raises(ModelError, match="encoder.onnx differs from PyTorch") as caught:
        export_run(runs_copy / "run")
    assert "bug" in caught.value.hint
    assert not (runs_copy / "run" / "export" / "encoder.onnx").exists()
    assert temp_leftovers(runs_copy / "run") == []


# --- the CLI ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_export_prints_the_differences(runner, runs_copy: Path) -> None:
    shutil.rmtree(runs_copy / "run" / "export")
    result = runner.invoke(app, ["export", "--onnx", "--runs-dir", str(runs_copy)])
    assert_ok(result)
    for role in ROLES:
        line = next(line for line in result.output.splitlines() if line.startswith(f"{role}.onnx:"))
        assert "max abs difference from PyTorch" in line and "(limit 1e-04)" in line
        assert float(line.split("PyTorch ")[1].split()[0]) <= MAX_ABS_DIFF
        assert (runs_copy / "run" / "export" / f"{role}.onnx").is_file()
    assert "next: animevae generate" in result.output and "--run run" in result.output


def test_cli_export_needs_a_format(runner, runs_copy: Path) -> None:
    assert_cli_error(runner.invoke(app, ["export", "--runs-dir", str(runs_copy)]), "choose a format", "--onnx")


def test_cli_export_errors(runner, tmp_path: Path, runs_copy: Path) -> None:
    assert_cli_error(runner.invoke(app, ["export", "--onnx", "--runs-dir", str(tmp_path / "none")]),
                     "no runs in", "animevae train")
    assert_cli_error(runner.invoke(app, ["export", "--onnx", "--run", "ghost", "--runs-dir", str(runs_copy)]),
                     "no run named 'ghost'", "runs there: run")
    (runs_copy / "run" / "last.safetensors").unlink()
    assert_cli_error(runner.invoke(app, ["export", "--onnx", "--run", "run", "--runs-dir", str(runs_copy)]),
                     "no checkpoint at")


class _Shifted(torch.nn.Module):
    """A module's output plus a constant: PyTorch and ONNX then differ by exactly that much."""

    def __init__(self, inner: torch.nn.Module, by: float) -> None:
        super().__init__()
        self.inner, self.by = inner, by

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner(z) + self.by


def test_parity_limit_is_1e_4_refusing_above_and_keeping_below(trained_run, tmp_path: Path) -> None:
    """Protects the README's promise that export fails when onnxruntime and PyTorch differ by more than 1e-4
    (tested against the literal, not the module's own constant)."""
    from animevae.training.export import _compare

    _, vae, _ = load_run_models(trained_run.run_dir)
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    path = tmp_path / "decoder.onnx"
    shutil.copy(trained_run.export_dir / "decoder.onnx", path)
    assert _compare(_Shifted(vae.decoder, 0.6e-4), z, path, "decoder", "cpu") == pytest.approx(0.6e-4, abs=1e-5)
    assert path.is_file()
    with pytest.raises(ModelError, match=r"decoder.onnx differs from PyTorch by 1\.[3-7]\de-04 \(limit 1e-04\)"):
        _compare(_Shifted(vae.decoder, 1.5e-4), z, path, "decoder", "cpu")
    assert not path.exists()


def test_half_is_refused_without_cuda_and_writes_nothing(runner, runs_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Protects the README: on a machine where onnxruntime cannot run CUDA, `--half` is refused rather than
    silently ignored (export writes nothing; generate --half stops before any output)."""
    import animevae.runtime as runtime
    from animevae.model_files import HALF_DECODER

    monkeypatch.setattr(runtime, "available_providers", lambda: [runtime.CPU])
    export = runs_copy / "run" / "export"
    before = snapshot(runs_copy)
    with pytest.raises(ModelError, match="--half needs a CUDA GPU"):
        export_run(runs_copy / "run", half=True)
    assert snapshot(runs_copy) == before  # not even rewritten with the same bytes: refused before any work

    out = runs_copy.parent / "out"
    common = ["generate", "--count", "2", "--out", str(out), "--half", "--runs-dir", str(runs_copy), "-q"]
    assert_cli_error(runner.invoke(app, [*common, "--device", "cpu"]), "--half runs only on CUDA")
    assert_cli_error(runner.invoke(app, [*common, "--device", "auto"]), f"no fp16 decoder at {export / HALF_DECODER}")
    shutil.copy(export / "decoder.onnx", export / HALF_DECODER)  # a stand-in: the CPU must still refuse it
    assert_cli_error(runner.invoke(app, [*common, "--device", "auto"]), "--half needs CUDA")
    assert_cli_error(runner.invoke(app, [*common, "--device", "cuda"]), "no CUDA provider")
    assert not out.exists()


@pytest.mark.slow
def test_a_denoiser_run_exports_its_denoiser_alone(denoiser_run: Path) -> None:
    (denoiser_run / "export").mkdir()
    for stale in ("encoder.onnx", "decoder.onnx", "prior.onnx"):  # of some older export: never left beside it
        (denoiser_run / "export" / stale).write_bytes(b"old")
    report = export_run(denoiser_run)
    assert set(report.max_abs_diff) == {"denoiser"} and report.max_abs_diff["denoiser"] <= MAX_ABS_DIFF
    assert sorted(p.name for p in report.folder.iterdir()) == ["denoiser.onnx", "model.json"]
    _, vae, denoiser = load_run_models(denoiser_run)
    metadata = {p.key: p.value for p in onnx.load(str(report.folder / "denoiser.onnx")).metadata_props}
    assert vae is None and metadata["animevae.residual_knee"] == str(float(denoiser.knee))
    assert json.loads(metadata["animevae.config"])["kind"] == "denoiser"


def test_a_denoiser_run_has_no_decoder_to_export_in_half(denoiser_run: Path) -> None:
    with pytest.raises(ModelError, match="trains only a denoiser"):
        export_run(denoiser_run, half=True)
    assert not (denoiser_run / "export").exists()
