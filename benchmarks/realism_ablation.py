"""What each piece of the realism recipe buys, on one trained run: raw or averaged (EMA) weights, mixture or
diffusion prior, temperature. Every row is scored by the converged real-vs-generated CNN (animevae.training.realism) on
the held-out split, plus sample diversity and copying, exactly as `animevae evaluate` computes them.

    python benchmarks/realism_ablation.py --data faces-dev --run runs/NAME [--temperatures 1.0 0.8]

(The adversarial loss needs a run of its own: train one with TrainConfig(adversarial_weight=0) and pass it too.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from animevae.training.checkpoint import load_checkpoint
from animevae.training.data import split_holdout
from animevae.training.evaluate import (as_saved, draw_samples, mean_pairwise_distance, nearest_training_faces,
                                        reconstruct, reconstruction_scores)
from animevae.training.export import load_run_models, load_run_sampler
from animevae.training.model import VAE
from animevae.progress import SilentReporter
from animevae.training.realism import classifier_rows, realism_score
from animevae.training.data import load_training_images


def _raw_vae(run_dir: Path) -> VAE:
    """The run's VAE with its raw (not averaged) weights and the averaged model's fitted mixture."""
    checkpoint = load_checkpoint(run_dir / "last.safetensors")
    vae = VAE(checkpoint.config.model)
    state = checkpoint.module_state("vae")
    ema = checkpoint.module_state("vae_ema") or state
    state.update({k: v for k, v in ema.items() if k.startswith("prior_")})
    vae.load_state_dict(state)
    return vae.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--run", type=Path, nargs="+", required=True)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--samples", nargs="*", default=["ema/diffusion", "ema/mixture", "raw/diffusion"],
                        help="WEIGHTS/PRIOR pairs whose samples are scored (weights: ema or raw)")
    parser.add_argument("--recon", nargs="*", default=["ema", "raw"], help="weights whose reconstructions are scored")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    args = parser.parse_args()
    for run_dir in args.run:
        config, ema_vae, _ = load_run_models(run_dir)
        sampler = load_run_sampler(run_dir)
        loaded = load_training_images(args.data, config.model.image_size, run_dir.parent / ".cache",
                                      SilentReporter())
        images, hashes = loaded.images, loaded.hashes
        train_idx, val_idx = split_holdout(hashes, len(images), config.train.val_size)
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        train_images, held_out = pixels[torch.from_numpy(train_idx)], pixels[torch.from_numpy(val_idx)]
        real_train = train_images[classifier_rows(len(train_images), args.per_class)]
        held_nn, _ = nearest_training_faces(held_out, train_images)
        threshold = torch.quantile(held_nn, 0.01).item()
        held_diversity = mean_pairwise_distance(held_out)
        weights = {"ema": ema_vae, "raw": _raw_vae(run_dir)}
        for name in args.recon:
            vae = weights[name]
            recon_psnr, _ = reconstruction_scores(vae, held_out)
            recon = realism_score(real_train, as_saved(reconstruct(vae, real_train)), held_out,
                                  as_saved(reconstruct(vae, held_out)))
            print(json.dumps({"run": run_dir.name, "weights": name, "recon_psnr": round(recon_psnr, 2),
                              "recon_accuracy": recon.accuracy, "recon_auc": recon.auc}), flush=True)
        for pair in args.samples:
            name, prior_name = pair.split("/")
            prior = sampler if prior_name == "diffusion" else None
            if prior_name == "diffusion" and sampler is None:
                continue
            for temperature in args.temperatures:
                drawn = as_saved(draw_samples(weights[name], len(real_train) + len(held_out), seed=1, sampler=prior,
                                              temperature=temperature))
                sample = realism_score(real_train, drawn[: len(real_train)], held_out, drawn[len(real_train) :])
                sample_nn, _ = nearest_training_faces(drawn[:1000], train_images)
                print(json.dumps({
                    "run": run_dir.name, "weights": name, "prior": prior_name, "temperature": temperature,
                    "samples_accuracy": sample.accuracy, "samples_auc": sample.auc,
                    "diversity": round(mean_pairwise_distance(drawn) / held_diversity, 3),
                    "copy_rate": round((sample_nn < threshold).float().mean().item(), 4)}), flush=True)


if __name__ == "__main__":
    main()
