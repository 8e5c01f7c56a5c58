"""Tiny inputs for the benchmarks' `--quick` mode: CI runs every script with it so none silently stops
running. Figures printed in quick mode mean nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def write_faces(folder: Path, count: int, size: int = 64, seed: int = 0) -> Path:
    """`count` distinct size x size PNGs of coloured ellipses on a flat background in `folder`; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y, r = (int(v) for v in rng.integers(0, size, 3) // (1, 1, 3))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        image.save(folder / f"face{index:03d}.png")
    return folder


def write_classes(root: Path, counts: dict[str, int], size: int = 64) -> Path:
    """root/<class>/faceNNN.png for each class and count (an ImageFolder tree); returns root."""
    for seed, (name, count) in enumerate(counts.items()):
        write_faces(root / name, count, size, seed=100 + seed)
    return root
