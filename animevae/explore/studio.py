"""What the explore page can ask of a model, without HTTP: grids, steered faces, variations, interpolation strips,
uploads, saves. Each answer is a list of faces (a recipe and its PNG). numpy and onnxruntime only.

Every face the page sees is rebuilt from its recipe here, so the page holds no state the server must trust: a
request carries the recipes it is about, checked like a recipe file.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from animevae.augment import posterior_draws
from animevae.images import decode_rgb, square_resize
from animevae.errors import ArgumentError, DataError, ModelError, OutputError
from animevae.explore.recipe import Painter, Recipe
from animevae.fileio import write_bytes_atomic
from animevae.latent import decode_latents, encode_images, interpolation_path
from animevae.model_files import ModelSet
from animevae.runtime import OnnxModel
from animevae.sampling import check_seed, check_temperature

MAX_UPLOAD_BYTES = 16 * 1024 * 1024  # far above any face picture; refused before a byte is decoded
# The decoders an upload may reach. Not every format Pillow opens: its EPS plugin runs Ghostscript on the file,
# and with --host the file can come from anyone on the network.
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
MAX_STRIP = 32  # faces in one grid, variation or interpolation strip
SLIDERS = 8  # principal directions shown as sliders (fewer when the latent is smaller)
# A save name is a plain file stem: no folder, no dot, nothing a shell or a file system reads specially.
SAVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_NAME_HINT = "use 1 to 64 letters, digits, '-' and '_' (no folders, no dots); .png and .json are added"
# Windows opens a device, not a file, for these names whatever the extension.
_DEVICE_NAMES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"{port}{i}" for port in ("COM", "LPT") for i in range(1, 10))})


@dataclass(frozen=True)
class Face:
    """One face for the page: how to make it again, and its PNG."""

    recipe: Recipe
    png: bytes


def check_count(count: int, what: str) -> None:
    """A strip holds 1 to MAX_STRIP faces (interpolation: at least 2, both ends)."""
    least = 2 if what == "steps" else 1
    if not least <= count <= MAX_STRIP:
        raise ArgumentError(f"{what} must be {least} to {MAX_STRIP} (got {count})", f"pick {least} to {MAX_STRIP}")


def check_save_name(name: str) -> str:
    """The name itself when it is a plain file stem; ArgumentError for a path, a dot or anything odd."""
    if not SAVE_NAME.fullmatch(name) or name.upper() in _DEVICE_NAMES:
        raise ArgumentError(f"save name {name[:80]!r} is refused", _NAME_HINT)
    return name


def _check_upload_format(data: bytes) -> None:
    """DataError unless Pillow identifies `data` as one of UPLOAD_FORMATS (from its header; nothing is decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS).close()
    except Image.UnidentifiedImageError:
        raise DataError("the uploaded file: not an image the page takes (PNG, JPEG, WebP, GIF or BMP)",
                        "upload a PNG, JPEG or WebP picture of a face") from None
    except Exception:  # noqa: BLE001 - one of those formats but broken or huge: decode_rgb says how
        pass


