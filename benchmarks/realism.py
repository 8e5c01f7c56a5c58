"""Realism of an exported model, scored by a converged real-vs-generated CNN (animevae.training.realism).

Samples and reconstructions come through onnxruntime, exactly as `generate` and `augment` make them, so this
scores what users get. Real images: the training split for the classifier to learn from, the held-out split
(the same content-hash split as training) to be scored on.

    python benchmarks/realism.py --data faces-dev --model builtin [--per-class 1000] [--device cuda]
                                 [--denoise-samples]

`--denoise-samples` passes every sample through the model's denoiser (as saved PNGs, then denoised) before it is
scored: whether cleaning the speckle off flat colours makes samples harder to tell from real faces.

    python benchmarks/realism.py --quick     # 40 faces it draws itself, one classifier epoch: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from animevae.training.data import TrainingPixels, load_training_images, split_holdout
from animevae.denoise import denoise_array
from animevae.model_files import choose_model
from animevae.model_info import read_model_info
from animevae.progress import SilentReporter
from animevae.training.realism import classifier_rows, realism_score
from animevae.runtime import open_model
from animevae.sampling import open_sampler
from animevae.training.evaluate import as_saved
from _quick import write_faces


def _decode(decoder, z: np.ndarray) -> torch.Tensor:
    """(N, latent) -> (N, 3, S, S) in [0, 1], quantised to 8 bits as saved PNGs are."""
    out = np.concatenate([decoder.run(z[b : b + 256])[0] for b in range(0, len(z), 256)])
    return as_saved(torch.from_numpy(out).float())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="the faces the model trained on (required unless --quick)")
    parser.add_argument("--model", default="builtin", help="export folder, or builtin")
    parser.add_argument("--per-class", type=int, default=1000, help="training images per class")
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--device", default="cpu", help="where the classifier trains: cpu or cuda")
    parser.add_argument("--denoise-samples", action="store_true", help="score samples after the denoiser")
    parser.add_argument("--samples-only", action="store_true", help="skip the reconstructions (half the time)")
    parser.add_argument("--quick", action="store_true", help="40 faces it draws itself, one classifier epoch")
    args = parser.parse_args()
    if not args.quick and args.data is None:
        parser.error("--data is required (or --quick)")
    if not args.quick:
        score(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.data, args.runs_dir = write_faces(Path(tmp) / "faces", 40), Path(tmp) / "runs"
        args.per_class, args.val_size = 8, 4
        score(args, max_epochs=1, min_steps=1)


def score(args: argparse.Namespace, **fit: int) -> None:
    """Print the realism of args.model's samples (and reconstructions) as JSON; `fit` goes to realism_score."""
    choice = choose_model(args.runs_dir, None, args.model)
    decoder = open_model(choice.path("decoder"), "decoder", "cpu")
    size = int(decoder.metadata["animevae.image_size"])
    loaded = load_training_images(args.data, size, args.runs_dir / ".cache", SilentReporter())
    images, hashes = loaded.images, loaded.hashes
    train_idx, val_idx = split_holdout(hashes, len(images), args.val_size)
    # Only the rows scored are read from the memory-mapped set, never a float copy of all of it.
    train = TrainingPixels(images, train_idx, torch.device("cpu"))
    real_train = train.batch(classifier_rows(len(train_idx), args.per_class))
    real_test = TrainingPixels(images, val_idx, torch.device("cpu"))[:].float().div_(255.0)
    info = read_model_info(decoder.path, decoder.metadata, choice.optional_path("prior"))
    sampler = open_sampler(info, args.temperature, device="cpu")
    started = time.perf_counter()
    fakes = _decode(decoder, sampler(1, list(range(args.per_class + len(real_test)))))
    if args.denoise_samples:
        denoiser = open_model(choice.path("denoiser"), "denoiser", "cpu")
        saved = np.round(fakes.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)  # (N, S, S, 3)
        cleaned = np.concatenate([denoise_array(denoiser, saved[b : b + 256]) for b in range(0, len(saved), 256)])
        fakes = torch.from_numpy(cleaned).permute(0, 3, 1, 2).float().div_(255.0)
    sample = realism_score(real_train, fakes[: args.per_class], real_test, fakes[args.per_class :],
                           device=args.device, **fit)
    recon = None
    if not args.samples_only:
        encoder = open_model(choice.path("encoder"), "encoder", "cpu")
        mu_train = np.concatenate([encoder.run(real_train[b : b + 256].numpy())[0] for b in range(0, len(real_train), 256)])
        mu_test = encoder.run(real_test.numpy())[0]
        recon = realism_score(real_train, _decode(decoder, mu_train), real_test, _decode(decoder, mu_test),
                              device=args.device, **fit)
    print(json.dumps({"model": choice.origin, "latents": info.latent_source, "classifier_device": args.device,
                      "denoised_samples": args.denoise_samples, "temperature": args.temperature,
                      "samples": sample.__dict__, "reconstructions": recon.__dict__ if recon else None,
                      "seconds": round(time.perf_counter() - started, 1)}, indent=2))


if __name__ == "__main__":
    main()
