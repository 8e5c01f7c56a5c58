"""ONNX export of a run's encoder, decoder and denoiser, each checked against PyTorch through onnxruntime."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from animevae import FORMAT_VERSION, __version__
from animevae.training.checkpoint import PRIOR_TRAINED, Checkpoint, load_checkpoint
from animevae.config import RunConfig
from animevae.errors import ModelError
from animevae.fileio import atomic_path, write_json_atomic
from animevae.labels import CLASSES_KEY, ClassInfo
from animevae.training.diffusion import DDIMSampler, LatentDiffusion
from animevae.training.model import VAE, Denoiser
from animevae.prior import LatentPrior
from animevae.shrinkage import RESIDUAL_KNEE_KEY
from animevae.runs import CHECKPOINT_NAME, EXPORT_DIR, HALF_DECODER

MAX_ABS_DIFF = 1e-4
# fp16 keeps ~3 decimal digits: 1/255 is one grey level, the most a saved PNG could show.
MAX_HALF_DIFF = 1 / 255
OPSET = 18


class EncoderGraph(nn.Module):
    """image (B, 3, S, S) in [0, 1] -> mu, logvar (B, latent)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.encoder = vae.encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(image)


@dataclass
class ExportReport:
    """Files written and how far onnxruntime's outputs are from PyTorch's."""

    folder: Path
    max_abs_diff: dict[str, float]


def load_run_models(run_dir: Path) -> tuple[RunConfig, VAE, Denoiser]:
    """Rebuild a run's VAE (its averaged weights where it kept them) and denoiser from last.safetensors,
    in eval mode on the CPU."""
    checkpoint: Checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
    vae, denoiser = VAE(checkpoint.config.model), Denoiser(checkpoint.config.model)
    vae_name = "vae_ema" if checkpoint.module_state("vae_ema") else "vae"
    try:
        vae.load_state_dict(checkpoint.module_state(vae_name))
        denoiser.load_state_dict(checkpoint.module_state("denoiser"))
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()[:160]
        raise ModelError(f"{run_dir / CHECKPOINT_NAME} does not fit this version's model ({first})",
                         "it was written by another animevae version; train the run again") from None
    return checkpoint.config, vae.eval(), denoiser.eval()


def load_run_sampler(run_dir: Path) -> DDIMSampler | None:
    """The run's trained diffusion prior as a noise -> latent sampler, or None where it samples from the mixture."""
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
    model = checkpoint.config.model
    if model.prior != "diffusion" or not checkpoint.progress.extra.get(PRIOR_TRAINED):
        return None
    prior = LatentDiffusion(model)
    try:
        prior.load_state_dict(checkpoint.module_state("prior"))
    except RuntimeError as error:
        raise ModelError(f"{run_dir / CHECKPOINT_NAME}: the latent prior does not fit this version ({error})",
                         "it was written by another animevae version; train the run again") from None
    return DDIMSampler(prior.eval(), model.prior_sampling_steps).eval()


def export_run(run_dir: Path, device: str = "cpu", half: bool = False) -> ExportReport:
    """Write run_dir/export/{encoder,decoder,denoiser}.onnx with metadata, checking each against PyTorch.

    With `half`, also decoder.fp16.onnx, checked on CUDA against the fp32 decoder (refused without CUDA:
    onnxruntime's CPU provider would run it no faster, or not at all)."""
    from animevae.runtime import CUDA, available_providers, nvidia_driver_present

    if half and not (CUDA in available_providers() and nvidia_driver_present()):
        raise ModelError("--half needs a CUDA GPU that onnxruntime can use; none here",
                         "export without --half on this machine (fp32 is what the CPU runs best)")
    config, vae, denoiser = load_run_models(run_dir)
    folder = run_dir / EXPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / HALF_DECODER).unlink(missing_ok=True)  # never leave an fp16 decoder of older weights behind
    size, latent = config.model.image_size, config.model.latent_dim
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 3, size, size, generator=generator)
    batch = torch.export.Dim("batch", min=1)
    quarter_h, quarter_w = torch.export.Dim("h4", min=1), torch.export.Dim("w4", min=1)
    graphs = {
        "encoder": (EncoderGraph(vae).eval(), image, {0: batch}),
        "decoder": (vae.decoder, torch.randn(3, latent, generator=generator), {0: batch}),
        # Any H and W that are multiples of 4 (the runtime pads other sizes).
        "denoiser": (denoiser, torch.rand(2, 3, size, size + 8, generator=generator),
                     {0: batch, 2: 4 * quarter_h, 3: 4 * quarter_w}),
    }
    sampler = load_run_sampler(run_dir)
    (folder / "prior.onnx").unlink(missing_ok=True)  # a mixture run must not pick up an older run's prior
    if sampler is not None:
        graphs["prior"] = (sampler, torch.randn(3, latent, generator=generator), {0: batch})
    diffs = {}
    for role, (module, example, dims) in graphs.items():
        path = folder / f"{role}.onnx"
        _export_one(module, example, dims, role, path, _metadata(config, role, vae, denoiser))
        diffs[role] = _compare(module, example, path, role, device)
    if half:
        diffs["decoder_fp16"] = _export_half_decoder(vae, config, folder, latent, batch)
    write_json_atomic(folder / "model.json", {"config": json.loads(config.to_json()), "max_abs_diff": diffs})
    return ExportReport(folder, diffs)


