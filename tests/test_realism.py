"""The converged real-vs-generated classifier: known AUCs, and accuracy on the obvious and the impossible."""

from __future__ import annotations

import pytest
import torch

from animevae.training.realism import classifier_net, realism_score, roc_auc


def test_roc_auc_matches_hand_counted_pairs() -> None:
    labels = torch.tensor([1, 1, 0, 0, 1])
    assert roc_auc(torch.tensor([0.9, 0.8, 0.1, 0.2, 0.7]), labels) == 1.0
    assert roc_auc(torch.tensor([0.1, 0.2, 0.9, 0.8, 0.0]), labels) == 0.0
    # positives 0.5, 0.3, 0.9 against negatives 0.4, 0.5: wins 0.5>0.4, 0.9>0.4, 0.9>0.5 (3), one tie (0.5):
    # (3 + 0.5) / 6.
    assert roc_auc(torch.tensor([0.5, 0.3, 0.4, 0.5, 0.9]), labels) == pytest.approx(3.5 / 6)


def test_classifier_net_maps_images_to_one_logit_each() -> None:
    assert classifier_net(width=4)(torch.rand(5, 3, 16, 16)).shape == (5,)


def test_an_obvious_difference_is_found_and_kept_for_unseen_images() -> None:
    generator = torch.Generator().manual_seed(0)
    smooth = torch.rand(160, 3, 1, 1, generator=generator).expand(160, 3, 16, 16).contiguous()
    speckled = (smooth + 0.15 * torch.randn(smooth.shape, generator=generator)).clamp(0, 1)
    score = realism_score(smooth[:120], speckled[:120], smooth[120:], speckled[120:], max_epochs=8)
    assert score.accuracy >= 0.95 and score.auc >= 0.98
    assert (score.train_per_class, score.test_per_class) == (120, 40)


def test_one_distribution_on_both_sides_cannot_be_told_apart() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(320, 3, 16, 16, generator=generator)
    score = realism_score(images[:100], images[100:200], images[200:260], images[260:], max_epochs=6)
    assert 0.3 <= score.accuracy <= 0.7 and 0.25 <= score.auc <= 0.75


def test_classifier_rows_spread_over_the_whole_set_and_repeat_with_the_seed() -> None:
    from animevae.training.realism import classifier_rows

    rows = classifier_rows(6000, 1000)
    assert len(rows) == 1000 and len(set(rows.tolist())) == 1000 and rows.tolist() == sorted(rows.tolist())
    # A set prepared from a sorted folder keeps its styles in blocks (faces-dev: rows 0-3999 one style):
    # the classifier's real side must reach the others in proportion, not take the first block.
    assert 280 <= int((rows >= 4000).sum()) <= 390
    assert rows.tolist() == classifier_rows(6000, 1000).tolist() != classifier_rows(6000, 1000, seed=1).tolist()
    assert classifier_rows(10, 1000).tolist() == list(range(10))  # fewer rows than asked: all of them


def test_a_classifier_still_at_chance_is_not_stopped_early() -> None:
    # Early stopping at a plateau of chance level once scored filtered reconstructions 0.54 that a patient
    # classifier told apart 0.95 of the time: where nothing is learnt yet, patience must not end the fit.
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(240, 3, 8, 8, generator=generator)
    same = realism_score(images[:80], images[80:160], images[160:200], images[200:], max_epochs=9, patience=1,
                         min_steps=1)
    assert same.epochs == 9
    smooth = torch.rand(240, 3, 1, 1, generator=generator).expand(240, 3, 8, 8).contiguous()
    speckled = (smooth + 0.3 * torch.randn(smooth.shape, generator=generator)).clamp(0, 1)
    obvious = realism_score(smooth[:160], speckled[:160], smooth[160:], speckled[160:], max_epochs=40, patience=1,
                            min_steps=1)
    assert obvious.accuracy >= 0.95 and obvious.epochs < 40  # learnt, then stopped when it stopped improving


def test_accuracy_per_group_tells_where_the_generator_gives_itself_away() -> None:
    # Group "flat": generated images are speckled copies (obvious); group "same": both sides one distribution.
    generator = torch.Generator().manual_seed(3)
    flat = torch.rand(200, 3, 1, 1, generator=generator).expand(200, 3, 8, 8).contiguous()
    speckled = (flat + 0.3 * torch.randn(flat.shape, generator=generator)).clamp(0, 1)
    noise = torch.rand(200, 3, 8, 8, generator=generator)
    real = torch.cat([flat[:100], noise[:100]])  # (200, 3, 8, 8): half flat, half noise
    fake = torch.cat([speckled[:100], torch.rand(100, 3, 8, 8, generator=generator)])
    order = torch.randperm(200, generator=generator)
    groups = ["flat"] * 100 + ["same"] * 100
    train, test = order[:140], order[140:]
    score = realism_score(real[train], fake[train], real[test], fake[test], max_epochs=20,
                          real_groups=[groups[i] for i in test], fake_groups=[groups[i] for i in test])
    assert set(score.by_group) == {"flat", "same"}
    assert score.by_group["flat"] >= 0.8 and score.by_group["same"] <= 0.75, score.by_group
    assert realism_score(real[train], fake[train], real[test], fake[test], max_epochs=1).by_group == {}


def _separable(count: int, size: int, seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat images and speckled copies of them: told apart at once."""
    generator = torch.Generator().manual_seed(seed)
    smooth = torch.rand(count, 3, 1, 1, generator=generator).expand(count, 3, size, size).contiguous()
    return smooth, (smooth + noise * torch.randn(smooth.shape, generator=generator)).clamp(0, 1)


def test_a_fit_that_only_sharpens_a_perfect_separation_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Told apart at once, the validation loss still falls every epoch by a sliver: that is not progress
    (realism.MIN_GAIN), and the fit ends by its patience instead of running every epoch."""
    import animevae.training.realism as realism

    smooth, speckled = _separable(200, 8, 4, noise=0.5)
    args = (smooth[:160], speckled[:160], smooth[160:], speckled[160:])
    score = realism_score(*args, max_epochs=30, patience=2, min_steps=1)
    assert score.accuracy == 1.0 and score.converged and score.epochs < 10
    monkeypatch.setattr(realism, "MIN_GAIN", 0.0)  # every sliver counts: it runs out of epochs instead
    sharpened = realism_score(*args, max_epochs=30, patience=2, min_steps=1)
    assert (sharpened.epochs, sharpened.converged, sharpened.accuracy) == (30, False, 1.0)


def test_a_fit_stopped_by_the_step_cap_says_it_did_not_converge() -> None:
    smooth, speckled = _separable(120, 8, 5, noise=0.3)
    # 100 per class, 180 fitting images: 3 steps an epoch; a cap of 7 steps ends the third epoch.
    score = realism_score(smooth[:100], speckled[:100], smooth[100:], speckled[100:], min_steps=1, max_steps=7)
    assert (score.epochs, score.steps, score.converged) == (3, 9, False)
