"""How core code reports progress without knowing about the terminal: the CLI passes a Reporter."""

from __future__ import annotations

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
