"""Where generated latents come from: image i's latent depends on (seed, i) alone. numpy + onnxruntime only.

A model with a diffusion prior has prior.onnx (noise -> latent, see training/diffusion.py); the others sample
from the Gaussian mixture in the decoder's metadata (prior.py). Either way the noise of image i comes from a
generator seeded by (seed, i), so an image never depends on the batch size, the shard or what was generated
before it.
"""

from __future__ import annotations

import numpy as np

from animevae.errors import ArgumentError
from animevae.model_info import ModelInfo
from animevae.prior import LatentPrior
from animevae.runtime import OnnxModel, open_model


def check_seed(seed: int, flag: str = "--seed") -> None:
    """Seeds feed numpy's SeedSequence, which takes non-negative integers only."""
    if seed < 0:
        raise ArgumentError(f"{flag} must be 0 or more (got {seed})", f"pass {flag} 0, for example")


def check_temperature(temperature: float) -> None:
    """Refuse temperatures outside (0, 2]: 0 collapses every seed to one face, above 2 decodes to noise."""
    if not 0.0 < temperature <= 2.0:
        raise ArgumentError(f"--temperature must be in (0, 2] (got {temperature})",
                            "1.0 samples the learned distribution; 0.7 gives more typical, less varied faces")


class LatentSampler:
    """Draws latents for image indices: through the diffusion prior when given, else the mixture.

    `temperature` scales the noise: below 1 trades diversity for typical faces, as truncation does in GANs."""

    def __init__(self, mixture: LatentPrior, prior: OnnxModel | None = None, temperature: float = 1.0) -> None:
        check_temperature(temperature)
        self.mixture = mixture
        self.prior = prior
        self.temperature = temperature

    def __call__(self, seed: int, indices: list[int]) -> np.ndarray:
        """(len(indices), latent) float32 latents."""
        if self.prior is None:
            return np.stack([self.mixture.latent(seed, i, self.temperature) for i in indices])
        latent_dim = self.mixture.means.shape[1]
        noise = np.stack([np.random.default_rng([seed, i]).standard_normal(latent_dim, dtype=np.float32)
                          for i in indices])  # (B, latent)
        return self.prior.run(noise * np.float32(self.temperature))[0]

    def class_latents(self, seed: int, tasks: list[tuple[int, int]]) -> np.ndarray:
        """(len(tasks), latent) latents of (class, index) pairs, each seeded by (seed, class, index) alone. Always
        from the class's own mixture: a diffusion prior (prior.onnx) is unconditional."""
        return np.stack([self.mixture.class_latent(seed, label, i, self.temperature) for label, i in tasks])


def open_sampler(info: ModelInfo, temperature: float = 1.0, device: str = "auto",
                 threads: int | None = None) -> LatentSampler:
    """The sampler of a model: its mixture, and its prior.onnx opened on `device` where it has one."""
    prior = open_model(info.prior_file, "prior", device, threads) if info.prior_file is not None else None
    return LatentSampler(info.mixture, prior, temperature)