class Studio:
    """One opened model (decoder, and encoder for uploads and variations) and the folder saves go to."""

    def __init__(self, models: ModelSet, out: Path) -> None:
        self.painter = Painter(models)
        self.models = models
        self.out = out
        self._saving = threading.Lock()  # two tabs saving one name: the second must see the first's files

    @property
    def sliders(self) -> int:
        """How many principal directions the page shows."""
        return min(SLIDERS, self.models.latent_dim)

    def variance_shares(self) -> list[float]:
        """The share of the latent variance along each slider's direction."""
        power = (self.painter.directions**2).sum(axis=1)  # (D,): the eigenvalues
        total = float(power.sum()) or 1.0
        return [float(p) / total for p in power[: self.sliders]]

    def _faces(self, recipes: list[Recipe], latents: np.ndarray) -> list[Face]:
        return [Face(r, png) for r, png in zip(recipes, self.painter.pngs(latents))]

    def _latent_faces(self, latents: np.ndarray, origin: str) -> list[Face]:
        sha = self.painter.model_sha256
        recipes = [Recipe(sha, latent=tuple(float(v) for v in row), origin=origin) for row in latents]
        return self._faces(recipes, latents)

    def grid(self, seed: int, temperature: float, count: int, class_name: str | None = None) -> list[Face]:
        """Images 0..count-1 of `animevae generate --seed SEED --temperature T` (of one class on a labelled model)."""
        check_seed(seed)
        check_temperature(temperature)
        check_count(count, "count")
        recipes = [self.painter.draw_recipe(seed, i, temperature, class_name) for i in range(count)]
        return self._faces(recipes, np.stack([self.painter.start_latent(r) for r in recipes]))

    def render(self, recipe: Recipe) -> bytes:
        """One face's PNG: the bytes a save writes and `animevae render` gives back."""
        return self.painter.png(recipe)

    def variations(self, recipe: Recipe, strength: float, seed: int, count: int) -> list[Face]:
        """Draws around a face as `augment` makes them: the face is decoded, encoded, and its posterior drawn."""
        encoder = self._encoder("variations")
        check_seed(seed)
        check_count(count, "count")
        if not 0.0 <= strength <= 5.0:
            raise ArgumentError(f"strength must be 0 to 5 (got {strength:g})",
                                "0.5 to 1.5 gives mild to strong variations")
        self.painter.check_model(recipe)
        pixels = decode_latents(self.painter.decoder, self.painter.latent(recipe)[None])  # (1, S, S, 3)
        mu, logvar = encode_images(encoder, pixels)
        return self._latent_faces(posterior_draws(mu[0], logvar[0], strength, seed, 0, list(range(count))), "variation")

    def interpolate(self, start: Recipe, end: Recipe, steps: int) -> list[Face]:
        """`steps` faces from `start` to `end`, both included, as `interpolate` walks (slerp around the prior mean)."""
        check_count(steps, "steps")
        for recipe in (start, end):
            self.painter.check_model(recipe)
        ends = self.painter.latent(start), self.painter.latent(end)
        path, _ = interpolation_path(*ends, steps, self.models.info.mixture.mean)
        return self._latent_faces(path, "interpolation")

    def encode_upload(self, data: bytes) -> Face:
        """An uploaded image file's bytes -> the face of its encoded mean; DataError for anything unreadable."""
        encoder = self._encoder("uploads")
        if len(data) > MAX_UPLOAD_BYTES:
            raise DataError(f"the file is {len(data):,} bytes (at most {MAX_UPLOAD_BYTES:,})", "upload a smaller image")
        _check_upload_format(data)
        # decode_rgb's own checks (pixel cap before decoding, truncated files, not an image), on the bytes in memory.
        try:
            pixels = square_resize(decode_rgb(io.BytesIO(data)), self.models.image_size)  # type: ignore[arg-type]
        except DataError as error:
            raise DataError(f"the uploaded file: {error.message}",
                            "upload a PNG, JPEG or WebP picture of a face") from None
        mu, _ = encode_images(encoder, pixels[None])
        return self._latent_faces(mu, "upload")[0]

    def save(self, recipe: Recipe, name: str) -> list[Path]:
        """Write OUT/NAME.png (the recipe rendered) and OUT/NAME.json (the recipe); never over an existing file."""
        return self.save_strip([recipe], name, numbered=False)

    def save_strip(self, recipes: list[Recipe], name: str, numbered: bool = True) -> list[Path]:
        """Write OUT/NAME_00.png, OUT/NAME_00.json, ... for each recipe (just NAME.* when not `numbered`)."""
        check_save_name(name)
        check_count(len(recipes), "count")
        stems = [f"{name}_{i:02d}" if numbered else name for i in range(len(recipes))]
        paths = [self.out / f"{stem}{suffix}" for stem in stems for suffix in (".png", ".json")]
        pngs = [self.render(recipe) for recipe in recipes]  # all checked before the first file is written
        with self._saving:
            taken = [p.name for p in paths if p.exists() or p.is_symlink()]
            if taken:
                raise OutputError(f"{taken[0]} already exists in {self.out}", "pick another name: saves never overwrite")
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                for recipe, png, png_path, json_path in zip(recipes, pngs, paths[0::2], paths[1::2]):
                    write_bytes_atomic(png_path, png)
                    write_bytes_atomic(json_path, recipe.to_json().encode())
            except OSError as error:  # a full disk, a folder made read-only or replaced by a file since the start
                raise OutputError(f"cannot save into {self.out}: {error.strerror or error}",
                                  "free some space or fix the folder, or restart explore with another --out") from None
        return paths

    def _encoder(self, what: str) -> OnnxModel:
        if self.models.encoder is None:
            raise ModelError(f"{what} need the encoder, and this model has none",
                             "pass an export that has encoder.onnx")
        return self.models.encoder

