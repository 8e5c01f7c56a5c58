"""animevae.images: finding, decoding, squaring and hashing images."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animevae.errors import DataError
from animevae.images import decode_layers, decode_rgb, find_images, pixel_hash, square_resize
from animevae.prepared_set import count_images, prepare_images
from helpers import blob_image, encoded, environ_without_debug, write_blobs


def _solid(color: tuple[int, ...], size: tuple[int, int] = (6, 4), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, color)


def _png_with_header_size(width: int, height: int, colour_type: int = 2) -> bytes:
    """A syntactically valid PNG header claiming width x height (the pixel data is a stub); colour type 2 is RGB,
    0 grey."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


# --- listing -----------------------------------------------------------------------------------


def test_find_images_walks_recursively_sorted_and_filters_by_suffix(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    for rel in ["z.png", "a/x.JPG", "b/deep/y.webp", "b/w.bmp", "b/v.gif", "a/notes.txt", "b/deep/data.json"]:
        (root / rel).write_bytes(b"")
    listing = find_images(root)
    assert [str(p.relative_to(root)) for p in listing.files] == ["z.png", "a/x.JPG", "b/v.gif", "b/w.bmp", "b/deep/y.webp"]
    assert listing.skipped == []
    assert count_images(root) == 5


def test_find_images_refuses_missing_and_file_roots(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as caught:
        find_images(tmp_path / "nope")
    assert caught.value.hint
    afile = tmp_path / "file.png"
    afile.write_bytes(b"")
    with pytest.raises(DataError, match="is not a folder") as caught:
        find_images(afile)
    assert caught.value.hint


def test_a_folder_that_cannot_be_listed_is_skipped_and_named(tmp_path: Path, monkeypatch) -> None:
    """The rest of the tree is still listed. (Root lists anything, so the refusal is simulated.)"""
    root = tmp_path / "root"
    for folder in ("a", "locked", "z"):
        (root / folder).mkdir(parents=True)
        (root / folder / "x.png").write_bytes(b"")
    real_scandir = os.scandir

    def scandir(path):  # what os.walk lists each folder with
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listing = find_images(root)
    assert [str(p.relative_to(root)) for p in listing.files] == ["a/x.png", "z/x.png"]
    assert [(Path(s.path).name, s.reason) for s in listing.skipped] == [("locked", "cannot list: Permission denied")]


# --- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, options", [
    (".png", {}), (".bmp", {}), (".gif", {}), (".webp", {"lossless": True}), (".jpg", {"quality": 95}),
])
def test_decode_rgb_reads_each_format(tmp_path: Path, suffix: str, options: dict) -> None:
    pixels = np.zeros((8, 12, 3), np.uint8)
    pixels[:, :6] = (200, 30, 40)
    pixels[:, 6:] = (20, 180, 60)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(pixels).save(path, **options)
    decoded = decode_rgb(path)
    assert decoded.shape == (8, 12, 3) and decoded.dtype == np.uint8
    if suffix == ".jpg":
        # Lossy, and chroma is subsampled at the colour edge: compare the interiors only.
        assert np.abs(decoded[:, :4].astype(int) - pixels[:, :4]).max() <= 12
        assert np.abs(decoded[:, 8:].astype(int) - pixels[:, 8:]).max() <= 12
    else:
        np.testing.assert_array_equal(decoded, pixels)


def test_decode_rgb_composites_rgba_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)      # fully transparent red -> white
    rgba[0, 1] = (0, 0, 255, 255)    # opaque blue stays blue
    rgba[1, 0] = (0, 0, 0, 128)      # half-transparent black -> mid grey
    rgba[1, 1] = (10, 20, 30, 255)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    decoded = decode_rgb(path)
    assert decoded.shape == (2, 2, 3)
    assert tuple(decoded[0, 0]) == (255, 255, 255)
    assert tuple(decoded[0, 1]) == (0, 0, 255)
    assert all(abs(int(v) - 127) <= 1 for v in decoded[1, 0])
    assert tuple(decoded[1, 1]) == (10, 20, 30)


def test_decode_rgb_composites_la_and_transparent_palette_on_white(tmp_path: Path) -> None:
    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (50, 255))
    la.save(tmp_path / "la.png")
    assert decode_rgb(tmp_path / "la.png").tolist() == [[[255, 255, 255], [50, 50, 50]]]

    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "pal.gif", transparency=0)
    assert decode_rgb(tmp_path / "pal.gif").tolist() == [[[255, 255, 255], [200, 10, 10]]]


