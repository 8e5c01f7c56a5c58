"""The usefulness measures on images whose class is plain to see: solid colours, one per class."""

from __future__ import annotations

import torch

from animevae.training import usefulness

NAMES = ("red", "green", "blue")


def _solid(per_class: int, seed: int, swap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(3 * per_class, 3, 8, 8) images of one noisy primary colour each, and their labels (cycled if `swap`)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(per_class)
    images = 0.1 * torch.rand(len(labels), 3, 8, 8, generator=generator)
    images[torch.arange(len(labels)), labels] += 0.8
    return images, (labels + 1) % 3 if swap else labels


def test_faithful_samples_score_one() -> None:
    real, real_labels = _solid(10, 0)
    held, held_labels = _solid(4, 1)
    samples, sample_labels = _solid(5, 2)
    fidelity, trust = usefulness.class_fidelity(real, real_labels, samples, sample_labels, held, held_labels, NAMES)
    assert trust.accuracy == 1.0 and fidelity.per_class == {"red": 1.0, "green": 1.0, "blue": 1.0}
    assert usefulness.classification_accuracy_score(samples, sample_labels, held, held_labels, NAMES).accuracy == 1.0


def test_augmentation_gain_trains_on_the_few_real_images_without_and_with_the_samples() -> None:
    real, real_labels = _solid(10, 0)
    held, held_labels = _solid(4, 1)
    mislabelled, labels = _solid(20, 2, swap=True)
    without, with_samples = usefulness.augmentation_gain(real, real_labels, mislabelled, labels, held, held_labels,
                                                         NAMES, per_class=2)
    assert (without.train_images, with_samples.train_images) == (6, 66)
    assert without.accuracy == 1.0 and with_samples.accuracy < 0.5  # wrong labels outvote two real images a class


def test_few_real_draws_that_many_of_each_class() -> None:
    labels = torch.tensor([0] * 5 + [1] * 2 + [2] * 9)
    rows = usefulness.few_real(labels, 3, 3, seed=1)
    assert torch.bincount(labels[rows]).tolist() == [3, 2, 3]


def test_scores_are_per_class_and_leave_out_absent_classes() -> None:
    scores = usefulness.score(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 1, 1]), NAMES)
    assert scores.accuracy == 0.5 and scores.per_class == {"red": 1.0, "green": 0.3333}
