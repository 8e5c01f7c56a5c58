"""The torch side: the networks, training, checkpoints, distributed runs, export to ONNX and evaluation.

Needs the `train` extra (`pip install "animevae[train]"`). Nothing outside this package imports torch.
"""

from importlib.util import find_spec

from animevae.errors import MissingExtraError

# train, export and evaluate import this package first: without the extra they stop here, with what to
# install, instead of a traceback from deep inside a module.


def _absent(name: str) -> bool:
    try:
        return find_spec(name) is None
    except ImportError:  # an import hook that refuses the package counts as absent
        return True


_missing = [name for name in ("torch", "onnxscript") if _absent(name)]
if _missing:
    raise MissingExtraError(f"this command needs {' and '.join(_missing)}, which the light install leaves out",
                            "pip install \"animevae[train]\" (torch, torchvision, onnxscript), then run it again")
