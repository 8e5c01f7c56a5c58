"""The adversarial loss: hinge values on known logits, the adaptive weight, the discriminator's patches."""

from __future__ import annotations

import pytest
import torch

from animevae.training.adversarial import PatchDiscriminator, adaptive_weight, generator_loss, hinge_discriminator_loss
from animevae.config import ModelConfig


def test_hinge_loss_is_zero_beyond_the_margins_and_one_at_zero() -> None:
    assert hinge_discriminator_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert hinge_discriminator_loss(torch.zeros(4), torch.zeros(4)).item() == 1.0
    # real at 0.5 -> relu(0.5) = 0.5; fake at 0.5 -> relu(1.5) = 1.5; mean of the two halves = 1.0
    assert hinge_discriminator_loss(torch.full((2,), 0.5), torch.full((2,), 0.5)).item() == pytest.approx(1.0)
    assert generator_loss(torch.tensor([-3.0, -1.0])).item() == 2.0


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer() -> None:
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    reconstruction = (3.0 * weight).sum()  # gradient (3, 3): norm 3 * sqrt(2)
    adversarial = (weight**2).sum()  # gradient (2, 4): norm sqrt(20)
    expected = (3 * 2**0.5) / (20**0.5 + 1e-4)
    assert adaptive_weight(reconstruction, adversarial, weight).item() == pytest.approx(expected, rel=1e-5)
    assert not adaptive_weight(reconstruction, adversarial, weight).requires_grad


def test_adaptive_weight_is_clamped_when_the_adversarial_gradient_vanishes() -> None:
    weight = torch.nn.Parameter(torch.tensor([1.0]))
    assert adaptive_weight((5e3 * weight).sum(), (0.0 * weight).sum(), weight).item() == 1e4


def test_discriminator_scores_one_logit_per_patch() -> None:
    config = ModelConfig(image_size=32, latent_dim=8, channels=(8, 16), disc_channels=4)
    assert PatchDiscriminator(config)(torch.rand(3, 3, 32, 32)).shape == (3, 1, 4, 4)
