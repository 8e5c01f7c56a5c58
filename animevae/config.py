"""Model and training settings. Stored in every checkpoint (config.json) and ONNX file, so loading needs no flags."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the VAE and the denoiser."""

    image_size: int = 64
    latent_dim: int = 128
    # Encoder widths, one stride-2 level each; the decoder mirrors them. 64 px / 2**4 = a 4x4 base grid.
    channels: tuple[int, ...] = (32, 64, 128, 256)
    # Denoiser: a two-level residual U-Net on the pixel-unshuffled (2x2 -> channels) image.
    denoiser_width: int = 32
    denoiser_blocks: int = 2
    # Gaussians in the mixture fitted to the training latents and their mirror images: the default prior, and
    # what interpolate and traverse read the latent space's centre and main directions from. "diagonal"
    # covariances let many small components follow the data (at most one per
    # model.DIAGONAL_POINTS_PER_COMPONENT latents, so no component sits on a few faces and copies them); a
    # "full" covariance needs 2D + 2 latents per component, so the same data carries far fewer of them.
    prior_components: int = 700
    prior_covariance: str = "diagonal"
    # Where samples come from: "mixture" (the Gaussian mixture) or "diffusion" (the learned prior of diffusion.py,
    # exported as prior.onnx). The mixture is the default: the diffusion prior's samples were no more realistic
    # and less varied (docs/experiments.md), and a run without it never builds or imports it.
    prior: str = "mixture"
    prior_width: int = 256
    prior_blocks: int = 3
    # DDIM steps when sampling: each is one pass of the prior MLP (about 0.3 MFLOP per image at width 256).
    prior_sampling_steps: int = 10
    # Patch discriminator width (adversarial.py); its FLOPs are about a third of the decoder's at 32.
    disc_channels: int = 32
    # Class names of a labelled set (sorted; empty: unlabelled) and each one's image count in it. The latent
    # prior then holds one mixture of prior_components per class; `generate --balance` tops classes up to the
    # counts. Set from the data when a run starts.
    classes: tuple[str, ...] = ()
    class_counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "class_counts", tuple(int(c) for c in self.class_counts))

    @property
    def base_size(self) -> int:
        """Side of the smallest feature map, where the latent is mapped in and out."""
        return self.image_size // 2 ** len(self.channels)

    def check(self) -> None:
        """Raise ValueError when the sizes do not fit together."""
        if self.image_size % 2 ** len(self.channels) or self.base_size < 2:
            raise ValueError(
                f"image size {self.image_size} must be a multiple of 2**{len(self.channels)} (one halving per "
                f"encoder level) and leave a base grid of at least 2x2"
            )
        if self.image_size % 4:
            raise ValueError(f"image size {self.image_size} must be a multiple of 4 (the denoiser halves it twice)")
        if self.latent_dim < 1:
            raise ValueError("latent_dim must be at least 1")
        if self.prior not in ("diffusion", "mixture"):
            raise ValueError(f"prior must be 'diffusion' or 'mixture', not {self.prior!r}")
        if self.prior_covariance not in ("diagonal", "full"):
            raise ValueError(f"prior_covariance must be 'diagonal' or 'full', not {self.prior_covariance!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How a run trains. Epochs or a wall-clock budget (or both: whichever ends first)."""

    epochs: int | None = None
    max_minutes: float | None = None
    # The global batch: under torchrun each of `world_size` processes takes batch_size / world_size of it,
    # so the learning rate below needs no rescaling.
    batch_size: int = 64
    world_size: int = 1
    lr: float = 2e-3
    denoiser_lr: float = 2e-3
    seed: int = 0
    # Images held out for validation: this many, or 10% of the set when smaller.
    val_size: int = 500
    # Noise levels the blind denoiser trains on, on the 0-255 scale.
    noise_sigma_max: float = 55.0
    # Share of the denoiser's training crops that are procedural dead-leaves images (synthetic.py), not faces.
    synthetic_share: float = 0.0
    # Checkpoint at least this often, so a killed run loses little.
    checkpoint_minutes: float = 2.0
    # Adversarial loss (adversarial.py): its weight on top of the adaptive one (0, the default, turns it off),
    # and the share of the run before it starts (the decoder first learns to reconstruct at all, as in VQGAN).
    # Off by default: on a time budget its steps cost more than its realism gained (docs/experiments.md), and a
    # run without it never builds, imports or checkpoints the discriminator.
    adversarial_weight: float = 0.0
    adversarial_start: float = 0.25
    # Exponential moving average of the VAE weights, used for evaluation, sampling and export (0 turns it off);
    # 0.995 averages over about the last 200 steps: short enough for a CPU run of a few thousand steps.
    ema_decay: float = 0.995
    # Share of a time budget spent training the diffusion prior (prior="diffusion") on the final latents, and its
    # number of steps
    # (the least, on a time budget; exactly, on an epoch count, so such runs are reproducible).
    prior_share: float = 0.08
    prior_steps: int = 1000
    prior_lr: float = 1e-3
    # fp32, bf16 (autocast), or auto: measured at the start of the run (see devices.choose_precision).
    precision: str = "auto"
    data_source: str = ""
    # `animevae train-denoiser`: a limit on optimiser steps (None: none), beside or instead of max_minutes.
    steps: int | None = None
    # Where the denoiser's weights started: "builtin" (the built-in denoiser's, when their shapes fit the model
    # config; training/denoiser_start.py) or "scratch". A fine-tune's denoiser_lr is already scaled down.
    denoiser_start: str = "scratch"


@dataclass(frozen=True)
class RunConfig:
    """Everything config.json holds."""

    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    created: float = 0.0
    version: str = ""
    format_version: int = 1
    # "vae": `animevae train` (a VAE and its denoiser); "denoiser": `animevae train-denoiser` (the denoiser alone).
    kind: str = "vae"

    def to_json(self) -> str:
        """Serialise to pretty JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        """Build from parsed JSON, ignoring keys this animevae does not know (a newer one wrote them)."""
        model = _known_fields(ModelConfig, raw.get("model", {}))
        train = _known_fields(TrainConfig, raw.get("train", {}))
        top = _known_fields(cls, raw)
        top.update(model=ModelConfig(**model), train=TrainConfig(**train))
        return cls(**top)


def _known_fields(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}
