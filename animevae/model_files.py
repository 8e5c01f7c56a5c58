"""Which exported model a command uses (--run, --model: a folder, a file or `builtin`; else the newest exported
run, else the built-in model), and the one function that opens its ONNX files for any role."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from animevae.errors import ArgumentError, DeviceError, ModelError
from animevae.prior import LatentPrior
from animevae.runs import EXPORT_DIR, HALF_DECODER, list_runs, resolve_run
from animevae.runtime import CUDA, OnnxModel, open_model
from animevae.sampling import LatentSampler, open_sampler

BUILTIN = "builtin"
BUILTIN_DIR = Path(__file__).with_name("builtin")
ROLES = ("encoder", "decoder", "denoiser", "prior")


@dataclass(frozen=True)
class ModelChoice:
    """Where a model's ONNX files are and how we came to pick them (said to the user in one line)."""

    folder: Path
    origin: str
    file: Path | None = None

    def path(self, role: str) -> Path:
        """The ONNX file for `role` (encoder, decoder or denoiser). With --model FILE, a file named after
        another role (decoder.onnx, decoder.fp16.onnx, ...) stands for its folder: its sibling is used."""
        if self.file is None:
            return self.folder / f"{role}.onnx"
        named = self.file.name.split(".")[0]
        return self.folder / f"{role}.onnx" if named in ROLES and named != role else self.file


def builtin_available() -> bool:
    """True when the package ships its built-in model."""
    return (BUILTIN_DIR / "decoder.onnx").is_file()


def choose_model(runs_dir: Path, run: str | None = None, model: str | None = None) -> ModelChoice:
    """Resolve --run / --model to ONNX files; without either, the newest exported run, else the built-in model."""
    if run is not None and model is not None:
        raise ArgumentError("--run and --model both given", "pass only one of them")
    if model is not None:
        return _explicit_model(model)
    if run is not None:
        return _run_export(resolve_run(runs_dir, run))
    exported = [r for r in list_runs(runs_dir) if (r / EXPORT_DIR / "decoder.onnx").is_file()]
    if exported:
        return _run_export(exported[-1])
    if builtin_available():
        return ModelChoice(BUILTIN_DIR, f"built-in model (no exported run in {runs_dir})")
    if list_runs(runs_dir):
        newest = list_runs(runs_dir)[-1].name
        raise ModelError(f"run {newest!r} was never exported", f"run `animevae export --onnx --run {newest}`")
    raise ModelError(f"no exported run in {runs_dir}", "train and export one: `animevae train FOLDER`, then `animevae export --onnx`")


def _run_export(run_dir: Path) -> ModelChoice:
    folder = run_dir / EXPORT_DIR
    if not (folder / "decoder.onnx").is_file():
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
    """The ONNX models a command opened from one export, and how that export was chosen (`origin`)."""

    origin: str
    decoder: OnnxModel | None = None
    encoder: OnnxModel | None = None
    denoiser: OnnxModel | None = None

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
    def prior(self) -> LatentPrior:
        """The prior fitted to the training latents (N(0, I) for a model without one)."""
        assert self.decoder is not None, "the prior lives in the decoder's metadata"
        return LatentPrior.from_metadata(self.decoder.metadata, self.latent_dim)

    @cached_property
    def sampler(self) -> LatentSampler:
        """Draws latents as `generate` does (the diffusion prior when the model has one)."""
        assert self.decoder is not None, "sampling needs the decoder"
        return open_sampler(self.decoder)

    @property
    def notes(self) -> list[str]:
        """Fallback notes of the opened sessions (CUDA asked for, CPU used), without repeats."""
        return list(dict.fromkeys(m.fallback_note for m in self._opened() if m.fallback_note))

    @property
    def provider(self) -> str:
        """The provider that runs the command's main model (the decoder, else the denoiser)."""
        return self._opened()[0].provider


def open_models(runs_dir: Path, run: str | None, model: str | None, roles: tuple[str, ...] = ("decoder",),
                device: str = "auto", half: bool = False) -> ModelSet:
    """Open the ONNX files of `roles` from the export that --run / --model pick; with `half`, the fp16 decoder
    (CUDA only). An encoder and a decoder opened together must come from the same model."""
    if half and device == "cpu":
        raise DeviceError("--half runs only on CUDA", "drop --half, or use --device cuda on a GPU machine")
    choice = choose_model(runs_dir, run, model)
    opened = {}
    for role in roles:
        path = choice.folder / HALF_DECODER if half and role == "decoder" else choice.path(role)
        if half and role == "decoder" and not path.is_file():
            raise DeviceError(f"no fp16 decoder at {path}", "export one on a CUDA machine: `animevae export --onnx --half`")
        opened[role] = open_model(path, role, device)
        if half and role == "decoder" and opened[role].provider != CUDA:
            raise DeviceError("--half needs CUDA, and onnxruntime runs on the CPU here", "drop --half on this machine")
    models = ModelSet(choice.origin, **opened)
    if models.encoder is not None and models.decoder is not None:
        _check_pair(models.encoder, models.decoder)
    return models


def _check_pair(encoder: OnnxModel, decoder: OnnxModel) -> None:
    for key in ("animevae.image_size", "animevae.latent_dim"):
        if encoder.metadata.get(key) != decoder.metadata.get(key):
            raise ModelError(f"{encoder.path} and {decoder.path} come from different models "
                             f"({key.split('.')[1]} {encoder.metadata.get(key)} vs {decoder.metadata.get(key)})",
                             "pass an export folder that holds both files: --model runs/NAME/export")
