"""The generate command: faces in bulk, unlabelled or by class."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from animevae.commands.shared import console, make_reporter, open_for_command, rate
from animevae.options import Device, ModelRef, Overwrite, Quiet, RunName, RunsDir, Seed, ShardSpec
from animevae.runs import DEFAULT_RUNS_DIR


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
    from animevae.per_class import METADATA_NAME, ClassRequest
    from animevae.shard import Shard

    part = Shard.parse(shard)
    request = ClassRequest(class_name, count, per_class, balance)
    models = open_for_command(("decoder", "prior"), runs_dir, run, model, device, half)
    if request.by_class:
        result = generate_by_class(models, request, out, seed, batch_size, overwrite, grid,
                                   reporter=make_reporter(quiet), shard=part, temperature=temperature)
    else:
        result = generate_images(models, 1000 if count is None else count, out, seed, batch_size, overwrite, grid,
                                 reporter=make_reporter(quiet), shard=part, temperature=temperature)
    console.print(f"wrote {result.written} images ({result.existing} already there) to {out}/ in "
                  f"{result.seconds:.1f}s: {rate(result.images_per_s)} images/s on {result.provider}, "
                  f"latents from the {result.latents}")
    if result.per_class is not None:
        console.print("per class: " + ", ".join(f"{name} {n}" for name, n in result.per_class.items())
                      + f"; {out / METADATA_NAME} lists {result.labelled} labelled images")
    elif (classes := models.info.classes) is not None:
        console.print(f"note: the model has classes ({', '.join(classes.names)}); these are unlabelled draws. "
                      "--per-class N, --class NAME --count N or --balance write them by class")
    if result.grid:
        console.print(f"contact sheet: {result.grid}")
    console.print(f"next: animevae denoise {out}")
