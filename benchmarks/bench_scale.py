"""Memory and training steps at two data-set sizes: preparing and training must not grow with the folder.

Builds two folders of PNG faces from existing face folders by flips and crops (every source image squared and
resized a little larger than --image-size, then cropped at a grid of offsets, plain and mirrored), --large and
--small images. Then, for each folder in turn, in a child process each: `animevae prepare FOLDER`, then
`animevae train SET --max-minutes M` on the prepared set. Prints for each: prepare seconds and peak memory,
training steps and peak memory (the child's ru_maxrss and /proc VmHWM), and the ratio of the steps.
Issue 28's target: 200,000 images prepare and train in <= 3 GB, with as many steps as 20,000 in the same minutes.

    python benchmarks/bench_scale.py --sources /work/devdata/anime/train /work/devdata/faces-dev \\
        --large 200000 --small 20000 --minutes 10 --work /tmp/bench-scale
    python benchmarks/bench_scale.py --quick      # CI: a few hundred generated faces, 0.05 minutes: under a minute

Without --sources, the source faces are generated (smooth random colour fields): enough to measure memory and
steps, not quality.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from animevae.errors import DataError
from animevae.fileio import encode_png
from animevae.images import decode_rgb, find_images, square_resize

MARGIN = 8  # pixels a source is resized beyond the face size: crops move by up to this much
OFFSETS = (0, 2, 4, 6, 8)  # crop offsets on each axis: 25 crops, x2 mirrored = 50 variants a source

# Runs one animevae command in this child process and reports its own peak memory on the last line of stderr.
CHILD = r"""
import json, resource, runpy, sys
from pathlib import Path
sys.argv = ["animevae", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("animevae", run_name="__main__")
except SystemExit as stop:
    code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
status = Path("/proc/self/status")
hwm = 0
if status.exists():
    hwm = next((int(l.split()[1]) * 1024 for l in status.read_text().splitlines() if l.startswith("VmHWM:")), 0)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
print("BENCH_SCALE " + json.dumps({"code": code, "maxrss": rss, "hwm": hwm}), file=sys.stderr, flush=True)
sys.exit(code)
"""


@dataclass
class ChildRun:
    """One measured animevae command."""

    seconds: float
    maxrss: int  # bytes, the child's ru_maxrss
    hwm: int  # bytes, the child's VmHWM (0 where /proc is missing)
    stdout: str


def run_child(args: list[str]) -> ChildRun:
    """Run `animevae ARGS` in a fresh interpreter; raise SystemExit with its output when it fails."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          env=os.environ | {"PYTHONUNBUFFERED": "1", "COLUMNS": "400"})
    seconds = time.perf_counter() - started
    report = [line for line in done.stderr.splitlines() if line.startswith("BENCH_SCALE ")]
    stats = json.loads(report[-1].removeprefix("BENCH_SCALE ")) if report else {"code": done.returncode}
    if done.returncode or stats["code"]:
        raise SystemExit(f"animevae {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return ChildRun(seconds, stats["maxrss"], stats["hwm"], done.stdout)


def generated_source(index: int, side: int) -> np.ndarray:
    """A smooth random (side, side, 3) uint8 colour field, the same for each `index`: a stand-in for a face."""
    grid = np.random.default_rng(index).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((side, side), Image.Resampling.BICUBIC))


def variant(source: np.ndarray, number: int, size: int) -> np.ndarray:
    """The `number`-th crop of `source` (0-49): an offset on the grid, mirrored for the second 25."""
    crop, mirrored = number % len(OFFSETS) ** 2, number >= len(OFFSETS) ** 2
    top, left = OFFSETS[crop // len(OFFSETS)], OFFSETS[crop % len(OFFSETS)]
    face = source[top : top + size, left : left + size]
    return np.ascontiguousarray(face[:, ::-1] if mirrored else face)


def _write_variants(job: tuple[Path | None, int, int, int, Path]) -> int:
    """Write one source's variants (decoded here, so the parent holds no pixels); how many were written."""
    path, index, size, variants, folder = job
    side = size + MARGIN
    try:
        source = square_resize(decode_rgb(path), side) if path is not None else generated_source(index, side)
    except DataError:
        return 0
    for number in range(variants):
        (folder / f"{number * 1_000_000 + index:012d}.png").write_bytes(encode_png(variant(source, number, size)))
    return variants


def build_folder(sources: list[Path | None], count: int, size: int, folder: Path, workers: int) -> int:
    """Write about `count` PNGs into `folder`: image n is variant n // S of source n % S (S sources), so every
    source is used before any is used twice. Returns how many were written (unreadable sources write none)."""
    per_source = len(OFFSETS) ** 2 * 2
    if count > len(sources) * per_source:
        raise SystemExit(f"{len(sources)} sources make at most {len(sources) * per_source} images; pass more --sources")
    folder.mkdir(parents=True)
    jobs = [(path, index, size, (count - index + len(sources) - 1) // len(sources), folder)
            for index, path in enumerate(sources[:count])]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(_write_variants, jobs, chunksize=16))


def measure(label: str, folder: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """Prepare `folder` and train on it, each in a child process; print and return the figures."""
    packed = work / f"{label}.safetensors"
    prepared = run_child(["prepare", str(folder), "--out", str(packed), "--image-size", str(args.image_size), "--quiet"])
    kept = int(re.search(r"kept (\d+)", prepared.stdout).group(1))
    trained = run_child(["train", str(packed), "--max-minutes", str(args.minutes), "--image-size", str(args.image_size),
                         "--runs-dir", str(work / "runs"), "--name", label, "--device", args.device, "--precision", args.precision, "--quiet"])
    steps = int(re.search(r"step (\d+)", trained.stdout).group(1))
    mib = 2**20
    print(f"{label:>5}: {kept:>7} images | prepare {prepared.seconds:7.1f} s, peak {prepared.maxrss / mib:6.0f} MiB "
          f"(VmHWM {prepared.hwm / mib:6.0f}) | train {args.minutes:g} min: {steps:>6} steps, "
          f"peak {trained.maxrss / mib:6.0f} MiB (VmHWM {trained.hwm / mib:6.0f}), {trained.seconds:6.1f} s in all",
          flush=True)
    return {"images": kept, "steps": steps, "prepare_peak": prepared.maxrss, "train_peak": trained.maxrss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=Path, nargs="*", default=[], help="Folders of source faces.")
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--minutes", type=float, default=10.0, help="Training budget of each run.")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="Training device: cpu, cuda or auto.")
    parser.add_argument("--precision", default="auto", help="Training precision: auto, fp32 or bf16.")
    parser.add_argument("--work", type=Path, default=None, help="Folder for the images, sets and runs (default: a temp folder, removed).")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Processes that write the PNGs.")
    parser.add_argument("--quick", action="store_true", help="300 and 150 generated 16x16 faces, 0.05 minutes, fp32 (CI).")
    args = parser.parse_args()
    if args.quick:
        # fp32: "auto" measures bf16 against fp32 first, which would take most of a quick run
        args.large, args.small, args.minutes, args.image_size, args.precision = 300, 150, 0.05, 16, "fp32"
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        if args.sources:
            sources: list[Path | None] = [path for folder in args.sources for path in find_images(folder).files]
        else:  # generated: enough for the large folder at 8 variants each
            sources = [None] * -(-args.large // 8)
        print(f"{len(sources)} source faces; building {args.large} and {args.small} images in {work}", flush=True)
        figures = {}
        for label, count in (("large", args.large), ("small", args.small)):
            folder = work / f"{label}-faces"
            started = time.perf_counter()
            written = build_folder(sources, count, args.image_size, folder, args.workers)
            print(f"built {folder}: {written} images in {time.perf_counter() - started:.1f} s", flush=True)
            figures[label] = measure(label, folder, work, args)
            shutil.rmtree(folder)  # the prepared set holds what training needs; free the disk for the next folder
        large, small = figures["large"], figures["small"]
        print(f"steps large / small = {large['steps'] / max(1, small['steps']):.2f} "
              f"(images x{large['images'] / max(1, small['images']):.1f}); "
              f"train peak large / small = {large['train_peak'] / max(1, small['train_peak']):.2f}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
