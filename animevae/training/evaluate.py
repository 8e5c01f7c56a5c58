"""The quality report of a run: reconstruction, denoising, and how samples relate to training and held-out images."""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from animevae.config import RunConfig
from animevae.errors import DataError, ModelError
from animevae.fileio import write_json_atomic
from animevae.progress import Reporter, SilentReporter
from animevae.runs import CHECKPOINT_NAME
from animevae.training import usefulness
from animevae.training.checkpoint import read_train_keys
from animevae.training.data import TrainingPixels, float_rows, hash_keys, load_training_images, split_holdout
from animevae.training.degrade import jpeg_batch
from animevae.training.model import VAE, Denoiser, add_noise, psnr
from animevae.training.nearest import nearest_training_faces
from animevae.training.realism import MAX_STEPS, classifier_rows, realism_score
from animevae.training.swd import swd

if TYPE_CHECKING:  # the training loop imports this module: it must not pull in the diffusion prior
    from animevae.training.diffusion import DDIMSampler

NOISE_SEED = 1234
SIGMAS = (0, 15, 25, 50)
# 90: a lightly compressed input, which the denoiser must never make worse.
JPEG_QUALITIES = (20, 40, 90)
# What each training report scores the denoiser on: the first EVAL_FACES of the held-out split (which
# data.split_holdout caps anyway), at REPORT_SIGMAS and JPEG quality REPORT_JPEG.
EVAL_FACES = 500
REPORT_SIGMAS = (25, 50)
REPORT_JPEG = 20
SCORE_BATCH = 256
REPORT_NAME = "evaluation.json"
# Diversity needs a pair of held-out images; the classifier one to train on and one to test on, per side.
MIN_HELD_OUT = 2
# Images a side for the sliced Wasserstein distance (fewer where fewer are held out: both figures at one size).
SWD_IMAGES = 1000


@dataclass
class ClassReport:
    """What generated images of each class are worth to a classifier (usefulness.py), on the held-out images.

    Rates are overall and per class name; `*_images` are the classifiers' training images."""

    names: list[str]
    samples_per_class: int
    # Samples of class c labelled c by a classifier trained on real training images; that classifier's own
    # accuracy on the held-out images, to show it can be trusted.
    fidelity: dict[str, float]
    fidelity_overall: float
    fidelity_classifier_held_out: float
    # Classification accuracy score: trained on the samples alone.
    cas: float
    cas_per_class: dict[str, float]
    # Trained on `few_real` real images per class, without and with the samples added.
    few_real: int
    augmentation_without: float
    augmentation_with: float
    augmentation_without_per_class: dict[str, float]
    augmentation_with_per_class: dict[str, float]


