"""The denoiser's residual gate (shrinkage.py), its calibration on training faces (calibrate.py), and its way
from a checkpoint through export into `animevae denoise` and `evaluate`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from animevae.config import ModelConfig
from animevae.shrinkage import RESIDUAL_KNEE_KEY, ROWS_PER_CHUNK, gate_large_image, gate_residual
from animevae.training.calibrate import calibrate_knee
from animevae.training.model import Denoiser
from helpers import TINY_MODEL


def _change_of_rms(rms_255: float, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A random change (float, [0, 1] scale) whose root-mean-square is exactly rms_255 / 255."""
    change = np.random.default_rng(seed).standard_normal(shape)
    return (change / np.sqrt(np.mean(change**2)) * rms_255 / 255.0).astype(np.float32)


def test_the_gate_keeps_heavy_changes_and_damps_light_ones_by_the_square_of_their_size() -> None:
    noisy = np.full((3, 3, 8, 8), 0.5, np.float32)
    change = np.stack([_change_of_rms(rms, (3, 8, 8), seed) for seed, rms in enumerate((20.0, 4.0, 2.0))])
    gated = gate_residual(noisy, noisy + change, knee=8.0)
    kept = [(g - n).ravel() @ c.ravel() / (c.ravel() @ c.ravel()) for g, n, c in zip(gated, noisy, change)]
    assert kept == pytest.approx([1.0, 0.25, 0.0625], rel=1e-4)  # min(1, (rms / knee)^2) per image
    np.testing.assert_array_equal(gate_residual(noisy, noisy + change, knee=0.0), noisy + change)  # 0: no gate


def test_the_gate_is_the_same_arithmetic_on_torch_tensors() -> None:
    noisy = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    output = noisy + np.stack([_change_of_rms(rms, (3, 8, 8), seed) for seed, rms in enumerate((3.0, 9.0))])
    from_numpy = gate_residual(noisy, output, knee=6.0)
    from_torch = gate_residual(torch.from_numpy(noisy), torch.from_numpy(output), knee=6.0)
    np.testing.assert_allclose(from_torch.numpy(), from_numpy, atol=1e-6)


def test_a_large_image_is_gated_as_a_whole_across_row_chunks() -> None:
    rows = ROWS_PER_CHUNK * 2 + 37  # chunks of unequal length
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 256, (rows, 50, 3), dtype=np.uint8)
    denoised = np.clip(noisy.astype(int) + rng.integers(-6, 7, noisy.shape), 0, 255).astype(np.uint8)
    gated = gate_large_image(noisy, denoised, knee=10.0)
    as_batch = gate_residual(noisy[None].astype(np.float32) / 255, denoised[None].astype(np.float32) / 255, 10.0)[0]
    assert np.abs(gated.astype(int) - np.round(as_batch * 255).astype(int)).max() <= 1
    assert 0 < np.abs(gated.astype(int) - denoised.astype(int)).max()  # it did damp
    assert gate_large_image(noisy, denoised, knee=0.0) is denoised
    assert gate_large_image(noisy, denoised, knee=0.5) is denoised  # a change far above the knee: kept whole


