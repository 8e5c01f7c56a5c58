"""animevae/shard.py: --shard I/K splits a job's listing; every shard sees the whole listing's clashes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animevae.cli import app
from helpers import CPU, assert_cli_error


def _model_flags(trained_run) -> list[str]:
    return ["--model", str(trained_run.export_dir), *CPU]


def test_shards_report_the_clashes_of_the_whole_listing(tmp_path: Path) -> None:
    from animevae.denoise import plan_outputs
    from animevae.shard import Shard

    noisy = tmp_path / "noisy"
    noisy.mkdir()
    rng = np.random.default_rng(0)
    for index in range(12):  # enough names that the clashing pair lands in different shards
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(noisy / f"g{index}.png")
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(noisy / f"g{index}.jpg")
    whole_pairs, whole_skipped = plan_outputs(noisy, tmp_path / "out")
    parts = [plan_outputs(noisy, tmp_path / "out", Shard(i, 2)) for i in range(2)]
    assert sorted(p for pairs, _ in parts for p in pairs) == sorted(whole_pairs)
    assert sorted(s.path for _, skipped in parts for s in skipped) == sorted(s.path for s in whole_skipped)
    assert len(whole_skipped) == 12


@pytest.mark.parametrize("spec", ["\u00b2/3", "0/\u00b3", "\u0661/3"])
def test_a_shard_of_non_ascii_digits_is_one_clear_error(runner, trained_run, tmp_path: Path, spec: str) -> None:
    result = runner.invoke(app, ["generate", "--count", "2", "--out", str(tmp_path / "g"), "--shard", spec,
                                 *_model_flags(trained_run)])
    assert_cli_error(result, "--shard")