@dataclass
class QualityReport:
    """Every number `animevae evaluate` measures (PSNR in dB, images in [0, 1])."""

    run: str
    held_out: int
    train_images: int
    recon_psnr: float
    recon_ssim: float
    denoise_psnr: dict[str, float]
    noisy_psnr: dict[str, float]
    # Per case, the held-out images whose denoised PSNR is below their input's (for clean input: any change
    # above 100 dB). Means hide a few faces made worse; this does not.
    denoise_made_worse: dict[str, int]
    samples: int
    # Mean pairwise RMS distance between samples, divided by the same between held-out images (1.0: as varied).
    sample_diversity: float | None
    # Fraction of samples closer to their nearest training image (or its mirror image) than 99% of held-out images
    # are to theirs.
    copy_rate: float
    nn_distance_samples_median: float
    nn_distance_held_out_median: float
    # A converged CNN telling real from generated (realism.py), scored on images it never saw (0.5: it
    # cannot tell). Samples against held-out faces; reconstructions decode(mu(x)) against their originals.
    # None where too few images are held out to score it.
    realism_samples_accuracy: float | None
    realism_samples_auc: float | None
    realism_recon_accuracy: float | None
    realism_recon_auc: float | None
    classifier_train_per_class: int
    # Each realism classifier's optimiser steps, and whether its patience ended the fit (True) or the step cap
    # did (False: still improving, so its accuracy is a lower bound). None where not measured.
    realism_samples_steps: int | None = None
    realism_recon_steps: int | None = None
    realism_samples_converged: bool | None = None
    realism_recon_converged: bool | None = None
    latents: str = ""
    style_share_train: dict[str, float] = field(default_factory=dict)
    style_share_samples: dict[str, float] = field(default_factory=dict)
    # The realism classifier's accuracy per style (held-out faces and what was made of them, together; a
    # sample's style is its nearest training face's): which styles give the model away.
    realism_samples_by_style: dict[str, float] = field(default_factory=dict)
    realism_recon_by_style: dict[str, float] = field(default_factory=dict)
    # Sliced Wasserstein distance x1e3 on Laplacian-pyramid patches (swd.py) per level side ("64", "32", "16"):
    # samples against training faces, and the floor, held-out faces against training faces (0: identical
    # statistics); both on swd_images images a side.
    swd_samples: dict[str, float] = field(default_factory=dict)
    swd_floor: dict[str, float] = field(default_factory=dict)
    swd_images: int = 0
    seconds: float = 0.0
    # Measures the set is too small for (None above): they need at least MIN_HELD_OUT held-out images.
    not_measurable: list[str] = field(default_factory=list)
    # Labelled runs only.
    classes: ClassReport | None = None


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5), averaged over channels, (B,)."""
    coords = torch.arange(11, dtype=torch.float32) - 5
    window_1d = torch.exp(-(coords**2) / (2 * 1.5**2))
    window = (window_1d[:, None] * window_1d[None, :] / window_1d.sum() ** 2).expand(3, 1, 11, 11).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(prediction), blur(target)
    var_x = blur(prediction * prediction) - mu_x**2
    var_y = blur(target * target) - mu_y**2
    cov = blur(prediction * target) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(dim=1)


def _batches(images: torch.Tensor, size: int = 256):
    for begin in range(0, len(images), size):
        yield images[begin : begin + size]


def as_saved(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to 8 bits exactly as the PNGs users get (fileio.to_uint8: halves round up, where
    torch.round would round them to even): the realism classifier and every denoise figure judge those."""
    return torch.floor(images.clamp(0.0, 1.0) * 255.0 + 0.5) / 255.0


@torch.no_grad()
def reconstruct(vae: VAE, images: torch.Tensor) -> torch.Tensor:
    """decode(mu(x)) of (N, 3, S, S) images in [0, 1]."""
    return torch.cat([vae.decoder(vae.encode(clean).mode()) for clean in _batches(images)])


