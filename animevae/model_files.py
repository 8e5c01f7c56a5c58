"""Which exported model a command uses (--run, --model: a folder, a file or `builtin`; else the newest exported
run, else the built-in model), and the one function that opens its ONNX files for any role.

An export holds one file per role: encoder.onnx, decoder.onnx, denoiser.onnx and, for a model with a diffusion
prior, prior.onnx (the only optional role: without it, latents come from the decoder's mixture)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from animevae.errors import ArgumentError, DeviceError, ModelError
from animevae.model_info import ModelInfo, read_model_info
from animevae.runs import DEFAULT_RUNS_DIR, EXPORT_DIR, HALF_DECODER, list_runs, resolve_run
from animevae.runtime import CUDA, OnnxModel, open_model
from animevae.sampling import LatentSampler

BUILTIN = "builtin"
BUILTIN_DIR = Path(__file__).with_name("builtin")
ROLES = ("encoder", "decoder", "denoiser", "prior")
OPTIONAL_ROLES = ("prior",)


@dataclass(frozen=True)
class ModelChoice:
    """Where a model's ONNX files are and how we came to pick them (said to the user in one line)."""

    folder: Path
    origin: str
    file: Path | None = None

    def path(self, role: str) -> Path:
        """The ONNX file for `role` (one of ROLES). With --model FILE, a file named after another role
        (decoder.onnx, decoder.fp16.onnx, ...) stands for its folder: its sibling is used. An optional role's file
        is always the folder's own, never the file given."""
        if self.file is None or role in OPTIONAL_ROLES:
            return self.folder / f"{role}.onnx"
        named = self.file.name.split(".")[0]
        return self.folder / f"{role}.onnx" if named in ROLES and named != role else self.file

    def optional_path(self, role: str) -> Path | None:
        """The file of an optional role (prior.onnx), or None where the export has none."""
        path = self.path(role)
        return path if path.is_file() else None


def builtin_available() -> bool:
    """True when the package ships its built-in model."""
    return (BUILTIN_DIR / "decoder.onnx").is_file()


def choose_model(runs_dir: Path, run: str | None = None, model: str | None = None,
                 role: str = "decoder") -> ModelChoice:
    """Resolve --run / --model to ONNX files; without either, the newest run exported with a `role` file (a run
    of train-denoiser exports a denoiser alone), else the built-in model."""
    if run is not None and model is not None:
        raise ArgumentError("--run and --model both given", "pass only one of them")
    if model is not None:
        return _explicit_model(model)
    if run is not None:
        return _run_export(resolve_run(runs_dir, run), role)
    exported = [r for r in list_runs(runs_dir) if (r / EXPORT_DIR / f"{role}.onnx").is_file()]
    if exported:
        return _run_export(exported[-1], role)
    if builtin_available():
        return ModelChoice(BUILTIN_DIR, f"built-in model (no exported run in {runs_dir})")
    if list_runs(runs_dir):
        _run_export(list_runs(runs_dir)[-1], role)  # raises: it was never exported, or holds another role
    raise ModelError(f"no exported run in {runs_dir}", "train and export one: `animevae train FOLDER`, then `animevae export --onnx`")


def _run_export(run_dir: Path, role: str) -> ModelChoice:
    folder = run_dir / EXPORT_DIR
    if not (folder / f"{role}.onnx").is_file():
        if (folder / "denoiser.onnx").is_file():
            raise ModelError(f"run {run_dir.name!r} holds only a denoiser (trained by train-denoiser), no {role}",
                             "pick a run trained by `animevae train`, or --model builtin")
        raise ModelError(f"run {run_dir.name!r} was never exported",
                         f"run `animevae export --onnx --run {run_dir.name}`")
    return ModelChoice(folder, f"run {run_dir.name!r} ({folder})")


def _explicit_model(model: str) -> ModelChoice:
    if model == BUILTIN:
        if not builtin_available():
            raise ModelError("this installation has no built-in model", "pass --run NAME or --model PATH")
        return ModelChoice(BUILTIN_DIR, "built-in model")
    path = Path(model)
    if path.is_dir():
        return ModelChoice(path, f"--model {path}")
    if path.is_file():
        return ModelChoice(path.parent, f"--model {path}", file=path)
    raise ModelError(f"--model {model}: no such file or folder", "pass an export folder, an .onnx file, or `builtin`")


