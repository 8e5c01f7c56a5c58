"""The quality report of a run: reconstruction, denoising, and how samples relate to training and held-out images."""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from animevae.data import split_holdout
from animevae.degrade import jpeg_batch
from animevae.errors import DataError
from animevae.export import load_run_models
from animevae.fileio import write_json_atomic
from animevae.model import VAE, Denoiser, add_noise, psnr
from animevae.progress import SilentReporter
from animevae.train import load_training_images

NOISE_SEED = 1234
SIGMAS = (0, 15, 25, 50)
JPEG_QUALITIES = (20, 40)
REPORT_NAME = "evaluation.json"


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
    samples: int
    # Mean pairwise RMS distance between samples, divided by the same between held-out images (1.0: as varied).
    sample_diversity: float
    # Fraction of samples closer to their nearest training image than 99% of held-out images are to theirs.
    copy_rate: float
    nn_distance_samples_median: float
    nn_distance_held_out_median: float
    # Accuracy of a small CNN telling held-out images from samples, on images it did not train on (0.5: can't).
    real_vs_generated_accuracy: float
    style_share_train: dict[str, float] = field(default_factory=dict)
    style_share_samples: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


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


@torch.no_grad()
def reconstruction_scores(vae: VAE, held_out: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR and SSIM of decode(mu(x)) over (N, 3, S, S) images in [0, 1]."""
    psnrs, ssims = [], []
    for clean in _batches(held_out):
        recon = vae.decoder(vae.encode(clean).mode())
        psnrs.append(psnr(recon, clean))
        ssims.append(ssim(recon, clean))
    return torch.cat(psnrs).mean().item(), torch.cat(ssims).mean().item()


@torch.no_grad()
def denoise_scores(denoiser: Denoiser, held_out: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
    """Denoised and degraded-input PSNR at each sigma (0-255 scale; 0 = clean input), noise clipped to [0, 1],
    and at each JPEG quality (keys "jpeg20", "jpeg40": saved by Pillow with 4:2:0 chroma)."""
    generator = torch.Generator().manual_seed(NOISE_SEED)
    cases = [(str(s), lambda clean, s=s: add_noise(clean, float(s), generator)) for s in SIGMAS]
    cases += [(f"jpeg{q}", lambda clean, q=q: jpeg_batch(clean, q)) for q in JPEG_QUALITIES]
    denoised, noisy_scores = {}, {}
    for key, degrade in cases:
        outs, ins = [], []
        for clean in _batches(held_out):
            noisy = degrade(clean)
            outs.append(psnr(denoiser(noisy), clean))
            ins.append(psnr(noisy, clean))
        denoised[key] = round(torch.cat(outs).mean().item(), 3)
        noisy_scores[key] = round(min(torch.cat(ins).mean().item(), 100.0), 3)
    return denoised, noisy_scores


@torch.no_grad()
def draw_samples(vae: VAE, count: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, S, S) samples from the run's fitted latent prior."""
    generator = torch.Generator().manual_seed(seed)
    eps, uniform = torch.randn(count, vae.config.latent_dim, generator=generator), torch.rand(count, generator=generator)
    return torch.cat([vae.decoder(vae.sample_latent(e, u)) for e, u in zip(_batches(eps), _batches(uniform))])


def nearest_distances(queries: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RMS pixel distance from each query to its nearest reference, and that reference's index, (Q,) each."""
    q, r = queries.flatten(1).double(), references.flatten(1).double()
    best, where = [], []
    for chunk in _batches(q, 512):
        squared = (chunk**2).sum(1, keepdim=True) - 2 * chunk @ r.T + (r**2).sum(1)[None, :]
        value, index = squared.clamp(min=0).min(dim=1)
        best.append((value / q.shape[1]).sqrt())
        where.append(index)
    return torch.cat(best).float(), torch.cat(where)


def mean_pairwise_distance(images: torch.Tensor, limit: int = 500) -> float:
    """Mean RMS pixel distance between distinct pairs of the first `limit` images."""
    flat = images[:limit].flatten(1).double()
    squared = (flat**2).sum(1, keepdim=True) - 2 * flat @ flat.T + (flat**2).sum(1)[None, :]
    count = len(flat)
    off_diagonal = squared.clamp(min=0)[~torch.eye(count, dtype=torch.bool)]
    return (off_diagonal / flat.shape[1]).sqrt().mean().item()


def classifier_accuracy(real: torch.Tensor, fake: torch.Tensor, seconds: float = 20.0, seed: int = 0) -> float:
    """Train a small CNN to tell `real` from `fake` on half of each, for a fixed time; accuracy on the other half."""
    torch.manual_seed(seed)
    count = min(len(real), len(fake))
    half = count // 2
    images = torch.cat([real[:count], fake[:count]])
    labels = torch.cat([torch.ones(count), torch.zeros(count)])
    train_idx = torch.cat([torch.arange(half), count + torch.arange(half)])
    test_idx = torch.cat([torch.arange(half, count), count + torch.arange(half, count)])
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = train_idx[torch.randint(len(train_idx), (64,), generator=generator)]
        loss = F.binary_cross_entropy_with_logits(net(images[batch]).squeeze(1), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = net(images[test_idx]).squeeze(1) > 0
    return (predicted == labels[test_idx].bool()).float().mean().item()


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


def evaluate_run(run_dir: Path, data: Path, runs_dir: Path, samples: int = 1000,
                 classifier_seconds: float = 20.0) -> QualityReport:
    """Measure a run on DATA's held-out split (the same split rule as training), write evaluation.json."""
    started = time.monotonic()
    config, vae, denoiser = load_run_models(run_dir)
    images, hashes = load_training_images(data, config.model.image_size, runs_dir / ".cache", SilentReporter())
    train_idx, val_idx = split_holdout(hashes, len(images), config.train.val_size)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(f"{data} has {len(images)} image(s): too few to hold any out for scoring",
                        "evaluate on a set of at least 2 images (500 or more for stable numbers)")
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, S, S)
    held_out, train_images = pixels[torch.from_numpy(val_idx)], pixels[torch.from_numpy(train_idx)]
    recon_psnr, recon_ssim = reconstruction_scores(vae, held_out)
    denoised, noisy = denoise_scores(denoiser, held_out)
    generated = draw_samples(vae, samples)
    sample_nn, sample_where = nearest_distances(generated, train_images)
    held_nn, _ = nearest_distances(held_out, train_images)
    threshold = torch.quantile(held_nn, 0.01).item() if len(held_nn) else 0.0
    sources = _sources(data, len(images), runs_dir / ".cache")
    train_styles = [style_of(sources[i]) for i in train_idx] if sources else []
    report = QualityReport(
        run=run_dir.name, held_out=len(held_out), train_images=len(train_images),
        recon_psnr=round(recon_psnr, 3), recon_ssim=round(recon_ssim, 4),
        denoise_psnr=denoised, noisy_psnr=noisy, samples=samples,
        sample_diversity=round(mean_pairwise_distance(generated) / max(1e-9, mean_pairwise_distance(held_out)), 4),
        copy_rate=round((sample_nn < threshold).float().mean().item(), 4),
        nn_distance_samples_median=round(sample_nn.median().item(), 4),
        nn_distance_held_out_median=round(held_nn.median().item(), 4) if len(held_nn) else math.nan,
        real_vs_generated_accuracy=round(classifier_accuracy(held_out, generated, classifier_seconds), 4),
        style_share_train=_shares(train_styles),
        style_share_samples=_shares([train_styles[i] for i in sample_where.tolist()]) if train_styles else {},
    )
    report.seconds = round(time.monotonic() - started, 1)
    write_json_atomic(run_dir / REPORT_NAME, asdict(report))
    return report
