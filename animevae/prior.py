"""The latent prior used for sampling: a Gaussian fitted to the encoded training set. numpy only.

A VAE's aggregate posterior rarely matches N(0, I); decoding N(0, I) draws then gives smudges. Fitting a
full-covariance Gaussian to the training latents after training (Ghosh et al. 2020; Dai & Wipf's two-stage
VAE) fixes most of it at no training cost. The fit is stored in the checkpoint and in decoder.onnx's metadata.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

MEAN_KEY = "animevae.prior_mean"
SCALE_KEY = "animevae.prior_scale_tril"


def pack_array(values: np.ndarray) -> str:
    """float32 little-endian bytes, base64: how arrays travel in ONNX metadata (text only)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def unpack_array(text: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `pack_array`."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape).astype(np.float32)


@dataclass(frozen=True)
class LatentPrior:
    """z = mean + scale_tril @ eps with eps ~ N(0, I): mean (D,), scale_tril (D, D) lower-triangular."""

    mean: np.ndarray
    scale_tril: np.ndarray

    @classmethod
    def standard(cls, latent_dim: int) -> "LatentPrior":
        """N(0, I)."""
        return cls(np.zeros(latent_dim, np.float32), np.eye(latent_dim, dtype=np.float32))

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], latent_dim: int) -> "LatentPrior":
        """Read the fitted prior from a decoder's metadata (N(0, I) when it has none)."""
        if MEAN_KEY not in metadata or SCALE_KEY not in metadata:
            return cls.standard(latent_dim)
        return cls(unpack_array(metadata[MEAN_KEY], (latent_dim,)),
                   unpack_array(metadata[SCALE_KEY], (latent_dim, latent_dim)))

    def latent(self, seed: int, index: int) -> np.ndarray:
        """The latent of image `index`: (D,) float32, from a generator seeded by (seed, index) alone, so an
        image never depends on the batch size, the shard or what was generated before it."""
        eps = np.random.default_rng([seed, index]).standard_normal(len(self.mean), dtype=np.float32)
        return self.mean + self.scale_tril @ eps  # one image at a time: no batch-size-dependent BLAS blocking
