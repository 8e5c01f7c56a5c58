"""The latent prior used for sampling: a Gaussian mixture fitted to the encoded training set. numpy only.

A VAE's aggregate posterior rarely matches N(0, I); decoding N(0, I) draws then gives smudges. Fitting a
density to the training latents after training (Ghosh et al. 2020; Dai & Wipf's two-stage VAE) fixes most
of it at no training cost; a mixture keeps distinct styles apart instead of blending them. The fit is stored
in the checkpoint and in decoder.onnx's metadata.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import cached_property

import numpy as np

WEIGHTS_KEY = "animevae.prior_weights"
MEANS_KEY = "animevae.prior_means"
# The components' standard deviations, (K, D): each component has a diagonal covariance.
SCALES_KEY = "animevae.prior_scales"
# Labelled models only: the class of each component, (K,) (one mixture per class).
CLASSES_KEY = "animevae.prior_classes"


def pack_array(values: np.ndarray) -> str:
    """float32 little-endian bytes, base64: how arrays travel in ONNX metadata (text only)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def unpack_array(text: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `pack_array`."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape).astype(np.float32)


@dataclass(frozen=True)
class LatentPrior:
    """sum_k weights[k] N(means[k], diag(scales[k])^2): weights (K,), means (K, D), standard deviations (K, D).

    A labelled model's prior also has `classes` (K,): the class each component belongs to, so that the
    components of class c, their weights renormalised, are that class's own mixture."""

    weights: np.ndarray
    means: np.ndarray
    scales: np.ndarray
    classes: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.means.ndim != 2 or self.scales.shape != self.means.shape or self.weights.shape != self.means.shape[:1]:
            raise ValueError(f"a mixture needs weights (K,), means and scales (K, D); got {self.weights.shape}, "
                             f"{self.means.shape} and {self.scales.shape}")

    @classmethod
    def standard(cls, latent_dim: int) -> "LatentPrior":
        """N(0, I)."""
        return cls(np.ones(1, np.float32), np.zeros((1, latent_dim), np.float32), np.ones((1, latent_dim), np.float32))

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], latent_dim: int | None = None) -> "LatentPrior":
        """Read the fitted prior from a decoder's metadata (N(0, I) when it has none); the latent size is the
        decoder's own unless given. ValueError when only some of its entries are there."""
        if latent_dim is None:
            latent_dim = int(metadata["animevae.latent_dim"])
        keys = (WEIGHTS_KEY, MEANS_KEY, SCALES_KEY)
        if not any(key in metadata for key in keys):
            return cls.standard(latent_dim)
        missing = [key for key in keys if key not in metadata]
        if missing:
            raise ValueError(f"no {missing[0]}")
        weights = unpack_array(metadata[WEIGHTS_KEY], (-1,))
        k = len(weights)
        classes = unpack_array(metadata[CLASSES_KEY], (k,)).astype(np.int64) if CLASSES_KEY in metadata else None
        return cls(weights, unpack_array(metadata[MEANS_KEY], (k, latent_dim)),
                   unpack_array(metadata[SCALES_KEY], (k, latent_dim)), classes)

    def used(self) -> "LatentPrior":
        """The same mixture without its zero-weight components (a fit pads to the configured count, and a labelled
        model has that many per class): the same draws, since a component of weight 0 is never picked, and a
        decoder's metadata a fraction of the size."""
        keep = self.weights > 0
        if keep.all() or not keep.any():
            return self
        return LatentPrior(self.weights[keep], self.means[keep], self.scales[keep],
                           None if self.classes is None else self.classes[keep])

    def to_metadata(self) -> dict[str, str]:
        """The metadata entries that `from_metadata` reads."""
        classes = {} if self.classes is None else {CLASSES_KEY: pack_array(self.classes)}
        return {WEIGHTS_KEY: pack_array(self.weights), MEANS_KEY: pack_array(self.means),
                SCALES_KEY: pack_array(self.scales), **classes}

    def latent(self, seed: int, index: int, temperature: float = 1.0) -> np.ndarray:
        """The latent of image `index`: (D,) float32, from a generator seeded by (seed, index) alone, so an
        image never depends on the batch size, the shard or what was generated before it. `temperature`
        scales the draw within its component."""
        rng = np.random.default_rng([seed, index])
        return self._draw(rng, self.cumulative, temperature)

    def class_latent(self, seed: int, label: int, index: int, temperature: float = 1.0) -> np.ndarray:
        """The latent of image `index` of class `label`: (D,) float32 from class `label`'s mixture, with a
        generator seeded by (seed, label, index) alone (three numbers: never the stream of an unlabelled draw)."""
        rng = np.random.default_rng([seed, label, index])
        return self._draw(rng, self.class_cumulative[label], temperature)

    def _draw(self, rng: np.random.Generator, cumulative: np.ndarray, temperature: float) -> np.ndarray:
        component = min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(self.weights) - 1)
        eps = rng.standard_normal(self.means.shape[1], dtype=np.float32)
        if temperature != 1.0:
            eps *= np.float32(temperature)
        return self.means[component] + self.scales[component] * eps

    @cached_property
    def cumulative(self) -> np.ndarray:
        """Cumulative component weights, (K,)."""
        return np.cumsum(self.weights.astype(np.float64))

    @cached_property
    def class_cumulative(self) -> np.ndarray:
        """Each class's cumulative component weights over all K components (others weigh 0), (C, K)."""
        if self.classes is None:
            raise ValueError("this prior has no classes")
        count = int(self.classes.max()) + 1
        weights = self.weights.astype(np.float64)[None, :] * (self.classes[None, :] == np.arange(count)[:, None])
        return np.cumsum(weights, axis=1) / weights.sum(axis=1, keepdims=True)

    @cached_property
    def mean(self) -> np.ndarray:
        """Mean of the whole mixture, (D,)."""
        return (self.weights[:, None] * self.means).sum(0).astype(np.float32)

    @cached_property
    def covariance(self) -> np.ndarray:
        """Covariance of the whole mixture, (D, D) float64."""
        scales, means, w = self.scales.astype(np.float64), self.means.astype(np.float64), self.weights
        within = np.diag(w @ scales**2)
        centred = means - self.mean.astype(np.float64)
        return within + np.einsum("k,ki,kj->ij", w, centred, centred)

    @cached_property
    def scale_tril(self) -> np.ndarray:
        """Cholesky factor of the whole mixture's covariance, (D, D) float32."""
        return np.linalg.cholesky(self.covariance).astype(np.float32)
