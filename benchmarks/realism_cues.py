"""What gives a decoder away: the speckle it leaves on flat colours, or the rest. Two rows in one run.

Flat-colour art has most neighbouring pixels exactly equal; a decoder leaves a speckle of about one level on
every flat area. This scores the model's reconstructions of the held-out faces as they are, and again after an
edge-preserving range filter that settles that speckle (5x5, 3 passes, Gaussian range weights of `--sigma`
levels; not part of the product): the share of exactly equal neighbours, PSNR, the converged real-vs-generated
classifier (animevae.training.realism), and the filter's cost in onnxruntime beside the decoder's own.

    python benchmarks/realism_cues.py --data faces-dev --model builtin [--sigma 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from animevae.training.data import load_training_images, split_holdout
from animevae.model_files import ModelChoice, choose_model
from animevae.progress import SilentReporter
from animevae.runtime import OnnxModel, open_model
from animevae.training.evaluate import as_saved
from animevae.training.model import psnr
from animevae.training.realism import classifier_rows, realism_score


class RangeFilter(torch.nn.Module):
    """(B, 3, H, W) in [0, 1] -> the same, each pixel averaged with its 5x5 neighbours weighted by
    exp(-|colour difference|^2 / (2 sigma^2)): edges stay, flat speckle averages out."""

    def __init__(self, sigma_255: float, radius: int = 2, passes: int = 3) -> None:
        super().__init__()
        self.scale, self.radius, self.passes = -0.5 * (255.0 / sigma_255) ** 2, radius, passes

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width, r = image.shape[-2], image.shape[-1], self.radius
        for _ in range(self.passes):
            padded = F.pad(image, (r, r, r, r), mode="replicate")
            total, weight = image, 1.0  # the centre, weight 1
            for dy in range(2 * r + 1):
                for dx in range(2 * r + 1):
                    if (dy, dx) != (r, r):
                        neighbour = padded[:, :, dy : dy + height, dx : dx + width]
                        w = torch.exp((neighbour - image).pow(2).sum(1, keepdim=True) * self.scale)  # (B, 1, H, W)
                        total, weight = total + w * neighbour, weight + w
            image = total / weight
        return image


def equal_neighbours(images: torch.Tensor) -> float:
    """Share of horizontally neighbouring pixel pairs of (N, 3, S, S) 8-bit images with exactly one colour."""
    return (images.diff(dim=3).abs().amax(1) == 0).float().mean().item()


def batched(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """run() over `x` in batches of 256, the outputs joined."""
    return np.concatenate([run(x[b : b + 256]) for b in range(0, len(x), 256)])


def _images_per_second(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, repeats: int = 5) -> float:
    """Median throughput of run(batch) over `repeats` calls, after one warm-up."""
    run(batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - started)
    return len(batch) / float(np.median(times))


def coder_and_faces(runs_dir: Path, model: str,
                    data: Path) -> tuple[ModelChoice, OnnxModel, OnnxModel, torch.Tensor, torch.Tensor]:
    """The model's choice, decoder and encoder (onnxruntime, CPU), and the data's training and held-out faces
    (N, 3, S, S) in [0, 1], split as `train` splits them (500 held out)."""
    choice = choose_model(runs_dir, None, model)
    decoder, encoder = (open_model(choice.path(role), role, "cpu") for role in ("decoder", "encoder"))
    size = int(decoder.metadata["animevae.image_size"])
    loaded = load_training_images(data, size, runs_dir / ".cache", SilentReporter())
    train_idx, val_idx = split_holdout(loaded.hashes, len(loaded.images), 500)
    pixels = torch.from_numpy(loaded.images).permute(0, 3, 1, 2).float().div_(255.0)
    return choice, decoder, encoder, pixels[torch.from_numpy(train_idx)], pixels[torch.from_numpy(val_idx)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default="builtin", help="export folder, or builtin")
    parser.add_argument("--sigma", type=float, default=4.0, help="range filter sigma, 0-255 scale")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    args = parser.parse_args()
    choice, decoder, encoder, train_faces, real_test = coder_and_faces(args.runs_dir, args.model, args.data)
    size = real_test.shape[-1]
    real_train = train_faces[classifier_rows(len(train_faces), args.per_class)]
    encode, decode = (lambda x: encoder.run(x)[0]), (lambda z: decoder.run(z)[0])
    # decode(mu(x)), unrounded, (N, 3, S, S)
    recon = [torch.from_numpy(batched(decode, batched(encode, x.numpy()))) for x in (real_train, real_test)]
    range_filter = RangeFilter(args.sigma).eval()
    with torch.no_grad():
        filtered = [torch.cat([range_filter(x[b : b + 256]) for b in range(0, len(x), 256)]) for x in recon]
        real_filtered = as_saved(range_filter(real_test))
    rows = {}
    for name, (train_side, test_side) in {"as decoded": recon, "range-filtered": filtered}.items():
        train_side, test_side = as_saved(train_side), as_saved(test_side)
        score = realism_score(real_train, train_side, real_test, test_side)
        rows[name] = {"equal_neighbours": round(equal_neighbours(test_side), 4),
                      "psnr": round(psnr(test_side, real_test).mean().item(), 2),
                      "accuracy": score.accuracy, "auc": score.auc, "epochs": score.epochs}
    z = np.random.default_rng(0).standard_normal((256, int(decoder.metadata["animevae.latent_dim"]))).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "range_filter.onnx"
        torch.onnx.export(range_filter, (torch.rand(2, 3, size, size),), str(path), input_names=["image"],
                          output_names=["out"], dynamic_axes={"image": {0: "batch"}, "out": {0: "batch"}},
                          dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        filter_session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        alone = _images_per_second(decode, z)
        with_filter = _images_per_second(lambda batch: filter_session.run(None, {"image": decode(batch)})[0], z)
    print(json.dumps({"model": choice.origin, "sigma": args.sigma, "held_out": len(real_test),
                      "real": {"equal_neighbours": round(equal_neighbours(real_test), 4),
                               "psnr_through_filter": round(psnr(real_filtered, real_test).mean().item(), 2)},
                      "reconstructions": rows,
                      "decoder_images_per_s": {"alone": round(alone), "with_filter": round(with_filter),
                                               "ratio": round(with_filter / alone, 3)}}, indent=2))


if __name__ == "__main__":
    main()
