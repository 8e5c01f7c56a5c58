"""What the commands share: the consoles, progress bars or lines, the model opener and the failure table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from animevae.progress import LineReporter, Reporter

# No markup: file names such as "[wip] face.png" must print as they are.
console = Console(highlight=False, soft_wrap=True, markup=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


class RichReporter:
    """Progress bars on stderr; silent (but still driven) with --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task: Any = None

    def start(self, description: str, total: int | None) -> None:
        """Show a bar for a new task."""
        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}", markup=False),
                                 console=err_console, disable=self.quiet, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(description, total=total, info="")

    def advance(self, steps: int = 1, **fields: Any) -> None:
        """Move the bar; numbers in `fields` are shown beside it."""
        if self.progress is not None:
            info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            self.progress.update(self.task, advance=steps, **({"info": info} if fields else {}))

    def stop(self) -> None:
        """Close the bar."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def log(self, message: str) -> None:
        """Print a status line (even with --quiet: these are rare and say what happened)."""
        err_console.print(message)


def make_reporter(quiet: bool) -> Reporter:
    """Live bars on a terminal; plain lines where stderr is a log (nohup, a scheduler, CI); nothing with --quiet."""
    if quiet or err_console.is_terminal:
        return RichReporter(quiet)
    return LineReporter(lambda line: err_console.print(line, markup=False))


def rate(per_s: float) -> str:
    """Images/s to print: whole numbers, with two decimals below 10 (large photos take more than a second each)."""
    return f"{per_s:.0f}" if per_s >= 10 else f"{per_s:.2f}"


def print_error(message: str, hint: str = "") -> None:
    """The one place errors reach the user: an `error:` line, and a `hint:` line saying how to fix it."""
    err_console.print(f"error: {message}", markup=False)
    if hint:
        err_console.print(f"hint: {hint}", markup=False)


def open_for_command(roles: tuple[str, ...], runs_dir: Path, run: str | None, model: str | None, device: str,
                     half: bool = False) -> Any:
    """Open the models a command needs (model_files.open_models); say which model and any CUDA fallback once."""
    from animevae.model_files import open_models

    models = open_models(runs_dir, run, model, roles, device, half)
    err_console.print(f"model: {models.origin}")
    for note in models.notes:
        err_console.print(f"note: {note}")
    return models


def skipped_table(title: str, skipped: list[Any], limit: int = 20) -> None:
    """The files a job could not use, and why (the first `limit`), on stderr."""
    table = Table(title=title, show_lines=False)
    table.add_column("file")
    table.add_column("reason")
    for item in skipped[:limit]:
        table.add_row(Text(item.path), Text(item.reason))
    if len(skipped) > limit:
        table.add_row(f"... and {len(skipped) - limit} more", "")
    err_console.print(table)


def exit_if_files_failed(result: Any) -> None:
    """After a batch job finished the rest: list the failed files and exit 1."""
    if result.skipped:
        skipped_table(f"{len(result.skipped)} files failed", result.skipped)
        print_error(f"{len(result.skipped)} files failed (listed in {result.out_dir / result.report})",
                    "fix or remove them and run the same command again: finished files are kept")
        raise typer.Exit(1)


def print_classes(classes: Any) -> None:
    """One line per class: its name and image count."""
    for name, count in zip(classes.names, classes.counts):
        console.print(f"  {name}: {count} images")
