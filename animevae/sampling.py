"""Where generated latents come from: image i's latent depends on (seed, i) alone. numpy + onnxruntime only.

A run with a trained diffusion prior exports prior.onnx beside its decoder (noise -> latent, see diffusion.py);
older runs and mixture runs sample from the Gaussian mixture in the decoder's metadata (prior.py). Either way
the noise of image i comes from a generator seeded by (seed, i), so an image never depends on the batch size,
the shard or what was generated before it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from animevae.errors import ArgumentError
from animevae.prior import LatentPrior
from animevae.runtime import OnnxModel, open_model

PRIOR_FILE = "prior.onnx"


def prior_path_for(decoder_path: Path) -> Path | None:
    """The prior.onnx exported beside a decoder, or None where there is none (mixture sampling)."""
    candidate = decoder_path.with_name(PRIOR_FILE)
    return candidate if candidate.is_file() else None


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

    def __init__(self, decoder: OnnxModel, prior: OnnxModel | None = None, temperature: float = 1.0) -> None:
        check_temperature(temperature)
        self.latent_dim = decoder.latent_dim
        self.mixture = LatentPrior.from_metadata(decoder.metadata)
        self.prior = prior
        self.temperature = temperature

    @property
    def kind(self) -> str:
        """What the latents come from, for the user: "diffusion prior" or "Gaussian mixture"."""
        return "diffusion prior" if self.prior is not None else "Gaussian mixture"

    def __call__(self, seed: int, indices: list[int]) -> np.ndarray:
        """(len(indices), latent) float32 latents."""
        if self.prior is None:
            return np.stack([self.mixture.latent(seed, i, self.temperature) for i in indices])
        noise = np.stack([np.random.default_rng([seed, i]).standard_normal(self.latent_dim, dtype=np.float32)
                          for i in indices])  # (B, latent)
        return self.prior.run(noise * np.float32(self.temperature))[0]

    def class_latents(self, seed: int, tasks: list[tuple[int, int]]) -> np.ndarray:
        """(len(tasks), latent) latents of (class, index) pairs, each seeded by (seed, class, index) alone. Always
        from the class's own mixture: a diffusion prior (prior.onnx) is unconditional."""
        return np.stack([self.mixture.class_latent(seed, label, i, self.temperature) for label, i in tasks])


def open_sampler(decoder: OnnxModel, temperature: float = 1.0, device: str | None = None,
                 threads: int | None = None) -> LatentSampler:
    """The sampler for an opened decoder, with the prior.onnx beside it when there is one."""
    path = prior_path_for(decoder.path)
    prior = open_model(path, "prior", device=device or decoder.device, threads=threads) if path else None
    return LatentSampler(decoder, prior, temperature)
