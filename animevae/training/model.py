"""The VAE (encoder, Gaussian posterior, decoder), the blind denoiser and their losses. Pure torch, no I/O."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from animevae.config import ModelConfig
from animevae.shrinkage import gate_residual


def _down(c_in: int, c_out: int) -> nn.Sequential:
    """Halve H and W: (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """Double H and W: (B, c_in, H, W) -> (B, c_out, 2H, 2W), by a 4x4 stride-2 transposed conv."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class Encoder(nn.Module):
    """(B, 3, S, S) image in [0, 1] -> (mu, logvar), each (B, latent)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = config.channels
        self.conv_in = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1), nn.SiLU())
        self.down_blocks = nn.Sequential(*(_down(a, b) for a, b in zip((widths[0], *widths[:-1]), widths)))
        self.to_moments = nn.Linear(widths[-1] * config.base_size**2, 2 * config.latent_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.down_blocks(self.conv_in(image * 2.0 - 1.0))  # (B, C_last, base, base)
        mu, logvar = self.to_moments(features.flatten(1)).chunk(2, dim=1)  # (B, latent) each
        return mu, logvar.clamp(-30.0, 20.0)


class Decoder(nn.Module):
    """(B, latent) -> (B, 3, S, S) image in [0, 1]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = config.channels
        self.base_shape = (widths[-1], config.base_size, config.base_size)
        self.from_latent = nn.Sequential(nn.Linear(config.latent_dim, math.prod(self.base_shape)), nn.SiLU())
        reverse = widths[::-1]
        self.up_blocks = nn.Sequential(
            *(_up(a, b) for a, b in zip(reverse, (*reverse[1:], reverse[-1]))))
        self.conv_out = nn.Conv2d(widths[0], 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        features = self.from_latent(z).unflatten(1, self.base_shape)  # (B, C_last, base, base)
        return torch.sigmoid(self.conv_out(self.up_blocks(features)))  # (B, 3, S, S)


class DiagonalGaussian:
    """The posterior q(z|x) = N(mu, exp(logvar))."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mu, self.logvar = mu, logvar

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw: mu + sigma * eps, (B, latent). eps is drawn on the generator's device (a CPU
        generator serves a GPU batch: the same draws everywhere)."""
        where = generator.device if generator is not None else self.mu.device
        eps = torch.randn(self.mu.shape, generator=generator, device=where).to(self.mu.device, self.mu.dtype)
        return self.mu + torch.exp(0.5 * self.logvar) * eps

    def mode(self) -> torch.Tensor:
        """The mean, (B, latent)."""
        return self.mu

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per image, (B,), in nats."""
        return 0.5 * (self.mu.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=1)


