"""animevae.training.synthetic: procedural dead-leaves images with the look of anime art."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from animevae.errors import ArgumentError
from animevae.training.synthetic import (ELLIPSE, LEAVES, NO_TEXTURE, POLYGON, RECTANGLE, LeavesStyle, Shapes,
                                         dead_leaves, gaussian_blur, paint_layer, power_law, signed_distance, strokes)

NO_LINES = replace(LEAVES, line_art=0.0, strokes=0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _luma(images: torch.Tensor) -> torch.Tensor:
    return (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1)  # (B, H, W)


def _gradient(images: torch.Tensor) -> torch.Tensor:
    """(B, H-1, W-1) largest step to the right or down neighbour, over the channels."""
    right = (images[..., :-1, 1:] - images[..., :-1, :-1]).abs().amax(dim=1)
    down = (images[..., 1:, :-1] - images[..., :-1, :-1]).abs().amax(dim=1)
    return torch.maximum(right, down)


def test_images_have_the_asked_shape_dtype_and_range() -> None:
    images = dead_leaves(6, 40, _gen(0))
    assert images.shape == (6, 3, 40, 40) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.is_contiguous()
    assert dead_leaves(0, 16, _gen(0)).shape == (0, 3, 16, 16)
    with pytest.raises(ArgumentError):
        dead_leaves(4, 4, _gen(0))


def test_the_same_generator_state_gives_the_same_images() -> None:
    generator = _gen(3)
    first, second = dead_leaves(4, 32, generator), dead_leaves(4, 32, generator)
    assert torch.equal(first, dead_leaves(4, 32, _gen(3)))
    assert not torch.equal(first, second)  # the generator moved on
    assert not torch.equal(first, dead_leaves(4, 32, _gen(4)))


def test_images_differ_and_each_has_flat_areas_and_edges() -> None:
    images = dead_leaves(16, 64, _gen(1))
    pairs = (images[:, None] - images[None]).abs().mean(dim=(2, 3, 4))  # (B, B) mean difference
    assert pairs[~torch.eye(16, dtype=torch.bool)].min() > 0.03
    steps = _gradient(images).flatten(1)
    flat, edges = (steps < 0.01).float().mean(dim=1), (steps > 0.2).float().mean(dim=1)
    assert flat.mean() > 0.2 and (flat > 0.15).float().mean() >= 0.75  # flat (cel) regions ...
    assert (edges > 0.01).float().mean() >= 0.9  # ... and hard edges in most images
    colours = images.permute(0, 2, 3, 1).reshape(-1, 3)
    assert colours.std(dim=0).min() > 0.15  # every channel spans its range over the batch


@pytest.mark.parametrize("lines, most", [({"strokes": 4}, 0.15), ({"line_art": 1.0}, 0.5)], ids=["strokes", "outlines"])
def test_line_art_draws_thin_dark_lines_over_the_same_picture(lines: dict, most: float) -> None:
    # Lines change no draw of the rest: the same seed with and without them differs only where they lie.
    plain = dead_leaves(16, 64, _gen(2), NO_LINES)
    drawn = dead_leaves(16, 64, _gen(2), replace(NO_LINES, **lines))
    changed = (drawn - plain).abs().amax(dim=1) > 0.02  # (B, H, W)
    share = changed.flatten(1).float().mean(dim=1)
    assert (share > 0).float().mean() >= 0.6 and share.max() < most  # in most images, and lines, not areas
    assert (_luma(plain) - _luma(drawn))[changed].mean() > 0.1  # dark ink


def test_strokes_are_thin_antialiased_curves_and_none_when_asked() -> None:
    cover = strokes(32, 64, 4, _gen(5))  # (B, 1, S, S)
    assert cover.shape == (32, 1, 64, 64) and cover.min() >= 0.0 and cover.max() <= 1.0
    drawn = cover.flatten(1).amax(dim=1) > 0
    assert 0.6 < drawn.float().mean() < 1.0  # 0..4 strokes per image: most images have one
    assert (cover == 1.0).any() and ((cover > 0) & (cover < 1)).float().sum() > (cover == 1.0).float().sum() * 0.2
    assert (cover > 0).float().mean() < 0.15  # lines, not areas
    assert not strokes(8, 64, 0, _gen(5)).any()


def test_shape_radii_follow_the_inverse_cube_law() -> None:
    radii = power_law(torch.tensor(1.0), torch.tensor(8.0), torch.rand(200_000, generator=_gen(0)))
    assert radii.min() >= 1.0 and radii.max() <= 8.0
    expected = (1.0 - 2.0**-2) / (1.0 - 8.0**-2)  # P(r <= 2) under density r^-3 on [1, 8]
    assert (radii <= 2.0).float().mean().item() == pytest.approx(expected, abs=0.005)


def _one_shape(radius: float, aspect: float, angle: float, **values: object) -> Shapes:
    values = {"radius": radius, "aspect": aspect, "angle": angle, "keep": 1.0, **values}
    return Shapes(*(torch.tensor([values.get(name, 0.0)]) for name in Shapes.__dataclass_fields__))


def test_a_painted_disk_has_its_area_and_an_antialiased_edge() -> None:
    image = torch.zeros(1, 3, 32, 32)
    disk = _one_shape(6.3, 1.0, 0.0, cx=16.2, cy=15.7, left=8.0, top=7.0)
    disk.colour = torch.ones(1, 3)
    what = {"side": 17, "kind": ELLIPSE, "sides": 0, "texture": NO_TEXTURE, "gradient": 0, "shadow": 0, "outline": 0}
    paint_layer(image, torch.tensor([0]), disk, what, torch.zeros(1, 32, 32), torch.zeros(1, 3), torch.ones(1, 3))
    assert image[0, 0].sum().item() == pytest.approx(math.pi * 6.3**2, rel=0.01)
    edge = ((image[0, 0] > 0.05) & (image[0, 0] < 0.95)).sum().item()
    assert 20 <= edge <= 2 * math.pi * 6.3 * 1.5  # a one-pixel ramp all round, no wider


@pytest.mark.parametrize("kind, sides", [(ELLIPSE, 0), (RECTANGLE, 0), (POLYGON, 3), (POLYGON, 6)])
def test_signed_distances_are_zero_on_the_edge_and_negative_inside(kind: int, sides: int) -> None:
    shape = _one_shape(10.0, 0.5 if kind != POLYGON else 1.0, 0.3)
    corner = 10.0 / math.sqrt(1.25)  # a rectangle's half length: its corners lie on the circle of the radius
    on_edge = {ELLIPSE: [(10.0, 0.0), (0.0, 5.0)], RECTANGLE: [(corner, 0.0), (corner, 0.5 * corner)],
               POLYGON: [(10.0 * math.cos(math.pi / max(sides, 1)), 0.0), (10.0, math.pi / max(sides, 1))]}[kind]
    c, s = math.cos(0.3), math.sin(0.3)
    if kind == POLYGON:  # (distance, bearing from the angle): an edge's middle, then a vertex
        points = [(r * math.cos(0.3 + b), r * math.sin(0.3 + b)) for r, b in on_edge]
    else:  # along and across the major axis
        points = [(u * c - v * s, u * s + v * c) for u, v in on_edge]
    points = torch.tensor([(0.0, 0.0), *points, (30.0, 30.0)])
    distance = signed_distance(points[:, 0].view(1, 1, -1), points[:, 1].view(1, 1, -1), shape, kind, sides)[0, 0]
    assert distance[0] < -2.0 and distance[-1] > 1.0
    assert torch.allclose(distance[1:-1], torch.zeros(2), atol=1e-3)


def test_the_ellipse_distance_is_in_pixels_at_both_ends() -> None:
    shape = _one_shape(12.0, 0.25, 0.0)  # semi-axes 12 and 3
    dx, dy = torch.tensor([12.5, 0.0, 11.5, 0.0]).view(1, 1, 4), torch.tensor([0.0, 3.5, 0.0, 2.5]).view(1, 1, 4)
    distance = signed_distance(dx, dy, shape, ELLIPSE, 0)[0, 0]
    # Half a pixel past or short of each end, as far as the antialiasing sees it (first order, a few % off).
    assert torch.allclose(distance, torch.tensor([0.5, 0.5, -0.5, -0.5]), atol=0.05)


def test_depth_of_field_blurs_only_the_images_asked() -> None:
    images = dead_leaves(4, 32, _gen(7), NO_LINES)
    blurred = gaussian_blur(images, torch.tensor([0.0, 1.5, 0.0, 2.5]))
    assert torch.equal(blurred[0], images[0]) and torch.equal(blurred[2], images[2])
    sharp, soft = _gradient(images).mean(dim=(1, 2)), _gradient(blurred).mean(dim=(1, 2))
    assert soft[1] < 0.8 * sharp[1] and soft[3] < soft[1] / sharp[1] * sharp[3]
    assert torch.allclose(blurred.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=0.01)


def test_a_denser_style_covers_more_of_the_background() -> None:
    sparse = LeavesStyle(layers=8, line_art=0.0, strokes=0, blur=0.0)
    dense = replace(sparse, layers=64)
    changes = [_gradient(dead_leaves(8, 48, _gen(9), style)).mean().item() for style in (sparse, dense)]
    assert changes[1] > 1.5 * changes[0]


def test_images_are_drawn_on_one_thread_and_the_count_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    import animevae.training.synthetic as synthetic

    seen, draw_strokes = [], synthetic.strokes
    monkeypatch.setattr(synthetic, "strokes", lambda *args: seen.append(torch.get_num_threads()) or draw_strokes(*args))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        dead_leaves(2, 16, _gen(0))
        assert seen == [1] and torch.get_num_threads() == 2
        monkeypatch.setattr(synthetic, "strokes", lambda *args: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            dead_leaves(2, 16, _gen(0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
