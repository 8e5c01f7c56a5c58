"""Which exported model a command uses: --run, --model (a folder, a file, or `builtin`), else newest run, else built-in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from animevae.errors import ModelError
from animevae.runs import EXPORT_DIR, list_runs, resolve_run

BUILTIN = "builtin"
BUILTIN_DIR = Path(__file__).with_name("builtin")
ROLES = ("encoder", "decoder", "denoiser", "prior")
HALF_DECODER = "decoder.fp16.onnx"  # written by `export --onnx --half`, used by `generate --half` (CUDA only)


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
        raise ModelError("--run and --model both given", "pass only one of them")
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
