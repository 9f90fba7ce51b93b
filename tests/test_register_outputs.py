"""`register --jacobian` and `--inverse-warp`."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from morphreg import io, spatial
from morphreg.cli import main


def _pair(tmp_path, shape=(32, 28)):
    rng = np.random.default_rng(0)
    fixed = ndimage.gaussian_filter(rng.random(shape), 2).astype(np.float32)
    moving = ndimage.shift(fixed, (1.2, -0.8), order=3, mode="nearest")
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    io.save_volume(io.Volume(moving, affine), tmp_path / "m.nii.gz")
    io.save_volume(io.Volume(fixed, affine), tmp_path / "f.nii.gz")
    return affine


def test_jacobian_and_fixed_point_inverse(tmp_path, capsys):
    affine = _pair(tmp_path)
    argv = ["register", "--method", "ffd", "--moving", str(tmp_path / "m.nii.gz"), "--fixed", str(tmp_path / "f.nii.gz"),
            "--moved", str(tmp_path / "moved.nii.gz"), "--warp", str(tmp_path / "w.nii.gz"),
            "--jacobian", str(tmp_path / "j.nii.gz"), "--inverse-warp", str(tmp_path / "inv.nii.gz")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "fixed-point inverse" in err and "residual" in err
    disp = torch.from_numpy(io.load_warp(tmp_path / "w.nii.gz").disp)[None]
    jac = io.load_volume(tmp_path / "j.nii.gz")
    np.testing.assert_allclose(jac.affine, affine, atol=1e-6)
    np.testing.assert_allclose(jac.data, spatial.jacobian_det(disp.double())[0].numpy(), atol=1e-5)
    assert abs(float(disp.abs().max())) > 0.3  # a real deformation, so the checks below can fail
    inverse = torch.from_numpy(io.load_warp(tmp_path / "inv.nii.gz").disp)[None]
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert spatial.compose(disp, inverse)[inner].abs().max() < 0.02
    assert spatial.compose(disp, torch.zeros_like(disp))[inner].abs().max() > 0.3


def test_diffeomorphic_network_inverse_is_the_models_own(tmp_path, capsys):
    """A velocity network gives its exact inverse exp(-v): written as is, with no fixed-point note."""
    from morphreg.models import VxmDense

    _pair(tmp_path)
    torch.manual_seed(0)
    model = VxmDense(2, enc=(4, 4), dec=(4, 4, 4), int_steps=5)
    with torch.no_grad():
        model.flow.weight.normal_(0, 0.05)
        model.flow.bias.copy_(torch.tensor([1.0, -0.5]))
    model.save(tmp_path / "model.pt", metadata={"normalise": "minmax"})
    argv = ["register", "--model", str(tmp_path / "model.pt"), "--moving", str(tmp_path / "m.nii.gz"),
            "--fixed", str(tmp_path / "f.nii.gz"), "--moved", str(tmp_path / "moved.nii.gz"),
            "--warp", str(tmp_path / "w.nii.gz"), "--inverse-warp", str(tmp_path / "inv.nii.gz")]
    assert main(argv) == 0
    assert "fixed-point" not in capsys.readouterr().err
    disp = torch.from_numpy(io.load_warp(tmp_path / "w.nii.gz").disp)[None]
    inverse = torch.from_numpy(io.load_warp(tmp_path / "inv.nii.gz").disp)[None]
    assert disp.abs().max() > 0.5
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    assert spatial.compose(disp, inverse)[inner].abs().max() < 0.1
    assert not torch.allclose(inverse, -disp, atol=1e-3)  # the model's own inverse, not a negation
