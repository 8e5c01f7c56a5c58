"""Decoder designs: how they upsample decides both generation speed and reconstruction, measured in one run.

For each design, trains a run for --minutes on the same data (the same split, seed and budget), exports it,
then reports the validation reconstruction PSNR and the exported decoder's images/s through onnxruntime
(one thread, batch 64, median of 5), with the ratio of each to the first design.

    python benchmarks/bench_decoders.py --data faces-dev --minutes 3
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from animevae.config import ModelConfig, TrainConfig
from animevae.training.export import export_run
from animevae.runtime import open_model
from animevae.training.train import train

DESIGNS = ("transpose", "resize")


def decoder_rate(path: Path, batch: int = 64, repeats: int = 5) -> float:
    """Images/s of an exported decoder on one onnxruntime thread."""
    decoder = open_model(path, "decoder", device="cpu", threads=1)
    z = np.random.default_rng(0).standard_normal((batch, int(decoder.metadata["animevae.latent_dim"])), np.float32)
    decoder.run(z)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decoder.run(z)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=3.0)
    args = parser.parse_args()
    runs = Path(tempfile.mkdtemp(prefix="bench-decoders-"))
    rows = []
    for design in DESIGNS:
        result = train(args.data, ModelConfig(upsample=design), TrainConfig(max_minutes=args.minutes), runs, design)
        export_run(result.run_dir)
        last = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        rows.append((design, result.progress.step, last["val_psnr"], decoder_rate(result.run_dir / "export" / "decoder.onnx")))
        print(f"{design}: {rows[-1][1]} steps, val PSNR {rows[-1][2]:.2f} dB, decoder {rows[-1][3]:.0f} images/s", flush=True)
    base = rows[0]
    print(f"\n{args.minutes:g} min of training each, 2 cores; decoder speed on one onnxruntime thread, batch 64")
    print(f"{'design':10} {'steps':>6} {'val PSNR':>9} {'decoder/s':>10} {'speed x':>8} {'PSNR diff':>10}")
    for design, steps, value, rate in rows:
        print(f"{design:10} {steps:6d} {value:9.2f} {rate:10.0f} {rate / base[3]:8.2f} {value - base[2]:+10.2f}")


if __name__ == "__main__":
    main()
