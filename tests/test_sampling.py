"""animevae/sampling.py: where latents come from (the prior.onnx beside a decoder, else its mixture), and the
checks on --seed and --temperature. The draws themselves are checked image for image in test_generate.py (the
unlabelled draw) and test_per_class.py (the draw by class)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from animevae.errors import ArgumentError
from animevae.model_files import open_models
from animevae.model_info import DIFFUSION_PRIOR, MIXTURE
from animevae.sampling import LatentSampler, check_seed, check_temperature, open_sampler


def test_seeds_are_zero_or_more_and_the_error_names_the_flag() -> None:
    check_seed(0)
    check_seed(2**40)
    with pytest.raises(ArgumentError, match="--seed-b must be 0 or more") as error:
        check_seed(-1, "--seed-b")
    assert "--seed-b 0" in error.value.hint
    with pytest.raises(ArgumentError, match="^--seed must be 0 or more"):
        check_seed(-3)


def test_a_sampler_refuses_a_temperature_out_of_range(generate_models) -> None:
    with pytest.raises(ArgumentError, match="--temperature"):
        LatentSampler(generate_models.info.mixture, temperature=0.0)
    check_temperature(2.0)


def test_the_prior_beside_a_decoder_is_used_when_there_is_one(trained_run, tmp_path: Path) -> None:
    models = open_models(tmp_path, None, str(trained_run.export_dir), ("decoder", "prior"), "cpu")
    assert models.info.prior_file == trained_run.export_dir / "prior.onnx"
    assert models.info.latent_source == DIFFUSION_PRIOR
    with_prior = open_sampler(models.info, temperature=0.5, device="cpu")
    assert with_prior.prior is not None and with_prior.temperature == 0.5
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(trained_run.export_dir / "decoder.onnx", alone / "decoder.onnx")
    info = open_models(tmp_path, None, str(alone), ("decoder", "prior"), "cpu").info
    assert info.prior_file is None and info.latent_source == MIXTURE
    mixture = open_sampler(info, device="cpu")
    assert mixture.prior is None
    latents = mixture(3, [0, 5])
    assert latents.shape == (2, 8) and latents.dtype == np.float32
    assert np.array_equal(latents[1], mixture.mixture.latent(3, 5))
