"""The reference: a plain VAE as the common VAE repositories configure it, trained and scored like ours.

Configuration (AntixK/PyTorch-VAE's VanillaVAE): 5 stride-2 conv layers 32..512 with BatchNorm and LeakyReLU,
latent 128, a mirrored transposed-conv decoder, loss = mean MSE + 0.00025 * KL, Adam 5e-3, batch 64, fp32,
samples from N(0, I). Trained for --minutes of wall clock on the same split as `animevae train` (the same
held-out images by content hash), then scored with animevae.training.evaluate's own functions, and the numbers of an
animevae run (its evaluation.json, from `animevae evaluate`) are printed beside it when --run is given.

    python benchmarks/plain_vae.py --data faces-dev --minutes 10 [--run runs/builtin]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from animevae.training.data import split_holdout
from animevae.training.evaluate import as_saved, mean_pairwise_distance, nearest_training_faces, reconstruction_scores
from animevae.training.realism import classifier_rows, realism_score
from animevae.progress import SilentReporter
from animevae.training.data import load_training_images

HIDDEN = (32, 64, 128, 256, 512)


class PlainVAE(nn.Module):
    """VanillaVAE: (B, 3, 64, 64) in [0, 1] -> reconstruction, mu, logvar."""

    def __init__(self, latent: int = 128) -> None:
        super().__init__()
        layers, channels = [], 3
        for width in HIDDEN:
            layers += [nn.Conv2d(channels, width, 3, 2, 1), nn.BatchNorm2d(width), nn.LeakyReLU()]
            channels = width
        self.encoder = nn.Sequential(*layers)
        self.fc_mu, self.fc_var = nn.Linear(512 * 4, latent), nn.Linear(512 * 4, latent)
        self.decoder_input = nn.Linear(latent, 512 * 4)
        layers = []
        for a, b in zip(HIDDEN[::-1], HIDDEN[::-1][1:]):
            layers += [nn.ConvTranspose2d(a, b, 3, 2, 1, output_padding=1), nn.BatchNorm2d(b), nn.LeakyReLU()]
        layers += [nn.ConvTranspose2d(32, 32, 3, 2, 1, output_padding=1), nn.BatchNorm2d(32), nn.LeakyReLU(),
                   nn.Conv2d(32, 3, 3, 1, 1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x).flatten(1)  # (B, 512 * 2 * 2)
        return self.fc_mu(features), self.fc_var(features)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.decoder_input(z).view(-1, 512, 2, 2))


class _Adapter:
    """Lets animevae.training.evaluate.reconstruction_scores score the plain VAE (encode(x).mode(), decoder(z))."""

    def __init__(self, model: PlainVAE) -> None:
        self.model = model
        self.decoder = model.decode

    def encode(self, x: torch.Tensor):
        mu, _ = self.model.encode(x)
        return type("Posterior", (), {"mode": lambda self: mu})()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--run", type=Path, help="an animevae run folder holding evaluation.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    loaded = load_training_images(args.data, 64, Path("runs") / ".cache", SilentReporter())
    images, hashes = loaded.images, loaded.hashes
    train_idx, val_idx = split_holdout(hashes, len(images), 500)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    train_x, held_out = pixels[torch.from_numpy(train_idx)], pixels[torch.from_numpy(val_idx)]
    model = PlainVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    deadline, steps = time.monotonic() + args.minutes * 60, 0
    while time.monotonic() < deadline:
        for batch in torch.randperm(len(train_x)).split(64):
            x = train_x[batch]
            mu, logvar = model.encode(x)
            recon = model.decode(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))
            kl = torch.mean(-0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1))
            loss = F.mse_loss(recon, x) + 0.00025 * kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if time.monotonic() >= deadline:
                break
    model.eval()
    with torch.no_grad():
        recon_psnr, recon_ssim = reconstruction_scores(_Adapter(model), held_out)
        # As `evaluate` draws and scores them: 1,000 samples for the classifier's training side, then one per
        # held-out face for its test; the first 1,000 for diversity and copying. Rounded to 8 bits, as saved.
        real_train = train_x[classifier_rows(len(train_x), 1000)]
        drawn = as_saved(model.decode(torch.randn(len(real_train) + len(held_out), 128,
                                                  generator=torch.Generator().manual_seed(0))))
    samples = drawn[:1000]
    # One pass over the training faces and their mirror images for the samples and the held-out faces.
    sample_nn, held_nn = nearest_training_faces(torch.cat([samples, held_out]), train_x)[0].split(
        [len(samples), len(held_out)])
    realism = realism_score(real_train, drawn[: len(real_train)], held_out, drawn[len(real_train) :])
    plain = {
        "recon_psnr": round(recon_psnr, 3), "recon_ssim": round(recon_ssim, 4),
        "sample_diversity": round(mean_pairwise_distance(samples) / mean_pairwise_distance(held_out), 4),
        "copy_rate": round((sample_nn < torch.quantile(held_nn, 0.01)).float().mean().item(), 4),
        "realism_samples_accuracy": realism.accuracy, "realism_samples_auc": realism.auc,
    }
    print(f"plain VAE: {steps} steps of 64 in {args.minutes:g} min")
    ours = json.loads((args.run / "evaluation.json").read_text()) if args.run else {}
    print(f"{'metric':32} {'plain VAE':>10} {'animevae':>10}")
    for key, value in plain.items():
        print(f"{key:32} {value:10.4f} {ours.get(key, float('nan')):10.4f}")


if __name__ == "__main__":
    main()