def _export_half_decoder(vae: VAE, config: RunConfig, folder: Path, latent: int, batch: object) -> float:
    from animevae.runtime import cuda_runs, open_model

    fp32_path, path = folder / "decoder.onnx", folder / HALF_DECODER
    if not cuda_runs(fp32_path):
        raise ModelError("--half needs a CUDA GPU that onnxruntime can use; none here",
                         "export without --half on this machine (fp32 is what the CPU runs best)")
    half_decoder = copy.deepcopy(vae.decoder).half().eval()
    z = torch.randn(64, latent, generator=torch.Generator().manual_seed(1))
    _export_one(half_decoder, z.half(), {0: batch}, "decoder", path, _metadata(config, "decoder", vae))
    reference = open_model(fp32_path, "decoder", device="cuda").run(z.numpy())[0]
    actual = open_model(path, "decoder", device="cuda").run(z.numpy())[0].astype(np.float32)
    diff = float(np.abs(actual - reference).max())
    if diff > MAX_HALF_DIFF:
        path.unlink(missing_ok=True)
        raise ModelError(f"fp16 decoder differs from fp32 by {diff:.2e} on CUDA (limit {MAX_HALF_DIFF}); file removed",
                         "use the fp32 decoder")
    return diff


def _metadata(config: RunConfig, role: str, vae: VAE, denoiser: Denoiser | None = None) -> dict[str, str]:
    labelled = bool(config.model.classes)
    gate = {RESIDUAL_KNEE_KEY: str(float(denoiser.knee))} if role == "denoiser" and denoiser is not None else {}
    prior = {} if role != "decoder" else LatentPrior(
        vae.prior_weights.numpy(), vae.prior_means.numpy(), vae.prior_component_scales.numpy(),
        vae.prior_classes.numpy() if labelled else None).used().to_metadata()
    classes = {CLASSES_KEY: ClassInfo(config.model.classes, config.model.class_counts).to_json()} if labelled else {}
    return {
        **prior,
        **classes,
        **gate,
        "animevae.role": role,
        "animevae.version": __version__,
        "animevae.format_version": str(FORMAT_VERSION),
        "animevae.image_size": str(config.model.image_size),
        "animevae.latent_dim": str(config.model.latent_dim),
        "animevae.run": config.name,
        "animevae.training_data": config.train.data_source,
        "animevae.config": config.to_json(),
    }


def _export_one(module: nn.Module, example: torch.Tensor, dims: dict[int, object], role: str, path: Path,
                metadata: dict[str, str]) -> None:
    inputs, outputs = {"encoder": (["image"], ["mu", "logvar"]), "decoder": (["z"], ["image"]),
                       "denoiser": (["image"], ["denoised"]), "prior": (["noise"], ["z"])}[role]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), None, input_names=inputs, output_names=outputs,
                                    dynamic_shapes=(dims,), opset_version=OPSET, dynamo=True, verbose=False)
    proto = program.model_proto
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    with atomic_path(path, fsync=True) as tmp:
        onnx.save_model(proto, str(tmp))


def _compare(module: nn.Module, example: torch.Tensor, path: Path, role: str, device: str) -> float:
    from animevae.runtime import open_model

    with torch.no_grad():
        expected = module(example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = open_model(path, role, device=device).run(example.numpy())
    diff = max(float(np.abs(a - e.numpy()).max()) for a, e in zip(actual, expected))
    if diff > MAX_ABS_DIFF:
        path.unlink(missing_ok=True)
        raise ModelError(f"{role}.onnx differs from PyTorch by {diff:.2e} (limit {MAX_ABS_DIFF:.0e}); file removed",
                         "report this as a bug with your torch and onnxruntime versions")
    return diff