def test_decode_rgb_scales_16_bit_grey_instead_of_clipping(tmp_path: Path) -> None:
    values = np.array([[0, 32768], [65535, 255]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    decoded = decode_rgb(tmp_path / "deep.png")
    assert decoded[:, :, 0].tolist() == [[0, 128], [255, 1]]
    assert (decoded[:, :, 0] == decoded[:, :, 1]).all() and (decoded[:, :, 1] == decoded[:, :, 2]).all()


def _deep_grey(path: Path, mode: str, values: list[float]) -> Path:
    """A 1 x N image of `mode` holding `values`, saved in a format that opens in that mode again."""
    if mode in ("I;16", "I;16B", "I;16L"):
        dtype = {"I;16": "<u2", "I;16B": ">u2", "I;16L": "<u2"}[mode]
        image = Image.frombytes(mode, (len(values), 1), np.array(values, dtype).tobytes())
    else:
        image = Image.fromarray(np.array([values], {"I": np.int32, "F": np.float32, "1": bool}[mode]))
    # PNG holds 1-bit and 16-bit grey; TIFF big-endian 16-bit, 32-bit and float; only IM opens as I;16L.
    file_format = {"1": "PNG", "I;16": "PNG", "I;16L": "IM"}.get(mode, "TIFF")
    Image.init()
    if file_format not in Image.SAVE:
        pytest.skip(f"this Pillow cannot write {file_format} (IM is deprecated)")
    image.save(path, file_format)
    with Image.open(path) as check:
        assert check.mode == mode
    return path


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16", [0, 128, 129, 51529, 65535], [0, 0, 1, 201, 255]),  # v * 255 / 65535, rounded half up
    ("I;16", [0, 200], [0, 1]),  # a 16-bit file stays on the 16-bit scale, however dark
    ("I;16B", [0, 129, 51529, 65535], [0, 1, 201, 255]),
    pytest.param("I;16L", [0, 129, 51529, 65535], [0, 1, 201, 255],
                 marks=pytest.mark.filterwarnings("ignore:IM image format:DeprecationWarning")),
    ("I", [0, 1, 128, 255], [0, 1, 128, 255]),  # 32-bit values up to 255 are 8-bit levels
    ("I", [0, 256, 65535, 70000, -5], [0, 1, 255, 255, 0]),  # above: the 16-bit scale, clipped
    ("I", [0, 256], [0, 1]),  # the 16-bit scale from 256 on
    ("F", [-1.5, 0.0, 100.4, 255.0], [0, 0, 100, 255]),
    ("F", [0.0, 1000.0], [0, 4]),
    ("1", [0, 1], [0, 255]),
], ids=["16-bit", "dark 16-bit", "16-bit big-endian", "16-bit IM", "32-bit 8-bit range", "32-bit wider", "32-bit 256",
        "float 8-bit range", "float wider", "1-bit"])
def test_every_grey_mode_decodes_by_its_range_and_stays_grey(tmp_path: Path, mode: str, values: list[float],
                                                            expected: list[int]) -> None:
    path = _deep_grey(tmp_path / "grey.img", mode, values)
    decoded = decode_rgb(path)
    assert decoded.tolist() == [[[level] * 3 for level in expected]]
    layers = decode_layers(path)
    assert layers.grey and layers.alpha is None and np.array_equal(layers.rgb, decoded)


