"""The Typer app: the commands (animevae/commands/) registered in one place, under one error policy."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Optional, TypeVar

# Set before torch or onnxruntime load: libgomp's default busy-waiting threads starve a CPU-bound job beside
# them (the PNG workers) on machines with few cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from animevae import __version__
from animevae.commands.folders import augment, denoise
from animevae.commands.generate import generate
from animevae.commands.info import info
from animevae.commands.latent import interpolate, traverse
from animevae.commands.shared import console, err_console, print_error
from animevae.commands.training import evaluate, export, prepare, train, train_denoiser
from animevae.errors import AnimeVAEError
from animevae.explore.commands import explore, render

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Train a VAE on a folder of anime-style faces; generate and denoise faces in bulk.")
F = TypeVar("F", bound=Callable[..., Any])
# Every command, in the order `animevae --help` lists them. A new command: a function in animevae/commands/,
# added here.
COMMANDS: tuple[Callable[..., None], ...] = (prepare, train, train_denoiser, export, generate, denoise, evaluate, info,
                                             augment, interpolate, traverse, explore, render)


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
        restore = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: no signal handlers there
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, restore)


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


for _command in COMMANDS:
    app.command()(reports_errors(_command))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="animevae")


if __name__ == "__main__":
    main()