@torch.no_grad()
def reconstruction_scores(vae: VAE, held_out: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR and SSIM of decode(mu(x)) over (N, 3, S, S) images in [0, 1]."""
    recon = reconstruct(vae, held_out)
    return psnr(recon, held_out).mean().item(), ssim(recon, held_out).mean().item()


@torch.no_grad()
def denoise_scores(denoiser: Denoiser, held_out: torch.Tensor) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    """Denoised and degraded-input PSNR at each sigma (0-255 scale; 0 = clean input), noise clipped to [0, 1],
    and at each JPEG quality (keys "jpeg20", "jpeg40", "jpeg90": saved by Pillow with 4:2:0 chroma); and per
    case the number of images the denoiser made worse than its input."""
    generator = torch.Generator().manual_seed(NOISE_SEED)
    cases = [(str(s), lambda clean, s=s: add_noise(clean, float(s), generator)) for s in SIGMAS]
    cases += [(f"jpeg{q}", lambda clean, q=q: jpeg_batch(clean, q)) for q in JPEG_QUALITIES]
    denoised, noisy_scores, made_worse = {}, {}, {}
    for key, degrade in cases:
        outs, ins = zip(*(degraded_psnrs(denoiser, clean, degrade) for clean in _batches(held_out)))
        out, capped_in = torch.cat(outs), torch.cat(ins).clamp(max=100.0)  # (N,) each
        denoised[key] = round(out.mean().item(), 3)
        noisy_scores[key] = round(capped_in.mean().item(), 3)
        made_worse[key] = int((out < capped_in).sum())
    return denoised, noisy_scores, made_worse


def degraded_psnrs(denoiser: Denoiser, clean: torch.Tensor,
                   degrade: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR of the denoised (gated and rounded to 8 bits, as `animevae denoise` saves it) and of the degraded
    input, (B,) each, for one batch of clean images."""
    noisy = degrade(clean)
    return psnr(as_saved(denoiser.denoise(noisy)), clean), psnr(noisy, clean)


@torch.no_grad()
def denoiser_scores(denoiser: Denoiser, held_out: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB) over (N, 3, S, S) uint8 held-out faces of the gated output rounded to 8 bits (what `animevae
    denoise` saves), and of the degraded input, at Gaussian sigma 25 and 50 (noise from a fixed seed, drawn per
    batch of SCORE_BATCH faces: sigma 25, then 50) and at JPEG quality 20 (Pillow, 4:2:0): keys denoise_psnr_25,
    noisy_psnr_25, ..., denoise_psnr_jpeg20, noisy_psnr_jpeg20, and denoise_psnr_mean, the mean of the three
    denoise PSNRs. Empty without faces."""
    was_training = denoiser.training
    denoiser.eval()
    generator = torch.Generator().manual_seed(NOISE_SEED)
    sums: dict[str, float] = {}
    for begin in range(0, len(held_out), SCORE_BATCH):
        clean = held_out[begin : begin + SCORE_BATCH].float().div_(255.0)  # (b, 3, S, S)
        cases = {str(sigma): lambda batch, sigma=sigma: add_noise(batch, float(sigma), generator)
                 for sigma in REPORT_SIGMAS}
        cases[f"jpeg{REPORT_JPEG}"] = lambda batch: jpeg_batch(batch, REPORT_JPEG)
        for case, degrade in cases.items():
            out, into = degraded_psnrs(denoiser, clean, degrade)
            sums[f"denoise_psnr_{case}"] = sums.get(f"denoise_psnr_{case}", 0.0) + out.sum().item()
            sums[f"noisy_psnr_{case}"] = sums.get(f"noisy_psnr_{case}", 0.0) + into.sum().item()
    denoiser.train(was_training)
    scores = {key: round(value / max(1, len(held_out)), 3) for key, value in sums.items()}
    denoised = [value for key, value in scores.items() if key.startswith("denoise_psnr_")]
    return scores | ({"denoise_psnr_mean": round(sum(denoised) / len(denoised), 3)} if denoised else {})


@torch.no_grad()
def draw_samples(vae: VAE, count: int, seed: int = 0, sampler: DDIMSampler | None = None,
                 temperature: float = 1.0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """(count, 3, S, S) samples: through the run's diffusion prior when it has one, else its mixture; with
    (count,) class `labels`, each from its class's mixture (the diffusion prior is unconditional)."""
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn(count, vae.config.latent_dim, generator=generator) * temperature
    uniform = torch.rand(count, generator=generator)
    if labels is not None:
        latents = torch.cat([vae.sample_latent(e, u, c) for e, u, c in zip(_batches(eps), _batches(uniform),
                                                                           _batches(labels))])
    else:
        latents = torch.cat([sampler(e) if sampler is not None else vae.sample_latent(e, u)
                             for e, u in zip(_batches(eps), _batches(uniform))])
    return torch.cat([vae.decoder(z) for z in _batches(latents)])


def mean_pairwise_distance(images: torch.Tensor, limit: int = 500) -> float:
    """Mean RMS pixel distance between distinct pairs of the first `limit` images."""
    flat = images[:limit].flatten(1).double()
    squared = (flat**2).sum(1, keepdim=True) - 2 * flat @ flat.T + (flat**2).sum(1)[None, :]
    count = len(flat)
    off_diagonal = squared.clamp(min=0)[~torch.eye(count, dtype=torch.bool)]
    return (off_diagonal / flat.shape[1]).sqrt().mean().item()


def style_of(source: str) -> str:
    """A coarse style label from a source path: its top folder, else its file-name prefix (lorelei_00001 -> lorelei)."""
    parts = Path(source).parts
    if len(parts) > 1:
        return parts[0]
    return re.sub(r"[-_ ]*\d+$", "", Path(source).stem) or "other"


def _shares(labels: list[str]) -> dict[str, float]:
    counts = Counter(labels)
    return {label: round(counts[label] / max(1, len(labels)), 4) for label in sorted(counts)}


def _sources(data: Path, count: int, cache: Path) -> list[str]:
    """Source paths of a prepared set's images, in order (from its manifest), or [] when unknown."""
    candidates = [data.with_name(data.name.removesuffix(".safetensors") + ".manifest.json")] if data.is_file() else \
        sorted(cache.glob(f"{data.resolve().name}-*.manifest.json"), key=lambda p: p.stat().st_mtime)[-1:]
    for path in candidates:
        try:
            kept = [entry["path"] for entry in json.loads(path.read_text())["kept"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if len(kept) == count:
            return kept
    return []


def class_report(vae: VAE, names: tuple[str, ...], train_images: TrainingPixels | torch.Tensor,
                 train_labels: torch.Tensor, held_out: torch.Tensor, held_labels: torch.Tensor, per_class: int = 300,
                 few_real: int = 20, classifier_images: int = 1000, seed: int = 0) -> ClassReport:
    """Class fidelity, CAS and augmentation gain of `per_class` samples per class (see usefulness.py); of the
    training images, only the `classifier_images` and `few_real` per class drawn are read."""
    sample_labels = torch.arange(len(names)).repeat_interleave(per_class)
    generated = as_saved(draw_samples(vae, len(sample_labels), seed=seed + 1, labels=sample_labels))
    rows = usefulness.few_real(train_labels, classifier_images, len(names), seed)
    fidelity, trust = usefulness.class_fidelity(float_rows(train_images, rows), train_labels[rows], generated,
                                                sample_labels, held_out, held_labels, names, seed)
    cas = usefulness.classification_accuracy_score(generated, sample_labels, held_out, held_labels, names, seed)
    without, with_samples = usefulness.augmentation_gain(train_images, train_labels, generated, sample_labels,
                                                         held_out, held_labels, names, few_real, seed)
    return ClassReport(list(names), per_class, fidelity.per_class, fidelity.accuracy, trust.accuracy,
                       cas.accuracy, cas.per_class, few_real, without.accuracy, with_samples.accuracy,
                       without.per_class, with_samples.per_class)


def refuse_trained_on(run_dir: Path, data: Path, config: RunConfig, hashes: list[str], held_out: np.ndarray) -> None:
    """Raise DataError when any image held out of `data` (rows `held_out` of its content `hashes`) is one the run
    trained on (a subset or another cut of its training set): scoring it would flatter the run. Runs that kept no
    keys, and sets without hashes, are not checked."""
    trained = read_train_keys(run_dir / CHECKPOINT_NAME)
    if trained is None or not hashes:
        return
    keys = torch.from_numpy(hash_keys([hashes[i] for i in held_out]))
    seen = int(torch.isin(keys, trained).sum())
    if seen:
        raise DataError(f"{seen} of the {len(keys)} images {data} holds out for scoring were trained on by run "
                        f"{run_dir.name}: scoring them would flatter it",
                        f"evaluate on the set it was trained on ({config.train.data_source or 'see its config.json'}), "
                        "or on images it never saw")


def swd_report(samples: torch.Tensor, held_out: torch.Tensor, train_images: TrainingPixels | torch.Tensor,
               limit: int = SWD_IMAGES) -> tuple[dict[str, float], dict[str, float], int]:
    """SWD per level of (N, 3, S, S) samples against a seeded draw of training faces (only those are read), and
    the floor: held-out faces against the same draw, at one size a side (at most `limit`). Returns both, keyed by
    level side, and the size."""
    count = min(limit, len(samples), len(held_out), len(train_images))
    rows = torch.from_numpy(np.random.default_rng(0).permutation(len(train_images))[:count])
    reference = swd_array(float_rows(train_images, rows))
    by_side = lambda scores: {str(side): value for side, value in scores.items()}  # noqa: E731
    return (by_side(swd(swd_array(samples[:count]), reference)), by_side(swd(swd_array(held_out[:count]), reference)),
            count)


def swd_array(images: torch.Tensor) -> np.ndarray:
    """(N, 3, S, S) [0, 1] images as the 8-bit values a PNG holds, float32."""
    return (as_saved(images.float()) * 255.0).cpu().numpy().astype(np.float32)


def evaluate_run(run_dir: Path, data: Path, runs_dir: Path, samples: int = 1000, classifier_images: int = 1000,
                 class_samples: int = 300, few_real: int = 20, reporter: Reporter | None = None,
                 classifier_steps: int = MAX_STEPS) -> QualityReport:
    """Measure a run on DATA's held-out split (the same split rule as training), write evaluation.json.

    The realism classifier learns from `classifier_images` training images per class (for `classifier_steps`
    optimiser steps at most) and is scored on the held-out images against as many unseen samples (or
    reconstructions). A labelled run is also scored on `class_samples` samples per class: class fidelity, CAS,
    and the gain over `few_real` real images per class.
    The set stays memory-mapped: the held-out split (at most the run's val_size faces) is read whole, training
    faces only as each measure draws them, and the copy search reads every one a chunk at a time (nearest.py).
    `reporter` gets a line before each long part."""
    from animevae.training.export import load_run_models, load_run_sampler

    started = time.monotonic()
    reporter = reporter or SilentReporter()
    config, vae, denoiser = load_run_models(run_dir)
    if vae is None:
        raise ModelError(f"run {run_dir.name!r} trains only a denoiser: evaluate scores a VAE and its samples",
                         f"its denoiser's scores on held-out faces are in {run_dir / 'metrics.jsonl'}")
    sampler = load_run_sampler(run_dir)
    loaded = load_training_images(data, config.model.image_size, runs_dir / ".cache", reporter)
    hashes, count = loaded.hashes, len(loaded.images)
    names = loaded.labels.classes.names if loaded.labels is not None else ()
    if config.model.classes and names != config.model.classes:  # (an unlabelled run ignores the data's labels)
        raise DataError(f"{data} has classes {list(names) or 'none'}; run {run_dir.name} was trained on "
                        f"{list(config.model.classes) or 'none'}", "evaluate the run on the data it was trained on")
    train_idx, val_idx = split_holdout(hashes, count, config.train.val_size)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(f"{data} has {count} image(s): too few to hold any out for scoring",
                        "evaluate on a set of at least 2 images (500 or more for stable numbers)")
    refuse_trained_on(run_dir, data, config, hashes, val_idx)
    train_images = TrainingPixels(loaded.images, train_idx, torch.device("cpu"))
    held_out = TrainingPixels(loaded.images, val_idx, torch.device("cpu"))[:].float().div_(255.0)  # (H, 3, S, S)
    reporter.log(f"reconstructing and denoising {len(held_out):,} held-out faces ...")
    recon_psnr, recon_ssim = reconstruction_scores(vae, held_out)
    denoised, noisy, made_worse = denoise_scores(denoiser, held_out)
    enough = len(held_out) >= MIN_HELD_OUT  # sets of 2-19 images hold out one
    real_train = float_rows(train_images, classifier_rows(len(train_images), classifier_images))
    drawn = as_saved(draw_samples(vae, max(samples, len(real_train) + len(held_out)), sampler=sampler))
    sources = _sources(data, count, runs_dir / ".cache")
    train_styles = [style_of(sources[i]) for i in train_idx] if sources else []
    held_styles = [style_of(sources[i]) for i in val_idx] if sources else None
    # Every drawn sample's and held-out face's nearest training face, in one pass over the faces and their
    # mirror images: the first `samples` drawn are scored for copying and style shares, those after the
    # classifier's training rows are its test samples.
    queries = torch.cat([drawn, held_out])
    reporter.log(f"searching all {len(train_images):,} training faces (and their mirror images) for the nearest to "
                 f"{len(queries):,} samples and held-out faces ...")
    reporter.start("nearest training faces", len(train_images))
    try:
        nearest, where = nearest_training_faces(queries, train_images, reporter.advance)
    finally:
        reporter.stop()
    (drawn_nn, held_nn), drawn_where = nearest.split([len(drawn), len(held_out)]), where[: len(drawn)]
    realism = recon_realism = None
    if enough:
        scored_styles = [train_styles[i] for i in drawn_where[len(real_train) :].tolist()] if held_styles else None
        reporter.log(f"training the real-vs-generated classifier on {len(real_train):,} training faces against as "
                     f"many samples (at most {classifier_steps:,} steps) ...")
        realism = realism_score(real_train, drawn[: len(real_train)], held_out, drawn[len(real_train) :],
                                real_groups=held_styles, fake_groups=scored_styles, max_steps=classifier_steps)
        reporter.log(f"training the real-vs-generated classifier on {len(real_train):,} training faces against "
                     f"their reconstructions (at most {classifier_steps:,} steps) ...")
        recon_realism = realism_score(real_train, as_saved(reconstruct(vae, real_train)), held_out,
                                      as_saved(reconstruct(vae, held_out)), real_groups=held_styles,
                                      fake_groups=held_styles, max_steps=classifier_steps)
    generated = drawn[:samples]
    sample_nn, sample_where = drawn_nn[:samples], drawn_where[:samples]
    threshold = torch.quantile(held_nn, 0.01).item() if len(held_nn) else 0.0
    reporter.log("scoring samples by sliced Wasserstein distance ...")
    swd_samples, swd_floor, swd_images = swd_report(generated, held_out, train_images)
    report = QualityReport(
        run=run_dir.name, held_out=len(held_out), train_images=len(train_images),
        recon_psnr=round(recon_psnr, 3), recon_ssim=round(recon_ssim, 4),
        denoise_psnr=denoised, noisy_psnr=noisy, denoise_made_worse=made_worse, samples=samples,
        sample_diversity=round(mean_pairwise_distance(generated) / max(1e-9, mean_pairwise_distance(held_out)), 4)
        if enough else None,
        copy_rate=round((sample_nn < threshold).float().mean().item(), 4),
        nn_distance_samples_median=round(sample_nn.median().item(), 4),
        nn_distance_held_out_median=round(held_nn.median().item(), 4) if len(held_nn) else math.nan,
        realism_samples_accuracy=realism.accuracy if realism else None,
        realism_samples_auc=realism.auc if realism else None,
        realism_recon_accuracy=recon_realism.accuracy if recon_realism else None,
        realism_recon_auc=recon_realism.auc if recon_realism else None,
        classifier_train_per_class=len(real_train),
        realism_samples_steps=realism.steps if realism else None,
        realism_recon_steps=recon_realism.steps if recon_realism else None,
        realism_samples_converged=realism.converged if realism else None,
        realism_recon_converged=recon_realism.converged if recon_realism else None,
        latents="diffusion prior" if sampler is not None else "Gaussian mixture",
        style_share_train=_shares(train_styles),
        style_share_samples=_shares([train_styles[i] for i in sample_where.tolist()]) if train_styles else {},
        realism_samples_by_style=realism.by_group if realism else {},
        realism_recon_by_style=recon_realism.by_group if recon_realism else {},
        swd_samples=swd_samples, swd_floor=swd_floor, swd_images=swd_images,
    )
    report.not_measurable = [] if enough else ["sample_diversity", "realism_samples_accuracy", "realism_samples_auc",
                                               "realism_recon_accuracy", "realism_recon_auc"]
    if config.model.classes and enough:
        reporter.log(f"training class classifiers on real faces and {class_samples:,} samples per class ...")
        report.classes = class_report(vae, names, train_images, torch.from_numpy(loaded.labels.subset(train_idx)),
                                      held_out, torch.from_numpy(loaded.labels.subset(val_idx)), class_samples,
                                      few_real, classifier_images)
    report.seconds = round(time.monotonic() - started, 1)
    write_json_atomic(run_dir / REPORT_NAME, asdict(report))
    return report