def test_a_transparency_key_is_alpha_over_white(tmp_path: Path) -> None:
    """The one colour (or grey level) a PNG marks transparent becomes white, as any transparent pixel does."""
    rgb = np.array([[[9, 80, 200], [30, 40, 50], [9, 80, 200]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "key.png", transparency=(9, 80, 200))
    assert decode_rgb(tmp_path / "key.png").tolist() == [[[255, 255, 255], [30, 40, 50], [255, 255, 255]]]
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "grey_key.png", transparency=9)
    assert decode_rgb(tmp_path / "grey_key.png").tolist() == [[[255, 255, 255], [30, 30, 30], [255, 255, 255]]]
    assert decode_layers(tmp_path / "key.png").alpha.tolist() == [[0, 255, 0]]


def test_a_palette_with_an_alpha_channel_keeps_it(tmp_path: Path) -> None:
    """PA (a TIFF can hold one): alpha kept for denoise, composited over white for training."""
    image = Image.new("PA", (2, 1))
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.putpixel((0, 0), (1, 0))
    image.putpixel((1, 0), (1, 255))
    image.save(tmp_path / "pa.tif")
    assert decode_rgb(tmp_path / "pa.tif").tolist() == [[[255, 255, 255], [200, 10, 10]]]
    layers = decode_layers(tmp_path / "pa.tif")
    assert layers.alpha.tolist() == [[0, 255]] and not layers.grey


def test_an_image_whose_exif_block_is_damaged_still_decodes(tmp_path: Path) -> None:
    """Pillow only warns about a cut-short EXIF block; the picture itself is fine."""
    pixels = np.full((4, 6, 3), 90, np.uint8)
    Image.fromarray(pixels).save(tmp_path / "exif.png", exif=b"II*\x00\x08\x00\x00\x00\xff\xff" + b"\x00" * 6)
    with pytest.warns(UserWarning, match="EXIF"):
        assert np.array_equal(decode_rgb(tmp_path / "exif.png"), pixels)


@pytest.mark.parametrize("error, reason", [
    (PermissionError(13, "Permission denied"), "no read permission"),
    (OSError("bad CRC in IDAT"), "broken image: bad CRC in IDAT"),
    (EOFError(), "broken image: EOFError"),  # no message of its own: its kind says what went wrong
])
def test_each_read_error_becomes_one_short_reason(tmp_path: Path, monkeypatch, error: Exception, reason: str) -> None:
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(DataError) as caught:
        decode_rgb(tmp_path / "any.png")
    assert caught.value.message == reason


def test_decode_rgb_takes_first_frame_of_animated_gif(tmp_path: Path) -> None:
    frames = [_solid((255, 0, 0)), _solid((0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    decoded = decode_rgb(tmp_path / "anim.gif")
    assert tuple(decoded[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("content, reason", [
    (b"this is not an image", "not an image Pillow can read"),
    (b"", "not an image Pillow can read"),
])
def test_decode_rgb_refuses_non_images(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "fake.png"
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        decode_rgb(path)
    assert caught.value.message == reason


def test_decode_rgb_refuses_truncated_image(tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    blob_image(np.random.default_rng(1), 64, 64).save(full)
    data = full.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="broken image"):
        decode_rgb(cut)


def test_decode_rgb_refuses_huge_header_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_with_header_size(20_000, 20_000))  # 400 Mpx claimed, a few bytes on disk
    with pytest.raises(DataError, match="pixels|decompression bomb"):
        decode_rgb(path)


def test_the_pixel_limit_is_the_area_and_an_image_at_it_is_decoded(tmp_path: Path) -> None:
    """MAX_PIXELS (40 Mpx) is refused from the header alone just past it; exactly at it, decoding goes on (and
    finds these stub pixels broken)."""
    from animevae.images import MAX_PIXELS

    path = tmp_path / "big.png"
    path.write_bytes(_png_with_header_size(8000, 5001, colour_type=0))
    with pytest.raises(DataError) as caught:
        decode_rgb(path)
    assert caught.value.message == f"image claims 8000x5001 pixels (over {MAX_PIXELS:,}); not decoded"
    assert 8000 * 5000 == MAX_PIXELS
    path.write_bytes(_png_with_header_size(8000, 5000, colour_type=0))
    with pytest.raises(DataError, match="broken image"):
        decode_rgb(path)


# --- squaring ----------------------------------------------------------------------------------


def test_square_resize_centre_crops_wide_and_tall_images() -> None:
    wide = np.zeros((16, 24, 3), np.uint8)
    wide[:, :4] = (255, 0, 0)
    wide[:, 4:20] = (0, 255, 0)
    wide[:, 20:] = (0, 0, 255)
    out = square_resize(wide, 16)
    assert out.shape == (16, 16, 3)
    assert (out == (0, 255, 0)).all()  # exactly the centre: no red or blue border survives

    tall = np.transpose(wide, (1, 0, 2)).copy()  # (24, 16, 3)
    assert (square_resize(tall, 16) == (0, 255, 0)).all()


def test_square_resize_resizes_to_the_requested_side() -> None:
    pixels = np.asarray(blob_image(np.random.default_rng(2), 40, 30))
    out = square_resize(pixels, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    flat = np.full((30, 40, 3), 77, np.uint8)
    assert (square_resize(flat, 8) == 77).all()


def test_square_resize_resamples_with_lanczos() -> None:
    pixels = np.asarray(blob_image(np.random.default_rng(3), 24, 24))
    image = Image.fromarray(pixels)
    out = square_resize(pixels, 10)
    assert np.array_equal(out, np.asarray(image.resize((10, 10), Image.Resampling.LANCZOS)))
    assert not np.array_equal(out, np.asarray(image.resize((10, 10))))  # Pillow's default filter differs


def test_pixel_hash_depends_on_shape_as_well_as_bytes() -> None:
    a = np.zeros((2, 6, 3), np.uint8)
    assert pixel_hash(a) != pixel_hash(a.reshape(6, 2, 3))
    assert pixel_hash(a) == pixel_hash(a.copy())

def test_tiff_files_are_found_and_decoded(tmp_path: Path) -> None:
    """Protects TIFF as an accepted format (README: PNG, JPEG, WebP, BMP, GIF and TIFF), both suffixes, any case."""
    rng = np.random.default_rng(11)
    root = tmp_path / "tiffs"
    root.mkdir()
    pictures = {name: rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for name in ("a.tif", "b.tiff", "c.TIF")}
    for name, pixels in pictures.items():
        Image.fromarray(pixels).save(root / name, format="TIFF")
    assert [p.name for p in find_images(root).files] == ["a.tif", "b.tiff", "c.TIF"]
    prepared = prepare_images(root, 16)
    assert prepared.sources == ["a.tif", "b.tiff", "c.TIF"] and prepared.skipped == []
    for index, pixels in enumerate(pictures.values()):
        assert np.array_equal(prepared.images[index], pixels)  # lossless, and no resize at the same size


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_not_an_input(onnx_models, tmp_path: Path) -> None:
    from animevae.images import find_images
    from animevae.denoise import denoise_folder

    noisy = tmp_path / "noisy"
    write_blobs(noisy, count=2)
    fifo = noisy / "x.png"
    os.mkfifo(fifo)
    # Old code blocks reading the FIFO; a writer that never arrives would hang the test, so one feeds it once.
    def feed() -> None:
        with contextlib.suppress(BrokenPipeError):  # the release below opens and closes before it writes
            fifo.write_bytes(b"not a picture")

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        listing = find_images(noisy)
        assert fifo not in listing.files and [s.path for s in listing.skipped] == ["x.png"]
        assert "not a regular file" in listing.skipped[0].reason
        result = denoise_folder(onnx_models["denoiser"], noisy, tmp_path / "out", workers=0)
        assert result.written == 2 and [s.path for s in result.skipped] == ["x.png"]
    finally:
        with open(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), "rb"):  # release a still-waiting feeder
            pass
        feeder.join(timeout=5)


_PREPARE_AS_NOBODY = """
import json, os, sys
from pathlib import Path

from PIL import Image

from animevae.prepared_set import prepare_images

Image.init()  # load Pillow's plugins before giving up root's rights to read them
if os.geteuid() == 0:  # root reads anything: drop to an ordinary user for the check
    os.setgid(65534)
    os.setuid(65534)
prepared = prepare_images(Path(sys.argv[1]), 16)
print(json.dumps({"sources": prepared.sources, "skipped": [[s.path, s.reason] for s in prepared.skipped]}))
"""


def test_an_unreadable_file_is_skipped_as_no_read_permission_even_for_root_ci() -> None:
    """Protects the skip reason for a file the user cannot read. As root (as CI runs) a child process drops
    to user nobody first, so the case is checked there too instead of being skipped."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="animevae-perm-"))  # not under pytest's private (0700) tmp
    try:
        folder.chmod(0o755)
        write_blobs(folder, count=2)
        locked = folder / "locked.png"
        locked.write_bytes(encoded(Image.new("RGB", (16, 16), (90, 9, 9)), "PNG"))
        locked.chmod(0)
        done = subprocess.run([sys.executable, "-c", _PREPARE_AS_NOBODY, str(folder)], capture_output=True,
                              text=True, timeout=120, env=environ_without_debug())
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout) == {"sources": ["face000.png", "face001.png"],
                                           "skipped": [["locked.png", "no read permission"]]}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _noisy_rgb(width: int = 20, height: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.asarray(blob_image(rng, width, height)).astype(np.int16)
    return np.clip(pixels + rng.normal(0, 25, pixels.shape), 0, 255).astype(np.uint8)


def test_palette_cmyk_and_transparency_keys(tmp_path: Path) -> None:
    rgb = _noisy_rgb()
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "pal.png")
    layers = decode_layers(tmp_path / "pal.png")
    assert not layers.grey and layers.alpha is None
    assert np.array_equal(layers.rgb, np.asarray(palette.convert("RGB")))
    palette.save(tmp_path / "pal_t.png", transparency=0)  # palette entry 0 transparent
    layers = decode_layers(tmp_path / "pal_t.png")
    assert np.array_equal(layers.alpha == 0, np.asarray(palette) == 0)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(tmp_path / "print.tif")
    layers = decode_layers(tmp_path / "print.tif")
    assert layers.alpha is None and np.array_equal(layers.rgb, np.asarray(cmyk.convert("RGB")))
