"""generate and denoise throughput of this checkout against another one (an older commit), in one run.

Each round runs, alternately for the two checkouts (so a busy machine slows both alike):
  generate  `python -m animevae generate --count N --model builtin --device cpu -q` as a whole process
  denoise   `python -m animevae denoise` of those N images, the same way
and prints the median images/s of each and the ratio this/other (1.0: unchanged).

    git worktree add /tmp/old eb6fc2e
    python benchmarks/compare_checkouts.py /tmp/old --count 5000 --repeats 3 [--dir /dev/shm]

The other checkout runs from its own source (PYTHONPATH), with this environment's packages.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def timed(checkout: Path, args: list[str]) -> float:
    """Seconds one animevae command takes, run from `checkout`'s source."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "animevae", *args], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", type=Path, help="the other checkout (a git worktree of another commit)")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args()
    checkouts = {"this": HERE, "other": args.other.resolve()}
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for _ in range(args.repeats):
            for name, checkout in checkouts.items():
                synth, clean = Path(tmp) / f"synth-{name}", Path(tmp) / f"clean-{name}"
                for folder in (synth, clean):
                    shutil.rmtree(folder, ignore_errors=True)
                cpu = ["--model", "builtin", "--device", "cpu", "-q"]
                seconds = timed(checkout, ["generate", "--count", str(args.count), "--out", str(synth), *cpu])
                rates.setdefault(("generate", name), []).append(args.count / seconds)
                seconds = timed(checkout, ["denoise", str(synth), "--out", str(clean), *cpu])
                rates.setdefault(("denoise", name), []).append(args.count / seconds)
    print(f"{args.count} images, {args.repeats} rounds, medians (images/s, whole process):")
    for job in ("generate", "denoise"):
        this, other = (statistics.median(rates[(job, n)]) for n in ("this", "other"))
        print(f"  {job:9s} this {this:7.0f}  other {other:7.0f}  this/other {this / other:.3f}")


if __name__ == "__main__":
    main()
