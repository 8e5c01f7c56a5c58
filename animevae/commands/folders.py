"""The folder commands: denoise and augment every image under a folder into a mirrored tree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from animevae.commands.shared import console, exit_if_files_failed, make_reporter, open_for_command, rate
from animevae.options import Device, ModelRef, Overwrite, Quiet, RunName, RunsDir, Seed, ShardSpec
from animevae.runs import DEFAULT_RUNS_DIR


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
    denoiser = open_for_command(("denoiser",), runs_dir, run, model, device).denoiser
    result = denoise_folder(denoiser, folder, out, batch_size, overwrite, reporter=make_reporter(quiet), shard=part,
                            strength=strength)
    console.print(f"wrote {result.written} images ({result.existing} already there) to {out}/ in "
                  f"{result.seconds:.1f}s: {rate(result.images_per_s)} images/s on {result.provider}")
    exit_if_files_failed(result)


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
    models = open_for_command(("decoder", "encoder"), runs_dir, run, model, device)
    result = augment_folder(models, src, out, per_image, strength, seed, batch_size, overwrite,
                            reporter=make_reporter(quiet), shard=part)
    console.print(f"wrote {result.written} variations ({result.existing} already there) of {result.sources} images "
                  f"to {out}/ in {result.seconds:.1f}s: {rate(result.images_per_s)} images/s on {result.provider}")
    console.print(f"{per_image} per image at strength {strength:g}, seed {seed}: NAME.png -> NAME_0.png ... "
                  f"NAME_{per_image - 1}.png; a rerun keeps finished files")
    exit_if_files_failed(result)
