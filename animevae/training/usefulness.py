"""Whether generated images of a labelled set are worth anything to a classifier trained on them.

Three measures, each scored on real held-out images the classifiers never saw, per class:
- class fidelity: a classifier trained on the real training images labels the samples of class c as c;
- classification accuracy score (CAS, Ravuri & Vinyals 2019): a classifier trained on generated images alone;
- augmentation gain: a classifier trained on a few real images per class, with and without generated ones added.
The classifier is realism.py's CNN with one logit per class, trained to convergence the same way, except that
half of each batch is blurred by a random amount: a classifier trained on sharp images alone told one style by
its crisp lines, and called every real image of it blurred 2x (and every sample) another style. It is to
judge the class; how sharp, how real a sample looks is what realism.py measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from animevae.training.data import TrainingPixels, float_rows
from animevae.training.realism import classifier_net, fit_converged, logits

# Style is visible at a glance: half the realism classifier's width tells it, at about a quarter of the cost.
CLASSIFIER_WIDTH = 16
# Blur for half of each training batch: downscaled by up to this factor (antialiased) and scaled back up.
MAX_BLUR = 3.0


def soften(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, S, S) -> the same, a random half of them downscaled by one random factor in [1, MAX_BLUR] and back."""
    size = images.shape[-1]
    factor = 1.0 + (MAX_BLUR - 1.0) * torch.rand(1, generator=generator).item()
    small = max(4, round(size / factor))
    blurred = F.interpolate(F.interpolate(images, size=small, mode="bilinear", antialias=True), size=size,
                            mode="bilinear", align_corners=False)
    pick = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(pick.view(-1, 1, 1, 1), blurred, images)


@dataclass(frozen=True)
class ClassScores:
    """Accuracy over all test images, and per class (by name)."""

    accuracy: float
    per_class: dict[str, float]
    train_images: int
    test_images: int


def train_classifier(images: torch.Tensor, labels: torch.Tensor, classes: int, seed: int = 0) -> torch.nn.Module:
    """A converged class classifier on (N, 3, S, S) images in [0, 1] and their (N,) int64 labels."""
    torch.manual_seed(seed)
    net = classifier_net(CLASSIFIER_WIDTH, classes)
    fit_converged(net, images, labels, F.cross_entropy, seed=seed, augment=soften)
    return net


def predict(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N,) predicted class of each image."""
    return logits(net, images).argmax(1)


def score(predicted: torch.Tensor, labels: torch.Tensor, names: tuple[str, ...], train_images: int = 0) -> ClassScores:
    """Accuracy of (N,) predictions against (N,) labels, overall and per class (classes absent from `labels`
    are left out)."""
    correct = (predicted == labels).float()
    per_class = {name: round(correct[labels == c].mean().item(), 4)
                 for c, name in enumerate(names) if (labels == c).any()}
    return ClassScores(round(correct.mean().item(), 4), per_class, train_images, len(labels))


def class_fidelity(real_train: torch.Tensor, real_labels: torch.Tensor, samples: torch.Tensor,
                   sample_labels: torch.Tensor, held_out: torch.Tensor, held_labels: torch.Tensor,
                   names: tuple[str, ...], seed: int = 0) -> tuple[ClassScores, ClassScores]:
    """How often samples of class c are labelled c by a classifier trained on the real training images, and,
    to show that classifier can be trusted, its accuracy on the real held-out images."""
    net = train_classifier(real_train, real_labels, len(names), seed)
    return (score(predict(net, samples), sample_labels, names, len(real_train)),
            score(predict(net, held_out), held_labels, names, len(real_train)))


def classification_accuracy_score(samples: torch.Tensor, sample_labels: torch.Tensor, held_out: torch.Tensor,
                                  held_labels: torch.Tensor, names: tuple[str, ...], seed: int = 0) -> ClassScores:
    """CAS: a classifier trained on generated images alone, scored on the real held-out images."""
    net = train_classifier(samples, sample_labels, len(names), seed)
    return score(predict(net, held_out), held_labels, names, len(samples))


def few_real(labels: torch.Tensor, per_class: int, classes: int, seed: int = 0) -> torch.Tensor:
    """Indices of `per_class` images of each class (fewer where a class has fewer), drawn by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(classes):
        rows = torch.nonzero(labels == c).flatten()
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
    return torch.cat(chosen)


def augmentation_gain(real_train: TrainingPixels | torch.Tensor, real_labels: torch.Tensor, samples: torch.Tensor,
                      sample_labels: torch.Tensor, held_out: torch.Tensor, held_labels: torch.Tensor,
                      names: tuple[str, ...], per_class: int = 20, seed: int = 0) -> tuple[ClassScores, ClassScores]:
    """Held-out accuracy of a classifier trained on `per_class` real images per class (drawn by `seed`; of a
    memory-mapped split, only those are read), without and with the generated images added: (without, with)."""
    rows = few_real(real_labels, per_class, len(names), seed)
    few, few_labels = float_rows(real_train, rows), real_labels[rows]
    without = train_classifier(few, few_labels, len(names), seed)
    mixed = train_classifier(torch.cat([few, samples]), torch.cat([few_labels, sample_labels]), len(names), seed)
    return (score(predict(without, held_out), held_labels, names, len(few)),
            score(predict(mixed, held_out), held_labels, names, len(few) + len(samples)))
