"""Greedy diffeomorphic registration (optimize.greedy) and `register --method dense` flags."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from morphreg import metrics, spatial
from morphreg.cli import main
from morphreg.optimize import invert_disp, register_greedy
from morphreg.optimize.greedy import box_sum, invert_disp_pyramid


def _phantom(ndim: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image of nested blobs and its label map, ``(1, 1, *[size] * ndim)``."""
    axes = torch.meshgrid(*[torch.linspace(-1, 1, size)] * ndim, indexing="ij")
    radius = torch.sqrt(sum((a * (1.0 + 0.3 * k)) ** 2 for k, a in enumerate(axes)))
    labels = (radius < 0.8).long() + (radius < 0.5).long() + ((radius < 0.5) & (axes[0] > 0)).long()
    image = labels.float() / 3.0 + 0.05 * torch.cos(3 * axes[-1])
    return image[None, None], labels[None, None]


def _smooth_disp(ndim: int, size: int, amplitude: float) -> torch.Tensor:
    axes = torch.meshgrid(*[torch.linspace(0, math.pi, size)] * ndim, indexing="ij")
    comps = [amplitude * torch.sin(axes[(k + 1) % ndim]) * torch.sin(axes[k]) for k in range(ndim)]
    return torch.stack(comps)[None]


@pytest.mark.parametrize("ndim, size", [(2, 64), (3, 32)])
def test_greedy_improves_dice_without_folding_and_inverts(ndim, size):
    fixed, fixed_seg = _phantom(ndim, size)
    truth = _smooth_disp(ndim, size, amplitude=size / 10)
    moving = spatial.warp(fixed, invert_disp(truth, 30))
    moving_seg = spatial.warp(fixed_seg, invert_disp(truth, 30), mode="nearest")
    before = float(metrics.dice(moving_seg, fixed_seg).mean)
    result = register_greedy(moving, fixed, levels=2, iterations=(40, 20))
    after = float(metrics.dice(spatial.warp(moving_seg, result.disp, mode="nearest"), fixed_seg).mean)
    assert after > before + 0.05, (before, after)
    assert float(metrics.folding_fraction(result.disp)) == 0.0
    assert torch.allclose(result.moved, spatial.warp(moving, result.disp))
    assert result.loss_history[-1] < result.loss_history[0]
    # inverse consistency: disp then inverse is the identity, inside the image
    roundtrip = spatial.compose(result.disp, result.inverse_disp)
    inner = roundtrip[(slice(None), slice(None), *[slice(4, -4)] * ndim)]
    assert float(inner.abs().max()) < 0.1
    assert register_greedy(moving, fixed, levels=1, iterations=2, inverse=False).inverse_disp is None
    output = result.to_output()
    assert output.disp is result.disp and output.inverse_disp is result.inverse_disp and output.velocity is None


def test_pyramid_inverse_is_close_to_full_resolution_inverse():
    fixed, _ = _phantom(3, 64)
    moving = spatial.warp(fixed, invert_disp(_smooth_disp(3, 64, 6.4), 30))
    disp = register_greedy(moving, fixed, levels=3, iterations=(40, 20, 10), inverse=False).disp
    error = spatial.compose(disp, invert_disp_pyramid(disp))[..., 4:-4, 4:-4, 4:-4].abs()
    assert float(error.max()) < 0.05 and float(error.mean()) < 1e-3


def test_box_sum_matches_brute_force():
    image = torch.rand(1, 2, 7, 6, 5, dtype=torch.float64)
    padded = torch.nn.functional.pad(image, [1] * 6)
    expected = sum(padded[:, :, i:i + 7, j:j + 6, k:k + 5] for i in range(3) for j in range(3) for k in range(3))
    assert torch.allclose(box_sum(image, 1), expected)


def test_greedy_rejects_bad_settings():
    image = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"register_greedy: argument 'step' must be a positive finite number"):
        register_greedy(image, image, step=0.0)
    with pytest.raises(ValueError, match=r"argument 'iterations'"):
        register_greedy(image, image, levels=2, iterations=(1, 2, 3))


