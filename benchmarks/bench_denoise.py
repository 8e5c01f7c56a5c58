"""Denoising speed and quality against OpenCV's non-local means, on the same noisy images, in one run.

Noisy inputs: held-out faces + Gaussian noise (sigma 25 on the 0-255 scale, fixed seed), clipped and rounded
to uint8 as a saved PNG would be. Compared (images/s, all cores, medians of --repeats runs; PSNR in dB):
  ours  the exported denoiser through onnxruntime (animevae.denoise.denoise_array, in memory)
  nlm   cv2.fastNlMeansDenoisingColored with 3/11 windows (better than OpenCV's defaults at 64x64), its
        strength h tuned on the very images it is scored on, one process per core
and prints ours/nlm for both.

Then the quality cases, ours only: Gaussian sigma 25 and 50, JPEG quality 20, 40, 90 and 95 (Pillow, its
default 4:2:0 chroma) and clean input, PSNR of input and output; once on the faces one by one, once on a mosaic of all
of them (25 x 20 faces, 1600 x 1280 pixels) denoised tiled, as a large real image would be, and compared
with the same mosaic denoised untiled in one call; the last columns score the same model with its residual
gate off (animevae/shrinkage.py), which is what the gate buys.
`--write-mosaic PATH --mosaic-size 4000x3000` also writes one large mosaic PNG (faces repeated to fill it), for
timing `animevae denoise` on a big image:

    pip install opencv-python-headless   # benchmark only, never a runtime dependency
    python benchmarks/bench_denoise.py --data faces-dev [--model builtin|PATH] [--count 500] [--no-nlm]
                                       [--write-example docs/denoise-jpeg20.png]
    python benchmarks/bench_denoise.py --data faces-dev --write-mosaic big/mosaic.png --mosaic-size 4000x3000
    /usr/bin/time -v animevae denoise big --out big-denoised   # "Maximum resident set size"
    python benchmarks/bench_denoise.py --quick     # a few faces it draws itself, no NLM: checks that it runs
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from PIL import Image

from animevae.images import decode_rgb, find_images, pixel_hash, square_resize
from animevae.training.data import split_holdout
from animevae.training.degrade import jpeg_bytes_roundtrip
from animevae.denoise import denoise_array, denoise_image
from animevae.model_files import choose_model
from animevae.runtime import open_model
from animevae.shrinkage import RESIDUAL_KNEE_KEY
from animevae.writer import usable_cores
from _quick import write_faces

SIGMA = 25.0


def psnrs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR of uint8 (N, H, W, 3) arrays, (N,); an exact image scores 100 dB."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 255.0**2 * 1e-10))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image PSNR of uint8 (N, H, W, 3) arrays."""
    return float(np.mean(psnrs(a, b)))


def nlm(args: tuple[np.ndarray, float]) -> np.ndarray:
    """NLM over a chunk of (N, H, W, 3) uint8 RGB images."""
    import cv2

    images, h = args
    return np.stack([cv2.fastNlMeansDenoisingColored(image, None, h, h, 3, 11) for image in images])


def nlm_all(images: np.ndarray, h: float, pool: ProcessPoolExecutor, workers: int) -> np.ndarray:
    chunks = np.array_split(images, workers * 4)
    return np.concatenate(list(pool.map(nlm, [(chunk, h) for chunk in chunks])))


def make_mosaic(faces: np.ndarray, columns: int, rows: int) -> np.ndarray:
    """(N, S, S, 3) faces -> one (rows * S, columns * S, 3) image, row by row, faces repeated if N is short."""
    count, side = len(faces), faces.shape[1]
    picks = faces[np.arange(rows * columns) % count].reshape(rows, columns, side, side, 3)
    return np.ascontiguousarray(picks.transpose(0, 2, 1, 3, 4).reshape(rows * side, columns * side, 3))


