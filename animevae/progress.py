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
    end: one line when `epoch` moves on (at most one per `epoch_gap_s` after the first), one every
    `interval_s` seconds, one when the task stops; each with the count, the elapsed time, the ETA and the
    latest figures.

    The ETA counts the rate from the first `advance` on, so the steps a resumed run reports at once as already
    done do not pass for work done in no time."""

    def __init__(self, emit: Callable[[str], None], interval_s: float = 30.0, epoch_gap_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit, self.interval_s, self.epoch_gap_s, self.clock = emit, interval_s, epoch_gap_s, clock
        self.description, self.total, self.done = "", None, 0
        self.fields: dict[str, Any] = {}
        self.started = self.last_line = self.last_epoch_line = 0.0
        self.base: tuple[float, int] | None = None  # (time, count) after the first advance
        self.active = False

    def start(self, description: str, total: int | None) -> None:
        """Begin a task (no line yet: short tasks print only their last)."""
        self.description, self.total, self.done, self.fields = description, total, 0, {}
        self.started = self.last_line = self.clock()
        self.last_epoch_line, self.base, self.active = float("-inf"), None, True

    def advance(self, steps: int = 1, **fields: Any) -> None:
        """Count progress; print a line when an epoch ended or `interval_s` passed since the last line."""
        now = self.clock()
        epoch_ended = "epoch" in fields and "epoch" in self.fields and fields["epoch"] != self.fields["epoch"]
        if epoch_ended and now - self.last_epoch_line >= self.epoch_gap_s:  # with the ended epoch's own figures
            self.last_epoch_line = now
            self._line(f"epoch {self.fields['epoch']} done")
        self.done += steps
        self.fields.update(fields)
        if self.base is None:
            self.base = (now, self.done)
        elif now - self.last_line >= self.interval_s:
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
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        parts = [f"{self.description}: {count}", f"{_clock(now - self.started)} elapsed"]
        if self.total and self.base is not None and self.base[1] < self.done < self.total:
            rate = (self.done - self.base[1]) / max(now - self.base[0], 1e-9)
            parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items()]
        if state:
            parts.insert(1, state)
        self.emit("  ".join(parts))


def _clock(seconds: float) -> str:
    """0:07, 12:34, 1:02:03."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
