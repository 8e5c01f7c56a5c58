"""Peak memory of `animevae generate` against the count: generation must stream, not grow with --count.

Runs `animevae generate --count N` for each N and samples, every 50 ms, the resident memory of the whole
process tree (the command and its worker processes, summed from /proc). Prints the peak for each N and the
ratio of the largest to the smallest. Linux only.

    python benchmarks/bench_memory.py --counts 10000 100000 [--dir /dev/shm] [--model builtin]
    python benchmarks/bench_memory.py --quick      # 16 and 32 images: checks that it runs
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tree_rss_bytes(root: int) -> int:
    """Summed VmRSS of `root` and all its descendants."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(entry)] = int(fields.get("PPid", "0").strip())
        rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    family, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in family and pid not in family:
                family.add(pid)
                grew = True
    return sum(rss.get(pid, 0) for pid in family)


def peak_rss(count: int, folder: Path, model: str) -> tuple[int, float]:
    """Peak tree RSS in bytes and the wall time of one generate run."""
    command = [sys.executable, "-m", "animevae", "generate", "--count", str(count), "--out", str(folder),
               "--model", model, "--device", "cpu", "--quiet"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss_bytes(process.pid))
        time.sleep(0.05)
    if process.returncode:
        raise SystemExit(f"generate failed with exit code {process.returncode}")
    return peak, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--quick", action="store_true", help="16 and 32 images: checks that it runs")
    args = parser.parse_args()
    if args.quick:
        args.counts = [16, 32]
    peaks = {}
    for count in args.counts:
        folder = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=args.dir))
        try:
            peaks[count], seconds = peak_rss(count, folder, args.model)
        finally:
            shutil.rmtree(folder)
        print(f"--count {count:>8}: peak RSS of the process tree {peaks[count] / 2**20:7.0f} MiB, "
              f"{seconds:6.1f} s, {count / seconds:5.0f} images/s", flush=True)
    low, high = min(args.counts), max(args.counts)
    print(f"peak at {high} / peak at {low} = {peaks[high] / peaks[low]:.2f} (count x{high / low:.0f})")


if __name__ == "__main__":
    main()