def degraded_cases(clean: np.ndarray) -> dict[str, np.ndarray]:
    """The quality cases of uint8 images (any leading shape ending in (H, W, 3)); noise from a fixed seed."""
    rng = np.random.default_rng(0)
    cases = {f"sigma {s}": np.clip(np.round(clean + rng.standard_normal(clean.shape) * s), 0, 255).astype(np.uint8)
             for s in (25, 50)}
    flat = clean.reshape(-1, *clean.shape[-3:])
    for quality in (20, 40, 90, 95):
        cases[f"jpeg q{quality}"] = np.stack([jpeg_bytes_roundtrip(i, quality) for i in flat]).reshape(clean.shape)
    cases["clean"] = clean
    return cases


def quality_table(denoiser, faces: np.ndarray, example: Path | None = None) -> None:
    """Input and output PSNR of each case on the faces one by one, and on their mosaic denoised tiled; with
    `example`, a before/after picture of the JPEG q20 case there (clean | JPEG | denoised, 256x256 at 2x)."""
    columns = min(25, len(faces))
    mosaic = make_mosaic(faces, columns, len(faces) // columns)
    face_cases, mosaic_cases = degraded_cases(faces), degraded_cases(mosaic)
    if example:
        crop = np.s_[:128, :128]
        jpeg = mosaic_cases["jpeg q20"]
        panels = [mosaic[crop], jpeg[crop], denoise_image(denoiser, jpeg)[crop]]
        picture = np.concatenate([np.pad(p, ((0, 0), (0, 2), (0, 0)), constant_values=255) for p in panels], axis=1)
        example.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).resize((picture.shape[1] * 2, 256), Image.Resampling.NEAREST).save(example)
    size = "x".join(map(str, mosaic.shape[1::-1]))
    # The same model with its residual gate off (shrinkage.py): what the gate buys, face by face.
    ungated = replace(denoiser, metadata={**denoiser.metadata, RESIDUAL_KNEE_KEY: "0"})
    print(f"gate knee {denoiser.residual_knee:g} (0-255 scale)")
    print(f"{'case':<10} {'faces: input':>13} {'ours':>7} {'gain':>6}   {'mosaic ' + size:>18} {'ours':>7} {'gain':>6}"
          f"   tiled vs untiled, max |diff|   faces made worse   ungated: ours, made worse")
    for name in face_cases:
        noisy = face_cases[name]
        out = np.concatenate([denoise_array(denoiser, noisy[b : b + 64]) for b in range(0, len(noisy), 64)])
        raw = np.concatenate([denoise_array(ungated, noisy[b : b + 64]) for b in range(0, len(noisy), 64)])
        raw_psnrs = psnrs(raw, faces)
        big_in = mosaic_cases[name]
        big_out = denoise_image(denoiser, big_in)
        untiled = denoise_array(denoiser, big_in[None])[0]
        face_in, face_out = psnrs(noisy, faces), psnrs(out, faces)  # (N,) each
        a_in, a_out = float(face_in.mean()), float(face_out.mean())
        b_in, b_out = psnr(big_in[None], mosaic[None]), psnr(big_out[None], mosaic[None])
        diff = np.abs(big_out.astype(int) - untiled.astype(int)).max()
        # The hardest reading of "never made worse": each face on its own, not the mean.
        gains = face_out - face_in
        worse = int((gains < 0).sum())
        raw_worse = int((raw_psnrs < face_in).sum())
        if name == "clean":  # the input is exact: no PSNR, no gain; any change is a loss
            print(f"{name:<10} {'exact':>13} {a_out:7.2f} {'':>6}   {'exact':>18} {b_out:7.2f} {'':>6}   {diff}/255"
                  f"{'':>23}{worse}/{len(faces)} changed   {raw_psnrs.mean():7.2f}, {raw_worse}/{len(faces)} changed")
            continue
        print(f"{name:<10} {a_in:13.2f} {a_out:7.2f} {a_out - a_in:+6.2f}   {b_in:18.2f} {b_out:7.2f} {b_out - b_in:+6.2f}"
              f"   {diff}/255{'':>23}{worse}/{len(faces)}" + (f", the worst by {-gains.min():.2f} dB" if worse else "")
              + f"   {raw_psnrs.mean():7.2f}, {raw_worse}/{len(faces)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a folder of clean faces (required unless --quick)")
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--count", type=int, default=500, help="held-out faces (at most 10%% of the folder)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-nlm", action="store_true", help="skip the speed comparison with OpenCV's NLM")
    parser.add_argument("--write-mosaic", type=Path, help="also write one large mosaic PNG of faces here")
    parser.add_argument("--mosaic-size", default="4000x3000", help="WIDTHxHEIGHT of --write-mosaic")
    parser.add_argument("--write-example", type=Path, help="write a before/after picture of JPEG q20 here (PNG)")
    parser.add_argument("--quick", action="store_true", help="60 faces it draws itself, 6 held out, no NLM")
    args = parser.parse_args()
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            args.data, args.count, args.repeats, args.no_nlm = write_faces(Path(tmp) / "faces", 60), 6, 1, True
            run(args)
    elif args.data is None:
        parser.error("--data is required (or --quick)")
    else:
        run(args)


