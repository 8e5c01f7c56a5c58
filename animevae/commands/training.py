"""The torch side's commands and its data: prepare, train, train-denoiser, export, evaluate. All but prepare import
animevae.training inside the command, so the light install reaches them only to be told what to install."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from animevae.commands.shared import console, make_reporter, print_classes, rate, skipped_table
from animevae.errors import ArgumentError, DataError
from animevae.options import Device, Quiet, RunName, RunsDir, Seed
from animevae.runs import DEFAULT_RUNS_DIR, HALF_DECODER, resolve_run


def prepare(
    folder: Annotated[Path, typer.Argument(help="Folder of images, searched recursively.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Packed set to write (default: FOLDER.safetensors beside the folder).")] = None,
    image_size: Annotated[int, typer.Option("--image-size", min=8, max=1024, help="Side of the square images.")] = 64,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file that is not a set of ours.")] = False,
    quiet: Quiet = False,
) -> None:
    """Decode, square, resize and deduplicate a folder of images into a packed training set."""
    from animevae.prepared_set import PreparedSet, check_prepare_target, count_images, manifest_path, prepare_set

    started = time.perf_counter()
    out = out or folder.resolve().with_name(f"{folder.resolve().name}.safetensors")
    check_prepare_target(out, folder, overwrite)
    reporter = make_reporter(quiet)
    reporter.start(f"preparing {folder}", count_images(folder))

    def show_skipped(prepared: PreparedSet) -> None:
        reporter.stop()
        if prepared.skipped:
            skipped_table(f"skipped {len(prepared.skipped)} files", prepared.skipped)

    try:
        prepared = prepare_set(folder, image_size, out, on_file=reporter.advance, before_save=show_skipped)
    finally:
        reporter.stop()
    console.print(f"kept {len(prepared.sources)}, duplicates {len(prepared.duplicates)}, "
                  f"skipped {len(prepared.skipped)} in {time.perf_counter() - started:.1f}s")
    console.print(f"labels: {prepared.layout}")
    if prepared.labels is not None:
        print_classes(prepared.labels.classes)
    console.print(f"wrote {out} and {manifest_path(out)}")
    console.print(f"next: animevae train {out}")


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
    denoiser_from_scratch: Annotated[bool, typer.Option(
        "--denoiser-from-scratch", help="Train the denoiser from random weights, not from the built-in one.")] = False,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
    quiet: Quiet = False,
) -> None:
    """Train a convolutional VAE and a blind denoiser on the same faces."""
    from animevae.config import ModelConfig, TrainConfig
    from animevae.training.train import train as train_run

    _check_data(data, runs_dir)
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
    result = train_run(data, model_config, train_config, runs_dir, name, device, resume, make_reporter(quiet),
                       denoiser_from_scratch)
    if not result.is_main:
        if result.interrupted:
            raise typer.Exit(130)
        return  # under torchrun, rank 0 reports
    progress, metrics = result.progress, result.metrics
    state = "interrupted; checkpoint saved" if result.interrupted else "finished"
    console.print(f"{state}: run {result.run_dir.name}, epoch {progress.epoch}, step {progress.step}, "
                  f"{result.elapsed_s / 60:.1f} min ({result.overhead_s:.0f} s outside training steps) on "
                  f"{result.device} ({result.precision}), "
                  f"{rate(result.images_per_s)} images/s")
    if "val_psnr" in metrics:  # absent when the set is too small to hold images out
        console.print(f"validation: recon PSNR {metrics['val_psnr']:.2f} dB; denoise PSNR at sigma 25 "
                      f"{metrics['denoise_psnr_25']:.2f} dB (noisy input {metrics['noisy_psnr_25']:.2f} dB)")
    console.print(f"wrote {result.run_dir}/ (config.json, last.safetensors, metrics.jsonl, samples/)")
    if result.interrupted:
        console.print(f"next: animevae train {data} --resume --name {result.run_dir.name}")
        raise typer.Exit(130)  # not 0: `train && export` must not export a half-trained model
    else:
        console.print(f"next: animevae export --onnx --run {result.run_dir.name}")


def train_denoiser(
    data: Annotated[Path, typer.Argument(help="Folder of images, or a set written by `animevae prepare`.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Run name (default: run, run-2, ...).")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(
        "--max-minutes", min=0.01, help="Wall-clock budget, the final scoring included (default 10 unless --steps).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Optimiser steps (with --max-minutes: whichever ends first).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per step (32x32 windows of each).")] = 64,
    lr: Annotated[float, typer.Option(
        "--lr", min=0.0, help="Peak learning rate from scratch (cosine decay); a fine-tune peaks at a tenth of it.")] = 2e-3,
    image_size: Annotated[int, typer.Option("--image-size", min=8, help="Side the images are resized to (multiple of 4).")] = 64,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 where measured faster), fp32 or bf16.")] = "auto",
    from_scratch: Annotated[bool, typer.Option(
        "--from-scratch", help="Start from random weights, not from the built-in denoiser.")] = False,
    synthetic: Annotated[float, typer.Option(
        "--synthetic", min=0.0, max=1.0,
        help="Share of each batch that is procedural dead-leaves images: edges and textures beyond your folder's.")] = 0.0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the named (or newest) run from its checkpoint.")] = False,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
    quiet: Quiet = False,
) -> None:
    """Train only the blind denoiser (fine-tuning the built-in one), on its own budget; resumable."""
    from animevae.config import ModelConfig, TrainConfig
    from animevae.training.denoiser_run import train_denoiser as train_run

    _check_data(data, runs_dir)
    model_config = ModelConfig(image_size=image_size)
    train_config = TrainConfig(max_minutes=max_minutes, steps=steps, batch_size=batch_size, denoiser_lr=lr, seed=seed,
                               precision=precision, synthetic_share=synthetic)
    result = train_run(data, runs_dir, name, model_config, train_config, device, resume, from_scratch,
                       make_reporter(quiet))
    metrics, run_name = result.metrics, result.run_dir.name
    state = "interrupted; checkpoint saved" if result.interrupted else \
        "already finished (give a larger --steps or --max-minutes to go on)" if result.already_finished else "finished"
    start = "the built-in denoiser" if result.start == "builtin" else "scratch"
    console.print(f"{state}: run {run_name}, step {result.step}, {result.elapsed_s / 60:.1f} min on {result.device} "
                  f"({result.precision}), {rate(result.images_per_s)} images/s; started from {start}")
    if "denoise_psnr_25" in metrics:  # absent when the set is too small to hold images out
        _denoise_table(metrics)
    console.print(f"wrote {result.run_dir}/ (config.json, last.safetensors, metrics.jsonl)")
    if result.interrupted:
        console.print(f"next: animevae train-denoiser {data} --resume --name {run_name}")
        raise typer.Exit(130)
    console.print(f"next: animevae export --onnx --run {run_name}")


def _denoise_table(metrics: dict[str, Any]) -> None:
    """The final report's denoise PSNRs on the held-out faces: input, the run's denoiser and the built-in one, and
    which the run keeps."""
    builtin = "builtin_denoise_psnr_25" in metrics
    table = Table(title=f"denoise PSNR on {metrics['held_out']} held-out faces (gated, 8-bit), dB")
    for column in ("case", "input", "this run", *(("built-in",) if builtin else ())):
        table.add_column(column, justify="left" if column == "case" else "right")
    for key, label in (("25", "Gaussian sigma 25"), ("50", "Gaussian sigma 50"), ("jpeg20", "JPEG quality 20"),
                       ("mean", "mean of the three")):
        noisy = f"{metrics[f'noisy_psnr_{key}']:.2f}" if key != "mean" else ""
        cells = [f"{metrics[f'denoise_psnr_{key}']:.2f}", *([f"{metrics[f'builtin_denoise_psnr_{key}']:.2f}"] if builtin else [])]
        table.add_row(label, noisy, *cells)
    console.print(table)
    if builtin:
        kept = "the built-in denoiser: it scored better" if metrics["denoiser_kept"] == "builtin" else "its own denoiser"
        console.print(f"the run keeps {kept}")


def _check_data(data: Path, runs_dir: Path) -> None:
    """A training command's DATA exists, and the runs folder is not inside it."""
    if not data.exists():
        raise DataError(f"{data} does not exist", "pass a folder of images or a file from `animevae prepare`")
    if data.is_dir() and (data.resolve() == runs_dir.resolve() or data.resolve() in runs_dir.resolve().parents):
        raise ArgumentError(f"--runs-dir {runs_dir} is inside the data folder {data}",
                            "keep runs outside the images: their sample sheets would join the next preparation")


