"""The adversarial part of the VAE loss, as taming-transformers' VQGAN and latent diffusion's autoencoders train it.

A patch discriminator scores overlapping patches of an image as real or reconstructed, with the hinge loss. The
decoder gets -D(recon) added to its loss after a warm-up, weighted adaptively: the ratio of the gradient norms
of the reconstruction loss and the adversarial loss at the decoder's last layer, so neither drowns the other
whatever their scales. This is what turns blurry reconstructions into crisp outlines and flat colours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from animevae.config import ModelConfig

MAX_ADAPTIVE_WEIGHT = 1e4


class PatchDiscriminator(nn.Module):
    """(B, 3, S, S) in [0, 1] -> (B, 1, S/8, S/8) logits, one per overlapping patch (about 38 px wide).

    pix2pix's NLayerDiscriminator, made lighter for CPUs: three stride-2 4x4 convs and a 3x3 head. No
    BatchNorm: with it, a batch of only reconstructions (the decoder's pass) and a mixed batch (the
    discriminator's step) are normalised differently, and the discriminator learns the batch, not the image."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config.disc_channels
        self.layers = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1), nn.LeakyReLU(0.2),  # (B, c, S/2, S/2)
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.LeakyReLU(0.2),  # (B, 2c, S/4, S/4)
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.LeakyReLU(0.2),  # (B, 4c, S/8, S/8)
            nn.Conv2d(4 * c, 1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image * 2.0 - 1.0)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))."""
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean D(fake): the decoder is pushed toward what the discriminator calls real."""
    return -fake_logits.float().mean()


def adaptive_weight(reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor,
                    last_layer: torch.Tensor) -> torch.Tensor:
    """||d rec / d W|| / ||d adv / d W|| at the decoder's last weight W, clamped to [0, 1e4], detached."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (adv_grad.norm() + 1e-4)
    return weight.clamp(0.0, MAX_ADAPTIVE_WEIGHT).detach()
