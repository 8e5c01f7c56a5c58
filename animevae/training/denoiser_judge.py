"""Which denoiser a run keeps: its own, unless it scores worse than the built-in one (its reference,
training/denoiser_start.py) on the main measure of the held-out faces (evaluate.denoiser_scores), so that a run
never denoises worse than the built-in model did. The run's own weights stay in its checkpoint (a resumed run
trains them on); the choice, recorded in the checkpoint's progress, decides what `export` writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from animevae.training.checkpoint import Checkpoint, Progress

# The measure that decides which denoiser a run keeps: the mean denoise PSNR over Gaussian sigma 25 and 50 and
# JPEG quality 20, so that a run trading one kind of damage for another is judged on all three (docs/results.md).
KEEP_MEASURE = "denoise_psnr_mean"
MEASURE_LABEL = "mean denoise PSNR (sigma 25, sigma 50, JPEG 20)"
# Progress.extra keys: RUN or BUILTIN, and the step and scores of that judgement.
KEPT, JUDGED = "denoiser_kept", "denoiser_judged"
RUN, BUILTIN = "run", "builtin"
# The checkpoint's name for the reference denoiser's weights (and knee).
REFERENCE = "denoiser_reference"


@dataclass(frozen=True)
class Judgement:
    """Which denoiser a run keeps (RUN or BUILTIN) at `step`, on the scores of both."""

    kept: str
    step: int
    run_scores: dict[str, float]
    builtin_scores: dict[str, float]

    @property
    def metrics(self) -> dict[str, Any]:
        """What a metrics line adds: the choice and the built-in's denoise scores beside the run's."""
        builtin = {f"builtin_{key}": value for key, value in self.builtin_scores.items() if key.startswith("denoise_")}
        return {KEPT: self.kept, **builtin}

    def line(self) -> str:
        """One line for the log."""
        run, builtin = self.run_scores[KEEP_MEASURE], self.builtin_scores[KEEP_MEASURE]
        scores = f"{run:.2f} dB on held-out faces against the built-in's {builtin:.2f} dB ({MEASURE_LABEL})"
        if self.kept == BUILTIN:
            return f"kept the built-in denoiser (and its knee): the run's scored {scores}"
        return f"kept the run's denoiser: {scores}"

    def record(self, progress: Progress) -> None:
        """Write the choice into `progress` (saved with the checkpoint, read by export)."""
        progress.extra[KEPT] = self.kept
        progress.extra[JUDGED] = {"step": self.step, "run": self.run_scores[KEEP_MEASURE],
                                  "builtin": self.builtin_scores[KEEP_MEASURE]}


def judge(run_scores: dict[str, float], builtin_scores: dict[str, float], step: int) -> Judgement:
    """Keep the run's denoiser unless it scores below the built-in one on KEEP_MEASURE (or scores NaN)."""
    worse = not run_scores[KEEP_MEASURE] >= builtin_scores[KEEP_MEASURE]
    return Judgement(BUILTIN if worse else RUN, step, run_scores, builtin_scores)


def kept_state(checkpoint: Checkpoint) -> tuple[dict[str, torch.Tensor], str]:
    """The denoiser state a run keeps (its own, or the reference's where its own was judged worse) and a line
    saying which and why (empty where nothing was judged: no built-in reference fits the run, or none was made)."""
    judged = checkpoint.progress.extra.get(JUDGED)
    if checkpoint.progress.extra.get(KEPT) == BUILTIN and checkpoint.module_state(REFERENCE):
        return checkpoint.module_state(REFERENCE), (
            f"the built-in denoiser's weights and knee: at step {judged['step']} the run's own scored "
            f"{judged['run']:.2f} dB on its held-out faces, the built-in {judged['builtin']:.2f} dB ({MEASURE_LABEL})")
    note = "" if judged is None else (f"the run's own denoiser: at step {judged['step']} it scored "
                                      f"{judged['run']:.2f} dB on its held-out faces, the built-in "
                                      f"{judged['builtin']:.2f} dB ({MEASURE_LABEL})")
    return checkpoint.module_state("denoiser"), note
