"""Typed errors that carry a hint; the CLI formats them once (cli.print_error).

The policy, by what the user must change:
- ArgumentError: a command-line value is out of range or contradicts another (--count 0, --out inside the input);
- DataError: the input images or data set cannot be used;
- ModelError: a run, checkpoint or ONNX file is missing or not ours;
- OutputError: the disk refuses (an output path that is a file, not writable, full) or holds output we must not
  overwrite;
- DeviceError: the device or execution provider asked for is not there;
- MissingExtraError: the command needs packages this install left out.
"""


class AnimeVAEError(Exception):
    """An error the user can fix: `message` says what is wrong, `hint` how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class DataError(AnimeVAEError):
    """Input images or a prepared data set cannot be used."""


class ModelError(AnimeVAEError):
    """A run, checkpoint or ONNX model is missing or not ours."""


class DeviceError(AnimeVAEError):
    """The requested device or execution provider is not available."""


class OutputError(AnimeVAEError):
    """An output path cannot be written, or holds something we must not overwrite."""


class ArgumentError(AnimeVAEError):
    """A command-line value is out of range or contradicts another."""


class MissingExtraError(AnimeVAEError):
    """A command needs packages of an extra (`animevae[train]`) that this install lacks."""
