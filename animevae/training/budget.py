"""A run's clock and time budget, as one record that the checkpoint saves and a resume restores.

The limits (--max-minutes, the diffusion prior's share) come from the run's config at each session, so a resume
may lengthen them; the record keeps what the sessions spent: wall-clock seconds, the seconds inside training
steps (the rest is `overhead_s`), the dearest epoch end (the reserve kept for the final one) and the budget
that ended the run, if one did.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Budget:
    """Where a run stands against its --max-minutes (None: no time limit)."""

    max_minutes: float | None = None
    # The last share of the budget left to the diffusion prior's phase (0: the VAE phase has all of it).
    prior_share: float = 0.0
    # Wall-clock seconds over every session, as of the last `sync`.
    elapsed_s: float = 0.0
    # Of which inside training steps: the rest is bookkeeping (epoch ends, checkpoints, reports).
    steps_s: float = 0.0
    # The dearest epoch end so far: a run on a budget stops that much early, so its final epoch end fits too.
    end_cost_s: float = 0.0
    # What the final epoch end's full mixture fit costs beyond the smaller fits of the others: kept in reserve too.
    final_fit_extra_s: float = 0.0
    # The --max-minutes whose budget ended the run: resumed under the same one (whatever its epochs) it has
    # nothing left to do, even where its cheap final epoch end left a few seconds of the reserve unspent.
    finished_under: float | None = None
    # The slowest rank's elapsed seconds at the last agreement: every rank must stop and schedule alike.
    shared_s: float = field(default=0.0, compare=False)
    _anchor: float = field(default_factory=time.monotonic, repr=False, compare=False)
    _elapsed_at_anchor: float = field(default=0.0, repr=False, compare=False)

    RECORD_FIELDS = ("elapsed_s", "steps_s", "end_cost_s", "final_fit_extra_s", "finished_under")

    def record(self) -> dict[str, Any]:
        """The part a checkpoint keeps (the limits come from the config at each session)."""
        self.sync()
        return {name: getattr(self, name) for name in self.RECORD_FIELDS}

    @classmethod
    def restored(cls, record: dict[str, Any], max_minutes: float | None, prior_share: float) -> "Budget":
        """A budget that goes on from a checkpoint's `record` under this session's limits; its clock starts now."""
        budget = cls(max_minutes=max_minutes, prior_share=prior_share,
                     **{name: record[name] for name in cls.RECORD_FIELDS})
        budget.start_session()
        return budget

    def start_session(self) -> None:
        """Start this session's clock from the seconds already spent."""
        self._anchor, self._elapsed_at_anchor = time.monotonic(), self.elapsed_s
        self.shared_s = self.elapsed_s

    def now(self) -> float:
        """Elapsed seconds over every session, this moment."""
        return self._elapsed_at_anchor + time.monotonic() - self._anchor

    def sync(self) -> float:
        """Store the elapsed seconds of this moment; returns them."""
        self.elapsed_s = self.now()
        return self.elapsed_s

    @property
    def overhead_s(self) -> float:
        """Seconds spent outside training steps, over every session."""
        return max(0.0, self.elapsed_s - self.steps_s)

    @property
    def reserve_s(self) -> float:
        """Seconds kept for the final epoch end."""
        return self.end_cost_s + self.final_fit_extra_s

    @property
    def total_s(self) -> float | None:
        """The whole budget in seconds, or None."""
        return self.max_minutes * 60.0 if self.max_minutes else None

    @property
    def vae_end_s(self) -> float | None:
        """Where the VAE phase ends: the budget less the prior's share."""
        return self.total_s * (1.0 - self.prior_share) if self.total_s else None

    def time_fraction(self) -> float:
        """How much of the VAE phase is spent, counting the reserve for its final epoch end (0 without a budget)."""
        return (self.shared_s + self.reserve_s) / self.vae_end_s if self.vae_end_s else 0.0

    def vae_phase_over(self) -> bool:
        """Whether the VAE phase must stop now to leave its final epoch end room."""
        return bool(self.vae_end_s and self.shared_s + self.reserve_s >= self.vae_end_s)

    def next_end_is_final(self) -> bool:
        """Whether the epoch end about to run must be the final one: after it, the final would not fit."""
        return bool(self.vae_end_s and self.shared_s + self.end_cost_s + self.reserve_s >= self.vae_end_s)

    def prior_seconds(self) -> float | None:
        """What is left for the prior's phase after the reserve for its report (None without a budget)."""
        return max(0.0, self.total_s - self.now() - self.reserve_s) if self.total_s else None

    def finished(self) -> bool:
        """Whether this budget already ended the run."""
        return self.max_minutes is not None and self.finished_under == self.max_minutes

    @contextlib.contextmanager
    def training_step(self) -> Iterator[None]:
        """Count the time inside as training, not overhead."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps_s += time.monotonic() - started

    @contextlib.contextmanager
    def epoch_end(self) -> Iterator[None]:
        """Keep the dearest epoch end as the reserve."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.end_cost_s = max(self.end_cost_s, time.monotonic() - started)
