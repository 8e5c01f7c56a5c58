"""Does a share of procedural dead-leaves images (`train-denoiser --synthetic`) help the denoiser on other art?

Two `train-denoiser` runs on the same TRAIN folder, the same steps, seed and learning rate, one with share 0 and
one with --share; each run's own denoiser (not the one its never-worse rule keeps) is scored on SCORE's images,
which it never trained on, with the built-in denoiser beside them: PSNR of the gated output, saved as 8 bits, at
Gaussian sigma 25 and 50 and JPEG quality 20 (evaluate.denoiser_scores), then the differences share - none.

    python benchmarks/denoiser_synthetic.py --train faces-dev --score devdata/anime/test --steps 400 --lr 0.006
    python benchmarks/denoiser_synthetic.py --quick     # tiny folders and model, 2 steps: checks that it runs
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _quick import write_faces
from animevae.config import ModelConfig, TrainConfig
from animevae.images import find_images
from animevae.training.checkpoint import load_checkpoint
from animevae.training.denoiser_run import train_denoiser
from animevae.training.denoiser_start import builtin_state
from animevae.training.evaluate import denoiser_scores
from animevae.training.model import Denoiser

CASES = ("denoise_psnr_25", "denoise_psnr_50", "denoise_psnr_jpeg20")


def load_faces(folder: Path, count: int, size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8: the first `count` images of `folder` by name, resized."""
    files = sorted(find_images(folder).files)[:count]
    pixels = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)) for f in files]
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()


def scores(model: ModelConfig, state: dict[str, torch.Tensor], faces: torch.Tensor) -> dict[str, float]:
    """The three gated PSNRs of a denoiser with `state` (its own knee) on `faces`."""
    denoiser = Denoiser(model)
    denoiser.load_state_dict(state)
    with torch.no_grad():
        found = denoiser_scores(denoiser.eval(), faces)
    return {case: found[case] for case in CASES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, help="the folder both runs train on (e.g. faces-dev)")
    parser.add_argument("--score", type=Path, help="images to score on, never trained on (e.g. real anime faces)")
    parser.add_argument("--count", type=int, default=300, help="images of --score to use")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=6e-3, help="--lr of train-denoiser (a fine-tune peaks at 0.1x)")
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="tiny folders and model, 2 steps (CI)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = ModelConfig()
        if args.quick:
            args.train, args.score = write_faces(Path(tmp) / "train", 24, 16), write_faces(Path(tmp) / "score", 8, 16, 1)
            args.steps, args.count, model = 2, 8, ModelConfig(image_size=16)
        elif args.train is None or args.score is None:
            parser.error("give --train and --score folders, or --quick")
        faces = load_faces(args.score, args.count, model.image_size)
        rows = {}
        builtin, _ = builtin_state(model)
        if builtin is not None:
            rows["built-in"] = scores(model, builtin, faces)
        for share in (0.0, args.share):
            config = TrainConfig(steps=args.steps, synthetic_share=share, seed=0, precision="fp32",
                                 denoiser_lr=args.lr, batch_size=8 if args.quick else 64)
            result = train_denoiser(args.train, Path(tmp) / "runs", f"share-{share}", model, config, device="cpu")
            state = load_checkpoint(result.run_dir / "last.safetensors").module_state("denoiser")
            rows[f"share {share}"] = scores(model, state, faces)
    print(f"{len(faces)} images of {args.score}, gated 8-bit PSNR (dB): sigma 25 / sigma 50 / JPEG q20")
    for name, row in rows.items():
        print(f"  {name:<12}" + " / ".join(f"{row[case]:.2f}" for case in CASES))
    none, some = rows["share 0.0"], rows[f"share {args.share}"]
    print(f"share {args.share} - share 0: " + " / ".join(f"{some[c] - none[c]:+.2f}" for c in CASES) + " dB")


if __name__ == "__main__":
    main()
