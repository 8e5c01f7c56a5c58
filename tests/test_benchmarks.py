"""Every script in benchmarks/ runs in its `--quick` mode (tiny inputs it makes itself), so none silently rots.

The scripts are found by globbing, so a new one is tested without being listed here; modules whose names start
with `_` are their shared helpers, not scripts. Each runs as its own process from a fresh folder (no runs/
there: a script that picks a model gets the built-in one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
# Scripts whose owner has not given them a --quick mode yet. strict: once one runs, this test fails until its
# entry goes, so the list cannot outlive the reason.
NO_QUICK_YET = {"mutation.py": "benchmarks/mutation.py (the tests' own tool) gets its --quick from its owner"}


def test_benchmarks_are_found() -> None:
    assert len(SCRIPTS) >= 5, SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_benchmark_runs_quick(script: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """`python benchmarks/X.py --quick` exits 0 and prints something."""
    if script.name in NO_QUICK_YET:
        request.applymarker(pytest.mark.xfail(reason=NO_QUICK_YET[script.name], strict=True))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("ANIMEVAE_DEBUG", None)
    result = subprocess.run([sys.executable, str(script), "--quick"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{script.name} --quick exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"{script.name} --quick printed nothing"
