"""The `explore` and `render` commands (registered on the app in cli.py). Torch-free."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from animevae.options import Device, ModelRef, Overwrite, RunName, RunsDir
from animevae.runs import DEFAULT_RUNS_DIR

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def explore(
    out: Annotated[Path, typer.Option("--out", help="Folder that saves go to (NAME.png + NAME.json); the only place "
                                      "the page can write.")] = Path("explore"),
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="Port to listen on; 0 picks a free one.")] = 8765,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Anything but 127.0.0.1 lets other "
                                      "machines use the page (and save into --out).")] = "127.0.0.1",
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in the default browser.")] = False,
    run: RunName = None,
    model: ModelRef = None,
    device: Device = "auto",
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
) -> None:
    """Browse, steer and save faces in a local web page: a grid of samples, sliders along the main latent
    directions, variations, interpolation, your own images; each save is a PNG and a recipe for `render`."""
    from animevae.commands.shared import console, err_console, open_for_command
    from animevae.errors import ArgumentError, OutputError
    from animevae.explore.server import start_server
    from animevae.explore.studio import Studio
    from animevae.model_files import choose_model

    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder",
                          "pass a folder path (it is created on the first save)")
    # Without an encoder.onnx beside the decoder the page still browses and steers; uploads and variations are off.
    has_encoder = choose_model(runs_dir, run, model).path("encoder").is_file()
    roles = ("decoder", "prior", "encoder") if has_encoder else ("decoder", "prior")
    models = open_for_command(roles, runs_dir, run, model, device)
    try:
        server = start_server(Studio(models, out), models.origin, host, port)
    except OSError as error:
        raise ArgumentError(f"cannot listen on {host}:{port} ({error.strerror or error})",
                            "pass another --port, or --port 0 for a free one") from None
    if host not in LOOPBACK:
        err_console.print(f"WARNING: listening on {host}: anyone who can reach this machine on port {server.port} can "
                          f"use the page and save files into {out}/. Drop --host to keep it on this machine.")
    console.print(f"explore: {server.url}  (saves go to {out}/; Ctrl-C stops)")
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print(f"stopped; saves are in {out}/")
        console.print(f"next: animevae render {out}/NAME.json --out face.png  (makes a saved face again)")
    finally:
        server.server_close()


def render(
    recipe: Annotated[Path, typer.Argument(help="A recipe saved by `animevae explore` (NAME.json).",
                                           show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("face.png"),
    run: RunName = None,
    model: ModelRef = None,
    device: Device = "auto",
    overwrite: Overwrite = False,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
) -> None:
    """Turn an explore recipe back into its PNG, byte for byte the file the page saved (same model and device).

    Without --run or --model, the model is the one whose decoder saved the recipe (an exported run or the built-in)."""
    from animevae.commands.shared import console, open_for_command
    from animevae.explore.recipe import Painter, find_model, read_recipe
    from animevae.latent import check_output_file
    from animevae.outputs import write_output_file

    parsed = read_recipe(recipe)
    check_output_file(out, "--out")
    if run is None and model is None:  # the model that saved it, wherever it is here (else the usual default)
        model = find_model(runs_dir, parsed.model_sha256)
    painter = Painter(open_for_command(("decoder", "prior"), runs_dir, run, model, device))
    write_output_file(out, painter.png(parsed), overwrite)
    start = "a latent" if parsed.latent is not None else f"seed {parsed.seed} image {parsed.index}"
    console.print(f"wrote {out}: {start} ({parsed.origin}) with {len(parsed.moves)} slider move(s), "
                  f"on {painter.decoder.provider}")
