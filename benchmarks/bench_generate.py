"""Generation throughput against its own limits, in one run.

Measures, each `--repeats` times (medians reported):
  D      the decoder alone through onnxruntime (all cores, best of the batch sizes tried), images/s
  P      the latent prior alone (prior.onnx's DDIM steps, or the mixture draws), same threads, images/s;
         P's cost as a share of D's is printed (the target: under 10%)
  W      PNG encoding + atomic writing alone (Pillow, a process pool of one worker per core), images/s
  bound  1 / (1/D + 1/W): no pipeline sharing these cores can beat it without the prior, which `ours` pays too
  naive  the loop the usual VAE repositories use: decode a batch, torchvision `save_image` per image, one process
  ours   `animevae generate --count N` as a whole process (start-up included)
and prints ours/bound and ours/naive.

    python benchmarks/bench_generate.py --count 10000 --repeats 3 [--model builtin|PATH] [--dir /dev/shm]
    python benchmarks/bench_generate.py --quick     # 64 images, once: checks that it runs
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before onnxruntime loads, as the CLI does

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from animevae.fileio import to_uint8
from animevae.model_files import choose_model
from animevae.model_info import read_model_info
from animevae.runtime import open_model
from animevae.sampling import open_sampler
from animevae.writer import usable_cores, write_pngs


def prior_rate(sampler, count: int, batch: int) -> float:
    """Images/s of drawing latents alone (noise + prior), as generate does for seed 0."""
    sampler(0, list(range(batch)))  # warm-up
    start = time.perf_counter()
    for begin in range(0, count, batch):
        sampler(0, list(range(begin, min(count, begin + batch))))
    return count / (time.perf_counter() - start)


def decode_rate(decoder, z: np.ndarray, batch: int) -> float:
    """Images/s of the decoder alone."""
    decoder.run(z[:batch])  # warm-up
    start = time.perf_counter()
    for begin in range(0, len(z), batch):
        decoder.run(z[begin : begin + batch])
    return len(z) / (time.perf_counter() - start)


def write_rate(images: np.ndarray, folder: Path, workers: int) -> float:
    """Images/s of PNG encoding + atomic writes alone, in a pool of `workers` processes."""
    paths = [folder / f"{i:06d}.png" for i in range(len(images))]
    per_job = 256
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(write_pngs, [paths[:8]], [list(images[:8])]))  # start the workers before timing
        start = time.perf_counter()
        jobs = [pool.submit(write_pngs, paths[b : b + per_job], list(images[b : b + per_job]))
                for b in range(0, len(images), per_job)]
        for job in jobs:
            job.result()
    return len(images) / (time.perf_counter() - start)


def naive_rate(decoder, z: np.ndarray, folder: Path, batch: int = 64) -> float:
    """Images/s of decode-then-torchvision.save_image per image, in this process."""
    import torch
    from torchvision.utils import save_image

    start = time.perf_counter()
    for begin in range(0, len(z), batch):
        images = torch.from_numpy(decoder.run(z[begin : begin + batch])[0])
        for offset, image in enumerate(images):
            save_image(image, folder / f"{begin + offset:06d}.png")
    return len(z) / (time.perf_counter() - start)


def ours_rate(count: int, folder: Path, model: str) -> float:
    """Images/s of `animevae generate` as a whole process, start-up included."""
    command = [sys.executable, "-m", "animevae", "generate", "--count", str(count), "--out", str(folder),
               "--model", model, "--device", "cpu", "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="builtin", help="builtin, an export folder or a decoder.onnx")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the PNGs go (default: the system temp folder); /dev/shm takes the disk out")
    parser.add_argument("--quick", action="store_true", help="64 images, one repeat: checks that it runs")
    args = parser.parse_args()
    if args.quick:
        args.count, args.repeats = 64, 1

    choice = choose_model(Path("runs"), None, args.model)
    model_arg = str(choice.path("decoder")) if args.model != "builtin" else "builtin"
    cores = usable_cores()
    decoder = open_model(choice.path("decoder"), "decoder", device="cpu", threads=cores)
    info = read_model_info(decoder.path, decoder.metadata, choice.optional_path("prior"))
    sampler = open_sampler(info, device="cpu", threads=cores)
    z = np.concatenate([sampler(0, list(range(b, min(args.count, b + 256)))) for b in range(0, args.count, 256)])
    images = to_uint8(decoder.run(z[:1024])[0])
    images = np.concatenate([images] * (-(-args.count // len(images))))[: args.count]
    results: dict[str, list[float]] = {"D": [], "P": [], "W": [], "naive": [], "ours": []}
    for repeat in range(args.repeats):
        results["D"].append(max(decode_rate(decoder, z[: min(len(z), 4096)], batch) for batch in (64, 256)))
        results["P"].append(max(prior_rate(sampler, min(len(z), 4096), batch) for batch in (32, 256)))
        for key, run in (("W", lambda f: write_rate(images, f, cores)),
                         ("naive", lambda f: naive_rate(decoder, z, f)),
                         ("ours", lambda f: ours_rate(args.count, f, model_arg))):
            folder = Path(tempfile.mkdtemp(prefix=f"bench-{key}-", dir=args.dir))
            try:
                results[key].append(run(folder))
            finally:
                shutil.rmtree(folder)
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in results.items()), flush=True)
    median = {key: statistics.median(values) for key, values in results.items()}
    bound = 1.0 / (1.0 / median["D"] + 1.0 / median["W"])
    where = args.dir or Path(tempfile.gettempdir())
    print(f"\n{cores} cores, {args.count} images into {where}, medians of {args.repeats} runs (images/s):")
    print(f"  D (decoder alone)            {median['D']:8.0f}")
    print(f"  P (latent prior alone, {info.latent_source}) {median['P']:8.0f}: its cost is "
          f"{100 * median['D'] / median['P']:.1f}% of the decoder's")
    print(f"  W (PNG encode + write alone) {median['W']:8.0f}")
    print(f"  bound 1/(1/D + 1/W)          {bound:8.0f}")
    print(f"  naive loop (save_image)      {median['naive']:8.0f}")
    print(f"  animevae generate            {median['ours']:8.0f}")
    print(f"  generate / bound = {median['ours'] / bound:.2f}   generate / naive = {median['ours'] / median['naive']:.2f}")


if __name__ == "__main__":
    main()
