"""animevae/sampling.py: where latents come from (the prior.onnx beside a decoder, else its mixture), and the
checks on --seed and --temperature. The draws themselves are checked image for image in test_generate.py (the
unlabelled draw) and test_per_class.py (the draw by class)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from animevae.errors import ArgumentError
from animevae.runtime import open_model
from animevae.sampling import LatentSampler, check_seed, check_temperature, open_sampler, prior_path_for


def test_seeds_are_zero_or_more_and_the_error_names_the_flag() -> None:
    check_seed(0)
    check_seed(2**40)
    with pytest.raises(ArgumentError, match="--seed-b must be 0 or more") as error:
        check_seed(-1, "--seed-b")
    assert "--seed-b 0" in error.value.hint
    with pytest.raises(ArgumentError, match="^--seed must be 0 or more"):
        check_seed(-3)


def test_a_sampler_refuses_a_temperature_out_of_range(onnx_models) -> None:
    with pytest.raises(ArgumentError, match="--temperature"):
        LatentSampler(onnx_models["decoder"], temperature=0.0)
    check_temperature(2.0)


def test_the_prior_beside_a_decoder_is_used_when_there_is_one(trained_run, tmp_path: Path) -> None:
    decoder_path = trained_run.export_dir / "decoder.onnx"
    assert prior_path_for(decoder_path) == trained_run.export_dir / "prior.onnx"
    with_prior = open_sampler(open_model(decoder_path, "decoder", device="cpu"), temperature=0.5)
    assert with_prior.kind == "diffusion prior" and with_prior.temperature == 0.5
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(decoder_path, alone / "decoder.onnx")
    assert prior_path_for(alone / "decoder.onnx") is None
    mixture = open_sampler(open_model(alone / "decoder.onnx", "decoder", device="cpu"))
    assert mixture.kind == "Gaussian mixture" and mixture.prior is None
    latents = mixture(3, [0, 5])
    assert latents.shape == (2, 8) and latents.dtype == np.float32
    assert np.array_equal(latents[1], mixture.mixture.latent(3, 5))