@dataclass
class ModelSet:
    """The ONNX models a command opened from one export, and how that export was chosen (`origin`).

    `prior` is prior.onnx when the command asked for that role and the model has one; `prior_file` names it
    whether or not it was opened (what `info` reads the latent source from)."""

    origin: str
    decoder: OnnxModel | None = None
    encoder: OnnxModel | None = None
    denoiser: OnnxModel | None = None
    prior: OnnxModel | None = None
    prior_file: Path | None = None

    def __post_init__(self) -> None:
        if self.prior is not None and self.prior_file is None:
            self.prior_file = self.prior.path

    def _opened(self) -> list[OnnxModel]:
        return [m for m in (self.decoder, self.encoder, self.denoiser) if m is not None]

    @property
    def latent_dim(self) -> int:
        """Size of the latent vector."""
        return self._opened()[0].latent_dim

    @property
    def image_size(self) -> int:
        """Side of the square images the model reads and writes."""
        return self._opened()[0].image_size

    @cached_property
    def info(self) -> ModelInfo:
        """The model's description from the decoder's metadata, read and checked once."""
        assert self.decoder is not None, "the model's description lives in the decoder's metadata"
        return read_model_info(self.decoder.path, self.decoder.metadata, self.prior_file)

    @cached_property
    def sampler(self) -> LatentSampler:
        """Draws latents as `generate` does at temperature 1 (the diffusion prior when the model has one)."""
        assert self.prior_file is None or self.prior is not None, "open the models with the prior role"
        return LatentSampler(self.info.mixture, self.prior)

    @property
    def notes(self) -> list[str]:
        """Fallback notes of the opened sessions (CUDA asked for, CPU used), without repeats."""
        opened = [*self._opened(), *([self.prior] if self.prior is not None else [])]
        return list(dict.fromkeys(m.fallback_note for m in opened if m.fallback_note))

    @property
    def provider(self) -> str:
        """The provider that runs the command's main model (the decoder, else the denoiser)."""
        return self._opened()[0].provider


def open_models(runs_dir: Path = DEFAULT_RUNS_DIR, run: str | None = None, model: str | None = None,
                roles: tuple[str, ...] = ("decoder", "prior"), device: str = "auto", half: bool = False) -> ModelSet:
    """Open the ONNX files of `roles` from the export that --run / --model pick (an optional role whose file the
    export lacks stays None); with `half`, the fp16 decoder (CUDA only). An encoder and a decoder opened together
    must come from the same model. A decoder's metadata is read and checked here (ModelSet.info)."""
    if half and device == "cpu":
        raise DeviceError("--half runs only on CUDA", "drop --half, or use --device cuda on a GPU machine")
    choice = choose_model(runs_dir, run, model, roles[0])
    prior_file = choice.optional_path("prior")
    opened = {}
    for role in roles:
        path = choice.folder / HALF_DECODER if half and role == "decoder" else choice.path(role)
        if role in OPTIONAL_ROLES and not path.is_file():
            continue
        if half and role == "decoder" and not path.is_file():
            raise DeviceError(f"no fp16 decoder at {path}", "export one on a CUDA machine: `animevae export --onnx --half`")
        opened[role] = open_model(path, role, device)
        if half and role == "decoder" and opened[role].provider != CUDA:
            raise DeviceError("--half needs CUDA, and onnxruntime runs on the CPU here", "drop --half on this machine")
    models = ModelSet(choice.origin, **opened, prior_file=prior_file)
    if models.decoder is not None:
        _check_pair(models.encoder, models.info)
    return models


def _check_pair(encoder: OnnxModel | None, info: ModelInfo) -> None:
    if encoder is None:
        return
    for key, expected in (("image_size", info.image_size), ("latent_dim", info.latent_dim)):
        if getattr(encoder, key) != expected:
            raise ModelError(f"{encoder.path} and {info.decoder_file} come from different models "
                             f"({key} {getattr(encoder, key)} vs {expected})",
                             "pass an export folder that holds both files: --model runs/NAME/export")
