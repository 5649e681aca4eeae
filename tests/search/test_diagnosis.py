"""The notes' by-hand reading of training curves, made mechanical: overfitting onset, final gap, LR collapse."""

from __future__ import annotations

import math

import pytest

from search.diagnosis import diagnose


def history(val, train, lr=None) -> list[dict]:
    lr = lr or [1e-4] * len(val)
    return [{"epoch": e + 1, "val_loss": v, "train_loss": t, "lr": r, "seconds": 1.0, "frames_per_second": 1.0}
            for e, (v, t, r) in enumerate(zip(val, train, lr, strict=True))]


def cosine(lr: float, lr_min: float, epochs: int) -> list[float]:
    # the lr recorded for each epoch is the one it trained with (before the scheduler's step)
    return [lr_min + (lr - lr_min) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]


def test_v3_like_curves_overfit_from_epoch_8_with_the_notes_gap():
    # Validation falls to epoch 8, then creeps up; train keeps falling: the notes' V1-V3 picture.
    val = [6.0, 5.6, 5.3, 5.1, 4.95, 4.87, 4.82, 4.77, 4.78, 4.80, 4.83, 4.86, 4.90, 4.93, 4.95]
    train = [6.1, 5.6, 5.2, 4.95, 4.8, 4.7, 4.62, 4.55, 4.48, 4.42, 4.36, 4.30, 4.24, 4.19, 4.14]
    d = diagnose(history(val, train), lr_min=1e-6)
    assert d.overfit_epoch == 8 and d.best_epoch == 8
    assert d.final_gap == pytest.approx(0.81)
    assert not d.lr_collapsed
    assert d.text() == "overfitting from epoch 8, gap 0.81"
    assert d.attrs() == {"overfit_epoch": 8, "final_gap": pytest.approx(0.81), "lr_collapsed": False,
                         "diagnosis": "overfitting from epoch 8, gap 0.81"}


def test_a_noisy_plateau_counts_from_its_start():
    # 4.15, 4.14, 4.145 ...: the plateau begins at the first 4.15, not at the noise-level minimum.
    val = [5.0, 4.5, 4.15, 4.14, 4.145, 4.16, 4.18, 4.2]
    train = [5.1, 4.5, 4.1, 3.9, 3.7, 3.5, 3.3, 3.1]
    d = diagnose(history(val, train))
    assert d.overfit_epoch == 3 and d.best_epoch == 4


def test_curves_that_keep_improving_do_not_overfit():
    val = [5.0 - 0.1 * e for e in range(10)]
    train = [5.2 - 0.12 * e for e in range(10)]
    d = diagnose(history(val, train, cosine(1e-4, 1e-6, 10)), lr_min=1e-6)
    assert d.overfit_epoch is None and d.still_improving and not d.lr_collapsed
    assert d.text().startswith("still improving at epoch 10, gap ")


def test_a_flat_validation_loss_with_flat_train_loss_is_not_overfitting():
    val = [5.0, 4.6, 4.4, 4.3, 4.3, 4.3, 4.3, 4.3]
    train = [5.1, 4.6, 4.35, 4.25, 4.25, 4.25, 4.25, 4.25]
    d = diagnose(history(val, train))
    assert d.overfit_epoch is None and not d.still_improving
    assert d.text() == "validation loss flat from epoch 4, no overfitting, gap 0.05"


def test_v2_like_learning_rate_collapse_to_1e_8_by_epoch_7():
    # ReduceLROnPlateau with factor 0.1: 1e-4 -> 1e-8 by epoch 7, after which nothing moves.
    lr = [1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-7, 1e-8, 1e-8, 1e-8, 1e-8]
    val = [5.3, 5.0, 4.9, 4.85, 4.8, 4.78, 4.77, 4.77, 4.77, 4.77]
    train = [5.4, 5.0, 4.85, 4.8, 4.75, 4.74, 4.735, 4.735, 4.735, 4.735]
    d = diagnose(history(val, train, lr))  # plateau scheduler: no intended floor
    assert d.lr_collapsed and d.lr_collapse_epoch == 7 and d.lr_lowest == pytest.approx(1e-8)
    assert d.text().endswith("learning rate collapsed to 1e-08 by epoch 7")
    assert d.attrs()["lr_collapsed"] is True


def test_a_cosine_schedule_reaching_its_floor_is_no_collapse():
    lr = cosine(1e-3, 1e-7, 70)  # 10^4 below the start at the end, but that is the schedule's own floor
    val = [5.0 - 0.01 * e for e in range(70)]
    d = diagnose(history(val, val, lr), lr_min=1e-7)
    assert not d.lr_collapsed and d.lr_collapse_epoch is None


def test_pruned_and_empty_runs_say_so():
    d = diagnose(history([5.0, 4.8], [5.1, 4.7]))
    assert d.text(pruned=True).startswith("pruned after epoch 2 while still improving")
    assert diagnose([]).text() == "no epoch finished"
    assert diagnose([]).attrs()["overfit_epoch"] is None
    assert diagnose(history([float("nan")], [1.0])).epochs == 0  # non-finite epochs are skipped
