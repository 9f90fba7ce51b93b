"""GradICON (``inverse_consistency="gradicon"``): the penalty's known answers, and training with it
makes the network more inverse consistent than plain training on the same budget and seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from morphreg.data import PairDataset, synthetic_shapes
from morphreg.workflows.train import TrainSettings, train
from morphreg.workflows.train.inverse_consistency import (
    gradicon_loss,
    inverse_consistency_error,
    jacobian_penalty,
)


def _coords(shape):
    return torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))[None]


@pytest.mark.parametrize("shape", [(12, 14), (6, 7, 8)])
def test_exact_inverses_and_offsets_cost_nothing_a_linear_mismatch_costs_its_squared_slope(shape):
    ndim = len(shape)
    shift = torch.zeros(1, ndim, *shape)
    shift[:, 0] = 1.5
    assert float(gradicon_loss(shift, -shift)) < 1e-10  # exact inverses
    assert float(inverse_consistency_error(shift, -shift)[0]) < 1e-6
    # a constant offset between the maps is inverse-INconsistent but has no Jacobian: GradICON ignores it
    assert float(gradicon_loss(shift, torch.zeros_like(shift))) < 1e-10
    assert float(inverse_consistency_error(shift, torch.zeros_like(shift))[0]) == pytest.approx(1.5, abs=1e-5)
    # u_ab(x) = s x_0 (the other map identity): the composition is u_ab, ‖J - I‖_F² = s²
    slope = 0.1
    linear = torch.zeros(1, ndim, *shape)
    linear[:, 0] = slope * _coords(shape)[:, 0]
    assert float(jacobian_penalty(linear)) == pytest.approx(slope**2, rel=1e-4)
    assert float(gradicon_loss(linear, torch.zeros_like(linear))) == pytest.approx(slope**2, rel=1e-4)


def _ic_error(model, pairs: PairDataset) -> float:
    errors = []
    with torch.no_grad():
        for k in range(len(pairs)):
            item = pairs[k]
            a, b = item["moving"][None], item["fixed"][None]
            errors.append(float(inverse_consistency_error(model(a, b).disp, model(b, a).disp)[0]))
    return float(np.mean(errors))


def test_gradicon_training_is_more_inverse_consistent_than_plain_training_on_the_same_budget(tmp_path):
    from morphreg.models import load_model

    images, labels = synthetic_shapes(24, (40, 40), n_labels=4, seed=5, disp_std=2.5)
    train_set = PairDataset(images[:16], labels[:16], seed=0)
    test_set = PairDataset(images[16:], labels[16:], "pairs", pairs=[(i, i + 1) for i in range(7)])
    common = dict(loss="mse", steps=120, batch_size=2, lr=3e-3, seed=0, device="cpu", val_every=120,
                  checkpoint_every=120, enc=[8, 16, 16], dec=[16, 16, 16, 8], threads=1)
    errors = {}
    for name, extra in (("plain", {}), ("gradicon", {"inverse_consistency": "gradicon", "ic_weight": 1.0})):
        train(TrainSettings(**common, **extra), train_set, None, tmp_path / name, progress=False)
        model = load_model(tmp_path / name / "last.pt").eval()
        errors[name] = _ic_error(model, test_set)
    assert errors["gradicon"] < 0.8 * errors["plain"], errors
