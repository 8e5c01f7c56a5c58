"""animevae.training.model (VAE, denoiser, losses), animevae.config and animevae.model_files (which ONNX files to use)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from animevae.config import ModelConfig, RunConfig, TrainConfig
from animevae.errors import ArgumentError, ModelError
from animevae.training.model import VAE, Denoiser, DiagonalGaussian, VAELoss, add_noise, psnr
from helpers import TINY_MODEL as TINY


# --- config ------------------------------------------------------------------------------------


def test_model_config_base_size_and_check(tiny_model_config: ModelConfig) -> None:
    assert tiny_model_config.base_size == 4
    tiny_model_config.check()
    assert ModelConfig().base_size == 4  # 64 px over four halvings
    with pytest.raises(ValueError, match="must be a multiple"):
        ModelConfig(image_size=20, channels=(8, 16, 32)).check()
    with pytest.raises(ValueError, match="must be a multiple"):
        ModelConfig(image_size=4, channels=(8, 16, 32)).check()
    with pytest.raises(ValueError, match="latent_dim"):
        ModelConfig(latent_dim=0).check()


def test_model_config_channels_become_an_int_tuple() -> None:
    config = ModelConfig(channels=[8.0, 16])  # type: ignore[arg-type]
    assert config.channels == (8, 16)
    assert all(type(c) is int for c in config.channels)


def test_run_config_json_round_trip_ignores_unknown_keys(tiny_model_config: ModelConfig) -> None:
    config = RunConfig(name="x", model=tiny_model_config, train=TrainConfig(epochs=3, precision="fp32"),
                       created=12.5, version="0.1.0")
    raw = json.loads(config.to_json())
    assert raw["model"]["channels"] == [8, 16]
    raw["from_the_future"] = 1
    raw["model"]["new_knob"] = 2
    raw["train"]["other"] = 3
    assert RunConfig.from_dict(raw) == config


# --- VAE ---------------------------------------------------------------------------------------


def test_vae_shapes_and_ranges(tiny_model_config: ModelConfig) -> None:
    torch.manual_seed(0)
    vae = VAE(tiny_model_config)
    images = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        recon, posterior = vae(images, torch.Generator().manual_seed(0))
    assert recon.shape == (5, 3, 16, 16)
    assert posterior.mu.shape == posterior.logvar.shape == (5, 8)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    with torch.no_grad():
        assert vae.decoder(torch.randn(2, 8)).shape == (2, 3, 16, 16)


def test_vae_refuses_sizes_that_do_not_fit() -> None:
    with pytest.raises(ValueError):
        VAE(ModelConfig(image_size=18, channels=(8, 16)))


def test_vae_sampling_is_reproducible_with_a_generator(tiny_model_config: ModelConfig) -> None:
    torch.manual_seed(0)
    vae = VAE(tiny_model_config).eval()
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        first, _ = vae(images, torch.Generator().manual_seed(3))
        second, _ = vae(images, torch.Generator().manual_seed(3))
        other, _ = vae(images, torch.Generator().manual_seed(4))
    torch.testing.assert_close(first, second)
    assert not torch.allclose(first, other)


def test_diagonal_gaussian_kl_and_mode() -> None:
    zero = DiagonalGaussian(torch.zeros(3, 4), torch.zeros(3, 4))
    torch.testing.assert_close(zero.kl(), torch.zeros(3))
    shifted = DiagonalGaussian(torch.full((1, 4), 2.0), torch.zeros(1, 4))
    torch.testing.assert_close(shifted.kl(), torch.tensor([8.0]))  # 0.5 * sum(mu^2)
    assert shifted.mode() is shifted.mu
    tight = DiagonalGaussian(torch.ones(1, 4), torch.full((1, 4), -60.0))
    torch.testing.assert_close(tight.sample(torch.Generator().manual_seed(0)), torch.ones(1, 4))


def test_vae_loss_is_finite_and_prefers_better_reconstructions() -> None:
    image = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    posterior = DiagonalGaussian(torch.zeros(4, 2), torch.zeros(4, 2))
    loss_fn = VAELoss()
    close_loss, close_mse, kl = loss_fn(image, (image + 0.01).clamp(0, 1), posterior)
    far_loss, far_mse, _ = loss_fn(image, torch.zeros_like(image), posterior)
    assert torch.isfinite(close_loss) and torch.isfinite(far_loss)
    assert close_mse < far_mse and close_loss < far_loss
    assert float(kl) == pytest.approx(0.0)
    # A perfect reconstruction still gives a finite loss (log sigma is clamped).
    assert torch.isfinite(loss_fn(image, image, posterior)[0])


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_fit_prior_single_component_moment_matches_the_aggregate_posterior(covariance: str) -> None:
    vae = VAE(ModelConfig(**{**TINY, "prior_components": 1, "prior_covariance": covariance}))
    eps, uniform = torch.randn(3, 8), torch.rand(3)
    torch.testing.assert_close(vae.sample_latent(eps, uniform), eps)  # N(0, I) before fitting

    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(3000, 8, generator=generator) * torch.linspace(0.5, 2.0, 8) + 3.0  # under the fit's cap
    logvar = torch.full((3000, 8), math.log(0.25))
    vae.fit_prior(mu, logvar)
    torch.testing.assert_close(vae.prior_means[0], mu.mean(0))
    covariance_of_mu = torch.cov(mu.double().T, correction=0)
    if covariance == "full":
        tril = vae.prior_scale_trils[0].double()
        expected = covariance_of_mu + torch.eye(8, dtype=torch.float64) * (0.25 + 1e-6)
        torch.testing.assert_close(tril @ tril.T, expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(vae.prior_scale_trils[0], torch.tril(vae.prior_scale_trils[0]))
    else:
        expected = torch.diagonal(covariance_of_mu) + 0.25
        torch.testing.assert_close(vae.prior_scales[0].double() ** 2, expected, rtol=1e-4, atol=1e-4)
    draws = vae.sample_latent(torch.randn(20000, 8, generator=generator), torch.rand(20000, generator=generator))
    torch.testing.assert_close(draws.mean(0), mu.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(draws.var(0), (mu.var(0) + 0.25).float(), rtol=0.06, atol=0)
    # The prior travels with the weights, under the key its kind of covariance has.
    scale_key = "prior_scale_trils" if covariance == "full" else "prior_scales"
    assert {"prior_weights", "prior_means", scale_key} <= vae.state_dict().keys()


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_fit_prior_finds_separate_clusters(covariance: str) -> None:
    vae = VAE(ModelConfig(**{**TINY, "prior_components": 4, "prior_covariance": covariance}))
    generator = torch.Generator().manual_seed(1)
    centres = torch.tensor([[-6.0] * 8, [6.0] * 8])
    mu = torch.cat([centres[0] + torch.randn(600, 8, generator=generator),
                    centres[1] + torch.randn(1800, 8, generator=generator)])
    vae.fit_prior(mu, torch.full_like(mu, math.log(0.01)))
    draws = vae.sample_latent(torch.randn(4000, 8, generator=generator), torch.rand(4000, generator=generator))
    # Draws land in the two clusters in proportion (1:3), not in the empty middle a single Gaussian would fill.
    assert (draws.mean(1).abs() < 3).float().mean() < 0.02
    assert 0.7 < (draws.mean(1) > 0).float().mean() < 0.8
    assert torch.isclose(vae.prior_weights.sum(), torch.tensor(1.0))


def test_a_diagonal_mixture_follows_a_curved_set_that_one_full_gaussian_fills_across() -> None:
    """Why many diagonal components: points on a ring; the diagonal mixture's draws stay near the ring, the
    single full Gaussian (the same moments) puts many in the empty middle."""
    generator = torch.Generator().manual_seed(2)
    angle = torch.rand(4000, generator=generator) * 2 * math.pi
    ring = torch.zeros(4000, 8)
    ring[:, 0], ring[:, 1] = 5 * torch.cos(angle), 5 * torch.sin(angle)
    ring += 0.1 * torch.randn(4000, 8, generator=generator)
    logvar = torch.full_like(ring, math.log(0.01))
    radii = {}
    for covariance, components in (("diagonal", 64), ("full", 1)):
        vae = VAE(ModelConfig(**{**TINY, "prior_components": components, "prior_covariance": covariance}))
        vae.fit_prior(ring, logvar)
        draws = vae.sample_latent(torch.randn(4000, 8, generator=generator), torch.rand(4000, generator=generator))
        radii[covariance] = draws[:, :2].norm(dim=1)
    assert ((radii["diagonal"] - 5).abs() < 1).float().mean() > 0.9
    assert ((radii["full"] - 5).abs() < 1).float().mean() < 0.5


def test_a_diagonal_mixture_uses_no_more_components_than_its_points_support() -> None:
    from animevae.training.model import DIAGONAL_POINTS_PER_COMPONENT, fit_diagonal_mixture

    points = torch.randn(5 * DIAGONAL_POINTS_PER_COMPONENT, 4, dtype=torch.float64)
    weights, means, scales = fit_diagonal_mixture(points, torch.zeros(4, dtype=torch.float64), 200)
    assert weights.shape == (200,) and means.shape == (200, 4) and scales.shape == (200, 4)
    assert (weights > 0).sum() <= 5 and torch.isclose(weights.sum(), torch.tensor(1.0))
    assert (scales > 0).all()


def test_a_float32_diagonal_fit_far_from_the_origin_matches_the_float64_one() -> None:
    """The fit runs in float32; latents centred far from 0 (a shifted latent space) must not lose the clusters'
    fine scale to cancellation in the expanded distances."""
    from animevae.training.model import fit_diagonal_mixture

    generator = torch.Generator().manual_seed(3)
    centres = torch.randn(8, 16, generator=generator, dtype=torch.float64) * 0.05
    points = (centres.repeat_interleave(50, 0) + 0.005 * torch.randn(400, 16, generator=generator,
                                                                      dtype=torch.float64)) + 300.0
    extra = torch.full((16,), 1e-6, dtype=torch.float64)
    w64, m64, s64 = fit_diagonal_mixture(points, extra, 8)
    w32, m32, s32 = fit_diagonal_mixture(points.float(), extra.float(), 8)
    torch.testing.assert_close(w32, w64, atol=1e-3, rtol=0)
    torch.testing.assert_close(m32, m64, atol=1e-4, rtol=0)
    torch.testing.assert_close(s32, s64, atol=2e-4, rtol=0.02)


def test_full_covariances_are_a_choice_and_diagonal_the_default() -> None:
    raw = json.loads(RunConfig(name="run", model=ModelConfig(**TINY)).to_json())
    del raw["model"]["prior_covariance"]
    assert RunConfig.from_dict(raw).model.prior_covariance == "diagonal"
    full = ModelConfig(**{**TINY, "prior_covariance": "full"})
    assert "prior_scale_trils" in VAE(full).state_dict() and "prior_scales" not in VAE(full).state_dict()
    assert ModelConfig().prior_covariance == "diagonal"
    with pytest.raises(ValueError, match="prior_covariance"):
        ModelConfig(**{**TINY, "prior_covariance": "spherical"}).check()


# --- denoiser ----------------------------------------------------------------------------------


def test_fresh_denoiser_is_the_identity(tiny_model_config: ModelConfig) -> None:
    denoiser = Denoiser(tiny_model_config).eval()
    image = torch.rand(2, 3, 12, 20)
    with torch.no_grad():
        torch.testing.assert_close(denoiser(image), image)


def test_denoiser_keeps_any_multiple_of_four_shape(tiny_model_config: ModelConfig) -> None:
    torch.manual_seed(0)
    denoiser = Denoiser(tiny_model_config).eval()
    torch.nn.init.normal_(denoiser.conv_out.weight, std=0.1)  # no longer the identity
    for height, width in ((4, 4), (16, 24), (20, 20)):
        with torch.no_grad():
            out = denoiser(torch.rand(1, 3, height, width))
        assert out.shape == (1, 3, height, width)
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_add_noise_and_psnr() -> None:
    image = torch.full((2, 3, 8, 8), 0.5)
    assert torch.equal(add_noise(image, 0.0), image)
    noisy = add_noise(image, torch.tensor([0.0, 25.0]), torch.Generator().manual_seed(0))
    assert torch.equal(noisy[0], image[0])
    assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0
    assert 15.0 < float(psnr(noisy[1:], image[1:])) < 25.0  # sigma 25/255 is about 20 dB
    assert float(psnr(image, image)[0]) == pytest.approx(100.0)  # MSE floored at 1e-10
    torch.testing.assert_close(psnr(torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)), torch.tensor([0.0]))


# --- models.choose_model -------------------------------------------------------------------------


def _fake_run(runs_dir: Path, name: str, created: float, exported: bool) -> Path:
    run = runs_dir / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"created": created}))
    if exported:
        (run / "export").mkdir()
        (run / "export" / "decoder.onnx").write_bytes(b"x")
    return run


def test_choose_model_prefers_newest_exported_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from animevae import model_files as models

    monkeypatch.setattr(models, "builtin_available", lambda: False)
    runs = tmp_path / "runs"
    _fake_run(runs, "old", 1.0, exported=True)
    _fake_run(runs, "mid", 2.0, exported=True)
    _fake_run(runs, "new", 3.0, exported=False)
    choice = models.choose_model(runs)
    assert choice.folder == runs / "mid" / "export"
    assert choice.path("decoder") == runs / "mid" / "export" / "decoder.onnx"
    assert "mid" in choice.origin
    assert models.choose_model(runs, run="old").folder == runs / "old" / "export"
    with pytest.raises(ModelError, match="never exported") as caught:
        models.choose_model(runs, run="new")
    assert "animevae export --onnx --run new" in caught.value.hint


def test_choose_model_explicit_paths_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from animevae import model_files as models

    monkeypatch.setattr(models, "builtin_available", lambda: False)
    folder = tmp_path / "exp"
    folder.mkdir()
    onnx_file = folder / "decoder.onnx"
    onnx_file.write_bytes(b"x")
    assert models.choose_model(tmp_path, model=str(folder)).path("denoiser") == folder / "denoiser.onnx"
    # A file named after a role stands for its folder; any other .onnx file is used as it is.
    assert models.choose_model(tmp_path, model=str(onnx_file)).path("decoder") == onnx_file
    assert models.choose_model(tmp_path, model=str(onnx_file)).path("denoiser") == folder / "denoiser.onnx"
    other = folder / "mine.onnx"
    other.write_bytes(b"x")
    assert models.choose_model(tmp_path, model=str(other)).path("denoiser") == other
    with pytest.raises(ModelError, match="no such file"):
        models.choose_model(tmp_path, model=str(tmp_path / "missing.onnx"))
    with pytest.raises(ArgumentError, match="both given"):
        models.choose_model(tmp_path, run="a", model="b")
    with pytest.raises(ModelError, match="no built-in model"):
        models.choose_model(tmp_path, model="builtin")
    with pytest.raises(ModelError, match="no exported run") as caught:
        models.choose_model(tmp_path / "empty-runs")
    assert "animevae train" in caught.value.hint
    _fake_run(tmp_path / "runs", "only", 1.0, exported=False)
    with pytest.raises(ModelError, match="'only' was never exported"):
        models.choose_model(tmp_path / "runs")


def test_the_decoder_doubles_by_transposed_convs_and_a_stored_upsample_key_is_ignored() -> None:
    vae = VAE(ModelConfig(**TINY))
    assert vae.decoder(torch.randn(3, 8)).shape == (3, 3, 16, 16)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in vae.decoder.modules()) == len(TINY["channels"])
    stored = {"name": "old", "model": {**TINY, "upsample": "transpose"}}  # a config.json that still names it
    assert RunConfig.from_dict(stored).model == ModelConfig(**TINY)
