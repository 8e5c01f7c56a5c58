"""How well a strong CNN tells real images from generated ones, trained to convergence: accuracy and AUC.

A classifier trained for a few seconds flatters a generator (it scored our samples 0.66 where a converged one
scores 0.99). This one trains until its own validation loss stops improving, on a split it holds out itself,
and is scored on images it never saw. 0.5 means it cannot tell; 1.0 means every image is told apart.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# Fitting images passed through the classifier to set its BatchNorm statistics before each evaluation: exact
# per-channel statistics over 512 x H x W values and more, at half the cost of 1024 images.
BATCHNORM_IMAGES = 512
# A validation loss above this share of a uniform guess's is still chance level: the fit neither stops nor slows
# down there. On range-filtered reconstructions of the built-in model, a fit that stopped at such a plateau (best
# epoch 2, stopped at 7) scored 0.54; with this rule the same fit left the plateau at epoch 9 and scored 0.94.
CHANCE_SHARE = 0.9
# Epochs at most. With 30, fits on the built-in model's reconstructions ended still improving.
MAX_EPOCHS = 60
# An epoch counts as progress (and restarts the patience) only where it lowers the best validation loss by this
# share of a uniform guess's loss or more. Smaller gains are a classifier that already tells every validation
# image apart sharpening its logits: left to them, it ran every one of MAX_EPOCHS (and the weights of the lowest
# loss are still the ones kept).
MIN_GAIN = 0.01
# Optimiser steps at most (whole epochs: the last one may pass it), so a fit takes a time one can wait for on a
# CPU. A fit stopped here, not by its patience, is reported as not converged: its accuracy is a lower bound.
MAX_STEPS = 600


@dataclass(frozen=True)
class RealismScore:
    """Test-set accuracy and ROC AUC of a converged real-vs-generated classifier, and how it trained."""

    accuracy: float
    auc: float
    epochs: int
    train_per_class: int
    test_per_class: int
    # Accuracy over the test images of each group (real and generated together), where groups were given.
    by_group: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    # False when the fit ran out of epochs or steps before its patience ended it.
    converged: bool = True


@dataclass(frozen=True)
class Fit:
    """How a `fit_converged` call ended: epochs and optimiser steps run, and whether its patience ended it."""

    epochs: int
    steps: int
    converged: bool


def classifier_net(width: int = 32, classes: int = 1) -> nn.Sequential:
    """(B, 3, S, S) in [0, 1] -> (B,) logit of "real" (or, for `classes` > 1, (B, classes) class logits).
    Conv-BatchNorm-ReLU stages, each halving the size,
    then a global average: it sees every pixel at full resolution first, where generators leave their traces.
    BatchNorm is what makes it learn: without it (or with GroupNorm) it sat at chance for hundreds of steps on
    reconstructions it tells apart within 100 steps with it. Its statistics are recomputed before each
    evaluation (`_recompute_batchnorm`), since running averages lag the weights."""

    def stage(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *stage(3, width, 1),  # (B, w, S, S)
        *stage(width, 2 * width, 2), *stage(2 * width, 2 * width, 1),  # (B, 2w, S/2, S/2)
        *stage(2 * width, 4 * width, 2),  # (B, 4w, S/4, S/4)
        *stage(4 * width, 8 * width, 2),  # (B, 8w, S/8, S/8)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * width, classes),
        *([nn.Flatten(0)] if classes == 1 else []))


def classifier_rows(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """`size` of `count` training rows, drawn at random (seeded), for the real side of a classifier.

    Not the first `size`: a prepared set keeps its files' order, so the first rows of a folder sorted by name
    are one style only, and a classifier that learns "real = that style" judges style, not realism."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:size].sort().values


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: the chance that a random positive outscores a random negative (ties count
    half), by the Mann-Whitney rank sum."""
    positives, negatives = scores[labels.bool()].double(), scores[~labels.bool()].double()
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).double().sum()
    ties = (positives[:, None] == negatives[None, :]).double().sum()
    return ((greater + 0.5 * ties) / (len(positives) * len(negatives))).item()


def realism_score(real_train: torch.Tensor, fake_train: torch.Tensor, real_test: torch.Tensor,
                  fake_test: torch.Tensor, max_epochs: int = MAX_EPOCHS, patience: int = 5, seed: int = 0,
                  batch_size: int = 64, min_steps: int = 300, device: torch.device | str = "cpu",
                  real_groups: list[str] | None = None, fake_groups: list[str] | None = None,
                  max_steps: int = MAX_STEPS) -> RealismScore:
    """Train `classifier_net` on (real_train vs fake_train), keeping the weights of the epoch with the lowest
    loss on a tenth it holds out, until `patience` epochs bring no better one by MIN_GAIN (never while that loss
    is still at chance level, see CHANCE_SHARE) or `max_steps` steps are run; score on the test images.
    The learning rate halves after every two epochs without a better one, so it settles instead of
    wandering. Small sets get more epochs: at least `min_steps` optimiser steps, and patience to match.

    All inputs are (N, 3, S, S) float in [0, 1]; the classes are balanced to the smaller side of each split.
    It trains in fp32: under bf16 autocast it missed plain speckle that fp32 finds at once. `device` is where it
    trains (a GPU scores a model in seconds); the shuffles and flips come from a CPU generator either way.
    `real_groups` and `fake_groups` name a group (a style) for each test image: accuracy is then also given
    per group, which tells where a generator gives itself away."""
    torch.manual_seed(seed)
    per_class = min(len(real_train), len(fake_train))
    images = torch.cat([real_train[:per_class], fake_train[:per_class]]).to(device)
    labels = torch.cat([torch.ones(per_class), torch.zeros(per_class)]).to(device)
    net = classifier_net().to(device)
    fit = fit_converged(net, images, labels, F.binary_cross_entropy_with_logits, max_epochs, patience, seed,
                        batch_size, min_steps, max_steps=max_steps)
    test_count = min(len(real_test), len(fake_test))
    test_images = torch.cat([real_test[:test_count], fake_test[:test_count]]).to(device)
    test_labels = torch.cat([torch.ones(test_count), torch.zeros(test_count)])
    scores = logits(net, test_images).cpu()
    correct = ((scores > 0).float() == test_labels).float()  # (2 * test_count,)
    by_group: dict[str, float] = {}
    if real_groups is not None and fake_groups is not None:
        groups = [*real_groups[:test_count], *fake_groups[:test_count]]
        for name in sorted(set(groups)):
            rows = torch.tensor([g == name for g in groups])
            by_group[name] = round(correct[rows].mean().item(), 4)
    return RealismScore(round(correct.mean().item(), 4), round(roc_auc(scores, test_labels), 4), fit.epochs, per_class,
                        test_count, by_group, fit.steps, fit.converged)


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def fit_converged(net: nn.Module, images: torch.Tensor, targets: torch.Tensor, loss: Loss, max_epochs: int = MAX_EPOCHS,
                  patience: int = 5, seed: int = 0, batch_size: int = 64, min_steps: int = 300,
                  augment: Augment | None = None, max_steps: int = MAX_STEPS) -> Fit:
    """Train `net` in place on (N, 3, S, S) images and their targets, keeping the weights of the epoch with the
    lowest `loss` on a tenth it holds out, until `patience` epochs bring no better one by MIN_GAIN, or the epoch
    that reaches `max_steps` steps (see realism_score). Training batches are flipped at random, then passed
    through `augment` when given."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    val_count = max(2, len(images) // 10)
    val_idx, fit_idx = order[:val_count], order[val_count:]
    steps_per_epoch = max(1, -(-len(fit_idx) // batch_size))
    max_epochs = min(max(max_epochs, -(-min_steps // steps_per_epoch)), -(-max_steps // steps_per_epoch))
    patience = max(patience, -(-min_steps // (3 * steps_per_epoch)))
    net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    best_loss, best_state, best_epoch, epoch, steps = float("inf"), copy.deepcopy(net.state_dict()), 0, 0, 0
    # The validation loss of a uniform guess (all logits 0): ln 2 for real-vs-generated.
    chance = loss(torch.zeros_like(logits(net, images[val_idx])), targets[val_idx]).item()
    converged = False
    with torch.enable_grad():  # callers may score inside torch.no_grad()
        for epoch in range(1, max_epochs + 1):
            val_loss, epoch_steps = _train_epoch(net, optimizer, images, targets, fit_idx, val_idx, batch_size,
                                                 generator, loss, augment)
            steps += epoch_steps
            gained = val_loss < best_loss - MIN_GAIN * chance
            if val_loss < best_loss:
                best_loss, best_state = val_loss, copy.deepcopy(net.state_dict())
            if gained:
                best_epoch = epoch
            elif best_loss > CHANCE_SHARE * chance:
                # Still guessing: a plateau that it leaves late, not convergence. Neither stop nor slow down.
                continue
            elif epoch - best_epoch >= patience:
                converged = True
                break
            elif (epoch - best_epoch) % 2 == 0:
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
    net.load_state_dict(best_state)
    return Fit(epoch, steps, converged)


def _train_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                 fit_idx: torch.Tensor, val_idx: torch.Tensor, batch_size: int, generator: torch.Generator,
                 loss_fn: Loss, augment: Augment | None = None) -> tuple[float, int]:
    """One pass over the fitting images in random order, with random left-right flips; the validation loss and
    the steps taken."""
    net.train()
    shuffled, steps = fit_idx[torch.randperm(len(fit_idx), generator=generator)], 0
    for begin in range(0, len(shuffled), batch_size):
        batch = shuffled[begin : begin + batch_size]
        if len(batch) < 2:  # BatchNorm needs two
            continue
        flip = (torch.rand(len(batch), generator=generator) < 0.5).to(images.device)
        x = torch.where(flip.view(-1, 1, 1, 1), images[batch].flip(3), images[batch])
        if augment is not None:
            x = augment(x, generator)
        loss = loss_fn(net(x.contiguous(memory_format=torch.channels_last)), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    _recompute_batchnorm(net, images[fit_idx[:BATCHNORM_IMAGES]])
    return loss_fn(logits(net, images[val_idx]), labels[val_idx]).item(), steps


@torch.no_grad()
def _recompute_batchnorm(net: nn.Module, images: torch.Tensor) -> None:
    """Set every BatchNorm's statistics to the exact mean and variance over `images` under the current
    weights ("precise BN"), so eval mode scores what training learned."""
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    net.train()
    for begin in range(0, len(images), 128):
        net(images[begin : begin + 128].contiguous(memory_format=torch.channels_last))
    for norm in norms:
        norm.momentum = 0.1


@torch.no_grad()
def logits(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The net's outputs in eval mode, in batches of 256."""
    net.eval()
    return torch.cat([net(images[b : b + 256]) for b in range(0, len(images), 256)])