class VAE(nn.Module):
    """Encoder + decoder. forward returns (reconstruction, posterior)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # Gaussian mixture fitted to the training latents after each epoch (see prior.py); N(0, I) until then.
        # A labelled set gets one mixture of k components per class: components c*k .. c*k+k-1 are class c's.
        # The scales: standard deviations (K, D) of diagonal components, or Cholesky factors (K, D, D) of full ones.
        k, d, classes = config.prior_components, config.latent_dim, max(1, len(config.classes))
        weights = torch.zeros(k * classes)
        weights[::k] = 1.0 / classes
        self.register_buffer("prior_weights", weights)
        self.register_buffer("prior_means", torch.zeros(k * classes, d))
        if config.prior_covariance == "diagonal":
            self.register_buffer("prior_scales", torch.ones(k * classes, d))
        else:  # (K, D, D) Cholesky factors
            self.register_buffer("prior_scale_trils", torch.eye(d).repeat(k * classes, 1, 1))
        if config.classes:  # only then: checkpoints of unlabelled runs keep the keys they always had
            self.register_buffer("prior_classes", torch.arange(classes).repeat_interleave(k))

    def encode(self, image: torch.Tensor) -> DiagonalGaussian:
        """(B, 3, S, S) in [0, 1] -> posterior over (B, latent)."""
        return DiagonalGaussian(*self.encoder(image))

    @property
    def prior_component_scales(self) -> torch.Tensor:
        """The mixture's scales: (K, D) standard deviations (diagonal) or (K, D, D) Cholesky factors (full)."""
        return self.prior_scales if self.config.prior_covariance == "diagonal" else self.prior_scale_trils

    @torch.no_grad()
    def fit_prior(self, mu: torch.Tensor, logvar: torch.Tensor, seed: int = 0, labels: torch.Tensor | None = None) -> None:
        """Fit the sampling prior to (N, latent) posteriors: a Gaussian mixture on mu by EM (diagonal or full
        covariances, as configured), each covariance widened by the mean posterior variance (moment matching the
        aggregate posterior).

        With (N,) class `labels`, one mixture per class on that class's posteriors, weighted by the class's share,
        so that the whole mixture still follows the data. A class with no image here gets the whole set's.
        The fit runs on the CPU wherever the posteriors are (its seeded draws come from a CPU generator)."""
        mu, logvar = mu.cpu(), logvar.cpu()
        labels = labels.cpu() if labels is not None else None
        k = self.config.prior_components
        classes = max(1, len(self.config.classes))
        for c in range(classes):
            rows = torch.ones(len(mu), dtype=torch.bool) if labels is None else labels == c
            share = rows.float().mean() if labels is not None else torch.tensor(1.0)
            if not rows.any():
                rows = torch.ones(len(mu), dtype=torch.bool)
            weights, means, scales = fit_mixture(mu[rows], logvar[rows], k, self.config.prior_covariance, seed + c)
            self.prior_weights[c * k : (c + 1) * k] = weights * share
            self.prior_means[c * k : (c + 1) * k] = means
            self.prior_component_scales[c * k : (c + 1) * k] = scales

    def sample_latent(self, eps: torch.Tensor, uniform: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """(B, latent) standard-normal draws and (B,) uniform draws -> (B, latent) latents from the prior; with
        (B,) class indices `label`, each from its class's mixture."""
        if label is None:
            cumulative = self.prior_weights.cumsum(0)[:-1].expand(len(uniform), -1)  # (B, K-1)
        else:
            weights = self.prior_weights * (self.prior_classes[None, :] == label[:, None])  # (B, K)
            cumulative = (weights.cumsum(1) / weights.sum(1, keepdim=True))[:, :-1]
        component = torch.searchsorted(cumulative.contiguous(), uniform[:, None].contiguous(), right=True).squeeze(1)
        if self.config.prior_covariance == "diagonal":
            return self.prior_means[component] + self.prior_scales[component] * eps
        return self.prior_means[component] + (self.prior_scale_trils[component] @ eps.unsqueeze(2)).squeeze(2)

    def forward(
        self, image: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(image)
        return self.decoder(posterior.sample(generator)), posterior


class VAELoss(nn.Module):
    """Negative ELBO with a calibrated Gaussian decoder (sigma-VAE, Rybkin et al. 2021).

    The decoder variance is set to its batch-optimal value (the batch MSE), so no KL weight has to be
    hand-picked. Returns (loss per image in nats / pixel-channels, mse, kl per image).
    """

    min_log_sigma = -6.0

    def forward(
        self, image: torch.Tensor, recon: torch.Tensor, posterior: DiagonalGaussian
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dims = image[0].numel()
        mse = F.mse_loss(recon.float(), image.float())
        log_sigma = (0.5 * torch.log(mse)).clamp(min=self.min_log_sigma)
        # Gaussian NLL per image at sigma: D * (mse / (2 sigma^2) + log sigma + log(2 pi) / 2).
        nll = dims * (mse / (2.0 * torch.exp(2.0 * log_sigma)) + log_sigma + 0.5 * math.log(2.0 * math.pi))
        kl = posterior.kl().float().mean()
        return (nll + kl) / dims, mse, kl


class ResBlock(nn.Module):
    """x + conv(relu(conv(x))), the second conv zero-initialised so a fresh block is the identity."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, 1, 1)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class Denoiser(nn.Module):
    """Blind Gaussian denoiser: (B, 3, H, W) noisy in [0, 1] -> (B, 3, H, W) clean estimate in [0, 1].

    A two-level residual U-Net on the pixel-unshuffled image (4x less work per layer, as in FFDNet) that
    predicts the noise; the input is added back. H and W must be multiples of 4 (runtime pads to that).
    """

    multiple = 4

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width, blocks = config.denoiser_width, config.denoiser_blocks
        self.conv_in = nn.Conv2d(12, width, 3, 1, 1)
        self.enc = nn.Sequential(*(ResBlock(width) for _ in range(blocks)))
        self.down = nn.Conv2d(width, 2 * width, 2, 2)
        self.mid = nn.Sequential(*(ResBlock(2 * width) for _ in range(2 * blocks)))
        self.up = nn.ConvTranspose2d(2 * width, width, 2, 2)
        self.dec = nn.Sequential(*(ResBlock(width) for _ in range(blocks)))
        self.conv_out = nn.Conv2d(width, 12, 3, 1, 1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        # The residual gate's knee (shrinkage.py; 0-255 scale), calibrated on training faces at each epoch's end.
        self.register_buffer("knee", torch.zeros(()))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.pixel_unshuffle(image * 2.0 - 1.0, 2)  # (B, 12, H/2, W/2)
        skip = self.enc(self.conv_in(x))  # (B, w, H/2, W/2)
        deep = self.mid(self.down(skip))  # (B, 2w, H/4, W/4)
        features = self.dec(self.up(deep) + skip)  # (B, w, H/2, W/2)
        residual = F.pixel_shuffle(self.conv_out(features), 2)  # (B, 3, H, W), on the [-1, 1] scale
        return (image + 0.5 * residual).clamp(0.0, 1.0)

    def denoise(self, image: torch.Tensor) -> torch.Tensor:
        """What `animevae denoise` gives: the model's output through the residual gate, (B, 3, H, W)."""
        return gate_residual(image, self(image), float(self.knee))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # A state without a knee (a denoiser saved on its own, never calibrated) loads ungated.
        state_dict.setdefault(f"{prefix}knee", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def add_noise(
    image: torch.Tensor, sigma_255: torch.Tensor | float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add Gaussian noise of std `sigma_255` (0-255 scale; scalar or (B,)) and clip to [0, 1], as a saved PNG would.

    The noise is drawn on the generator's device (a CPU generator serves a GPU batch: same noise everywhere)."""
    sigma = torch.as_tensor(sigma_255, dtype=image.dtype, device=image.device) / 255.0
    if sigma.ndim == 1:
        sigma = sigma.view(-1, 1, 1, 1)
    where = generator.device if generator is not None else image.device
    noise = torch.randn(image.shape, generator=generator, device=where).to(image.device, image.dtype)
    return (image + sigma * noise).clamp(0.0, 1.0)


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1], (B,)."""
    mse = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp(min=1e-10))


def fit_gaussian_mixture(x: torch.Tensor, extra_variance: torch.Tensor, components: int, iterations: int = 15,
                         seed: int = 0, max_points: int = 3072) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EM for a full-covariance Gaussian mixture on (N, D) points, started from k-means++ centres.

    Fits on a seeded subset of at most `max_points`, so its cost is bounded whatever the data's size.
    Uses at most one component per 2D + 2 points (a full covariance needs them); the rest get weight 0.
    Returns weights (K,), means (K, D) and Cholesky factors (K, D, D) of the covariances (each + extra_variance).
    """
    generator = torch.Generator().manual_seed(seed)
    if len(x) > max_points:
        x = x[torch.randperm(len(x), generator=generator)[:max_points]]
    n, d = x.shape
    used = max(1, min(components, n // (2 * d + 2)))
    floor = torch.diag(extra_variance + 1e-6)
    means = _kmeans_plus_plus(x, used, generator)  # (K, D)
    shared = (torch.cov(x.T) if n > 1 else torch.zeros(d, d, dtype=x.dtype)) + floor
    trils = torch.linalg.cholesky(shared).expand(used, d, d)
    weights = torch.full((used,), 1.0 / used, dtype=x.dtype)
    for _ in range(iterations):
        centred = x[None] - means[:, None]  # (K, N, D)
        solved = torch.linalg.solve_triangular(trils, centred.transpose(1, 2), upper=False)  # (K, D, N)
        log_det = torch.log(torch.diagonal(trils, dim1=1, dim2=2)).sum(1)  # (K,)
        log_prob = -0.5 * solved.pow(2).sum(1) - log_det[:, None]  # (K, N), up to a shared constant
        resp = torch.softmax(log_prob.T + torch.log(weights)[None], dim=1)  # (N, K)
        counts = resp.sum(0) + 1e-9  # (K,)
        weights = counts / counts.sum()
        means = (resp.T @ x) / counts[:, None]
        centred = x[None] - means[:, None]
        covariance = torch.einsum("kn,knd,kne->kde", resp.T, centred, centred) / counts[:, None, None] + floor
        trils = torch.linalg.cholesky(covariance)
    out_weights = torch.zeros(components, dtype=x.dtype)
    out_means = torch.zeros(components, d, dtype=x.dtype)
    out_trils = torch.eye(d, dtype=x.dtype).repeat(components, 1, 1)
    out_weights[:used], out_means[:used], out_trils[:used] = weights, means, trils
    return out_weights.float(), out_means.float(), out_trils.float()


def fit_mixture(mu: torch.Tensor, logvar: torch.Tensor, components: int, covariance: str,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Gaussian mixture on (N, D) posterior means, each covariance widened by the mean posterior variance:
    weights (K,), means (K, D) and scales ((K, D) diagonal or (K, D, D) Cholesky factors), float32.

    Diagonal EM runs in float32 (centred, it is as accurate as float64 and faster), full EM in
    float64 (its Cholesky factors need it)."""
    dtype = torch.float32 if covariance == "diagonal" else torch.float64
    fit = fit_diagonal_mixture if covariance == "diagonal" else fit_gaussian_mixture
    return fit(mu.to(dtype), logvar.double().exp().mean(0).to(dtype), components, seed=seed)


# A diagonal component is fitted from at least this many points (fewer make near-copies of them).
DIAGONAL_POINTS_PER_COMPONENT = 16


def fit_diagonal_mixture(x: torch.Tensor, extra_variance: torch.Tensor, components: int, iterations: int = 30,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EM for a diagonal-covariance Gaussian mixture on (N, D) points, started from a seeded sample of them.

    Uses at most one component per DIAGONAL_POINTS_PER_COMPONENT points; the rest get weight 0. Returns weights
    (K,), means (K, D) and standard deviations (K, D) (each variance + extra_variance).
    """
    generator = torch.Generator().manual_seed(seed)
    n, d = x.shape
    # Centred, so the expanded distances below cancel less and float32 is accurate enough.
    centre = x.mean(0)
    x = x - centre
    used = max(1, min(components, n // DIAGONAL_POINTS_PER_COMPONENT))
    means = x[torch.randperm(n, generator=generator)[:used]].clone()  # (K, D)
    spread = x.var(0, correction=0).clamp(min=1e-6) if n > 1 else torch.ones(d, dtype=x.dtype)
    variances = spread.expand(used, d).clone()  # (K, D)
    weights = torch.full((used,), 1.0 / used, dtype=x.dtype)
    squares = x.pow(2)  # (N, D)
    for _ in range(iterations):
        precision = 1.0 / variances  # (K, D)
        # sum_d (x - m)^2 / v as three matrix products: (N, K)
        distance = squares @ precision.T - 2.0 * x @ (means * precision).T + (means.pow(2) * precision).sum(1)
        log_prob = -0.5 * (distance + torch.log(variances).sum(1)) + torch.log(weights)
        resp = torch.softmax(log_prob, dim=1)  # (N, K)
        counts = resp.sum(0) + 1e-9  # (K,)
        weights = counts / counts.sum()
        means = (resp.T @ x) / counts[:, None]
        variances = ((resp.T @ squares) / counts[:, None] - means.pow(2)).clamp(min=1e-6)
    out_weights = torch.zeros(components, dtype=x.dtype)
    out_means = torch.zeros(components, d, dtype=x.dtype)
    out_scales = torch.ones(components, d, dtype=x.dtype)
    out_weights[:used], out_means[:used] = weights, means + centre
    out_scales[:used] = (variances + extra_variance).sqrt()
    return out_weights.float(), out_means.float(), out_scales.float()


def _kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k initial centres, each drawn with probability proportional to its squared distance to the chosen ones."""
    centres = [x[torch.randint(len(x), (1,), generator=generator)].squeeze(0)]
    for _ in range(k - 1):
        distance = torch.stack([(x - c).pow(2).sum(1) for c in centres]).min(0).values
        centres.append(x[torch.multinomial(distance.float() + 1e-12, 1, generator=generator)].squeeze(0))
    return torch.stack(centres)
