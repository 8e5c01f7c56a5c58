"""The latent diffusion prior: its schedule, its identity start, and that it learns where latents live."""

from __future__ import annotations

import math

import pytest
import torch

from animevae.config import ModelConfig
from animevae.training.diffusion import DDIMSampler, LatentDiffusion, alpha_sigma


def _config(latent_dim: int = 2, width: int = 32, blocks: int = 2) -> ModelConfig:
    return ModelConfig(image_size=16, latent_dim=latent_dim, channels=(8, 16), prior_width=width, prior_blocks=blocks)


def test_cosine_schedule_runs_from_clean_to_pure_noise() -> None:
    alpha, sigma = alpha_sigma(torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(alpha, torch.tensor([1.0, math.cos(math.pi / 4), 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(3))


def test_fresh_blocks_are_the_identity() -> None:
    model = LatentDiffusion(_config())
    h = torch.randn(4, 32)
    for block, bias in zip(model.blocks, model.time_biases(torch.rand(4))):
        torch.testing.assert_close(block(h, bias), h)


def test_normalisation_is_undone_by_the_sampler() -> None:
    model = LatentDiffusion(_config(latent_dim=3))
    latents = torch.tensor([[1.0, 10.0, -5.0], [3.0, 30.0, -5.0]])
    model.set_normalisation(latents)
    torch.testing.assert_close(model.latent_mean, torch.tensor([2.0, 20.0, -5.0]))
    assert model.latent_std[2].item() == pytest.approx(1e-3)  # a constant dimension is not divided by zero
    # With v = 0 each DDIM step multiplies x by alpha_k alpha_k+1 + sigma_k sigma_k+1 = cos(pi/2 / steps):
    # five steps scale the noise by cos(pi/10)^5, then the normalisation is undone.
    torch.nn.init.zeros_(model.conv_out.weight)
    torch.nn.init.zeros_(model.conv_out.bias)
    noise = torch.randn(2, 3)
    z = DDIMSampler(model, steps=5)(noise)
    expected = model.latent_mean + model.latent_std * math.cos(math.pi / 10) ** 5 * noise
    torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-5)


def test_each_latent_depends_on_its_own_noise_row_only() -> None:
    sampler = DDIMSampler(LatentDiffusion(_config(latent_dim=4)), steps=4)
    noise = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    together = sampler(noise)
    for i in range(6):
        torch.testing.assert_close(sampler(noise[i : i + 1])[0], together[i])


def test_learns_two_clusters_and_samples_them_not_the_gap_between() -> None:
    """The reason for the prior: a mixture of styles is two clusters; draws must land in them."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])
    data = centres[torch.randint(2, (4000,), generator=generator)] + 0.2 * torch.randn(4000, 2, generator=generator)
    model = LatentDiffusion(_config())
    model.set_normalisation(data)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(600):
        loss = model.loss(data[torch.randint(len(data), (256,), generator=generator)], generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        z = DDIMSampler(model.eval(), steps=10)(torch.randn(1000, 2, generator=generator))
    near = (z[:, None, :] - centres[None]).norm(dim=2).min(dim=1).values < 1.0
    assert near.float().mean() > 0.9  # a single Gaussian fit would put most draws in the gap
    left = (z[:, 0] < 0).float().mean()
    assert 0.35 < left < 0.65  # both clusters, in proportion