def test_cli_dense_iterations_inverse_and_progress(tmp_path, capsys):
    fixed, fixed_seg = _phantom(3, 32)
    truth = _smooth_disp(3, 32, amplitude=2.0)
    moving, moving_seg = spatial.warp(fixed, truth), spatial.warp(fixed_seg, truth, mode="nearest")
    paths = {}
    for name, data in (("m", moving), ("f", fixed), ("ms", moving_seg), ("fs", fixed_seg)):
        array = data[0, 0].numpy().astype(np.float32 if data.is_floating_point() else np.int16)
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, np.eye(4)), paths[name])
    argv = ["register", "--method", "dense", "--moving", str(paths["m"]), "--fixed", str(paths["f"]),
            "--moving-seg", str(paths["ms"]), "--fixed-seg", str(paths["fs"]), "--moved", str(tmp_path / "o.nii.gz"),
            "--warp", str(tmp_path / "w.nii.gz"), "--inverse-warp", str(tmp_path / "inv.nii.gz"),
            "--iterations", "30", "15"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "level 2/2" in captured.err and "loss=" in captured.err
    assert "fixed-point" not in captured.err  # the greedy method's own inverse, not the generic fallback
    after, before = (float(x) for x in __import__("re").search(r": ([0-9.]+) \(before: ([0-9.]+)\)", captured.out).groups())
    assert after > before
    forward = torch.from_numpy(np.asarray(nib.load(tmp_path / "w.nii.gz").dataobj)).float().squeeze()
    inverse = torch.from_numpy(np.asarray(nib.load(tmp_path / "inv.nii.gz").dataobj)).float().squeeze()
    assert inverse.shape == forward.shape
    roundtrip = spatial.compose(torch.movedim(forward, -1, 0)[None], torch.movedim(inverse, -1, 0)[None])
    assert float(roundtrip[..., 4:-4, 4:-4].abs().max()) < 0.1  # inner region: the inverse undoes the warp
    assert main([*argv[:-5], "--preset", "fast", "--quiet", "--levels", "1"]) == 0
    assert "level" not in capsys.readouterr().err
    assert main([*argv[:-5], "--lambda", "1", "--iterations", "3"]) == 1
    assert "--preset/--levels/--iterations set the greedy dense method" in capsys.readouterr().err


def test_greedy_registration_computes_the_inverse_only_when_asked():
    from morphreg.workflows import pipeline

    fixed, _ = _phantom(2, 32)
    moving = spatial.warp(fixed, _smooth_disp(2, 32, 2.0))
    schedule = pipeline.GreedySchedule(levels=1, iterations=(3,))
    assert pipeline.classical_registration("dense", schedule=schedule)(moving, fixed).inverse_disp is None
    both = pipeline.classical_registration("dense", schedule=schedule, inverse=True)(moving, fixed)
    assert both.inverse_disp is not None and both.inverse_disp.shape == both.disp.shape


def test_python_api_registers_with_the_greedy_method():
    import morphreg

    fixed, fixed_seg = _phantom(3, 32)
    truth = _smooth_disp(3, 32, amplitude=2.0)
    moving, moving_seg = spatial.warp(fixed, truth), spatial.warp(fixed_seg, truth, mode="nearest")
    arrays = [t[0, 0].numpy() for t in (moving, fixed, moving_seg, fixed_seg)]
    result = morphreg.register(arrays[0], arrays[1], method="dense", iterations=(20, 10),
                               moving_seg=arrays[2], fixed_seg=arrays[3])
    assert result.disp.shape == (3, 32, 32, 32) and result.moved.shape == (32, 32, 32)
    assert result.metrics["dice"] > result.metrics["dice_before"] + 0.02
    assert result.metrics["folding_pct"] == 0.0
    with pytest.raises(ValueError, match="either 'model'"):
        morphreg.register(arrays[0], arrays[1], "brain2d", method="dense")
    with pytest.raises(ValueError, match="'preset' and 'iterations' set the greedy dense method"):
        morphreg.register(arrays[0], arrays[1], method="dense", preset="fast", weight=1.0)


# ---- the local NCC of the greedy method: border windows, the reported loss, the force, the pyramid


def _brute_force_cc_map(moved: torch.Tensor, fixed: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-voxel squared NCC of ``(H, W)`` images over the window voxels inside the image, by loops."""
    height, width = fixed.shape
    rows = []
    for i in range(height):
        row = []
        for j in range(width):
            a = moved[max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1]
            b = fixed[max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1]
            a, b = a - a.mean(), b - b.mean()
            row.append((a * b).sum() ** 2 / ((a * a).sum() * (b * b).sum()))
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("ndim", [2, 3])
def test_local_ncc_counts_only_the_voxels_inside_the_image(ndim):
    """Independent images score near 0 even where every window crosses the border (zero padding
    with a fixed count gave ~0.9 there), and the reported cc is ``-ncc_loss``."""
    from morphreg import losses
    from morphreg.optimize.greedy import LocalNCC

    generator = torch.Generator().manual_seed(0)
    small = [torch.rand(1, 1, *[9] * ndim, generator=generator) for _ in range(2)]  # all windows but one cross the border
    _, cc = LocalNCC(small[1], 4).force(small[0])
    assert cc < 0.1, cc
    assert cc == pytest.approx(-float(losses.ncc_loss(small[0], small[1], window=9)), rel=1e-4)
    fixed, _ = _phantom(ndim, 24)
    moved = spatial.warp(fixed, _smooth_disp(ndim, 24, 2.0))
    _, cc = LocalNCC(fixed, 3).force(moved)
    assert cc == pytest.approx(-float(losses.ncc_loss(moved, fixed, window=7)), rel=1e-4)
    result = register_greedy(moved, fixed, levels=1, iterations=3, radius=3, inverse=False)
    first = spatial.warp(moved, torch.zeros_like(result.disp))
    assert result.loss_history[0] == pytest.approx(float(losses.ncc_loss(first, fixed, window=7)), rel=1e-4)


def test_local_ncc_force_is_the_derivative_of_each_window_cc_at_its_centre():
    """The bracket ``2A/(BC) [(J-J̄) - A/B (I-Ī)]`` is d cc(y) / d I(y) (autograd of a brute-force
    cc map, border windows included); the force is that times the image gradient."""
    from morphreg.optimize.greedy import LocalNCC

    generator = torch.Generator().manual_seed(1)
    fixed = torch.rand(7, 6, generator=generator, dtype=torch.float64)
    moved = (0.5 * fixed + torch.rand(7, 6, generator=generator, dtype=torch.float64)).requires_grad_(True)
    jacobian = torch.autograd.functional.jacobian(lambda m: _brute_force_cc_map(m, fixed, 2), moved)
    diagonal = torch.einsum("ijij->ij", jacobian)
    force, cc = LocalNCC(fixed[None, None], 2, eps=0.0).force(moved.detach()[None, None])
    expected = torch.stack([diagonal * g for g in torch.gradient(moved.detach())])[None]
    assert torch.allclose(force, expected, rtol=1e-9, atol=1e-12)
    assert cc == pytest.approx(float(_brute_force_cc_map(moved.detach(), fixed, 2).mean()), rel=1e-12)


def test_greedy_rescales_the_displacement_between_pyramid_levels():
    """A translation found at the coarse level only (no full-resolution iteration) arrives at full
    resolution in full-resolution voxels: about 3-4 of the true 4, not half of it, and equal to
    the coarse level's own result resized with its vectors rescaled."""
    from morphreg.optimize._common import downsample

    fixed, _ = _phantom(2, 64)
    shift = torch.zeros(1, 2, 64, 64)
    shift[:, 0] = -4.0
    moving = spatial.warp(fixed, shift)  # moving(x) = fixed(x - 4 e_0), so the answer is disp = +4 e_0
    result = register_greedy(moving, fixed, levels=2, iterations=(80, 0), inverse=False)
    inside = fixed[0, 0] > 0.2
    assert 2.7 < float(result.disp[0, 0][inside].median()) < 4.5
    coarse = register_greedy(downsample(moving, [32, 32]), downsample(fixed, [32, 32]), levels=1, iterations=80,
                             inverse=False)
    assert torch.allclose(result.disp, spatial.resize(coarse.disp, size=[64, 64]), atol=0.05)
