"""Which discriminator can see what gives a decoder away. Two discriminators on the same fixed images, one run.

The adversarial loss (animevae.training.adversarial) only helps if its discriminator can tell reconstructions
from real faces. This trains each candidate with the hinge loss on real training faces against the model's
reconstructions of other training faces (fixed images, 8-bit as saved: the easiest case, with no generator
moving away), `--steps` steps of 32 + 32 images (both sides drawn from the same faces, so that telling
them apart cannot come from remembering which faces are on which side), and prints its hinge loss (1.0 =
cannot tell, 0 = certain)
and the mean logits of each side, every 50 steps and as the median of the last 50:
- `patch`: the discriminator `train --adversarial-weight` uses (pix2pix's, lighter, no normalisation);
- `classifier_patch`: the realism classifier's layers (a full-resolution first stage, BatchNorm) with one
  logit per 8x8 cell instead of the global average.

    python benchmarks/discriminators.py --data faces-dev [--model builtin] [--steps 400]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from torch import nn

from animevae.config import ModelConfig
from animevae.training.adversarial import PatchDiscriminator, hinge_discriminator_loss
from animevae.training.evaluate import as_saved
from animevae.training.realism import classifier_net, classifier_rows
from realism_cues import batched, coder_and_faces  # a sibling script: python puts benchmarks/ on the path


def classifier_patch(width: int = 32) -> nn.Module:
    """The realism classifier's stages, one logit per 8x8 cell: (B, 3, S, S) in [0, 1] -> (B, 1, S/8, S/8)."""
    stages = list(classifier_net(width))[:-3]  # without the global average, flatten and linear head
    net = nn.Sequential(*stages, nn.Conv2d(8 * width, 1, 1))
    return nn.Sequential(_Centre(), net)


class _Centre(nn.Module):
    """[0, 1] -> [-1, 1], as PatchDiscriminator scales its input."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * 2.0 - 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default="builtin", help="export folder, or builtin")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    args = parser.parse_args()
    torch.manual_seed(0)
    _, decoder, encoder, train_faces, _ = coder_and_faces(args.runs_dir, args.model, args.data)
    real = train_faces[classifier_rows(len(train_faces), 2000)]  # (N, 3, S, S)
    recon = batched(lambda x: decoder.run(encoder.run(x)[0])[0], real.numpy())
    fake = as_saved(torch.from_numpy(recon))
    candidates = {"patch": (lambda: PatchDiscriminator(ModelConfig()), 2e-4),
                  "classifier_patch": (classifier_patch, 1e-3)}
    for name, (build, lr) in candidates.items():
        disc = build()
        optimizer = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9))
        generator = torch.Generator().manual_seed(0)
        losses = []
        for step in range(1, args.steps + 1):
            reals = real[torch.randint(len(real), (32,), generator=generator)]
            fakes = fake[torch.randint(len(real), (32,), generator=generator)]
            logits = disc(torch.cat([reals, fakes]))
            loss = hinge_discriminator_loss(logits[:32], logits[32:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if step % 50 == 0:
                print(f"{name:17s} step {step:4d}  hinge loss {loss.item():.3f}  logits real "
                      f"{logits[:32].mean().item():+.2f} reconstructed {logits[32:].mean().item():+.2f}", flush=True)
        print(f"{name}: lr {lr}, median hinge loss of the last 50 steps {statistics.median(losses[-50:]):.3f}")


if __name__ == "__main__":
    main()
