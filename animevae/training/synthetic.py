"""Procedural training images for the denoiser: a dead-leaves model with the look of anime art.

After Achddou, Gousseau and Ladjal, "Synthetic images as a regularity prior for image restoration neural
networks" (SSVM 2021), and Achddou et al., "VibrantLeaves" (2025): occluding shapes (disks, ellipses, rotated
rectangles, regular polygons) whose radii follow the power law r^-3 between `radius_min` and `radius_max` of the
side (so every octave of sizes covers about the same area), each filled with a colour plus, for some, a linear
gradient and a texture (a sinusoidal grating, a dot screen of two crossed gratings, or 1/f fractal noise); in
some images the layers behind a random depth are blurred (depth of field). For anime art: the colours of each
image come from a small palette (flat cel regions whose neighbours often share a colour), some shapes carry a
hard-edged cel shadow, some a dark outline, and free line strokes (tapering quadratic Bezier curves of varying
width) lie on top.

Pure torch on the CPU. The loop runs over the shape layers, each vectorised over the batch and confined to a
window around its shapes; the strokes are drawn as capsules all at once. Every draw comes from the generator in
a fixed order: the same generator state gives the same images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache

import torch

from animevae.errors import ArgumentError
from animevae.training.devices import one_thread


@dataclass(frozen=True)
class LeavesStyle:
    """What the images are made of. Shares are probabilities; radii are fractions of the image side."""

    layers: int = 48  # shape layers, back to front (each image keeps a share of them)
    density: tuple[float, float] = (0.4, 1.0)  # the share of layers an image keeps, uniform in this range
    radius_min: float = 0.06
    radius_max: float = 0.75
    palette: int = 6  # colours per image
    gradient: float = 0.35  # layers whose shapes have a linear gradient towards a second palette colour
    grating: float = 0.12  # layers whose shapes have a sinusoidal grating (the three textures exclude each other)
    dots: float = 0.08  # ... a dot screen (two crossed gratings)
    noise: float = 0.2  # ... fractal noise
    shadow: float = 0.3  # layers whose shapes have a hard-edged cel shadow
    line_art: float = 0.5  # images with line art: outlines on the outlined layers' shapes
    outline: float = 0.4  # outlined layers
    strokes: int = 4  # free strokes per image: uniform in 0..strokes
    blur: float = 0.4  # images whose back layers are blurred


LEAVES = LeavesStyle()
ELLIPSE, RECTANGLE, POLYGON = 0, 1, 2
KIND_SHARES = torch.tensor([0.45, 0.3, 0.25])
POLYGON_SIDES = (3, 5, 6, 8)
NO_TEXTURE, GRATING, DOTS, NOISE = 0, 1, 2, 3
# Radius classes are half-octaves: a layer's window fits its largest shape closely.
CLASS_RATIO = math.sqrt(2.0)
OUTLINE_WIDTH = (0.7, 2.4)  # pixels, per image (each shape +-20%)
STROKE_WIDTH = (0.6, 3.0)  # pixels at a stroke's thickest
STROKE_SEGMENTS = 16
BLUR_SIGMA = (0.6, 2.5)  # pixels


@dataclass(frozen=True)
class LayerPlan:
    """What each depth holds, (L,) each, the same in every image of a batch, so that one window size and one set
    of operations serve a whole layer; the images differ in everything else, and each keeps its own share of
    the layers."""

    size_class: torch.Tensor  # index into class_bounds
    side: torch.Tensor  # of the square window that holds the layer's shapes
    kind: torch.Tensor  # ELLIPSE, RECTANGLE or POLYGON
    sides: torch.Tensor  # of a polygon
    texture: torch.Tensor  # NO_TEXTURE, GRATING, DOTS or NOISE
    gradient: torch.Tensor  # bool
    shadow: torch.Tensor  # bool
    outline: torch.Tensor  # bool

    def each(self) -> list[dict[str, int]]:
        """One dict of plain ints per layer."""
        names = [f.name for f in fields(self)]
        return [dict(zip(names, values)) for values in zip(*(getattr(self, name).tolist() for name in names))]


@dataclass
class Shapes:
    """Every image's shape at every depth, (B, L) or (B, L, 3) each; or one depth's shapes of some images,
    (R,) or (R, 3) each."""

    keep: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    radius: torch.Tensor
    aspect: torch.Tensor  # minor over major axis
    angle: torch.Tensor
    colour: torch.Tensor
    second: torch.Tensor  # the colour that gradients and textures move towards
    gradient: torch.Tensor  # share of the way to `second` across the shape
    gradient_angle: torch.Tensor
    texture: torch.Tensor  # amplitude
    period: torch.Tensor
    texture_angle: torch.Tensor
    phase: torch.Tensor
    shift: torch.Tensor  # rows the noise field is rolled by, for this shape's texture
    shadow: torch.Tensor  # darkening strength
    shadow_angle: torch.Tensor
    shadow_offset: torch.Tensor  # of the shadow's edge from the centre, in radii
    outline: torch.Tensor  # width in pixels, 0 in images without line art
    left: torch.Tensor  # the window's corner: whole pixels, in the image
    top: torch.Tensor

    def packed(self) -> torch.Tensor:
        """(B, L, K): every field side by side, so that one index picks a layer's shapes."""
        return torch.cat([getattr(self, f.name).float().view(*self.keep.shape, -1) for f in fields(self)], dim=2)

    @classmethod
    def unpack(cls, table: torch.Tensor) -> Shapes:
        """(R, K) rows of `packed()` -> Shapes of (R,) and (R, 3) fields."""
        widths = [3 if f.name in COLOUR_FIELDS else 1 for f in fields(cls)]
        return cls(*(c if c.shape[1] == 3 else c.squeeze(1) for c in table.split(widths, dim=1)))


