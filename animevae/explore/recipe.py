"""A recipe: how one face was made (model, starting latent, slider moves), small enough to save beside its PNG.

`render_recipe` turns a recipe into PNG bytes; the explore page saves exactly those bytes, and
`animevae render RECIPE.json` calls the same function, so the two files are identical byte for byte (on the same
model and execution provider). numpy and onnxruntime only.

A recipe's start is either a draw (seed, index, temperature, and class for a labelled model: image `index` of
`animevae generate --seed SEED`) or a latent given as numbers (an uploaded image, a variation, an interpolation
frame). Float32 values are stored as JSON numbers, which give back the same float32 exactly. A draw through a
diffusion prior (prior.onnx beside the decoder) records that file's hash too: the same decoder without it, or with
another, draws another latent for the seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from animevae.errors import DataError, ModelError
from animevae.fileio import encode_png
from animevae.latent import decode_latents, principal_directions
from animevae.model_files import BUILTIN, BUILTIN_DIR, ModelSet, builtin_available
from animevae.outputs import file_digest
from animevae.runs import EXPORT_DIR, list_runs
from animevae.sampling import LatentSampler, check_seed, check_temperature

RECIPE_FORMAT = 1
MAX_AMOUNT = 10.0  # standard deviations along one direction: far past anything the sliders reach
MAX_RECIPE_BYTES = 1_000_000  # a recipe holds one latent; anything larger is not one of ours
SAMPLER_CACHE = 8  # temperatures whose samplers are kept
_HINT = "pass a recipe saved by `animevae explore`"


@dataclass(frozen=True)
class Move:
    """`amount` standard deviations along principal direction `direction` (0 = the largest, as in `traverse`)."""

    direction: int
    amount: float


@dataclass(frozen=True)
class Recipe:
    """A face: its start (a draw or a latent) plus slider moves, for the model whose decoder hash is `model_sha256`."""

    model_sha256: str
    seed: int | None = None
    index: int = 0
    temperature: float = 1.0
    class_name: str | None = None
    latent: tuple[float, ...] | None = None
    origin: str = "sample"  # what the latent came from (sample, upload, variation, interpolation), for people
    moves: tuple[Move, ...] = field(default_factory=tuple)
    prior_sha256: str | None = None  # a draw through prior.onnx: its hash (None: drawn from the mixture)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (see `recipe_from_dict`)."""
        start: dict[str, Any]
        if self.latent is None:
            start = {"seed": self.seed, "index": self.index, "temperature": self.temperature}
            if self.class_name is not None:
                start["class"] = self.class_name
            if self.prior_sha256 is not None:
                start["prior_sha256"] = self.prior_sha256
        else:
            start = {"latent": list(self.latent)}
        return {"animevae_recipe": RECIPE_FORMAT, "model_sha256": self.model_sha256, "origin": self.origin,
                "start": start, "moves": [{"direction": m.direction, "amount": m.amount} for m in self.moves]}

    def to_json(self) -> str:
        """Indented JSON text with a final newline."""
        return json.dumps(self.to_dict(), indent=1) + "\n"


def _number(value: Any, what: str) -> float:
    try:
        number = math.nan if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)
    except OverflowError:  # an integer of hundreds of digits: past any float
        number = math.inf
    if not math.isfinite(number):
        raise DataError(f"recipe: {what} must be a finite number (got {str(value)[:40]!r})", _HINT)
    return number


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"recipe: {what} must be an integer of 0 or more (got {str(value)[:40]!r})", _HINT)
    return value