def export(
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (the only format).")] = False,
    half: Annotated[bool, typer.Option("--half", help="Also an fp16 decoder for CUDA (refused without CUDA).")] = False,
    run: RunName = None,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
) -> None:
    """Export a run's encoder, decoder and denoiser to ONNX, checked against PyTorch."""
    from animevae.training.export import MAX_ABS_DIFF, export_run

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
    if report.denoiser_note:
        console.print(f"denoiser.onnx holds {report.denoiser_note}")
    console.print(f"wrote {report.folder}/ in {time.perf_counter() - started:.1f}s")
    if "decoder" not in report.max_abs_diff:
        console.print(f"run {run_dir.name} trained only a denoiser: exported denoiser.onnx alone")
        console.print(f"next: animevae denoise FOLDER --run {run_dir.name}")
    else:
        console.print(f"next: animevae generate --count 1000 --out synth --run {run_dir.name}")


def evaluate(
    data: Annotated[Path, typer.Argument(help="The run's data (folder or prepared set); its held-out split is scored.")],
    run: RunName = None,
    samples: Annotated[int, typer.Option("--samples", min=10, help="Samples drawn for the sample metrics.")] = 1000,
    classifier_images: Annotated[int, typer.Option(
        "--classifier-images", min=2, help="Training images per class for the real-vs-generated classifier.")] = 1000,
    classifier_steps: Annotated[int, typer.Option(
        "--classifier-steps", min=1, help="Most optimiser steps of each real-vs-generated classifier (whole epochs); "
        "one stopped there, still improving, is marked not converged.")] = 600,
    class_samples: Annotated[int, typer.Option(
        "--class-samples", min=2, help="Labelled runs: samples per class for fidelity, CAS and augmentation gain.")] = 300,
    few_real: Annotated[int, typer.Option(
        "--few-real", min=1, help="Labelled runs: real images per class that the augmentation gain starts from.")] = 20,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
    quiet: Quiet = False,
) -> None:
    """Score a run on held-out images: reconstruction, denoising, sample diversity, copying, realism."""
    from animevae.training.evaluate import REPORT_NAME, evaluate_run

    run_dir = resolve_run(runs_dir, run)
    report = evaluate_run(run_dir, data, runs_dir, samples, classifier_images, class_samples, few_real,
                          make_reporter(quiet), classifier_steps)
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
    capped = []
    for label, accuracy, auc, steps, converged in (
            ("samples", report.realism_samples_accuracy, report.realism_samples_auc, report.realism_samples_steps,
             report.realism_samples_converged),
            ("reconstructions", report.realism_recon_accuracy, report.realism_recon_auc, report.realism_recon_steps,
             report.realism_recon_converged)):
        if converged is False:
            capped.append(f"{label} ({steps} steps)")
        table.add_row(f"real-vs-generated classifier, {label}: accuracy / AUC", unmeasured if accuracy is None else
                      f"{accuracy:.3f} / {auc:.3f}{' (not converged)' if converged is False else ''}")
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
    if capped:
        console.print(f"not converged: the real-vs-generated classifier of {' and '.join(capped)} was still "
                      "improving at the step cap; its accuracy is a lower bound (raise --classifier-steps)")
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
