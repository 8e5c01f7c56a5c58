"""What procedural training images cost (animevae/training/synthetic.py) next to the denoiser's own training step,
measured in one run, and a preview of them.

Timed per batch, medians of --repeats after one warm-up, in CPU seconds of this process (steadier than wall time
on a shared machine; wall seconds are printed beside them):
  leaves   dead_leaves(count, size): a batch of procedural images
  degrade  those cut to the trainer's 32x32 crops (multiscale_crop) and degraded (degrade_pairs: noise, JPEG by
           Pillow, resampling), as Trainer.step does
  step     one denoiser step on the crops as Trainer.step makes it (forward, MSE, backward, clipping, Adam;
           float32, channels-last, the default model)
  step-whole  the same step on the whole images (for a denoiser trained on them uncut)
then leaves/step and degrade/step. torch's intra-op thread count is printed; --threads sets it.

    python benchmarks/bench_synthetic.py [--count 64] [--size 64] [--repeats 5] [--threads N]
    python benchmarks/bench_synthetic.py --write-preview docs/synthetic-leaves.png   # 8x4 images of 64x64, 2x
    python benchmarks/bench_synthetic.py --quick     # a tiny batch, one repeat: checks that it runs
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from animevae.config import ModelConfig
from animevae.fileio import to_uint8, write_bytes_atomic
from animevae.training.degrade import degrade_pairs, multiscale_crop
from animevae.training.model import Denoiser
from animevae.training.synthetic import dead_leaves
from animevae.training.denoiser_training import DENOISER_CROP

PREVIEW_SEED = 0


def timed(work: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (CPU seconds, wall seconds) of `repeats` calls of `work`, after one warm-up call."""
    work()
    cpu, wall = [], []
    for _ in range(repeats):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        work()
        cpu.append(time.process_time() - cpu_start)
        wall.append(time.perf_counter() - wall_start)
    return statistics.median(cpu), statistics.median(wall)


def denoiser_step(crops: tuple[torch.Tensor, torch.Tensor]) -> Callable[[], None]:
    """One training step of a fresh default denoiser on (target, noisy), as Trainer.step takes it."""
    denoiser = Denoiser(ModelConfig()).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=2e-3)
    target, noisy = (c.contiguous(memory_format=torch.channels_last) for c in crops)

    def step() -> None:
        loss = F.mse_loss(denoiser(noisy).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()

    return step


def write_preview(path: Path, columns: int = 8, rows: int = 4, size: int = 64, zoom: int = 2) -> None:
    """A grid of columns x rows procedural images (seeded), each shown `zoom` times, no gaps."""
    images = to_uint8(dead_leaves(columns * rows, size, torch.Generator().manual_seed(PREVIEW_SEED)).numpy())
    grid = images.reshape(rows, columns, size, size, 3).transpose(0, 2, 1, 3, 4).reshape(rows * size, columns * size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(grid.repeat(zoom, axis=0).repeat(zoom, axis=1))).save(
        buffer, format="PNG", optimize=True)  # smallest lossless file: it is committed
    write_bytes_atomic(path, buffer.getvalue())
    print(f"wrote {path}: {rows} x {columns} images of {size}x{size}, shown {zoom}x")


def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(1)
    images = dead_leaves(args.count, args.size, generator)
    crops = degrade_pairs(multiscale_crop(images, DENOISER_CROP, generator), generator)
    leaves = timed(lambda: dead_leaves(args.count, args.size, generator), args.repeats)
    degrade = timed(lambda: degrade_pairs(multiscale_crop(images, DENOISER_CROP, generator), generator), args.repeats)
    step = timed(denoiser_step(crops), args.repeats)
    whole = timed(denoiser_step((images, images)), args.repeats)
    print(f"batch of {args.count} images of {args.size}x{args.size}, crops of {DENOISER_CROP}, "
          f"{torch.get_num_threads()} torch thread(s), medians of {args.repeats}")
    for name, (cpu, wall) in (("leaves", leaves), ("degrade", degrade), ("step", step), ("step-whole", whole)):
        print(f"  {name:10s} {cpu * 1e3:8.1f} ms CPU  {wall * 1e3:8.1f} ms wall")
    print(f"leaves / step: {leaves[0] / step[0]:.2f} CPU ({leaves[1] / step[1]:.2f} wall); "
          f"degrade / step: {degrade[0] / step[0]:.2f} CPU ({degrade[1] / step[1]:.2f} wall); "
          f"leaves / step-whole: {leaves[0] / whole[0]:.2f} CPU ({leaves[1] / whole[1]:.2f} wall)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64, help="images per batch")
    parser.add_argument("--size", type=int, default=64, help="side of each image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--write-preview", type=Path, help="write the preview grid here (PNG) instead of timing")
    parser.add_argument("--quick", action="store_true", help="8 images of 32x32, one repeat, one thread")
    args = parser.parse_args()
    if args.write_preview:
        write_preview(args.write_preview)
        return
    if args.quick:
        args.count, args.size, args.repeats, args.threads = 8, 32, 1, 1
    run(args)


if __name__ == "__main__":
    main()