COLOUR_FIELDS = ("colour", "second")


def dead_leaves(count: int, size: int, generator: torch.Generator, style: LeavesStyle = LEAVES) -> torch.Tensor:
    """(count, 3, size, size) float32 images in [0, 1]; every draw from `generator` (a CPU generator)."""
    if count < 0 or size < 8:
        raise ArgumentError(f"cannot draw {count} leaves images of side {size}",
                            "ask for a count of 0 or more and a side of at least 8 pixels")
    if count == 0:
        return torch.zeros(0, 3, size, size)
    with one_thread():
        return _draw(count, size, generator, style)


def _draw(count: int, size: int, generator: torch.Generator, style: LeavesStyle) -> torch.Tensor:
    """dead_leaves, once its arguments are checked."""
    palettes = palette(count, style.palette, generator)  # (B, P, 3)
    ink, tint = line_colours(count, generator), shadow_tints(count, generator)  # (B, 3) each
    noise = fractal_noise(count, size, generator)  # (B, size, size)
    image = background(palettes, noise, generator)
    plan = layer_plan(style, size, generator)
    shapes = draw_shapes(palettes, size, plan, style, generator)
    sigma = torch.where(torch.rand(count, generator=generator) < style.blur,
                        torch.empty(count).uniform_(*BLUR_SIGMA, generator=generator), torch.zeros(count))
    focus = int(torch.randint(style.layers // 4, style.layers * 3 // 4 + 1, (1,), generator=generator))
    table = shapes.packed()  # (B, L, K)
    kept = shapes.keep.T.nonzero()  # (N, 2): (layer, image) pairs, by layer
    rows = kept[:, 1].split(shapes.keep.sum(dim=0).tolist())  # each layer's images
    what = plan.each()
    for layer in range(style.layers):
        if layer == focus:
            image = gaussian_blur(image, sigma)
        if len(rows[layer]):
            shape = Shapes.unpack(table[rows[layer], layer])
            paint_layer(image, rows[layer], shape, what[layer], noise, ink, tint)
    coverage = strokes(count, size, style.strokes, generator)  # (B, 1, size, size)
    image = image + coverage * (ink.view(-1, 3, 1, 1) - image)
    return image.clamp(0.0, 1.0).contiguous()


def hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(...,) hue, saturation, value in [0, 1] -> (..., 3) RGB in [0, 1]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) % 6.0  # (..., 3)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return value[..., None] * (1.0 - saturation[..., None] * ramp)


def palette(count: int, colours: int, generator: torch.Generator) -> torch.Tensor:
    """(count, colours, 3): per image a few colours, light ones more often than dark (as in cel art)."""
    hue, sat, val = torch.rand(3, count, colours, generator=generator)
    return hsv_to_rgb(hue, sat**1.5, 0.2 + 0.8 * val**0.6)


def line_colours(count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3): the ink of each image's outlines and strokes: dark, a fifth of them a coloured mid tone."""
    hue, sat, val, coloured = torch.rand(4, count, generator=generator)
    return hsv_to_rgb(hue, 0.7 * sat, torch.where(coloured < 0.2, 0.3 + 0.3 * val, 0.3 * val))


def shadow_tints(count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3): what a cel shadow multiplies its colour by: darker, mostly towards blue and purple."""
    hue, sat, val = torch.rand(3, count, generator=generator)
    return hsv_to_rgb(0.55 + 0.35 * hue, 0.35 * sat, 0.55 + 0.3 * val)


def fractal_noise(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(count, size, size) periodic noise with a 1/f^b power spectrum (b uniform in 1..3), zero mean, unit std.
    Uniform white noise is filtered: cheaper to draw than Gaussian, and as Gaussian once filtered."""
    white = torch.rand(count, size, size, generator=generator)
    slope = 1.0 + 2.0 * torch.rand(count, 1, 1, generator=generator)
    freq = torch.hypot(torch.fft.fftfreq(size).view(-1, 1), torch.fft.rfftfreq(size).view(1, -1))  # (S, S/2+1)
    spectrum = torch.fft.rfft2(white) * freq.clamp_min(1.0 / size) ** (-slope / 2.0)
    spectrum[..., 0, 0] = 0.0  # zero mean
    field = torch.fft.irfft2(spectrum, s=(size, size))
    return field * field.square().mean(dim=(1, 2), keepdim=True).clamp_min(1e-12).rsqrt()


def background(palettes: torch.Tensor, noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, S, S): the farthest leaf, the whole image: a palette colour, a gradient, for some fractal noise."""
    count, size = len(palettes), noise.shape[-1]
    first, second = palettes[:, 0].view(count, 3, 1, 1), palettes[:, 1].view(count, 3, 1, 1)
    angle, amount, textured = torch.rand(3, count, generator=generator)
    angle = angle * 2.0 * math.pi
    steps = (torch.arange(size) + 0.5) / size - 0.5
    ramp = _along(steps.view(1, 1, -1), steps.view(1, -1, 1), angle)  # (B, S, S) in [-0.71, 0.71]
    mix = amount.view(-1, 1, 1) * ramp + 0.15 * (textured < 0.3).float().view(-1, 1, 1) * noise  # (B, S, S)
    return (first + mix[:, None] * (second - first)).clamp(0.0, 1.0)


def class_bounds(size: int, style: LeavesStyle) -> list[float]:
    """Radius class edges in pixels: half-octaves from the smallest radius to the largest."""
    low, high = style.radius_min * size, style.radius_max * size
    edges = [low]
    while edges[-1] * CLASS_RATIO < high * 0.999:
        edges.append(edges[-1] * CLASS_RATIO)
    return edges + [high]


def power_law(low: torch.Tensor, high: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Radii with density proportional to r^-3 on [low, high], by inverting the distribution function."""
    return (low**-2 - uniform * (low**-2 - high**-2)) ** -0.5


def layer_plan(style: LeavesStyle, size: int, generator: torch.Generator) -> LayerPlan:
    """Each depth's radius class (drawn with the power law's mass in each class), shape kind and features."""
    layers = style.layers
    edges = torch.tensor(class_bounds(size, style))
    mass = edges[:-1] ** -2 - edges[1:] ** -2  # the r^-3 law's share of each class
    size_class = torch.multinomial(mass, layers, replacement=True, generator=generator)
    kind = torch.multinomial(KIND_SHARES, layers, replacement=True, generator=generator)
    sides = torch.tensor(POLYGON_SIDES)[torch.randint(0, len(POLYGON_SIDES), (layers,), generator=generator)]
    textures = torch.tensor([1.0 - style.grating - style.dots - style.noise, style.grating, style.dots, style.noise])
    texture = torch.multinomial(textures, layers, replacement=True, generator=generator)
    gradient, shadow, outline = torch.rand(3, layers, generator=generator)
    outline = outline < style.outline
    side = torch.tensor([window_side(float(edges[c + 1]), bool(o), size) for c, o in zip(size_class, outline)])
    return LayerPlan(size_class, side, kind, sides, texture, gradient < style.gradient, shadow < style.shadow, outline)


def draw_shapes(palettes: torch.Tensor, size: int, plan: LayerPlan, style: LeavesStyle,
                generator: torch.Generator) -> Shapes:
    """Every image's shape at every depth, (B, L) each, in a fixed order of draws, and the window around it."""
    count, layers, colours = len(palettes), style.layers, palettes.shape[1]
    edges = torch.tensor(class_bounds(size, style))
    draws = iter(torch.rand(21, count, layers, generator=generator))  # one uniform per draw, in this order
    density, line_art, width = (next(draws)[:, :1] for _ in range(3))  # (B, 1) each: per image
    density = style.density[0] + (style.density[1] - style.density[0]) * density
    width = (OUTLINE_WIDTH[0] + (OUTLINE_WIDTH[1] - OUTLINE_WIDTH[0]) * width) * (0.8 + 0.4 * next(draws))
    pick = torch.randint(0, colours, (2, count, layers), generator=generator)
    second = (pick[0] + 1 + pick[1] % (colours - 1)) % colours  # another colour of the palette
    rows = torch.arange(count).view(-1, 1)
    jitter = 0.08 * (torch.rand(count, layers, 3, generator=generator) - 0.5)
    strength, round_ = next(draws), next(draws)
    radius = power_law(edges[plan.size_class], edges[plan.size_class + 1], next(draws))
    cx, cy = next(draws) * size, next(draws) * size
    left, top = ((centre.floor() - plan.side // 2).clamp(min=0).minimum(size - plan.side) for centre in (cx, cy))
    return Shapes(
        keep=next(draws) < density, cx=cx, cy=cy, radius=radius,
        aspect=torch.where(round_ < 0.3, 1.0, 0.25 + 0.75 * next(draws)), angle=next(draws) * 2.0 * math.pi,
        colour=(palettes[rows, pick[0]] + jitter).clamp(0.0, 1.0), second=palettes[rows, second],
        gradient=0.3 + 0.7 * strength, gradient_angle=next(draws) * 2.0 * math.pi,
        texture=0.15 + 0.35 * next(draws), period=2.5 * 4.0 ** next(draws), texture_angle=next(draws) * math.pi,
        phase=next(draws) * 2.0 * math.pi, shift=(next(draws) * size).floor(),
        shadow=0.5 + 0.5 * strength, shadow_angle=next(draws) * 2.0 * math.pi, shadow_offset=next(draws) - 0.5,
        outline=torch.where(line_art < style.line_art, torch.minimum(width, 0.4 * radius), 0.0),  # small: thin
        left=left, top=top,
    )


def window_side(high: float, outline: bool, size: int) -> int:
    """Side of the square window that holds a shape of radius `high`, its antialiased edge and its outline if
    any, at most the image."""
    return min(2 * math.ceil(high + 0.5 + (OUTLINE_WIDTH[1] * 0.6 if outline else 0.0)) + 1, size)


def paint_layer(image: torch.Tensor, rows: torch.Tensor, shape: Shapes, what: dict[str, int], noise: torch.Tensor,
                ink: torch.Tensor, tint: torch.Tensor) -> None:
    """Composite one shape over each of the images `rows` of `image` (B, 3, S, S), in place, inside its window
    of what["side"] pixels (clamped into the image: a shape's part outside the image is never seen)."""
    count, size, side = len(rows), image.shape[-1], what["side"]
    steps, pixel = _window(side, size)  # (W,) pixel centres, (H, W) flat indices, from the corner
    dx = (shape.left - shape.cx).view(-1, 1, 1) + steps.view(1, 1, -1)  # (R, 1, W)
    dy = (shape.top - shape.cy).view(-1, 1, 1) + steps.view(1, -1, 1)  # (R, H, 1)
    pixel = (shape.top * size + shape.left).long().view(-1, 1, 1) + pixel  # (R, H, W)
    distance = signed_distance(dx, dy, shape, what["kind"], what["sides"])  # (R, H, W), negative inside
    colour = fill(dx, dy, shape, what, noise, rows, pixel)  # (R, 3, H, W), or (R, 3, 1, 1) when flat
    if what["shadow"]:
        colour = cel_shadow(dx, dy, shape, colour, tint[rows])
    width = shape.outline.view(-1, 1, 1) * what["outline"]  # (R, 1, 1), 0: no outline
    if what["outline"] and bool((width > 0).any()):
        line = ((width / 2 + 0.5 - distance.abs()).clamp(0.0, 1.0) * (width > 0))[:, None]  # (R, 1, H, W)
        colour = torch.lerp(colour, ink[rows].view(-1, 3, 1, 1), line)
    alpha = (0.5 + width / 2 - distance).clamp(0.0, 1.0)[:, None]  # (R, 1, H, W)
    plane = size * size
    where = ((rows.view(-1, 1, 1) * 3 + torch.arange(3).view(1, 3, 1)) * plane + pixel.view(count, 1, -1)).view(-1)
    flat = image.view(-1)
    under = flat.index_select(0, where).view(count, 3, side, side)  # (R, 3, H, W)
    flat.scatter_(0, where, torch.lerp(under, colour.expand_as(under), alpha).view(-1))


@lru_cache(maxsize=64)
def _window(side: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A window's (side,) pixel centres and (side, side) flat indices in a size x size image, from its corner."""
    steps = torch.arange(side)
    return steps.float() + 0.5, steps.view(-1, 1) * size + steps.view(1, -1)


def signed_distance(dx: torch.Tensor, dy: torch.Tensor, shape: Shapes, kind: int, sides: int) -> torch.Tensor:
    """(R, 1, W) and (R, H, 1) offsets from the centres -> (R, H, W) signed distance to the edge in pixels
    (negative inside): exact or first-order near the edge, which is where it sets the antialiasing."""
    radius, angle = shape.radius.view(-1, 1, 1), shape.angle.view(-1, 1, 1)
    if kind == POLYGON:  # the largest distance past any edge's line
        apothem = radius * math.cos(math.pi / sides)
        normals = angle + 2.0 * math.pi / sides * torch.arange(sides).view(1, 1, -1)  # (R, 1, n)
        cos, sin = torch.cos(normals), torch.sin(normals)
        past = [dx * cos[..., k : k + 1] + dy * sin[..., k : k + 1] for k in range(sides)]  # (R, H, W) each
        return torch.stack(past).amax(dim=0) - apothem
    cos, sin = torch.cos(angle), torch.sin(angle)
    aspect = shape.aspect.view(-1, 1, 1)
    if kind == RECTANGLE:
        half = radius / torch.sqrt(1.0 + aspect**2)  # the corners lie on the circle of `radius`
        along, across = (dx * cos + dy * sin).abs(), (dy * cos - dx * sin).abs()
        return torch.maximum(along - half, across - half * aspect)
    major, minor = radius, radius * aspect
    u, v = dx * (cos / major) + dy * (sin / major), dy * (cos / minor) - dx * (sin / minor)  # to the unit circle
    uu, vv = u * u, v * v
    slope = torch.addcmul(uu * major**-2, vv, minor**-2).sqrt_().clamp_min_(1.0 / major)  # |grad (u^2 + v^2)| / 2
    return (uu + vv - 1.0) / (2.0 * slope)


def _norm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sqrt(x^2 + y^2), elementwise (cheaper than torch.hypot on the CPU)."""
    return torch.addcmul(x * x, y, y).sqrt_()


def _along(dx: torch.Tensor, dy: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(R, H, W) offset along a direction (R,) from (R, 1, W) and (R, H, 1) offsets."""
    return torch.cos(angle).view(-1, 1, 1) * dx + torch.sin(angle).view(-1, 1, 1) * dy


def fill(dx: torch.Tensor, dy: torch.Tensor, shape: Shapes, what: dict[str, int], noise: torch.Tensor,
         rows: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
    """Each shape's colour moved towards its second colour by a gradient and a texture: (R, 3, H, W), or
    (R, 3, 1, 1) for a flat fill."""
    base = shape.colour.view(-1, 3, 1, 1)
    if not what["gradient"] and what["texture"] == NO_TEXTURE:
        return base
    mix = torch.zeros(1, 1, 1)
    if what["gradient"]:
        mix = (shape.gradient / (2.0 * shape.radius)).view(-1, 1, 1) * _along(dx, dy, shape.gradient_angle)
    amplitude = shape.texture.view(-1, 1, 1)
    if what["texture"] in (GRATING, DOTS):
        wave = (2.0 * math.pi / shape.period).view(-1, 1, 1)
        texture = torch.sin(_along(dx, dy, shape.texture_angle) * wave + shape.phase.view(-1, 1, 1))
        if what["texture"] == DOTS:
            texture = texture * torch.sin(_along(dx, dy, shape.texture_angle + math.pi / 2) * wave)
        mix = mix + amplitude * texture
    elif what["texture"] == NOISE:  # the image's noise field, rolled down by whole rows (it is periodic)
        size = noise.shape[-1]
        plane = size * size
        rolled = (pixel + (shape.shift.long() * size).view(-1, 1, 1)) % plane + (rows * plane).view(-1, 1, 1)
        mix = mix + 0.6 * amplitude * noise.view(-1).index_select(0, rolled.view(-1)).view_as(pixel)
    second = shape.second.view(-1, 3, 1, 1)
    return base + mix[:, None] * (second - base)


def cel_shadow(dx: torch.Tensor, dy: torch.Tensor, shape: Shapes, colour: torch.Tensor,
               tint: torch.Tensor) -> torch.Tensor:
    """`colour` multiplied towards `tint` (R, 3) on one side of a line through each shape, with a hard
    (one-pixel, antialiased) edge, as a cel shadow is painted."""
    offset = (shape.shadow_offset * shape.radius).view(-1, 1, 1)
    side = (_along(dx, dy, shape.shadow_angle) - offset + 0.5).clamp(0.0, 1.0)  # (R, H, W)
    darkening = shape.shadow.view(-1, 1, 1, 1) * (1.0 - tint.view(-1, 3, 1, 1))  # (R, 3, 1, 1)
    return colour * (1.0 - darkening * side[:, None])


def gaussian_blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) each blurred by its own Gaussian of `sigma` (B,) pixels (0: unchanged); near the edges the
    kernel is renormalised over the pixels inside."""
    rows = (sigma > 0).nonzero().flatten()
    if not len(rows):
        return image
    blurred = image.clone()
    down, across = (_blur_matrix(size, sigma[rows]) for size in image.shape[-2:])  # (R, H, H), (R, W, W)
    blurred[rows] = down[:, None] @ image[rows] @ across[:, None].transpose(-1, -2)
    return blurred


def _blur_matrix(size: int, sigma: torch.Tensor) -> torch.Tensor:
    """(R, size, size): row i averages a line with Gaussian weights of `sigma` (R,) around pixel i."""
    taps = torch.arange(size, dtype=torch.float32)
    weight = torch.exp(-((taps.view(1, -1, 1) - taps.view(1, 1, -1)) ** 2) / (2.0 * sigma.view(-1, 1, 1) ** 2))
    return weight / weight.sum(dim=2, keepdim=True)


def strokes(count: int, size: int, most: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 1, size, size) coverage of 0..most free strokes per image: quadratic Bezier curves whose width
    tapers to both ends like a pen's, each drawn as STROKE_SEGMENTS capsules (the union of capsules is the
    stroke; a pixel's coverage is its largest over them)."""
    shape = (count, most)
    active = torch.arange(most) < torch.randint(0, most + 1, (count, 1), generator=generator)  # (B, N) drawn
    start = torch.rand(*shape, 2, generator=generator) * size
    length, heading, bend, thick = torch.rand(4, *shape, generator=generator)
    length, heading = size * (0.15 + 0.75 * length), heading * 2.0 * math.pi
    direction = torch.stack([torch.cos(heading), torch.sin(heading)], dim=-1)  # (B, N, 2)
    normal = torch.stack([-direction[..., 1], direction[..., 0]], dim=-1)
    end = start + length[..., None] * direction
    control = (start + end) / 2 + ((bend - 0.5) * length)[..., None] * normal
    t = torch.linspace(0.0, 1.0, STROKE_SEGMENTS + 1).view(1, 1, -1, 1)
    points = (1 - t) ** 2 * start[:, :, None] + 2 * (1 - t) * t * control[:, :, None] + t**2 * end[:, :, None]
    width = STROKE_WIDTH[0] + (STROKE_WIDTH[1] - STROKE_WIDTH[0]) * thick**2  # thin strokes more often
    taper = 0.25 + 0.75 * torch.sin(math.pi * t.view(1, 1, -1)).clamp_min(0.0).sqrt()  # (1, 1, M+1)
    half_width = (width[..., None] * taper / 2).clamp_min(0.3)  # (B, N, M+1)
    radius = (half_width[..., 1:] + half_width[..., :-1]) / 2  # (B, N, M)
    image = torch.arange(count).view(-1, 1).expand(shape)[active]  # (A,): the drawn strokes' images
    segments = (points[active][:, :-1], points[active][:, 1:], radius[active])  # (A, M, 2) ends, (A, M) radii
    return capsules(*(part.flatten(0, 1) for part in segments), image.repeat_interleave(STROKE_SEGMENTS), count,
                    size)


def capsules(a: torch.Tensor, b: torch.Tensor, radius: torch.Tensor, image: torch.Tensor, count: int,
             size: int) -> torch.Tensor:
    """(C, 2) segment ends, (C,) radii and (C,) image indices -> (count, 1, size, size) antialiased coverage of
    each image's union of capsules, each rasterised in a window around its segment."""
    reach = float(((b - a).norm(dim=-1) / 2 + radius).max()) if len(radius) else 0.0
    side = 2 * math.ceil(reach + 1.5) + 1
    # Windows are clamped into a canvas with a margin of one window: one far outside the image is drawn at
    # the canvas edge, where it covers nothing that is kept.
    padded = size + 2 * side
    corner = (((a + b) / 2).floor().long() - side // 2).clamp(-side, size)  # (C, 2)
    steps = torch.arange(side)
    x = (corner[:, 0:1] + steps).view(-1, 1, side)  # (C, 1, W)
    y = (corner[:, 1:2] + steps).view(-1, side, 1)  # (C, H, 1)
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    ex, ey = (b - a)[:, 0, None, None], (b - a)[:, 1, None, None]
    px, py = x + 0.5 - ax, y + 0.5 - ay
    t = ((px * ex + py * ey) / (ex**2 + ey**2).clamp_min(1e-6)).clamp(0.0, 1.0)  # (C, H, W)
    cover = (radius.view(-1, 1, 1) + 0.5 - _norm(px - t * ex, py - t * ey)).clamp(0.0, 1.0)
    canvas = torch.zeros(count * padded * padded)
    index = image.view(-1, 1, 1) * padded * padded + (y + side) * padded + x + side
    canvas.scatter_reduce_(0, index.view(-1), cover.view(-1), reduce="amax")
    return canvas.view(count, 1, padded, padded)[..., side : side + size, side : side + size]
