"""Option types shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Device = Annotated[str, typer.Option("--device", help="auto (CUDA when it works, else CPU), cpu or cuda.",
                                     case_sensitive=False)]
RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Folder that holds the runs.", file_okay=False)]
RunName = Annotated[Optional[str], typer.Option(
    "--run", help="Run to use (default: the newest run; for commands that run ONNX files, the newest exported one).")]
ModelRef = Annotated[Optional[str], typer.Option(
    "--model", help="An export folder, an .onnx file, or 'builtin' (default: newest exported run, else built-in).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs of another model or settings.")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Random seed (0 or more).")]
ShardSpec = Annotated[Optional[str], typer.Option(
    "--shard", help="i/K: do only part i of K (0-based); K runs together write exactly one run's files.")]
