"""What the torch-free commands know about a model: its decoder's metadata, read and checked once into one object.

The decoder carries the model's sizes, its Gaussian mixture (prior.py) and, for a labelled model, its classes and
their training counts (labels.py); a diffusion prior is a file of its own (prior.onnx, a role of the model set in
model_files.py). Commands hand a `ModelInfo` down instead of reading metadata keys where they need them, so
malformed metadata is one clear error when the model opens, never a KeyError halfway through a job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from animevae.errors import DataError, ModelError
from animevae.labels import ClassInfo
from animevae.outputs import file_digest
from animevae.prior import LatentPrior

# Where generated latents come from, as info, generate's summary and evaluate's report name it.
DIFFUSION_PRIOR = "diffusion prior"
MIXTURE = "Gaussian mixture"
CLASS_MIXTURE = "class's Gaussian mixture"
# What an export says about itself (shown by `animevae info`), without the "animevae." prefix.
PROVENANCE_KEYS = ("run", "version", "format_version", "training_data")
_REEXPORT = "export the model again with `animevae export --onnx`"


@dataclass(frozen=True)
class ModelInfo:
    """One model's description: sizes, the mixture, the classes, the diffusion prior's file and the digests that
    guard output folders. Small and picklable, so worker processes get it as it is."""

    decoder_file: Path
    image_size: int  # side of the square images
    latent_dim: int
    mixture: LatentPrior  # N(0, I) where the decoder carries none
    classes: ClassInfo | None = None  # None: trained without labels
    prior_file: Path | None = None  # prior.onnx: latents come from the diffusion prior, else from the mixture
    provenance: dict[str, str] = field(default_factory=dict)  # PROVENANCE_KEYS -> their text, where present

    @property
    def latent_source(self) -> str:
        """Where unlabelled draws come from: DIFFUSION_PRIOR or MIXTURE."""
        return DIFFUSION_PRIOR if self.prior_file is not None else MIXTURE

    @cached_property
    def digest(self) -> str:
        """sha256 of the decoder file: which model wrote an output folder."""
        return file_digest(self.decoder_file)

    @cached_property
    def prior_digest(self) -> str | None:
        """sha256 of prior.onnx, None without one."""
        return file_digest(self.prior_file) if self.prior_file is not None else None


def read_model_info(decoder_file: Path, metadata: dict[str, str], prior_file: Path | None = None) -> ModelInfo:
    """Parse and check the metadata of a decoder that runtime.open_model opened (which checked its sizes);
    ModelError naming the file for anything malformed."""
    image_size, latent_dim = int(metadata["animevae.image_size"]), int(metadata["animevae.latent_dim"])
    mixture = _mixture(decoder_file, metadata, latent_dim)
    classes = _classes(decoder_file, metadata, mixture)
    provenance = {key: metadata[f"animevae.{key}"] for key in PROVENANCE_KEYS if f"animevae.{key}" in metadata}
    return ModelInfo(decoder_file, image_size, latent_dim, mixture, classes, prior_file, provenance)


def _mixture(path: Path, metadata: dict[str, str], latent_dim: int) -> LatentPrior:
    try:
        mixture = LatentPrior.from_metadata(metadata, latent_dim)
    except (ValueError, TypeError) as error:  # binascii.Error is a ValueError
        raise ModelError(f"{path} has a malformed latent prior in its metadata ({str(error)[:120]})",
                         _REEXPORT) from None
    weights = mixture.weights
    usable = all(np.isfinite(a).all() for a in (weights, mixture.means, mixture.scales))
    if not (usable and len(weights) > 0 and (weights >= 0).all() and weights.sum() > 0):
        raise ModelError(f"{path} has a latent prior with invalid numbers in its metadata", _REEXPORT)
    return mixture


def _classes(path: Path, metadata: dict[str, str], mixture: LatentPrior) -> ClassInfo | None:
    """A labelled decoder's class list must parse, and each class must own components of positive weight."""
    try:
        classes = ClassInfo.from_metadata(metadata)
    except DataError as error:
        raise ModelError(f"{path}: {error.message}", _REEXPORT) from None
    if classes is None:
        return None
    owners = mixture.classes
    if owners is None or len(owners) != len(mixture.weights) or owners.max() >= len(classes.names) or not all(
            mixture.weights[owners == c].sum() > 0 for c in range(len(classes.names))):
        raise ModelError(f"{path} lists classes its latent prior does not cover", _REEXPORT)
    return classes
