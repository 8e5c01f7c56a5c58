"""The latent-space commands: interpolate between two faces, traverse the main directions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from animevae.commands.shared import console, open_for_command
from animevae.options import Device, ModelRef, Overwrite, RunName, RunsDir
from animevae.runs import DEFAULT_RUNS_DIR


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
    models = open_for_command(("decoder", "encoder") if images else ("decoder", "prior"), runs_dir, run, model, device)
    start, end = endpoint_latents(models, images, seeds)
    result = interpolate_latents(models, start, end, steps, out, frames, gif, overwrite)
    ends = f"{images[0]} to {images[1]}" if images else f"seed {seed_a} to seed {seed_b}"
    how = "a straight line (the endpoints are parallel)" if result.linear else "slerp around the prior mean"
    console.print(f"wrote {out}: {steps} frames from {ends} by {how}, in {result.seconds:.1f}s on {result.provider}")
    if result.frames:
        console.print(f"frames: {result.frames[0]} ... {result.frames[-1].name}")
    if result.gif:
        console.print(f"gif: {result.gif}")


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
    models = open_for_command(("decoder",), runs_dir, run, model, device)
    result = traverse_latents(models, out, components, steps, span, overwrite)
    console.print(f"wrote {out}: {components} principal directions (rows, {result.variance_share:.0%} of the latent "
                  f"variance) x {steps} steps from -{span:g} to +{span:g} standard deviations, on {result.provider}")
