"""What each part of the denoiser's degradation model buys: short denoiser-only trainings, one per recipe.

Each recipe trains a fresh denoiser (the built-in architecture, same seed, same batches, same steps) on the
training split of a face folder, then scores it on the held-out split (the split of `animevae train`):
Gaussian sigma 25 and 50, JPEG quality 20, 40 and 90 (Pillow, 4:2:0) and clean input, PSNR in dB.
Recipes: those of animevae.training.degrade.RECIPES ("gaussian" is what the denoiser trained on before), plus "real"
without multi-scale crops ("real/1x"). Equal steps, not equal minutes, so a busy machine does not bias it.

    python benchmarks/bench_degradations.py --data faces-dev --steps 300 [--recipes gaussian,real] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from animevae.config import ModelConfig
from animevae.images import decode_rgb, find_images, pixel_hash, square_resize
from animevae.training.data import split_holdout
from animevae.training.degrade import RECIPES, SCALES, degrade_batch, jpeg_bytes_roundtrip, multiscale_crop
from animevae.training.model import Denoiser, add_noise, psnr

CROP = 32
CASES = ("sigma 25", "sigma 50", "jpeg q20", "jpeg q40", "jpeg q90", "clean")


def load_faces(data: Path, held_out_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held_out) as (N, 3, 64, 64) float in [0, 1], split by content hash as `animevae train` does."""
    decoded = [square_resize(decode_rgb(path), 64) for path in find_images(data).files]
    train_idx, val_idx = split_holdout([pixel_hash(p) for p in decoded], len(decoded), held_out_count)
    pixels = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float() / 255.0
    return pixels[torch.from_numpy(train_idx)], pixels[torch.from_numpy(val_idx)]


def test_inputs(clean: torch.Tensor) -> dict[str, torch.Tensor]:
    """The degraded held-out images per case (fixed seed; JPEG made by Pillow at its default 4:2:0)."""
    generator = torch.Generator().manual_seed(1234)
    uint8 = (clean.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    cases = {f"sigma {s}": add_noise(clean, float(s), generator) for s in (25, 50)}
    for quality in (20, 40, 90):
        jpeg = np.stack([jpeg_bytes_roundtrip(image, quality) for image in uint8])
        cases[f"jpeg q{quality}"] = torch.from_numpy(jpeg).permute(0, 3, 1, 2).float() / 255.0
    cases["clean"] = clean
    return cases


def train_denoiser(train: torch.Tensor, recipe_name: str, steps: int, seed: int = 0) -> Denoiser:
    """A fresh built-in-size denoiser trained `steps` steps of 64 crops with one recipe (cosine-decayed lr)."""
    torch.manual_seed(seed)
    model = Denoiser(ModelConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator()
    recipe = RECIPES[recipe_name.removesuffix("/1x")]
    scales = {1.0: 1.0} if recipe_name.endswith("/1x") else SCALES
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        generator.manual_seed(seed * 7919 + step)
        batch = train[torch.randint(len(train), (64,), generator=generator)]
        clean = multiscale_crop(batch, CROP, generator, scales)
        noisy = degrade_batch(clean, generator, 55.0, recipe)
        loss = F.mse_loss(model(noisy), clean)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model.eval()


@torch.no_grad()
def score(model: Denoiser | None, cases: dict[str, torch.Tensor], clean: torch.Tensor) -> dict[str, float]:
    """Mean PSNR per case of the model's output (of the input itself when model is None)."""
    out = {}
    for name, noisy in cases.items():
        restored = noisy if model is None else torch.cat([model(noisy[b : b + 100]) for b in range(0, len(noisy), 100)])
        out[name] = psnr(restored, clean).mean().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder of clean faces")
    parser.add_argument("--steps", type=int, default=300, help="training steps of 64 crops per recipe")
    parser.add_argument("--recipes", default=",".join([*RECIPES, "real/1x"]))
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train, held_out = load_faces(args.data, args.held_out)
    cases = test_inputs(held_out)
    rows = {"(input)": score(None, cases, held_out)}
    print(f"{len(train)} training faces, {len(held_out)} held out, {args.steps} steps of 64 {CROP}x{CROP} crops")
    print(f"{'recipe':<16}" + "".join(f"{c:>10}" for c in CASES) + "   minutes")
    print(f"{'(input)':<16}" + "".join(f"{rows['(input)'][c]:10.2f}" for c in CASES), flush=True)
    for name in args.recipes.split(","):
        start = time.perf_counter()
        rows[name] = score(train_denoiser(train, name, args.steps), cases, held_out)
        minutes = (time.perf_counter() - start) / 60
        print(f"{name:<16}" + "".join(f"{rows[name][c]:10.2f}" for c in CASES) + f"   {minutes:7.1f}", flush=True)


if __name__ == "__main__":
    main()