def run(args: argparse.Namespace) -> None:
    """The quality table, then (unless --no-nlm) the speed comparison with OpenCV's NLM."""

    # The held-out split of `animevae train` (by content hash): for faces-dev these are faces the built-in
    # model never trained on.
    decoded = [decode_rgb(path) for path in find_images(args.data).files]
    _, held_out = split_holdout([pixel_hash(p) for p in decoded], len(decoded), args.count)
    clean = np.stack([square_resize(decoded[i], 64) for i in held_out])
    noise = np.random.default_rng(0).standard_normal(clean.shape) * SIGMA
    noisy = np.clip(np.round(clean + noise), 0, 255).astype(np.uint8)

    if args.write_mosaic:
        width, height = (int(v) for v in args.mosaic_size.split("x"))
        every = np.stack([square_resize(p, 64) for p in decoded])
        big = make_mosaic(every, -(-width // 64), -(-height // 64))[:height, :width]
        args.write_mosaic.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(big).save(args.write_mosaic)
        print(f"wrote {args.write_mosaic} ({width}x{height}, {len(every)} faces)")
        return

    cores = usable_cores()
    denoiser = open_model(choose_model(Path("runs"), None, args.model).path("denoiser"), "denoiser", "cpu", cores)
    quality_table(denoiser, clean, args.write_example)
    if args.no_nlm:
        return
    ours_out = np.concatenate([denoise_array(denoiser, noisy[b : b + 64]) for b in range(0, len(noisy), 64)])
    with ProcessPoolExecutor(cores) as pool:
        tuned = {h: psnr(nlm_all(noisy, h, pool, cores), clean) for h in (6, 8, 10, 12, 14)}
        best_h = max(tuned, key=tuned.get)
        rates: dict[str, list[float]] = {"ours": [], "nlm": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            for begin in range(0, len(noisy), 64):
                denoise_array(denoiser, noisy[begin : begin + 64])
            rates["ours"].append(len(noisy) / (time.perf_counter() - start))
            start = time.perf_counter()
            nlm_all(noisy, best_h, pool, cores)
            rates["nlm"].append(len(noisy) / (time.perf_counter() - start))
    ours_rate, nlm_rate = statistics.median(rates["ours"]), statistics.median(rates["nlm"])
    ours_psnr, nlm_psnr = psnr(ours_out, clean), tuned[best_h]
    print(f"{len(clean)} faces, sigma {SIGMA:.0f}, {cores} cores, medians of {args.repeats} runs")
    print(f"  noisy input             PSNR {psnr(noisy, clean):6.2f} dB")
    print(f"  animevae denoiser       PSNR {ours_psnr:6.2f} dB   {ours_rate:7.0f} images/s")
    print(f"  OpenCV NLM (h={best_h:<2})       PSNR {nlm_psnr:6.2f} dB   {nlm_rate:7.0f} images/s")
    print(f"  ours / NLM: speed x{ours_rate / nlm_rate:.2f}, PSNR {ours_psnr - nlm_psnr:+.2f} dB")


if __name__ == "__main__":
    main()
