"""The runs/ folder: naming new runs and finding the one a command should use."""

from __future__ import annotations

import json
import re
from pathlib import Path

from animevae.errors import ModelError, OutputError

DEFAULT_RUNS_DIR = Path("runs")
CONFIG_NAME = "config.json"
CHECKPOINT_NAME = "last.safetensors"
EXPORT_DIR = "export"
HALF_DECODER = "decoder.fp16.onnx"  # written by `export --onnx --half`, used by `generate --half` (CUDA only)
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    """Return `name` if it is a safe folder name, else raise."""
    if not _NAME_PATTERN.match(name):
        raise ModelError(f"invalid run name {name!r}", "use letters, digits, '.', '_' or '-' (at most 64)")
    return name


def next_free_name(runs_dir: Path) -> str:
    """run, run-2, run-3, ...: the first that does not exist yet."""
    if not (runs_dir / "run").exists():
        return "run"
    index = 2
    while (runs_dir / f"run-{index}").exists():
        index += 1
    return f"run-{index}"


def claim_run_dir(runs_dir: Path, name: str | None) -> Path:
    """Create the folder of a new run: `name`, else the first free of run, run-2, ... The folder is made
    without exist_ok, so it is claimed atomically: two runs started together never share one."""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {runs_dir}: {error.strerror}", "pick a --runs-dir you can write to") from None
    while True:
        run_name = check_name(name) if name else next_free_name(runs_dir)
        try:
            (runs_dir / run_name).mkdir()
        except FileExistsError:
            if name is None:
                continue  # another run took this name since we looked: take the next one
            if (runs_dir / run_name / CONFIG_NAME).exists():
                raise ModelError(f"run {run_name!r} already exists in {runs_dir}",
                                 f"continue it with `--resume --name {run_name}`, or pick another --name") from None
            raise ModelError(f"{runs_dir / run_name} already exists (another run is starting there, or one "
                             "stopped before it began)", "pick another --name, or remove that folder") from None
        except OSError as error:
            raise OutputError(f"cannot create {runs_dir / run_name}: {error.strerror}",
                              "pick a --runs-dir you can write to") from None
        return runs_dir / run_name


def list_runs(runs_dir: Path) -> list[Path]:
    """Run folders (those holding a config.json), oldest first by their creation time."""
    if not runs_dir.is_dir():
        return []
    found = [(created_time(p), p.name, p) for p in runs_dir.iterdir() if (p / CONFIG_NAME).is_file()]
    return [path for _, _, path in sorted(found)]


def created_time(run_dir: Path) -> float:
    """When the run was created, from its config.json (file mtime if unreadable)."""
    try:
        return float(json.loads((run_dir / CONFIG_NAME).read_text())["created"])
    except (OSError, ValueError, KeyError, TypeError):
        return (run_dir / CONFIG_NAME).stat().st_mtime


def resolve_run(runs_dir: Path, name: str | None) -> Path:
    """The named run's folder, or the newest run when `name` is None."""
    if name is not None:
        run_dir = runs_dir / check_name(name)
        if not (run_dir / CONFIG_NAME).is_file():
            known = ", ".join(p.name for p in list_runs(runs_dir)) or "none"
            raise ModelError(f"no run named {name!r} in {runs_dir}", f"runs there: {known}")
        return run_dir
    runs = list_runs(runs_dir)
    if not runs:
        raise ModelError(f"no runs in {runs_dir}", "train one first: `animevae train FOLDER`")
    return runs[-1]
