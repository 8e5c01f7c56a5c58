"""animevae/runs.py: run folders are claimed once, and only by a run that starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_two_runs_started_together_get_their_own_folders(tiny_model_config, tiny_train_config, image_dir: Path,
                                                          tmp_path: Path, monkeypatch) -> None:
    import animevae.training.train as train_module

    runs = tmp_path / "runs"
    real_load, nested, started = train_module.load_training_images, [], []

    def load_and_start_another(*args, **kwargs):
        if not started:  # the second run starts while the first loads its data
            started.append(True)
            nested.append(train_module.train(image_dir, tiny_model_config, tiny_train_config, runs, device="cpu"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(train_module, "load_training_images", load_and_start_another)
    first = train_module.train(image_dir, tiny_model_config, tiny_train_config, runs, device="cpu")
    assert first.run_dir != nested[0].run_dir
    for result in (first, nested[0]):
        assert json.loads((result.run_dir / "config.json").read_text())["name"] == result.run_dir.name


def test_a_failed_start_leaves_no_run_folder(tiny_model_config, tiny_train_config, tmp_path: Path) -> None:
    from animevae.errors import DataError
    from animevae.training.train import train

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError):
        train(empty, tiny_model_config, tiny_train_config, tmp_path / "runs", device="cpu")
    runs = tmp_path / "runs"
    assert not runs.exists() or [p.name for p in runs.iterdir() if not p.name.startswith(".")] == []