def _sha256(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise DataError(f"recipe: {what} must be 64 lowercase hex digits", _HINT)
    return value


def recipe_from_dict(data: Any) -> Recipe:
    """Check a recipe's JSON form (from a file or the page: untrusted) and build it; DataError when malformed."""
    if not isinstance(data, dict) or data.get("animevae_recipe") != RECIPE_FORMAT:
        raise DataError("not an animevae recipe (no \"animevae_recipe\": 1)", _HINT)
    sha, start, moves = _sha256(data.get("model_sha256"), "model_sha256"), data.get("start"), data.get("moves", [])
    if not isinstance(start, dict) or not isinstance(moves, list) or len(moves) > 1000:
        raise DataError("recipe: needs a \"start\" object and a \"moves\" list", _HINT)
    parsed = tuple(_move(m) for m in moves)
    origin = str(data.get("origin", "sample"))[:40]
    if "latent" in start:
        values = start["latent"]
        if not isinstance(values, list) or not 0 < len(values) <= 65536:
            raise DataError("recipe: start.latent must be a list of numbers", _HINT)
        numbers = np.array([_number(v, "start.latent") for v in values])  # (D,) float64
        with np.errstate(over="ignore"):
            latent32 = numbers.astype(np.float32)
        if not np.isfinite(latent32).all():  # saved as Infinity, which no recipe file may hold
            raise DataError(f"recipe: start.latent holds {numbers[~np.isfinite(latent32)][0]:g}, past the largest "
                            "float32", _HINT)
        latent = tuple(float(v) for v in latent32)
        return Recipe(sha, latent=latent, origin=origin, moves=parsed)
    seed = _integer(start.get("seed"), "start.seed")
    temperature = _number(start.get("temperature", 1.0), "start.temperature")
    check_temperature(temperature)
    class_name = start.get("class")
    if class_name is not None and not isinstance(class_name, str):
        raise DataError("recipe: start.class must be a class name", _HINT)
    prior = None if start.get("prior_sha256") is None else _sha256(start["prior_sha256"], "start.prior_sha256")
    return Recipe(sha, seed, _integer(start.get("index", 0), "start.index"), temperature, class_name,
                  origin=origin, moves=parsed, prior_sha256=prior)


def _move(data: Any) -> Move:
    if not isinstance(data, dict):
        raise DataError("recipe: each move is {\"direction\": D, \"amount\": A}", _HINT)
    amount = _number(data.get("amount"), "a move's amount")
    if abs(amount) > MAX_AMOUNT:
        raise DataError(f"recipe: a move of {amount:g} standard deviations (at most {MAX_AMOUNT:g})", _HINT)
    return Move(_integer(data.get("direction"), "a move's direction"), amount)


def read_recipe(path: Path) -> Recipe:
    """Read and check a recipe file; DataError with a hint for a missing, large or malformed one."""
    if not path.is_file():
        raise DataError(f"{path} does not exist" if not path.exists() else f"{path} is not a file", _HINT)
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise DataError(f"{path} is larger than any recipe ({path.stat().st_size:,} bytes)", _HINT)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # bad JSON or UTF-8, an integer of 5,000 digits, [[[[...
        raise DataError(f"{path} is not JSON ({str(error)[:80]})", _HINT) from None
    return recipe_from_dict(data)


def find_model(runs_dir: Path, model_sha256: str) -> str | None:
    """The export whose decoder has this hash: an exported run under `runs_dir` (newest first), else the built-in
    model; None when no model here made the recipe. What `render` uses when neither --run nor --model is given."""
    candidates = [run / EXPORT_DIR for run in reversed(list_runs(runs_dir))]
    if builtin_available():
        candidates.append(BUILTIN_DIR)
    for folder in candidates:
        decoder = folder / "decoder.onnx"
        if decoder.is_file() and file_digest(decoder) == model_sha256:
            return BUILTIN if folder == BUILTIN_DIR else str(folder)
    return None


class Painter:
    """Turns recipes into latents and PNGs for one opened model (a decoder; the encoder when uploads are on).

    Thread-safe: onnxruntime sessions may run concurrently, and the caches only ever gain equal values."""

    def __init__(self, models: ModelSet) -> None:
        assert models.decoder is not None, "a painter needs the decoder"
        self.models = models
        self.decoder = models.decoder
        self.model_sha256 = models.info.digest
        self.classes = models.info.classes
        self._samplers: dict[float, LatentSampler] = {}

    @cached_property
    def prior_sha256(self) -> str | None:
        """The hash of the prior.onnx that unlabelled draws go through; None where they come from the mixture."""
        return self.models.info.prior_digest if self.models.sampler.prior is not None else None

    def draw_recipe(self, seed: int, index: int, temperature: float = 1.0, class_name: str | None = None) -> Recipe:
        """The recipe of image `index` of `animevae generate --seed SEED` (of one class on a labelled model)."""
        prior = self.prior_sha256 if class_name is None else None  # class draws never use prior.onnx
        return Recipe(self.model_sha256, seed, index, temperature, class_name, prior_sha256=prior)

    @cached_property
    def directions(self) -> np.ndarray:
        """(D, D) float64: each principal direction scaled by its standard deviation, largest first (as traverse)."""
        values, vectors = principal_directions(self.models.info.mixture)
        return np.sqrt(values)[:, None] * vectors

    def sampler(self, temperature: float) -> LatentSampler:
        """`generate`'s sampler at `temperature` (sharing the opened diffusion prior, if any)."""
        if temperature not in self._samplers:
            if len(self._samplers) >= SAMPLER_CACHE:  # each holds the whole mixture: keep a few temperatures only
                self._samplers.clear()
            self._samplers[temperature] = LatentSampler(self.models.info.mixture, self.models.sampler.prior, temperature)
        return self._samplers[temperature]

    def start_latent(self, recipe: Recipe) -> np.ndarray:
        """(D,) float32: the recipe's starting latent, drawn as `generate` draws it or given as numbers."""
        if recipe.latent is not None:
            if len(recipe.latent) != self.models.latent_dim:
                raise DataError(f"recipe: a latent of {len(recipe.latent)} numbers, but this model's has "
                                f"{self.models.latent_dim}", "render it with the model that saved it")
            return np.asarray(recipe.latent, np.float32)
        assert recipe.seed is not None
        check_seed(recipe.seed)
        sampler = self.sampler(recipe.temperature)
        if recipe.class_name is None:
            return sampler(recipe.seed, [recipe.index])[0]
        if self.classes is None:
            raise DataError(f"recipe: class {recipe.class_name!r}, but this model has no classes",
                            "render it with the labelled model that saved it")
        return sampler.class_latents(recipe.seed, [(self.classes.index(recipe.class_name), recipe.index)])[0]

    def latent(self, recipe: Recipe) -> np.ndarray:
        """(D,) float32: the start plus every move, summed in float64 in the recipe's order."""
        total = self.start_latent(recipe).astype(np.float64)
        for move in recipe.moves:
            if move.direction >= len(self.directions):
                raise DataError(f"recipe: direction {move.direction}, but the model has {len(self.directions)}",
                                "render it with the model that saved it")
            total = total + move.amount * self.directions[move.direction]
        return total.astype(np.float32)

    def check_model(self, recipe: Recipe) -> None:
        """Refuse a recipe saved with another model: its latent would decode to another face."""
        if recipe.model_sha256 != self.model_sha256:
            raise ModelError(f"the recipe was saved with another model (decoder sha256 {recipe.model_sha256[:12]}..., "
                             f"this one is {self.model_sha256[:12]}...)",
                             "pass the model that saved it: --run NAME or --model PATH (or --model builtin)")
        if recipe.latent is None and recipe.class_name is None and recipe.prior_sha256 != self.prior_sha256:
            saved, here = (f"prior.onnx {sha[:12]}..." if sha else "no prior.onnx"
                           for sha in (recipe.prior_sha256, self.prior_sha256))
            raise ModelError(f"the recipe's seed was drawn through another latent prior ({saved}; this model has {here})",
                             "pass the export that saved it, with the same prior.onnx beside its decoder (or none)")

    def png(self, recipe: Recipe) -> bytes:
        """The recipe's face as PNG bytes: one latent, one decoder call, one encoder of PNGs (save and render)."""
        self.check_model(recipe)
        return encode_png(decode_latents(self.decoder, self.latent(recipe)[None])[0])

    def pngs(self, latents: np.ndarray) -> list[bytes]:
        """(N, D) latents -> N PNGs, in one decoder call (for grids and strips on the page)."""
        return [encode_png(pixels) for pixels in decode_latents(self.decoder, latents)]
