"""How little damage the realism classifier needs to tell a face from a real one. Real faces, slightly damaged.

The realism targets ask a decoder's output to fool the converged classifier of `evaluate`. This scores, the way
`evaluate` scores reconstructions (real training faces against their damaged copies, then the held-out faces
against theirs), damage of a known, small size applied to the real faces themselves: a Gaussian blur, JPEG,
and noise of a level or two. Each row prints the damage's PSNR and the classifier's accuracy / AUC, so a
reconstruction's PSNR and accuracy can be read against them: what a decoder would have to reach.

    python benchmarks/realism_floor.py --data faces-dev [--cases blur0.5,jpeg95,noise1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torchvision.transforms.functional as TF

from animevae.training.data import load_training_images, split_holdout
from animevae.progress import SilentReporter
from animevae.training.degrade import jpeg_batch
from animevae.training.evaluate import as_saved
from animevae.training.model import psnr
from animevae.training.realism import classifier_rows, realism_score


def damage(images: torch.Tensor, case: str, seed: int) -> torch.Tensor:
    """(N, 3, S, S) in [0, 1] -> the same faces damaged by `case` (blurS: Gaussian blur of sigma S pixels, 5x5;
    jpegQ: JPEG at quality Q; noiseL: Gaussian noise of L levels of 255), rounded to 8 bits as saved."""
    if case.startswith("blur"):
        return as_saved(TF.gaussian_blur(images, [5, 5], [float(case[4:])] * 2))
    if case.startswith("jpeg"):
        return as_saved(jpeg_batch(images, int(case[4:])))
    if case.startswith("noise"):
        generator = torch.Generator().manual_seed(seed)
        return as_saved(images + torch.randn(images.shape, generator=generator) * float(case[5:]) / 255.0)
    raise SystemExit(f"unknown case {case!r}: use blurS, jpegQ or noiseL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cases", default="blur0.5,jpeg95,noise1")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64, help="image side the set is prepared at")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the prepared-set cache lives")
    args = parser.parse_args()
    loaded = load_training_images(args.data, args.size, args.runs_dir / ".cache", SilentReporter())
    train_idx, val_idx = split_holdout(loaded.hashes, len(loaded.images), 500)
    pixels = torch.from_numpy(loaded.images).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, S, S)
    real_train = pixels[torch.from_numpy(train_idx)][classifier_rows(len(train_idx), args.per_class)]
    real_test = pixels[torch.from_numpy(val_idx)]
    rows = {}
    for case in args.cases.split(","):
        damaged_train, damaged_test = damage(real_train, case, 0), damage(real_test, case, 1)
        score = realism_score(real_train, damaged_train, real_test, damaged_test)
        rows[case] = {"psnr": round(psnr(damaged_test, real_test).mean().item(), 2), "accuracy": score.accuracy,
                      "auc": score.auc, "epochs": score.epochs}
        print(case, json.dumps(rows[case]), flush=True)
    print(json.dumps({"held_out": len(real_test), "per_class": args.per_class, "cases": rows}, indent=2))


if __name__ == "__main__":
    main()
