"""ProbVxmDense (VoxelMorph-diff): the KL's known answers, sampling in training / the mean at test time,
and the property that the learned uncertainty is higher where the images disagree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from morphreg.data import PairDataset
from morphreg.models import ProbVxmDense, load_model
from morphreg.models.probabilistic import grid_degree, kl_loss
from morphreg.workflows.train import TrainSettings, train


@pytest.mark.parametrize("shape", [(9, 11), (5, 6, 7)])
def test_kl_variance_optimum_is_the_prior_one_over_lambda_degree(shape):
    ndim, lam = len(shape), 10.0
    degree = grid_degree(shape, torch.zeros(()))
    assert float(degree.max()) == 2 * ndim and float(degree.min()) == ndim  # inside / corners
    mean = torch.zeros(1, ndim, *shape)
    log_var = (-torch.log(lam * degree)).expand(1, ndim, *shape).clone().requires_grad_(True)
    kl_loss(mean, log_var, lam).backward()
    assert float(log_var.grad.abs().max()) < 1e-7  # d/dlogσ² (λ D σ² - log σ²) = 0 at σ² = 1/(λ D)
    base = float(kl_loss(mean, log_var.detach(), lam))
    assert float(kl_loss(mean, log_var.detach() + 0.3, lam)) > base < float(kl_loss(mean, log_var.detach() - 0.3, lam))
    # the prior's precision smooths the mean: a ramp of slope s along one axis, in one component
    ramp = torch.zeros(1, ndim, *shape)
    ramp[:, 0] = 0.2 * torch.arange(shape[0], dtype=torch.float32).view(-1, *[1] * (ndim - 1))
    extra = float(kl_loss(ramp, log_var.detach(), lam)) - base
    assert extra == pytest.approx(0.5 * lam * 0.2**2, rel=1e-4)  # ½ λ Σ_edges (μ_i - μ_j)² per voxel


def test_training_samples_the_velocity_inference_uses_the_mean():
    torch.manual_seed(0)
    model = ProbVxmDense(2, enc=(8, 8), dec=(8, 8, 8), int_steps=5)
    with torch.no_grad():
        model.log_var.bias.fill_(0.0)  # σ = 1 voxel: samples visibly differ
    moving, fixed = torch.rand(2, 1, 16, 20), torch.rand(2, 1, 16, 20)
    model.train()
    a, b = model(moving, fixed), model(moving, fixed)
    assert not torch.allclose(a.disp, b.disp)
    model.eval()
    c, d = model(moving, fixed), model(moving, fixed)
    torch.testing.assert_close(c.disp, d.disp)
    mean, log_var = c.velocity_stats
    assert mean.shape == log_var.shape == (2, 2, 16, 20)
    torch.testing.assert_close(ProbVxmDense.uncertainty(c), torch.ones(2, 1, 16, 20), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="int_steps"):
        ProbVxmDense(2, int_steps=0)


def _pair(n: int = 40):
    """Identical texture on the left in both images; a disc only the moving image has, on the right."""
    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    rng = np.random.default_rng(0)
    texture = np.zeros((n, n))
    for _ in range(12):
        cy, cx = rng.uniform(4, n - 4), rng.uniform(3, n / 2 - 3)
        texture += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
    texture = np.clip(texture, 0, 1)
    disc = (yy - n / 2) ** 2 + (xx - 0.75 * n) ** 2 < 6**2
    agree = (texture > 0.2) & (xx < n / 2)
    return np.clip(texture + disc, 0, 1), texture, disc, agree


def test_uncertainty_is_higher_where_the_images_disagree(tmp_path):
    moving, fixed, disc, agree = _pair()
    data = PairDataset(np.stack([moving, fixed]).astype(np.float32), None, "pairs", pairs=[(0, 1)], normalise=None)
    settings = TrainSettings(model="probabilistic", loss="mse", weight=10.0, image_sigma=0.01, int_steps=5, steps=300,
                             lr=3e-3, seed=0, device="cpu", val_every=300, checkpoint_every=300, enc=[8, 16, 16],
                             dec=[16, 16, 16, 8], normalise=None, threads=1)
    train(settings, data, None, tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run" / "last.pt").eval()
    with torch.no_grad():
        out = model(torch.from_numpy(moving[None, None]).float(), torch.from_numpy(fixed[None, None]).float())
    std = ProbVxmDense.uncertainty(out)[0, 0].numpy()
    # measured: 0.25 voxels in the disc, 0.008 on the shared texture (prior: 1/sqrt(λ D) = 0.16)
    assert std[disc].mean() > 5 * std[agree].mean(), (std[disc].mean(), std[agree].mean())
