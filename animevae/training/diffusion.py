"""A learned prior over the VAE's latents: a small diffusion model on the posterior means, sampled by DDIM.

A Gaussian mixture fitted to the latents puts mass between the clusters, so its draws decode to faces with two
styles' colours smeared together. A diffusion model over the latent vectors (as latent diffusion does over
feature maps) follows the real shape of the latent distribution. It is a residual MLP with a time embedding,
trained with v-prediction on a cosine schedule (Salimans & Ho 2022), and sampled by deterministic DDIM in a
few steps. `DDIMSampler` unrolls those steps into one graph, exported as prior.onnx: noise (B, D) -> z (B, D),
so `generate` stays torch-free and every latent depends on its own noise row alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from animevae.config import ModelConfig

TIME_FREQUENCIES = 16


def alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine schedule: signal and noise scales at t in [0, 1] (alpha^2 + sigma^2 = 1; t = 1 is pure noise)."""
    angle = t * (math.pi / 2)
    return torch.cos(angle), torch.sin(angle)


def time_features(t: torch.Tensor) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, 2F) sinusoidal features at geometric frequencies."""
    frequencies = torch.exp(torch.linspace(0.0, math.log(1000.0), TIME_FREQUENCIES, device=t.device))
    angles = t[:, None].float() * frequencies[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class PriorBlock(nn.Module):
    """h + fc2(silu(fc1(norm(h)) + time bias)); fc2 starts at zero, so a fresh block is the identity."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.time_bias = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + bias))


class LatentDiffusion(nn.Module):
    """Predicts v from a noisy normalised latent x_t and t: (B, D), (B,) -> (B, D).

    `latent_mean` and `latent_std` (D,) normalise the posterior means to unit scale per dimension; they are
    set from the data before training (`set_normalisation`) and undone when sampling."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, width = config.latent_dim, config.prior_width
        self.conv_in = nn.Linear(d, width)
        self.time_embed = nn.Sequential(nn.Linear(2 * TIME_FREQUENCIES, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU())
        self.blocks = nn.ModuleList(PriorBlock(width) for _ in range(config.prior_blocks))
        self.norm_out = nn.LayerNorm(width)
        self.conv_out = nn.Linear(width, d)
        self.register_buffer("latent_mean", torch.zeros(d))
        self.register_buffer("latent_std", torch.ones(d))

    def set_normalisation(self, latents: torch.Tensor) -> None:
        """Per-dimension mean and std of (N, D) training latents."""
        self.latent_mean.copy_(latents.mean(0))
        self.latent_std.copy_(latents.std(0).clamp(min=1e-3) if len(latents) > 1 else torch.ones_like(self.latent_std))

    def time_biases(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Each block's time bias, (B, W) each."""
        embedding = self.time_embed(time_features(t))
        return [block.time_bias(embedding) for block in self.blocks]

    def predict(self, x_t: torch.Tensor, biases: list[torch.Tensor]) -> torch.Tensor:
        """v prediction from x_t (B, D) and precomputed time biases."""
        h = self.conv_in(x_t)  # (B, W)
        for block, bias in zip(self.blocks, biases):
            h = block(h, bias)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, D)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.predict(x_t, self.time_biases(t))

    def loss(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """v-prediction MSE on (B, D) raw latents at uniform random times."""
        x0 = (latents - self.latent_mean) / self.latent_std
        t = torch.rand(len(x0), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        alpha, sigma = (s[:, None] for s in alpha_sigma(t))
        x_t = alpha * x0 + sigma * noise
        target = alpha * noise - sigma * x0
        return F.mse_loss(self(x_t, t), target)


class DDIMSampler(nn.Module):
    """noise (B, D) ~ N(0, I) -> latent z (B, D): `steps` deterministic DDIM steps from t = 1 to 0, unrolled.

    The time biases of every step are computed once here and kept as constants, so each step costs one
    pass through the MLP. Scaling the noise (temperature < 1) trades diversity for typical faces."""

    def __init__(self, model: LatentDiffusion, steps: int) -> None:
        super().__init__()
        self.model = model
        times = torch.linspace(1.0, 0.0, steps + 1)
        device = model.latent_mean.device  # the biases live where the model does (a GPU during training)
        with torch.no_grad():
            biases = [torch.stack(b) for b in zip(*(model.time_biases(t.view(1).to(device)) for t in times[:-1]))]
        # (blocks, steps, 1, W): indexed by constants in forward, so the exported graph holds plain tensors.
        self.register_buffer("biases", torch.stack(biases) if biases else torch.zeros(0, steps, 1, 1, device=device))
        alphas, sigmas = alpha_sigma(times)
        self.schedule = [(float(alphas[k]), float(sigmas[k]), float(alphas[k + 1]), float(sigmas[k + 1]))
                         for k in range(steps)]

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        x = noise
        for k, (alpha, sigma, alpha_next, sigma_next) in enumerate(self.schedule):
            v = self.model.predict(x, [self.biases[b, k] for b in range(len(self.model.blocks))])
            x0 = alpha * x - sigma * v
            eps = sigma * x + alpha * v
            x = alpha_next * x0 + sigma_next * eps
        return x * self.model.latent_std + self.model.latent_mean  # (B, D), back on the VAE's latent scale
