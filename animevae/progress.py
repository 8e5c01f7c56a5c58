"""How core code reports progress without knowing about the terminal: the CLI passes a Reporter."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol


class Reporter(Protocol):
    """Receives progress from long jobs. `fields` are shown beside the bar (loss, images/s, ...)."""

    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, steps: int = 1, **fields: Any) -> None: ...

    def stop(self) -> None: ...

    def log(self, message: str) -> None: ...


class SilentReporter:
    """A Reporter that shows nothing (for the Python API and tests)."""

    def start(self, description: str, total: int | None) -> None:
        """Ignore the start of a task."""

    def advance(self, steps: int = 1, **fields: Any) -> None:
        """Ignore progress."""

    def stop(self) -> None:
        """Ignore the end of a task."""

    def log(self, message: str) -> None:
        """Ignore a message."""


class LineReporter:
    """Plain progress lines for logs (nohup, schedulers, CI), where a live bar would print nothing until the
    end: one line when `epoch` moves on, one every `interval_s` seconds, one when the task stops; each with
    the count, the elapsed time, the ETA and the latest figures."""

    def __init__(self, emit: Callable[[str], None], interval_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit, self.interval_s, self.clock = emit, interval_s, clock
        self.description, self.total, self.done = "", None, 0
        self.fields: dict[str, Any] = {}
        self.started = self.last_line = 0.0
        self.active = False

    def start(self, description: str, total: int | None) -> None:
        """Begin a task (no line yet: short tasks print only their last)."""
        self.description, self.total, self.done, self.fields = description, total, 0, {}
        self.started = self.last_line = self.clock()
        self.active = True

    def advance(self, steps: int = 1, **fields: Any) -> None:
        """Count progress; print a line when an epoch ended or `interval_s` passed since the last line."""
        epoch_ended = "epoch" in fields and "epoch" in self.fields and fields["epoch"] != self.fields["epoch"]
        if epoch_ended:  # the line of the epoch that ended, with its own last figures
            self._line(f"epoch {self.fields['epoch']} done")
        self.done += steps
        self.fields.update(fields)
        if not epoch_ended and self.clock() - self.last_line >= self.interval_s:
            self._line()

    def stop(self) -> None:
        """End the task with its last line."""
        if self.active:
            self._line("done" if self.total is None or self.done >= self.total else "stopped")
            self.active = False

    def log(self, message: str) -> None:
        """Print a status line."""
        self.emit(message)

    def _line(self, state: str = "") -> None:
        now = self.clock()
        self.last_line = now
        elapsed = now - self.started
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        parts = [f"{self.description}: {count}", f"{_clock(elapsed)} elapsed"]
        if self.total and 0 < self.done < self.total:
            parts.append(f"ETA {_clock(elapsed / self.done * (self.total - self.done))}")
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items()]
        if state:
            parts.insert(1, state)
        self.emit("  ".join(parts))


def _clock(seconds: float) -> str:
    """0:07, 12:34, 1:02:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
