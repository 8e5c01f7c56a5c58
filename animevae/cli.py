"""The Typer app: one thin command per verb. Parse, call the core, print the report."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

# Set before torch or onnxruntime load: libgomp's default busy-waiting makes 2 threads beside another
# CPU-bound job (PNG workers) run ~5x slower on small machines.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from animevae import __version__
from animevae.errors import AnimeVAEError
from animevae.options import Device, ModelRef, Overwrite, Quiet, RunName, RunsDir, Seed, ShardSpec
from animevae.runs import DEFAULT_RUNS_DIR

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Train a VAE on a folder of anime-style faces; generate and denoise faces in bulk.")
# No markup: file names such as "[wip] face.png" must print as they are.
console = Console(highlight=False, soft_wrap=True, markup=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
F = TypeVar("F", bound=Callable[..., Any])


class RichReporter:
    """Progress bars on stderr; silent (but still driven) with --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task: Any = None

    def start(self, description: str, total: int | None) -> None:
        """Show a bar for a new task."""
        self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}", markup=False),
                                 console=err_console, disable=self.quiet, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(description, total=total, info="")

    def advance(self, steps: int = 1, **fields: Any) -> None:
        """Move the bar; numbers in `fields` are shown beside it."""
        if self.progress is not None:
            info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            self.progress.update(self.task, advance=steps, **({"info": info} if fields else {}))

    def stop(self) -> None:
        """Close the bar."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def log(self, message: str) -> None:
        """Print a status line (even with --quiet: these are rare and say what happened)."""
        err_console.print(message)


def _reporter(quiet: bool) -> Any:
    """Live bars on a terminal; plain lines where stderr is a log (nohup, a scheduler, CI); nothing with --quiet."""
    from animevae.progress import LineReporter

    if quiet or err_console.is_terminal:
        return RichReporter(quiet)
    return LineReporter(lambda line: err_console.print(line, markup=False))


def _rate(per_s: float) -> str:
    """Images/s to print: whole numbers, with two decimals below 10 (one 4000x3000 image is 0.13/s)."""
    return f"{per_s:.0f}" if per_s >= 10 else f"{per_s:.2f}"


def print_error(message: str, hint: str = "") -> None:
    """The one place errors reach the user: an `error:` line, and a `hint:` line saying how to fix it."""
    err_console.print(f"error: {message}", markup=False)
    if hint:
        err_console.print(f"hint: {hint}", markup=False)


def reports_errors(command: F) -> F:
    """Print AnimeVAEErrors as `error:` / `hint:` lines with exit 1; tracebacks only with ANIMEVAE_DEBUG=1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_as_interrupt():
                return command(*args, **kwargs)
        except AnimeVAEError as error:
            if os.environ.get("ANIMEVAE_DEBUG") == "1":
                raise
            print_error(error.message, error.hint)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as error:  # noqa: BLE001 - a bug: still one line for the user, the traceback on request
            if os.environ.get("ANIMEVAE_DEBUG") == "1":
                raise
            print_error(f"internal error: {type(error).__name__}: {error}".splitlines()[0],
                        "rerun with ANIMEVAE_DEBUG=1 for the traceback, and report it")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (what schedulers and `kill` send) takes the Ctrl-C path: the same clean stop, exit 130."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: no signal handlers there
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def version_callback(value: bool) -> None:
    """--version: print and exit before anything else runs."""
    if value:
        console.print(f"animevae {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=version_callback, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Train a VAE on a folder of anime-style faces; generate and denoise faces in bulk."""


def _skipped_table(title: str, skipped: list[Any], limit: int = 20) -> None:
    table = Table(title=title, show_lines=False)
    table.add_column("file")
    table.add_column("reason")
    for item in skipped[:limit]:
        table.add_row(Text(item.path), Text(item.reason))
    if len(skipped) > limit:
        table.add_row(f"... and {len(skipped) - limit} more", "")
    err_console.print(table)


def _exit_if_files_failed(result: Any) -> None:
    """After a batch job finished the rest: list the failed files and exit 1."""
    if result.skipped:
        _skipped_table(f"{len(result.skipped)} files failed", result.skipped)
        print_error(f"{len(result.skipped)} files failed (listed in {result.out_dir / result.report})",
                    "fix or remove them and run the same command again: finished files are kept")
        raise typer.Exit(1)


def _print_classes(classes: Any) -> None:
    """One line per class: its name and image count."""
    for name, count in zip(classes.names, classes.counts):
        console.print(f"  {name}: {count} images")


@app.command()
@reports_errors
def prepare(
    folder: Annotated[Path, typer.Argument(help="Folder of images, searched recursively.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Packed set to write (default: FOLDER.safetensors beside the folder).")] = None,
    image_size: Annotated[int, typer.Option("--image-size", min=8, max=1024, help="Side of the square images.")] = 64,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file that is not a set of ours.")] = False,
    quiet: Quiet = False,
) -> None:
    """Decode, square, resize and deduplicate a folder of images into a packed training set."""
    from animevae.data import check_prepare_target, count_images, manifest_path, prepare_images, save_prepared

    started = time.perf_counter()
    out = out or folder.resolve().with_name(f"{folder.resolve().name}.safetensors")
    check_prepare_target(out, folder, overwrite)
    reporter = _reporter(quiet)
    reporter.start(f"preparing {folder}", count_images(folder))
    try:
        prepared = prepare_images(folder, image_size, on_file=reporter.advance)
    finally:
        reporter.stop()
    if prepared.skipped:
        _skipped_table(f"skipped {len(prepared.skipped)} files", prepared.skipped)
    save_prepared(prepared, out, folder)
    console.print(f"kept {len(prepared.sources)}, duplicates {len(prepared.duplicates)}, "
                  f"skipped {len(prepared.skipped)} in {time.perf_counter() - started:.1f}s")
    console.print(f"labels: {prepared.layout}")
    if prepared.labels is not None:
        _print_classes(prepared.labels.classes)
    console.print(f"wrote {out} and {manifest_path(out)}")
    console.print(f"next: animevae train {out}")


@app.command()
@reports_errors
def train(
    data: Annotated[Path, typer.Argument(help="Folder of images, or a set written by `animevae prepare`.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Run name (default: run, run-2, ...).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Passes over the data (default 10 unless --max-minutes).")] = None,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", min=0.01, help="Wall-clock budget for the whole run (VAE, denoiser, prior, and the final evaluation).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per step.")] = 64,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (cosine decay).")] = 2e-3,
    latent_dim: Annotated[int, typer.Option("--latent-dim", min=1, help="Size of the latent vector.")] = 128,
    image_size: Annotated[int, typer.Option("--image-size", min=8, help="Side of the square training images.")] = 64,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 where measured faster), fp32 or bf16.")] = "auto",
    prior: Annotated[str, typer.Option(
        "--prior", help="Latent prior to sample from: mixture (Gaussian mixture) or diffusion (prior.onnx).")] = "mixture",
    adversarial_weight: Annotated[float, typer.Option(
        "--adversarial-weight", min=0.0, help="Weight of the patch-discriminator loss on the decoder (0: off).")] = 0.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the named (or newest) run from its checkpoint.")] = False,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
    quiet: Quiet = False,
) -> None:
    """Train a convolutional VAE and a blind denoiser on the same faces."""
    from animevae.config import ModelConfig, TrainConfig
    from animevae.errors import ArgumentError, DataError
    from animevae.training.train import train as train_run

    if not data.exists():
        raise DataError(f"{data} does not exist", "pass a folder of images or a file from `animevae prepare`")
    if prior not in ("mixture", "diffusion"):
        raise ArgumentError(f"--prior must be mixture or diffusion (got {prior!r})", "pass --prior mixture")
    channels = ModelConfig().channels
    # One stride-2 level fewer until the size divides and the base grid keeps at least 4x4 pixels.
    while len(channels) > 1 and (image_size % 2 ** len(channels) or image_size // 2 ** len(channels) < 4):
        channels = channels[:-1]
    model_config = ModelConfig(image_size=image_size, latent_dim=latent_dim, channels=channels, prior=prior)
    try:
        model_config.check()
    except ValueError as error:
        raise ArgumentError(str(error), "use an image size that is a multiple of 16, such as 64") from None
    train_config = TrainConfig(epochs=epochs, max_minutes=max_minutes, batch_size=batch_size, lr=lr,
                               denoiser_lr=lr, seed=seed, precision=precision, adversarial_weight=adversarial_weight)
    if data.is_dir() and (data.resolve() == runs_dir.resolve() or data.resolve() in runs_dir.resolve().parents):
        raise ArgumentError(f"--runs-dir {runs_dir} is inside the data folder {data}",
                        "keep runs outside the images: their sample sheets would join the next preparation")
    result = train_run(data, model_config, train_config, runs_dir, name, device, resume, _reporter(quiet))
    if not result.is_main:
        if result.interrupted:
            raise typer.Exit(130)
        return  # under torchrun, rank 0 reports
    progress, metrics = result.progress, result.metrics
    state = "interrupted; checkpoint saved" if result.interrupted else "finished"
    console.print(f"{state}: run {result.run_dir.name}, epoch {progress.epoch}, step {progress.step}, "
                  f"{result.elapsed_s / 60:.1f} min ({result.overhead_s:.0f} s outside training steps) on "
                  f"{result.device} ({result.precision}), "
                  f"{_rate(result.images_per_s)} images/s")
    if "val_psnr" in metrics:  # absent when the set is too small to hold images out
        console.print(f"validation: recon PSNR {metrics['val_psnr']:.2f} dB; denoise PSNR at sigma 25 "
                      f"{metrics['denoise_psnr_25']:.2f} dB (noisy input {metrics['noisy_psnr_25']:.2f} dB)")
    console.print(f"wrote {result.run_dir}/ (config.json, last.safetensors, metrics.jsonl, samples/)")
    if result.interrupted:
        console.print(f"next: animevae train {data} --resume --name {result.run_dir.name}")
        raise typer.Exit(130)  # not 0: `train && export` must not export a half-trained model
    else:
        console.print(f"next: animevae export --onnx --run {result.run_dir.name}")


@app.command()
@reports_errors
def export(
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (the only format).")] = False,
    half: Annotated[bool, typer.Option("--half", help="Also an fp16 decoder for CUDA (refused without CUDA).")] = False,
    run: RunName = None,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
) -> None:
    """Export a run's encoder, decoder and denoiser to ONNX, checked against PyTorch."""
    from animevae.errors import ArgumentError
    from animevae.training.export import MAX_ABS_DIFF, export_run
    from animevae.runs import HALF_DECODER
    from animevae.runs import resolve_run

    if not onnx:
        raise ArgumentError("choose a format", "pass --onnx")
    started = time.perf_counter()
    run_dir = resolve_run(runs_dir, run)
    report = export_run(run_dir, half=half)
    for role, diff in report.max_abs_diff.items():
        if role == "decoder_fp16":
            console.print(f"{HALF_DECODER}: max abs difference from the fp32 decoder on CUDA {diff:.2e}")
        else:
            console.print(f"{role}.onnx: max abs difference from PyTorch {diff:.2e} (limit {MAX_ABS_DIFF:.0e})")
    console.print(f"wrote {report.folder}/ in {time.perf_counter() - started:.1f}s")
    console.print(f"next: animevae generate --count 1000 --out synth --run {run_dir.name}")


def _open(roles: tuple[str, ...], runs_dir: Path, run: str | None, model: str | None, device: str,
          half: bool = False) -> Any:
    """Open the models a command needs (model_files.open_models); say which model and any CUDA fallback once."""
    from animevae.model_files import open_models

    models = open_models(runs_dir, run, model, roles, device, half)
    err_console.print(f"model: {models.origin}")
    for note in models.notes:
        err_console.print(f"note: {note}")
    return models


@app.command()
@reports_errors
def generate(
    count: Annotated[Optional[int], typer.Option(
        "--count", help="How many images (default 1000); with --class, how many of that class.")] = None,
    class_name: Annotated[Optional[str], typer.Option(
        "--class", help="Labelled models: only this class (with --count N, --per-class N or --balance).")] = None,
    per_class: Annotated[Optional[int], typer.Option(
        "--per-class", help="Labelled models: N images of every class; with --balance, the size to top up to.")] = None,
    balance: Annotated[bool, typer.Option(
        "--balance", help="Labelled models: top every class up to the largest class's training count.")] = False,
    out: Annotated[Path, typer.Option(
        "--out", help="Folder for 000000.png, ...; by class, for <class>/000000.png, ... and metadata.jsonl.")] = Path("synth"),
    seed: Seed = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Latents per decoder call.")] = 256,
    run: RunName = None,
    model: ModelRef = None,
    device: Device = "auto",
    grid: Annotated[Optional[Path], typer.Option("--grid", help="Also write a contact sheet of the first 64.")] = None,
    half: Annotated[bool, typer.Option("--half", help="Use the fp16 decoder from `export --onnx --half` (CUDA only).")] = False,
    shard: ShardSpec = None,
    overwrite: Overwrite = False,
    temperature: Annotated[float, typer.Option(
        "--temperature", help="Scale of the sampling noise: below 1.0, more typical and less varied faces.")] = 1.0,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
    quiet: Quiet = False,
) -> None:
    """Generate faces in bulk through onnxruntime; a rerun resumes and changes no finished file.

    A labelled model also generates by class (--class, --per-class, --balance) into OUT/<class>/ with
    OUT/metadata.jsonl, a tree torchvision's ImageFolder and Hugging Face's imagefolder read as it is."""
    from animevae.generate import generate as generate_images
    from animevae.generate import generate_by_class
    from animevae.labels import ClassInfo
    from animevae.per_class import METADATA_NAME, ClassRequest
    from animevae.shard import Shard

    part = Shard.parse(shard)
    request = ClassRequest(class_name, count, per_class, balance)
    decoder = _open(("decoder",), runs_dir, run, model, device, half).decoder
    if request.by_class:
        result = generate_by_class(decoder, request, out, seed, batch_size, overwrite, grid, reporter=_reporter(quiet),
                                   shard=part, temperature=temperature)
    else:
        result = generate_images(decoder, 1000 if count is None else count, out, seed, batch_size, overwrite, grid,
                                 reporter=_reporter(quiet), shard=part, temperature=temperature)
    console.print(f"wrote {result.written} images ({result.existing} already there) to {out}/ in "
                  f"{result.seconds:.1f}s: {_rate(result.images_per_s)} images/s on {result.provider}, "
                  f"latents from the {result.latents}")
    if result.per_class is not None:
        console.print("per class: " + ", ".join(f"{name} {n}" for name, n in result.per_class.items())
                      + f"; {out / METADATA_NAME} lists {result.labelled} labelled images")
    elif (classes := ClassInfo.from_metadata(decoder.metadata)) is not None:
        console.print(f"note: the model has classes ({', '.join(classes.names)}); these are unlabelled draws. "
                      "--per-class N, --class NAME --count N or --balance write them by class")
    if result.grid:
        console.print(f"contact sheet: {result.grid}")
    console.print(f"next: animevae denoise {out}")


@app.command()
@reports_errors
def denoise(
    folder: Annotated[Path, typer.Argument(help="Folder of noisy images, searched recursively.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: FOLDER-denoised beside it).")] = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Images decoded at a time (a denoiser call holds at most 1M pixels).")] = 64,
    strength: Annotated[float, typer.Option(
        "--strength", min=0.0, max=1.0, help="1: fully denoised; less blends in the input (less smoothing).")] = 1.0,
    run: RunName = None,
    model: ModelRef = None,
    device: Device = "auto",
    shard: ShardSpec = None,
    overwrite: Overwrite = False,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
    quiet: Quiet = False,
) -> None:
    """Denoise every image under a folder into a mirrored folder of PNGs; exit 1 if any file failed."""
    from animevae.denoise import default_out_dir, denoise_folder
    from animevae.shard import Shard

    part = Shard.parse(shard)
    out = out or default_out_dir(folder)
    denoiser = _open(("denoiser",), runs_dir, run, model, device).denoiser
    result = denoise_folder(denoiser, folder, out, batch_size, overwrite, reporter=_reporter(quiet), shard=part,
                            strength=strength)
    console.print(f"wrote {result.written} images ({result.existing} already there) to {out}/ in "
                  f"{result.seconds:.1f}s: {_rate(result.images_per_s)} images/s on {result.provider}")
    _exit_if_files_failed(result)


@app.command()
@reports_errors
def evaluate(
    data: Annotated[Path, typer.Argument(help="The run's data (folder or prepared set); its held-out split is scored.")],
    run: RunName = None,
    samples: Annotated[int, typer.Option("--samples", min=10, help="Samples drawn for the sample metrics.")] = 1000,
    classifier_images: Annotated[int, typer.Option(
        "--classifier-images", min=2, help="Training images per class for the real-vs-generated classifier.")] = 1000,
    class_samples: Annotated[int, typer.Option(
        "--class-samples", min=2, help="Labelled runs: samples per class for fidelity, CAS and augmentation gain.")] = 300,
    few_real: Annotated[int, typer.Option(
        "--few-real", min=1, help="Labelled runs: real images per class that the augmentation gain starts from.")] = 20,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
) -> None:
    """Score a run on held-out images: reconstruction, denoising, sample diversity, copying, realism."""
    from animevae.training.evaluate import REPORT_NAME, evaluate_run
    from animevae.runs import resolve_run

    run_dir = resolve_run(runs_dir, run)
    report = evaluate_run(run_dir, data, runs_dir, samples, classifier_images, class_samples, few_real)
    table = Table(title=f"run {report.run}: {report.held_out} held-out images, {report.samples} samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("reconstruction PSNR / SSIM", f"{report.recon_psnr:.2f} dB / {report.recon_ssim:.3f}")
    for sigma, value in report.denoise_psnr.items():
        label = "clean input" if sigma == "0" else f"sigma {sigma}" if sigma.isdigit() else f"JPEG quality {sigma[4:]}"
        effect = "changed" if sigma == "0" else "made worse"
        table.add_row(f"denoise PSNR, {label} (images {effect})", f"{value:.2f} dB (input "
                      f"{report.noisy_psnr[sigma]:.2f}; {report.denoise_made_worse[sigma]}/{report.held_out})")
    unmeasured = f"not measurable ({report.held_out} held-out image; needs 2)"
    table.add_row("sample diversity (vs held-out)",
                  unmeasured if report.sample_diversity is None else f"{report.sample_diversity:.3f}")
    table.add_row("samples copying a training image", f"{100 * report.copy_rate:.2f}%")
    table.add_row("nearest-training distance, samples / held-out",
                  f"{report.nn_distance_samples_median:.4f} / {report.nn_distance_held_out_median:.4f}")
    for label, accuracy, auc in (("samples", report.realism_samples_accuracy, report.realism_samples_auc),
                                 ("reconstructions", report.realism_recon_accuracy, report.realism_recon_auc)):
        table.add_row(f"real-vs-generated classifier, {label}: accuracy / AUC",
                      unmeasured if accuracy is None else f"{accuracy:.3f} / {auc:.3f}")
    for side, value in report.swd_samples.items():
        table.add_row(f"sliced Wasserstein x1e3 at {side} px, samples / held-out floor ({report.swd_images} a side)",
                      f"{value:.1f} / {report.swd_floor[side]:.1f}")
    table.add_row("samples drawn from", report.latents)
    for style, share in report.style_share_train.items():
        table.add_row(f"style {style}: train / samples", f"{share:.3f} / {report.style_share_samples.get(style, 0.0):.3f}")
    for style, accuracy in report.realism_recon_by_style.items():
        on_samples = report.realism_samples_by_style.get(style)
        table.add_row(f"style {style}: classifier accuracy, samples / reconstructions",
                      f"{'-' if on_samples is None else f'{on_samples:.3f}'} / {accuracy:.3f}")
    if report.classes is not None:
        _class_rows(table, report.classes)
    console.print(table)
    console.print(f"wrote {run_dir / REPORT_NAME} in {report.seconds:.0f}s")


def _class_rows(table: Table, classes: Any) -> None:
    """The labelled run's rows: fidelity, CAS and augmentation gain, overall and per class."""
    per = f"{classes.samples_per_class} samples per class"
    table.add_row(f"class fidelity ({per}; classifier on real images: {classes.fidelity_classifier_held_out:.3f} "
                  f"held-out accuracy)", f"{classes.fidelity_overall:.3f}")
    for name in classes.names:
        table.add_row(f"  class {name}: fidelity / CAS / {classes.few_real} real -> + samples",
                      f"{classes.fidelity.get(name, 0.0):.3f} / {classes.cas_per_class.get(name, 0.0):.3f} / "
                      f"{classes.augmentation_without_per_class.get(name, 0.0):.3f} -> "
                      f"{classes.augmentation_with_per_class.get(name, 0.0):.3f}")
    table.add_row("classification accuracy score (trained on samples only)", f"{classes.cas:.3f}")
    table.add_row(f"accuracy from {classes.few_real} real per class, without -> with samples",
                  f"{classes.augmentation_without:.3f} -> {classes.augmentation_with:.3f}")


@app.command()
@reports_errors
def info(
    run: RunName = None,
    model: ModelRef = None,
    device: Device = "auto",
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
) -> None:
    """Show which model generate and denoise would use, its metadata, and the onnxruntime providers."""
    from animevae.labels import ClassInfo
    from animevae.model_files import open_models
    from animevae.runtime import available_providers
    from animevae.sampling import prior_path_for

    models = open_models(runs_dir, run, model, ("decoder",), device)
    decoder = models.decoder
    meta = decoder.metadata
    console.print(f"model: {models.origin}")
    console.print(f"  files: {decoder.path.parent}")
    for key in ("run", "version", "format_version", "image_size", "latent_dim", "training_data"):
        console.print(f"  {key}: {meta.get('animevae.' + key, '?')}")
    prior = prior_path_for(decoder.path)
    mixture = models.prior
    used = int((mixture.weights > 0).sum())
    kind = "diagonal" if mixture.diagonal else "full"
    source = f"diffusion prior ({prior.name})" if prior else "Gaussian mixture (decoder metadata)"
    console.print(f"  latents: {source}; the mixture: {used} components with {kind} covariances")
    classes = ClassInfo.from_metadata(meta)
    console.print(f"  classes: {len(classes.names) if classes else 'none (trained without labels)'}")
    if classes is not None:
        console.print("  (one Gaussian mixture per class; images per class in the training data:)")
        _print_classes(classes)
    console.print(f"onnxruntime providers available: {', '.join(available_providers())}")
    console.print(f"--device {device} runs on: {decoder.provider}")
    for note in models.notes:
        console.print(f"note: {note}")


@app.command()
@reports_errors
def augment(
    src: Annotated[Path, typer.Argument(help="Folder of images, searched recursively.")],
    per_image: Annotated[int, typer.Option("--per-image", help="Variations written per source image.")] = 4,
    strength: Annotated[float, typer.Option("--strength", help="Spread of the draws: 0 gives the reconstruction, 1 the encoder's own posterior.")] = 1.0,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: SRC-augmented beside it).")] = None,
    seed: Seed = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per encoder and decoder call.")] = 64,
    run: RunName = None,
    model: ModelRef = None,
    device: Device = "auto",
    shard: ShardSpec = None,
    overwrite: Overwrite = False,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
    quiet: Quiet = False,
) -> None:
    """Write K latent-space variations of every image under a folder: SRC/a.png -> OUT/a_0.png ... a_K-1.png."""
    from animevae.augment import augment_folder, check_augment_args, default_out_dir
    from animevae.shard import Shard

    part = Shard.parse(shard)
    out = out or default_out_dir(src)
    check_augment_args(src, out, per_image, strength, seed, batch_size)
    models = _open(("decoder", "encoder"), runs_dir, run, model, device)
    result = augment_folder(models, src, out, per_image, strength, seed, batch_size, overwrite,
                            reporter=_reporter(quiet), shard=part)
    console.print(f"wrote {result.written} variations ({result.existing} already there) of {result.sources} images "
                  f"to {out}/ in {result.seconds:.1f}s: {_rate(result.images_per_s)} images/s on {result.provider}")
    console.print(f"{per_image} per image at strength {strength:g}, seed {seed}: NAME.png -> NAME_0.png ... "
                  f"NAME_{per_image - 1}.png; a rerun keeps finished files")
    _exit_if_files_failed(result)


@app.command()
@reports_errors
def interpolate(
    a: Annotated[Optional[Path], typer.Argument(help="First image (or use --seed-a and --seed-b).", show_default=False)] = None,
    b: Annotated[Optional[Path], typer.Argument(help="Second image.", show_default=False)] = None,
    steps: Annotated[int, typer.Option("--steps", help="Frames, both ends included.")] = 8,
    out: Annotated[Path, typer.Option("--out", help="Strip PNG to write: the frames side by side.")] = Path("interpolation.png"),
    frames: Annotated[Optional[Path], typer.Option("--frames", help="Also write each frame as DIR/frame_000.png, ...")] = None,
    gif: Annotated[Optional[Path], typer.Option("--gif", help="Also write an animated GIF that loops forever.")] = None,
    seed_a: Annotated[Optional[int], typer.Option("--seed-a", help="Instead of images: start at image 0 of `generate --seed S`.")] = None,
    seed_b: Annotated[Optional[int], typer.Option("--seed-b", help="Instead of images: end at image 0 of `generate --seed T`.")] = None,
    run: RunName = None,
    model: ModelRef = None,
    device: Device = "auto",
    overwrite: Overwrite = False,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
) -> None:
    """Walk between two faces in latent space (slerp around the prior mean): a strip PNG, frames, a GIF."""
    from animevae.latent import check_interpolate_args, check_output_file, endpoint_latents
    from animevae.latent import interpolate as interpolate_latents

    images, seeds = [p for p in (a, b) if p is not None], [seed_a, seed_b]
    check_interpolate_args(images, seeds, steps)
    check_output_file(out, "--out")
    if gif is not None:
        check_output_file(gif, "--gif")
    models = _open(("decoder", "encoder") if images else ("decoder",), runs_dir, run, model, device)
    start, end = endpoint_latents(models, images, seeds)
    result = interpolate_latents(models, start, end, steps, out, frames, gif, overwrite)
    ends = f"{images[0]} to {images[1]}" if images else f"seed {seed_a} to seed {seed_b}"
    how = "a straight line (the endpoints are parallel)" if result.linear else "slerp around the prior mean"
    console.print(f"wrote {out}: {steps} frames from {ends} by {how}, in {result.seconds:.1f}s on {result.provider}")
    if result.frames:
        console.print(f"frames: {result.frames[0]} ... {result.frames[-1].name}")
    if result.gif:
        console.print(f"gif: {result.gif}")


@app.command()
@reports_errors
def traverse(
    out: Annotated[Path, typer.Option("--out", help="Grid PNG to write: one row per direction.")] = Path("traverse.png"),
    components: Annotated[int, typer.Option("--components", help="Principal directions shown, largest first.")] = 8,
    steps: Annotated[int, typer.Option("--steps", help="Images per row.")] = 7,
    span: Annotated[float, typer.Option("--span", help="Standard deviations walked each way from the mean.")] = 2.0,
    run: RunName = None,
    model: ModelRef = None,
    device: Device = "auto",
    overwrite: Overwrite = False,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
) -> None:
    """Show what the main directions of the latent space do: a grid, one principal direction per row."""
    from animevae.latent import check_output_file, check_traverse_args
    from animevae.latent import traverse as traverse_latents

    check_traverse_args(components, steps, span)
    check_output_file(out, "--out")
    models = _open(("decoder",), runs_dir, run, model, device)
    result = traverse_latents(models, out, components, steps, span, overwrite)
    console.print(f"wrote {out}: {components} principal directions (rows, {result.variance_share:.0%} of the latent "
                  f"variance) x {steps} steps from -{span:g} to +{span:g} standard deviations, on {result.provider}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="animevae")


if __name__ == "__main__":
    main()
