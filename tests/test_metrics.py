"""Known answers for Dice, HD95, folding and SDlogJ."""

from __future__ import annotations

import math

import pytest
import torch

from morphreg import metrics, spatial


def test_dice_identical_is_one_and_disjoint_is_zero():
    labels = torch.randint(0, 4, (2, 1, 16, 16))
    scores = metrics.dice(labels, labels)
    assert torch.all(scores.per_label == 1.0)
    a = torch.zeros(1, 1, 4, 4, dtype=torch.int64)
    b = torch.zeros(1, 1, 4, 4, dtype=torch.int64)
    a[..., :2, :] = 1
    b[..., 2:, :] = 1
    assert metrics.dice(a, b).per_label.item() == 0.0


def test_dice_known_partial_overlap():
    a = torch.zeros(1, 10, 10, dtype=torch.int64)
    b = torch.zeros(1, 10, 10, dtype=torch.int64)
    a[0, :5] = 1  # 50 voxels
    b[0, :3] = 1  # 30 voxels, all inside a
    assert metrics.dice(a, b).per_label.item() == pytest.approx(2 * 30 / 80)


def test_dice_skips_labels_absent_from_both():
    a = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    a[..., :3, :] = 1
    scores = metrics.dice(a, a.clone(), labels=[1, 7])
    assert scores.per_label[0, 0].item() == 1.0
    assert math.isnan(scores.per_label[0, 1].item())
    assert scores.mean.item() == 1.0  # the absent label neither helps nor hurts
    b = torch.zeros_like(a)
    assert metrics.dice(a, b, labels=[1]).per_label.item() == 0.0  # present in one map only


def test_dice_3d_default_labels_exclude_background():
    a = torch.randint(0, 3, (1, 1, 5, 6, 7))
    scores = metrics.dice(a, a)
    assert scores.labels.tolist() == [1, 2]


def test_hd95_of_shifted_square():
    a = torch.zeros(1, 1, 40, 40, dtype=torch.int64)
    a[..., 10:20, 10:20] = 1
    b = torch.roll(a, 3, dims=-2)
    assert metrics.hd95(a, a).per_label.item() == 0.0
    assert metrics.hd95(a, b).per_label.item() == pytest.approx(3.0)
    assert metrics.hd95(a, b, spacing=(2.0, 1.0)).per_label.item() == pytest.approx(6.0)
    empty = torch.zeros_like(a)
    assert math.isnan(metrics.hd95(a, empty, labels=[1]).per_label.item())


@pytest.mark.parametrize("ndim", [2, 3])
def test_folding_and_logjac_known_answers(ndim):
    shape = [10] * ndim
    translation = torch.zeros(1, ndim, *shape)
    translation[:, 0] = 2.5
    assert metrics.folding_fraction(translation).item() == 0.0
    assert metrics.log_jacobian_std(translation).item() == pytest.approx(0.0, abs=1e-6)
    folded = translation.clone()
    folded[0, 0] = -2.0 * spatial.identity_grid(shape)[0]  # x0 -> -x0 everywhere
    assert metrics.folding_fraction(folded).item() == 100.0
    half = torch.zeros(1, ndim, *shape)
    half[0, 0, 5:] = -2.0 * spatial.identity_grid(shape)[0, 5:]  # folds in part of the image
    assert 0.0 < metrics.folding_fraction(half).item() < 100.0
    assert metrics.log_jacobian_std(half).item() > 0.1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.dice(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4)), "integer label map"),
        (lambda: metrics.dice(torch.ones(1, 4, 4, dtype=torch.long),
                              torch.ones(1, 5, 4, dtype=torch.long)), "same shape"),
        (lambda: metrics.dice(torch.ones(4, dtype=torch.long), torch.ones(4, dtype=torch.long)),
         "must have shape"),
        (lambda: metrics.hd95(torch.ones(1, 4, 4, dtype=torch.long),
                              torch.ones(1, 4, 4, dtype=torch.long), spacing=(1.0,)), "spacing"),
        (lambda: metrics.folding_fraction(torch.zeros(1, 3, 4, 4)), "argument 'disp'"),
    ],
)
def test_metric_errors_name_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
