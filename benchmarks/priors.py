"""Which latent mixture gives samples the spread of real faces without copying them. Several fits in one run.

Fits each candidate mixture to the run's training latents and their mirror images (as `train` does at the end
of a run; `--plain-diagonal` fits on the training latents alone, as the previous version did), decodes
`--samples` draws of each for `--repeats` seeds, and prints per candidate: sample diversity (mean pairwise RMS
distance of the samples over the held-out faces', mean and spread over the seeds), the copying rate (samples
closer to a training face than 99% of held-out faces are), and the fit's time. The run's own decoder is used for
every candidate; only the prior changes.

    python benchmarks/priors.py --data faces-dev --run builtin-run-folder [--full 10] [--diagonal 200,700]
                                [--plain-diagonal 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from animevae.training.data import load_training_images, split_holdout
from animevae.prior import LatentPrior
from animevae.progress import SilentReporter
from animevae.training.evaluate import as_saved, mean_pairwise_distance, nearest_training_faces, refuse_trained_on
from animevae.training.export import load_run_models
from animevae.training.model import fit_mixture


def posteriors(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) mu and logvar of (N, 3, S, S) images."""
    with torch.no_grad():
        moments = [vae.encoder(images[i : i + 512]) for i in range(0, len(images), 512)]
    return torch.cat([m for m, _ in moments]), torch.cat([v for _, v in moments])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the folder (or packed set) the run trained on")
    parser.add_argument("--run", type=Path, required=True, help="the run folder (holds last.safetensors)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the prepared-set cache lives")
    parser.add_argument("--full", default="10", help="comma-separated component counts of full-covariance fits")
    parser.add_argument("--diagonal", default="200,700", help="comma-separated counts of diagonal fits")
    parser.add_argument("--plain-diagonal", default="200",
                        help="comma-separated counts of diagonal fits on the unmirrored latents")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config, vae, _ = load_run_models(args.run)
    loaded = load_training_images(args.data, config.model.image_size, args.runs_dir / ".cache", SilentReporter())
    train_idx, val_idx = split_holdout(loaded.hashes, len(loaded.images), config.train.val_size)
    refuse_trained_on(args.run, args.data, config, loaded.hashes, val_idx)
    pixels = torch.from_numpy(loaded.images).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, S, S)
    train_images, held_out = pixels[torch.from_numpy(train_idx)], pixels[torch.from_numpy(val_idx)]
    held_spread = mean_pairwise_distance(held_out)
    held_nn, _ = nearest_training_faces(held_out, train_images)
    threshold = torch.quantile(held_nn, 0.01).item()
    plain = posteriors(vae, train_images)
    mirrored = [torch.cat(pair) for pair in zip(plain, posteriors(vae, train_images.flip(3)))]
    candidates = [("full", int(k), mirrored, "") for k in args.full.split(",") if k] + \
                 [("diagonal", int(k), mirrored, "") for k in args.diagonal.split(",") if k] + \
                 [("diagonal", int(k), plain, " (unmirrored)") for k in args.plain_diagonal.split(",") if k]
    print(f"{len(train_images)} training latents, {len(held_out)} held-out faces, {args.samples} samples x "
          f"{args.repeats} seeds per candidate")
    print(f"{'mixture':28s} {'used':>5s} {'fit s':>6s} {'diversity (std)':>16s} {'copying':>8s}")
    for kind, components, (mu, logvar), note in candidates:
        started = time.perf_counter()
        weights, means, scales = fit_mixture(mu, logvar, components, kind)
        fit_s = time.perf_counter() - started
        prior = LatentPrior(weights.numpy(), means.numpy(), scales.numpy())  # drawn as `generate` draws
        draws = [np.stack([prior.latent(seed, index) for index in range(args.samples)]) for seed in range(args.repeats)]
        with torch.no_grad():
            images = torch.stack([as_saved(vae.decoder(torch.from_numpy(z))) for z in draws])  # (repeats, n, 3, S, S)
        # Every seed's samples in one pass over the training faces and their mirror images: (repeats, n)
        nearest = nearest_training_faces(images.flatten(0, 1), train_images)[0].view(args.repeats, -1)
        spreads = [mean_pairwise_distance(seed_images) / held_spread for seed_images in images]
        copies = (nearest < threshold).float().mean(1).tolist()
        name = f"{kind} {components}{note}"
        print(f"{name:28s} {int((weights > 0).sum()):5d} {fit_s:6.1f} "
              f"{statistics.mean(spreads):9.3f} ({statistics.pstdev(spreads):.3f}) {statistics.mean(copies):8.2%}")


if __name__ == "__main__":
    main()
