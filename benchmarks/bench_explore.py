"""How fast a slider move on the explore page shows its new face: request to PNG bytes, as the page does it.

Starts `animevae explore --port 0` as its own process (as a user does), then moves slider 1 of one face in
`--moves` steps over one kept-alive connection (as the browser's fetch does) and prints the median and the 90th
percentile. The target: a median of at most 50 ms on 2 cores with the built-in model. Exits 1 over the target
(except with --quick, whose 5 moves only check that the path works, for CI).

    OMP_NUM_THREADS=2 python benchmarks/bench_explore.py [--moves 100] [--model builtin|PATH] [--quick]

Timings are only worth reading on a quiet machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 50.0


def start_explore(model: str, out: Path) -> tuple[subprocess.Popen[str], int]:
    """`animevae explore` on a free port; the process and its port."""
    process = subprocess.Popen([sys.executable, "-m", "animevae", "explore", "--port", "0", "--model", model,
                                "--device", "cpu", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    for line in process.stdout:
        found = re.search(r"http://127\.0\.0\.1:([0-9]+)/", line)
        if found:
            return process, int(found.group(1))
    raise SystemExit(f"animevae explore exited ({process.wait()}) without printing its address")


def post(connection: http.client.HTTPConnection, port: int, path: str, body: dict[str, object]) -> bytes:
    """One POST on the kept-alive connection; the answer's bytes (exit on an error status)."""
    connection.request("POST", path, body=json.dumps(body), headers={"Host": f"127.0.0.1:{port}",
                                                                    "Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise SystemExit(f"{path}: {response.status} {data[:300]!r}")
    return data


def slider_moves(port: int, moves: int) -> list[float]:
    """Milliseconds of each move: slider 1 of grid face 0 from -3 to +3 standard deviations."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    recipe = json.loads(post(connection, port, "/api/grid", {"seed": 0, "count": 1}))["faces"][0]["recipe"]
    times = []
    for step in range(moves + 1):  # the first move warms the session up and is not counted
        amount = round(-3.0 + 6.0 * step / max(1, moves), 2)
        started = time.perf_counter()
        png = post(connection, port, "/api/render", {"recipe": {**recipe, "moves": [{"direction": 0, "amount": amount}]}})
        elapsed = (time.perf_counter() - started) * 1000.0
        if not png.startswith(b"\x89PNG"):
            raise SystemExit("/api/render did not answer a PNG")
        if step:
            times.append(elapsed)
    connection.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", type=int, default=100, help="slider moves timed (default 100)")
    parser.add_argument("--model", default="builtin", help="an export folder, an .onnx file, or builtin")
    parser.add_argument("--quick", action="store_true", help="5 moves, no target: a smoke test for CI")
    args = parser.parse_args()
    moves = 5 if args.quick else args.moves
    with tempfile.TemporaryDirectory() as out:
        process, port = start_explore(args.model, Path(out))
        try:
            times = slider_moves(port, moves)
        finally:
            process.terminate()
            process.wait(timeout=30)
    median = statistics.median(times)
    p90 = sorted(times)[int(0.9 * (len(times) - 1))]
    threads = os.environ.get("OMP_NUM_THREADS", "all cores")
    print(f"slider move, request to PNG bytes ({args.model}, {moves} moves, onnxruntime threads: {threads}, "
          f"{os.cpu_count()} cores): median {median:.1f} ms, p90 {p90:.1f} ms (target: median <= {TARGET_MS:.0f} ms)")
    if not args.quick and median > TARGET_MS:
        print("over the target")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
