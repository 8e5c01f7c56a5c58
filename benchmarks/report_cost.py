"""What one training report costs at different folder sizes: each part must cost the same at every size.

Builds the trainer of a default run on FOLDER's faces, tiled with mirror images up to each size (the faces
repeat; the costs depend on the counts, not on the content), and times each part of a report with fresh
weights: the mixture fits (mid-run and full), the gate's calibration, the scores on held-out faces, the sample
sheet, the final report's sliced Wasserstein distance, and a checkpoint. Run it on a quiet machine:

    OMP_NUM_THREADS=2 python benchmarks/report_cost.py /work/devdata/anime/train --sizes 5000,50000
    python benchmarks/report_cost.py --quick      (CI: tiny model, synthetic faces)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from animevae.config import ModelConfig, RunConfig, TrainConfig
from animevae.training.data import TrainingData, load_training_images
from animevae.progress import SilentReporter
from animevae.training.distributed import DistContext
from animevae.training.reports import evaluate, sample_sheet, swd_metrics
from animevae.training.trainer import Trainer

QUICK_MODEL = {"image_size": 16, "latent_dim": 8, "channels": (8, 16), "denoiser_width": 8, "denoiser_blocks": 1}


def tiled(images: np.ndarray, size: int) -> TrainingData:
    """`size` faces: `images` and their mirror images repeated, each with its own hash (so the split holds)."""
    both = np.concatenate([images, images[:, :, ::-1]])
    rows = np.arange(size) % len(both)
    return TrainingData(np.ascontiguousarray(both[rows]), [f"{index:064x}" for index in range(size)])


def timed(part: Callable[[], object]) -> float:
    started = time.perf_counter()
    part()
    return time.perf_counter() - started


def report_costs(trainer: Trainer, folder: Path) -> dict[str, float]:
    """Seconds of each part of a report for `trainer`."""
    return {
        "mixture fit, mid-run": timed(lambda: trainer.fit_prior(full=False)),
        "mixture fit, full": timed(lambda: trainer.fit_prior(full=True)),
        "gate calibration": timed(trainer.calibrate_denoiser),
        "held-out scores": timed(lambda: evaluate(trainer)),
        "sample sheet": timed(lambda: sample_sheet(trainer)),
        "SWD (final report)": timed(lambda: swd_metrics(trainer)),
        "checkpoint": timed(lambda: trainer.save(folder / "last.safetensors")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", help="a folder of faces (or a prepared set)")
    parser.add_argument("--sizes", default="5000,50000", help="folder sizes to compare, comma-separated")
    parser.add_argument("--quick", action="store_true", help="tiny model and synthetic faces (CI)")
    args = parser.parse_args()
    if args.quick:
        model = ModelConfig(**QUICK_MODEL)
        faces = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
        sizes = [200, 800]
    else:
        if args.folder is None:
            parser.error("give a FOLDER of faces, or --quick")
        model = ModelConfig()
        with tempfile.TemporaryDirectory() as cache:
            faces = load_training_images(args.folder, model.image_size, Path(cache), SilentReporter()).images
        sizes = [int(size) for size in args.sizes.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            config = RunConfig(name="bench", model=model, train=TrainConfig(precision="fp32"))
            rows[size] = report_costs(Trainer(config, tiled(faces, size), DistContext()), Path(folder))
    print(f"{'part of a report':<24}" + "".join(f"{size:>12,} faces" for size in sizes))
    for part in rows[sizes[0]]:
        print(f"{part:<24}" + "".join(f"{rows[size][part]:>16.2f} s"[-18:] for size in sizes))
    print(f"{'all':<24}" + "".join(f"{sum(rows[size].values()):>16.2f} s"[-18:] for size in sizes))


if __name__ == "__main__":
    main()
