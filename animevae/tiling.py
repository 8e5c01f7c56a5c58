"""Images of any size through a fully convolutional model in bounded memory: overlapping tiles, batched by a
pixel budget, blended seamlessly. numpy only; the model is any function (B, 3, h, w) -> (B, 3, h, w) float32.

Each tile's outer `margin` pixels (where the model saw zero padding instead of the neighbouring image) get
weight 0 wherever another tile covers them; then weights ramp linearly over `blend` pixels, so neighbouring
tiles cross-fade without a seam. Output rows are finished band by band: beside the input and output images,
memory holds one band of tiles, not a float copy of the whole image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from animevae.fileio import to_uint8, to_unit_chw

RunModel = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tiling:
    """Tile geometry and the pixels per model call. Tiles overlap by 2 * margin + blend."""

    tile: int = 512  # a multiple of 8, so tile starts keep a JPEG's 8x8 grid phase
    margin: int = 32  # wider than the model's effective reach at a tile edge
    blend: int = 16
    pixel_budget: int = 1 << 20  # pixels per model call: 4 tiles of 512 x 512, or 256 faces of 64 x 64

    @property
    def stride(self) -> int:
        """Distance between tile starts."""
        return self.tile - 2 * self.margin - self.blend

    def fits(self, height: int, width: int) -> bool:
        """Whether an image goes through the model whole (one tile)."""
        return height <= self.tile and width <= self.tile

    def check(self) -> None:
        """Raise ValueError for geometry that cannot cover an image."""
        if self.tile % 8 or self.margin < 0 or self.blend < 1 or self.stride < 8:
            raise ValueError(f"bad tiling {self}: tile must be a multiple of 8 and exceed 2 * margin + blend + 8")


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of the tiles covering [0, length): every `stride`, and a last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def edge_weights(length: int, start: int, total: int, margin: int, blend: int) -> np.ndarray:
    """(length,) blending weights of a tile at `start` along an axis of `total` pixels: 0 over the margin and
    a ramp over `blend` at each edge that has a neighbour; 1 elsewhere, and up to an image border."""
    index = np.arange(length, dtype=np.float32)
    weight = np.ones(length, np.float32)
    if start > 0:
        weight = np.minimum(weight, np.clip((index - margin + 1) / (blend + 1), 0.0, 1.0))
    if start + length < total:
        weight = np.minimum(weight, np.clip((length - index - margin) / (blend + 1), 0.0, 1.0))
    return weight


def run_tiled(run: RunModel, image: np.ndarray, tiling: Tiling = Tiling()) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) uint8 through `run`, tile by tile: a band of tiles at a time, each model call
    holding at most `tiling.pixel_budget` pixels (at least one tile)."""
    height, width, _ = image.shape
    tile_h, tile_w = min(tiling.tile, height), min(tiling.tile, width)
    rows = tile_starts(height, tiling.tile, tiling.stride)
    cols = tile_starts(width, tiling.tile, tiling.stride)
    per_call = max(1, tiling.pixel_budget // (tile_h * tile_w))
    col_weights = [edge_weights(tile_w, c, width, tiling.margin, tiling.blend) for c in cols]
    out = np.empty_like(image)
    band = np.zeros((tile_h, width, 3), np.float32)  # weighted sums for image rows [top, top + tile_h)
    weight_sum = np.zeros((tile_h, width, 1), np.float32)
    top = 0
    for index, row in enumerate(rows):
        shift = row - top  # rows above `row` were finished with the band above: move the rest up
        band[: tile_h - shift], weight_sum[: tile_h - shift] = band[shift:], weight_sum[shift:]
        band[tile_h - shift :], weight_sum[tile_h - shift :] = 0.0, 0.0
        top = row
        row_weight = edge_weights(tile_h, row, height, tiling.margin, tiling.blend)[:, None]
        for begin in range(0, len(cols), per_call):
            starts = cols[begin : begin + per_call]
            tiles = np.stack([image[row : row + tile_h, c : c + tile_w] for c in starts])  # (n, h, w, 3)
            outputs = run(to_unit_chw(tiles))  # (n, 3, h, w)
            for k, (c, output) in enumerate(zip(starts, outputs)):
                weight = (row_weight * col_weights[begin + k][None, :])[:, :, None]  # (h, w, 1)
                band[:, c : c + tile_w] += output.transpose(1, 2, 0) * weight
                weight_sum[:, c : c + tile_w] += weight
        done = (rows[index + 1] if index + 1 < len(rows) else height) - row
        finished = band[:done] / weight_sum[:done]  # (done, W, 3)
        out[row : row + done] = to_uint8(finished.transpose(2, 0, 1)[None])[0]
    return out
