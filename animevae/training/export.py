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
from animevae.training.denoiser_judge import kept_state
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
    """Files written, how far onnxruntime's outputs are from PyTorch's, and which denoiser the run keeps
    (denoiser_judge.kept_state; empty where it was never judged)."""

    folder: Path
    max_abs_diff: dict[str, float]
    denoiser_note: str = ""


def load_run_models(run_dir: Path) -> tuple[RunConfig, VAE | None, Denoiser]:
    """Rebuild a run's VAE (its averaged weights where it kept them; None for a run of `train-denoiser`) and the
    denoiser it keeps (its own, or the built-in one where that scored better) from last.safetensors, in eval mode
    on the CPU."""
    return _load_run_models(load_checkpoint(run_dir / CHECKPOINT_NAME), run_dir)[:3]


def _load_run_models(checkpoint: Checkpoint, run_dir: Path) -> tuple[RunConfig, VAE | None, Denoiser, str]:
    denoiser = Denoiser(checkpoint.config.model)
    vae = VAE(checkpoint.config.model) if checkpoint.config.kind == "vae" else None
    vae_name = "vae_ema" if checkpoint.module_state("vae_ema") else "vae"
    state, note = kept_state(checkpoint)
    try:
        if vae is not None:
            vae.load_state_dict(checkpoint.module_state(vae_name))
        denoiser.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()[:160]
        raise ModelError(f"{run_dir / CHECKPOINT_NAME} does not fit this version's model ({first})",
                         "it was written by another animevae version; train the run again") from None
    return checkpoint.config, vae.eval() if vae is not None else None, denoiser.eval(), note


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
    """Write run_dir/export/{encoder,decoder,denoiser}.onnx with metadata, checking each against PyTorch; for a
    run of `train-denoiser` (no VAE), denoiser.onnx alone. The denoiser is the one the run keeps.

    With `half`, also decoder.fp16.onnx, checked on CUDA against the fp32 decoder (refused without CUDA:
    onnxruntime's CPU provider would run it no faster, or not at all)."""
    from animevae.runtime import CUDA, available_providers, nvidia_driver_present

    checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
    if half and checkpoint.config.kind != "vae":
        raise ModelError(f"run {run_dir.name!r} trains only a denoiser: it has no decoder to export in fp16",
                         "export it without --half")
    if half and not (CUDA in available_providers() and nvidia_driver_present()):
        raise ModelError("--half needs a CUDA GPU that onnxruntime can use; none here",
                         "export without --half on this machine (fp32 is what the CPU runs best)")
    config, vae, denoiser, note = _load_run_models(checkpoint, run_dir)
    folder = run_dir / EXPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    # Never leave files of older weights behind: an fp16 decoder, a mixture run's prior, a denoiser run's VAE.
    for stale in (HALF_DECODER, "prior.onnx", *(("encoder.onnx", "decoder.onnx") if vae is None else ())):
        (folder / stale).unlink(missing_ok=True)
    size = config.model.image_size
    generator = torch.Generator().manual_seed(0)
    batch = torch.export.Dim("batch", min=1)
    quarter_h, quarter_w = torch.export.Dim("h4", min=1), torch.export.Dim("w4", min=1)
    graphs = {} if vae is None else _vae_graphs(vae, config, generator, batch)
    # Any H and W that are multiples of 4 (the runtime pads other sizes).
    graphs["denoiser"] = (denoiser, torch.rand(2, 3, size, size + 8, generator=generator),
                          {0: batch, 2: 4 * quarter_h, 3: 4 * quarter_w})
    sampler = load_run_sampler(run_dir)
    if sampler is not None:
        graphs["prior"] = (sampler, torch.randn(3, config.model.latent_dim, generator=generator), {0: batch})
    diffs = {}
    for role, (module, example, dims) in graphs.items():
        path = folder / f"{role}.onnx"
        _export_one(module, example, dims, role, path, _metadata(config, role, vae, denoiser))
        diffs[role] = _compare(module, example, path, role, device)
    if half:
        diffs["decoder_fp16"] = _export_half_decoder(vae, config, folder, config.model.latent_dim, batch)
    write_json_atomic(folder / "model.json", {"config": json.loads(config.to_json()), "max_abs_diff": diffs,
                                              "denoiser": note})
    return ExportReport(folder, diffs, note)


def _vae_graphs(vae: VAE, config: RunConfig, generator: torch.Generator,
                batch: object) -> dict[str, tuple[nn.Module, torch.Tensor, dict[int, object]]]:
    """The encoder and decoder graphs, each with an example input and its dynamic axes."""
    size, latent = config.model.image_size, config.model.latent_dim
    return {"encoder": (EncoderGraph(vae).eval(), torch.rand(3, 3, size, size, generator=generator), {0: batch}),
            "decoder": (vae.decoder, torch.randn(3, latent, generator=generator), {0: batch})}


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


def _metadata(config: RunConfig, role: str, vae: VAE | None, denoiser: Denoiser | None = None) -> dict[str, str]:
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