def _faces(count: int = 24, size: int = 16) -> torch.Tensor:
    """(count, 3, size, size) flat-coloured blocks with dark outlines: cartoon-like clean images in [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    colours = torch.rand(count, 3, 1, 1, generator=generator)
    images = colours.expand(count, 3, size, size).clone()
    images[:, :, size // 4, :] = images[:, :, :, size // 3] = 0.05
    return images


def test_an_identity_denoiser_needs_no_gate() -> None:
    denoiser = Denoiser(ModelConfig(**TINY_MODEL))  # a fresh denoiser returns its input
    assert calibrate_knee(denoiser, _faces()) == 0.0


def test_a_denoiser_that_damages_light_input_gets_the_smallest_knee_that_spares_every_face() -> None:
    torch.manual_seed(0)
    denoiser = Denoiser(ModelConfig(**TINY_MODEL))
    torch.nn.init.normal_(denoiser.conv_out.weight, std=0.003)  # a small change of its own to every image
    faces = _faces()
    knee = calibrate_knee(denoiser, faces)
    assert knee > 0.0
    from animevae.training.calibrate import LIGHT_SIGMA, NOISE_SEED
    from animevae.training.degrade import jpeg_batch
    from animevae.training.model import add_noise

    def worse(k: float) -> int:
        light = [jpeg_batch(faces, 90), jpeg_batch(faces, 95),
                 add_noise(faces, LIGHT_SIGMA, torch.Generator().manual_seed(NOISE_SEED))]
        count = 0
        for noisy in light:
            noisy = torch.round(noisy * 255) / 255
            with torch.no_grad():
                out = torch.round(gate_residual(noisy, denoiser(noisy), k).clamp(0, 1) * 255) / 255
            count += int(((out - faces).pow(2).flatten(1).sum(1) > (noisy - faces).pow(2).flatten(1).sum(1)).sum())
        return count

    assert worse(knee) == 0 and worse(0.0) > 0 and worse(knee - 0.25) > 0


@pytest.mark.parametrize("spoiled", [0, 5])
def test_the_knee_scan_counts_as_gating_each_image_and_saving_it_would(spoiled: int) -> None:
    """The scan (images sorted by the change's size, in place, on the 0-255 scale) against the plain count at
    every knee: gate, round to 8 bits, compare with the input's error. With `spoiled` images worse at any
    share of the change, no knee spares every image and the one with the fewest made worse is chosen."""
    from animevae.training.calibrate import KNEES, _smallest_sparing_knee
    from animevae.training.evaluate import as_saved

    generator = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 256, (60, 3, 8, 8), generator=generator).float() / 255
    noisy = as_saved(clean + torch.randn(clean.shape, generator=generator) * 6 / 255)
    # Errors of many sizes (changes of 3-12 levels rms), in no order
    scale = torch.linspace(0.2, 1.4, len(clean))[torch.randperm(len(clean), generator=generator), None, None, None]
    # Half the way back to the clean image, plus an error of its own: each image is made worse up to its own knee
    output = noisy + (clean - noisy) * 0.5 + torch.randn(clean.shape, generator=generator) * scale * 8 / 255
    output[:spoiled] = noisy[:spoiled] + (noisy[:spoiled] - clean[:spoiled]) * 3  # away from the clean image

    def worse(knee: float) -> int:
        gated = as_saved(gate_residual(noisy, output, knee))
        return int(((gated - clean).pow(2).flatten(1).sum(1) > (noisy - clean).pow(2).flatten(1).sum(1)).sum())

    counts = [worse(float(k)) for k in KNEES]
    expected = float(KNEES[counts.index(0)]) if 0 in counts else float(KNEES[int(np.argmin(counts))])
    assert (0 in counts) == (spoiled == 0) and len(set(counts)) > 20  # many knees matter
    assert _smallest_sparing_knee(noisy.clone(), output.clone(), clean.clone()) == expected


def test_the_knee_is_saved_with_the_denoiser_and_old_checkpoints_load_ungated() -> None:
    config = ModelConfig(**TINY_MODEL)
    denoiser = Denoiser(config)
    denoiser.knee.fill_(6.5)
    state = denoiser.state_dict()
    assert float(state["knee"]) == 6.5
    restored = Denoiser(config)
    restored.load_state_dict(state)
    assert float(restored.knee) == 6.5
    old = {k: v for k, v in state.items() if k != "knee"}  # a checkpoint from before the gate
    restored.load_state_dict(old)
    assert float(restored.knee) == 0.0


def test_a_trained_run_exports_its_calibrated_knee_and_denoise_applies_it(trained_run, onnx_models) -> None:
    from animevae.denoise import denoise_array, run_padded
    from animevae.fileio import to_uint8, to_unit_chw
    from animevae.training.checkpoint import load_checkpoint

    denoiser = onnx_models["denoiser"]
    saved = load_checkpoint(trained_run.run_dir / "last.safetensors").module_state("denoiser")
    assert denoiser.residual_knee == pytest.approx(float(saved["knee"])) and denoiser.residual_knee > 0.0
    faces = (np.random.default_rng(2).random((4, 16, 16, 3)) * 255).astype(np.uint8)
    raw = run_padded(denoiser, to_unit_chw(faces))
    expected = to_uint8(gate_residual(to_unit_chw(faces), raw, denoiser.residual_knee))
    np.testing.assert_array_equal(denoise_array(denoiser, faces), expected)
    assert not np.array_equal(expected, to_uint8(raw))  # the gate changed something here


def test_a_denoiser_file_without_a_knee_runs_ungated(onnx_models) -> None:
    from dataclasses import replace

    from animevae.denoise import denoise_array, run_padded
    from animevae.fileio import to_uint8, to_unit_chw

    gated = onnx_models["denoiser"]
    older = replace(gated, metadata={k: v for k, v in gated.metadata.items() if k != RESIDUAL_KNEE_KEY})
    faces = (np.random.default_rng(2).random((4, 16, 16, 3)) * 255).astype(np.uint8)
    assert older.residual_knee == 0.0
    np.testing.assert_array_equal(denoise_array(older, faces), to_uint8(run_padded(older, to_unit_chw(faces))))


def test_a_shut_gate_is_recalibrated_at_every_epoch_end_until_the_denoiser_helps(tmp_path, monkeypatch) -> None:
    import animevae.training.train as train_module
    import animevae.training.trainer as trainer_module
    from animevae.config import TrainConfig
    from animevae.training.checkpoint import load_checkpoint
    from helpers import write_blobs

    monkeypatch.setattr(trainer_module, "CALIBRATION_REFRESH_S", 1e9)  # no refresh by time
    monkeypatch.setattr(trainer_module, "SHUT_GATE_REFRESH_S", 0.0)  # a shut gate: at every report
    knees = iter([32.0, 31.75, 5.0, 4.0, 4.0])  # shut, shut, then open
    import animevae.training.denoiser_training as denoiser_module

    monkeypatch.setattr(denoiser_module, "calibrate_knee", lambda denoiser, clean: next(knees))
    steps: list[int] = []
    calibrate = train_module.Trainer.calibrate_denoiser
    monkeypatch.setattr(train_module.Trainer, "calibrate_denoiser",
                        lambda self, full=True: (steps.append(self.progress.step), calibrate(self, full))[1])
    write_blobs(tmp_path / "faces", count=40)
    result = train_module.train(tmp_path / "faces", ModelConfig(**{**TINY_MODEL, "prior": "mixture"}),
                                TrainConfig(epochs=5, batch_size=16, seed=0, precision="fp32"), tmp_path / "runs",
                                device="cpu")
    per_epoch = result.progress.step // 5
    # Epochs 1 and 2 leave it shut, so 2 and 3 recalibrate; 3 opens it, so 4 waits; the run's end recalibrates.
    assert steps == [per_epoch, 2 * per_epoch, 3 * per_epoch, 5 * per_epoch]
    assert float(load_checkpoint(result.run_dir / "last.safetensors").tensors["denoiser.knee"]) == 4.0


def test_training_calibrates_first_and_on_its_final_weights_and_not_twice(tmp_path, monkeypatch) -> None:
    import animevae.training.train as train_module
    import animevae.training.trainer as trainer_module
    from animevae.config import TrainConfig
    from helpers import write_blobs

    monkeypatch.setattr(trainer_module, "CALIBRATION_REFRESH_S", 1e9)  # only the first and the final one
    steps: list[int] = []
    calibrate = train_module.Trainer.calibrate_denoiser
    monkeypatch.setattr(train_module.Trainer, "calibrate_denoiser",
                        lambda self, full=True: (steps.append(self.progress.step), calibrate(self, full))[1])
    write_blobs(tmp_path / "faces", count=40)
    result = train_module.train(tmp_path / "faces", ModelConfig(**TINY_MODEL),  # a diffusion prior trains last
                                TrainConfig(epochs=2, batch_size=16, seed=0, precision="fp32"), tmp_path / "runs",
                                device="cpu")
    per_epoch = result.progress.step // 2
    assert steps == [per_epoch, 2 * per_epoch]  # epoch 1, then the last epoch; the prior's report reuses it


def test_mid_run_calibrations_use_fewer_faces_and_the_final_one_the_full_count(tmp_path, monkeypatch) -> None:
    """Calibrations before the run's end only serve mid-run checkpoints: they use MIDRUN_CALIBRATION_FACES; the
    final one, which export ships, CALIBRATION_FACES."""
    import animevae.training.train as train_module
    import animevae.training.trainer as trainer_module
    from animevae.config import TrainConfig
    from helpers import write_blobs

    monkeypatch.setattr(trainer_module, "CALIBRATION_REFRESH_S", 0.0)  # at every report
    monkeypatch.setattr(trainer_module, "MIDRUN_CALIBRATION_FACES", 5)
    monkeypatch.setattr(trainer_module, "CALIBRATION_FACES", 20)
    faces: list[int] = []
    import animevae.training.denoiser_training as denoiser_module

    knee = denoiser_module.calibrate_knee
    monkeypatch.setattr(denoiser_module, "calibrate_knee",
                        lambda denoiser, clean: (faces.append(len(clean)), knee(denoiser, clean))[1])
    write_blobs(tmp_path / "faces", count=40)
    train_module.train(tmp_path / "faces", ModelConfig(**{**TINY_MODEL, "prior": "mixture"}),
                       TrainConfig(epochs=3, batch_size=16, seed=0, precision="fp32"), tmp_path / "runs", device="cpu")
    assert faces == [5, 5, 20]
