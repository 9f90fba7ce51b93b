"""Tests for morphreg.viz: every figure renders in 2D and 3D, known answers for the colour code,
the display orientation and the grid geometry, atomic writes and error messages."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from morphreg import spatial, viz

SHAPES = {2: (24, 28), 3: (12, 14, 16)}


def _field(shape, amplitude=1.5, seed=0):
    """A smooth random displacement (ndim, *shape) in voxels."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, len(shape), *[4] * len(shape), generator=gen)
    return spatial.resize(coarse, size=shape)[0] * amplitude


def _pair(ndim):
    shape = SHAPES[ndim]
    grid = spatial.identity_grid(shape)
    centre = torch.tensor([(s - 1) / 2 for s in shape]).view(-1, *[1] * ndim)
    radius = ((grid - centre) ** 2).sum(0).sqrt()
    moving = (radius < min(shape) / 3).float() + 0.1 * (grid[0] / shape[0])
    seg = (radius < min(shape) / 3).long() + (radius < min(shape) / 6).long()
    disp = _field(shape)
    moved = spatial.warp(moving[None, None], disp[None])[0, 0]
    moved_seg = spatial.warp(seg[None, None], disp[None], mode="nearest")[0, 0]
    fixed = moving.roll(1, 0)
    return fixed, moving, moved, disp, seg.roll(1, 0), seg, moved_seg


def _check_png(path: Path, written: Path, min_side: int = 80) -> np.ndarray:
    assert written == path
    assert path.is_file() and path.stat().st_size > 0
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert min(img.shape[:2]) >= min_side and max(img.shape[:2]) < 5000
    assert img[..., :3].std() > 0.01  # not blank
    assert not list(path.parent.glob(".*.tmp"))
    return img


# ---------------------------------------------------------------- every figure, 2D and 3D


@pytest.mark.parametrize("ndim", [2, 3])
def test_plot_registration(tmp_path, ndim):
    fixed, moving, moved, _, fseg, mseg, moved_seg = _pair(ndim)
    path = tmp_path / "reg.png"
    out = viz.plot_registration(fixed, moving, moved, path, fixed_seg=fseg, moving_seg=mseg,
                                moved_seg=moved_seg, title="pair")
    img = _check_png(path, out)
    assert img.shape[1] > img.shape[0]  # five columns: wider than tall
    if ndim == 2:  # numpy input, no segmentations
        out = viz.plot_registration(fixed.numpy(), moving.numpy(), moved.numpy(),
                                    tmp_path / "b.png")
        _check_png(tmp_path / "b.png", out)


@pytest.mark.parametrize("ndim", [2, 3])
def test_plot_grid_flow_jacobian(tmp_path, ndim):
    _, moving, _, disp, *_ = _pair(ndim)
    disp = disp.requires_grad_(True)  # tensors that need grad are fine
    _check_png(tmp_path / "g.png", viz.plot_grid(disp, tmp_path / "g.png", background=moving,
                                                 spacing=3))
    # without background: numpy in 2D, torch in 3D
    flow_input = disp.detach().numpy() if ndim == 2 else disp
    _check_png(tmp_path / "f.png", viz.plot_flow(flow_input, tmp_path / "f.png"))
    _check_png(tmp_path / "j.png", viz.plot_jacobian(disp * 4, tmp_path / "j.png"))


@pytest.mark.parametrize("ndim", [2, 3])
def test_plot_overview(tmp_path, ndim):
    fixed, moving, moved, disp, fseg, _, moved_seg = _pair(ndim)
    path = tmp_path / "sub" / "overview.png"  # missing folders are created
    out = viz.plot_overview(fixed, moving, moved, disp, path, fixed_seg=fseg,
                            moved_seg=moved_seg, spacing=4)
    img = _check_png(path, out)
    assert img.shape[1] > 3 * img.shape[0]  # a single row of panels


def test_rows_per_view(tmp_path):
    """3D figures stack one row per view: three times as tall as the 2D figure, roughly."""
    disp2 = torch.zeros(2, 16, 16)
    disp3 = torch.zeros(3, 16, 16, 16)
    h2 = mpimg.imread(viz.plot_jacobian(disp2, tmp_path / "a.png")).shape[0]
    h3 = mpimg.imread(viz.plot_jacobian(disp3, tmp_path / "b.png")).shape[0]
    assert 2.0 < h3 / h2 < 3.5


def test_training_curves_csv_and_dict(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "sim", "val_dice", "lr", "time"])
        for step in range(0, 120, 2):
            dice = f"{0.5 + step / 400:.3f}" if step % 20 == 0 else ""
            loss = 1 / (1 + step) + 0.05 * math.sin(step)
            writer.writerow([step, loss, loss * 0.9, dice, 1e-4 * 0.99**step, 0.1])
    out = viz.plot_training_curves(csv_path, tmp_path / "curves.png")
    _check_png(tmp_path / "curves.png", out)
    out = viz.plot_training_curves({"step": [0, 1, 2], "smooth": [0.3, 0.2, float("nan")]},
                                   tmp_path / "d.png")
    _check_png(tmp_path / "d.png", out)


def test_dice_boxplot(tmp_path):
    rng = np.random.default_rng(0)
    per = {
        "affine": {"WM": list(rng.uniform(0.5, 0.7, 8)), "ventricle": [0.4, 0.5, float("nan")]},
        "vxm": {"WM": rng.uniform(0.7, 0.9, 8), "ventricle": [0.7, 0.8], "hippo": [0.6]},
    }
    _check_png(tmp_path / "d.png", viz.plot_dice_boxplot(per, tmp_path / "d.png", title="t"))
    single = {"WM": [0.8, 0.9], "cortex": torch.tensor([0.7, 0.75])}
    _check_png(tmp_path / "s.png", viz.plot_dice_boxplot(single, tmp_path / "s.png"))


# ---------------------------------------------------------------- known answers


def _hsv(rgb):
    return mcolors.rgb_to_hsv(np.clip(rgb, 0, 1))


def test_flow_to_rgb_zero_is_white():
    rgb = viz.flow_to_rgb(np.zeros((2, 5, 6)))
    assert rgb.shape == (5, 6, 3)
    np.testing.assert_allclose(rgb, 1.0)


def test_flow_to_rgb_directions():
    field = np.zeros((2, 4, 1))
    field[0, :, 0] = [1.0, -1.0, 0.0, 0.0]  # +axis0, -axis0
    field[1, :, 0] = [0.0, 0.0, 1.0, -1.0]  # +axis1, -axis1
    hsv = _hsv(viz.flow_to_rgb(field, max_magnitude=1.0))[:, 0]
    np.testing.assert_allclose(hsv[:, 1:], 1.0)  # fully saturated, full value
    np.testing.assert_allclose(viz.flow_to_rgb(field, max_magnitude=1.0)[0, 0], [1, 0, 0])
    hue = hsv[:, 0]
    np.testing.assert_allclose(hue, [0.0, 0.5, 0.25, 0.75], atol=1e-6)
    assert abs(abs(hue[0] - hue[1]) - 0.5) < 1e-6  # opposite directions, opposite hues


def test_flow_to_rgb_magnitude_monotone_and_clipped():
    mags = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 2.0])
    field = np.stack([np.stack([mags * math.cos(0.7)]), np.stack([mags * math.sin(0.7)])])
    field = field.transpose(0, 2, 1)  # (2, 6, 1)
    hsv = _hsv(viz.flow_to_rgb(field, max_magnitude=1.0))[:, 0]
    saturation = hsv[:, 1]
    np.testing.assert_allclose(saturation, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(hsv[1:, 0], 0.7 / (2 * math.pi), atol=1e-6)  # same hue
    # default scale: the 99th percentile magnitude is fully saturated
    uniform = np.full((2, 8, 8), 3.0)
    np.testing.assert_allclose(_hsv(viz.flow_to_rgb(uniform))[..., 1], 1.0)
    # torch input
    assert viz.flow_to_rgb(torch.zeros(2, 3, 3)).shape == (3, 3, 3)


def _render(arr2d, pixels=40):
    fig = Figure(figsize=(1, 1), dpi=pixels)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    viz.show_slice(ax, arr2d, cmap="gray", vmin=0, vmax=1)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., 0].astype(float) / 255


@pytest.mark.parametrize("index, corner", [
    ((0, 0), "top-left"), ((0, -1), "bottom-left"), ((-1, 0), "top-right"),
    ((-1, -1), "bottom-right"),
])
def test_display_orientation(index, corner):
    """Axis 0 runs left -> right, axis 1 top -> bottom (``arr.T``, origin "upper")."""
    arr = np.zeros((4, 4))
    arr[index] = 1.0
    img = _render(arr)
    h, w = img.shape
    quadrants = {
        "top-left": img[: h // 4, : w // 4], "top-right": img[: h // 4, -w // 4:],
        "bottom-left": img[-h // 4:, : w // 4], "bottom-right": img[-h // 4:, -w // 4:],
    }
    for name, quad in quadrants.items():
        assert (quad.mean() > 0.9) == (name == corner), name


def test_display_array_rgb():
    rgb = np.zeros((3, 5, 3))
    assert viz.display_array(rgb).shape == (5, 3, 3)


def test_slice_views():
    (view2,) = viz.slice_views((6, 7))
    assert view2.axes == (0, 1) and view2.name == ""
    arr = np.arange(6 * 7).reshape(6, 7)
    np.testing.assert_array_equal(view2.image(arr), arr)

    views = viz.slice_views((4, 6, 8))
    assert [v.axes for v in views] == [(1, 2), (0, 2), (0, 1)]
    assert [v.name for v in views] == ["axis 0 = 2", "axis 1 = 3", "axis 2 = 4"]
    vol = np.random.default_rng(0).random((4, 6, 8))
    disp = np.random.default_rng(1).random((3, 4, 6, 8))
    np.testing.assert_array_equal(views[0].image(vol), vol[2])
    np.testing.assert_array_equal(views[1].image(vol), vol[:, 3])
    np.testing.assert_array_equal(views[1].field(disp), disp[[0, 2]][:, :, 3])
    np.testing.assert_array_equal(views[2].field(disp), disp[:2, :, :, 4])


def test_grid_lines_are_transformed_coordinates():
    """Lines are drawn at x + u(x): a constant shift moves every line by the shift."""
    fig = Figure()
    ax = fig.subplots()
    shift = np.zeros((2, 7, 9))
    shift[0] += 2.0
    shift[1] -= 1.0
    viz.draw.draw_grid(ax, shift, spacing=3, background=None)
    segments = ax.collections[0].get_segments()
    # 9 - 1 = 8 -> offset 1: lines along axis 0 at j = 1, 4, 7; along axis 1 at i = 0, 3, 6
    assert len(segments) == 6
    np.testing.assert_allclose(segments[0], np.column_stack([np.arange(7) + 2.0, [0.0] * 7]))
    np.testing.assert_allclose(segments[3], np.column_stack([[2.0] * 9, np.arange(9) - 1.0]))


def test_jacobian_uses_spatial():
    """A linear field u = A x has det J = det(I + A) everywhere."""
    a = np.array([[0.5, 0.2], [0.0, -0.25]])
    grid = spatial.identity_grid((6, 5), dtype=torch.float64).numpy()
    disp = np.einsum("ij,j...->i...", a, grid)
    det = viz.draw.jacobian_map(disp)
    np.testing.assert_allclose(det, np.linalg.det(np.eye(2) + a), rtol=1e-6)
    assert viz.draw.fold_text(np.array([1.0, -1.0, 0.5, 2.0])) == "25% folding (1 voxels)"


# ---------------------------------------------------------------- atomic writes


def test_atomic_overwrite_and_failure(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = plt.get_fignums()
    path = tmp_path / "g.png"
    viz.plot_grid(torch.zeros(2, 8, 8), path, background=torch.rand(8, 8))
    first = path.read_bytes()
    viz.plot_grid(torch.ones(2, 8, 8), path, spacing=2)
    assert path.read_bytes() != first
    assert plt.get_fignums() == figures  # no pyplot state left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]

    def broken(self, fname, **kwargs):
        Path(fname).write_bytes(b"partial")
        raise RuntimeError("disk full")

    before = path.read_bytes()
    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        viz.plot_grid(torch.zeros(2, 8, 8), path)
    assert path.read_bytes() == before  # the old figure survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="format 'xyz'"):
        viz.plot_grid(torch.zeros(2, 8, 8), tmp_path / "g.xyz")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- error paths


def test_errors_images(tmp_path):
    img = torch.rand(10, 12)
    p = tmp_path / "x.png"
    with pytest.raises(ValueError, match=r"plot_registration: argument 'moving' .* \(10, 12\)"):
        viz.plot_registration(img, torch.rand(10, 11), img, p)
    with pytest.raises(ValueError, match=r"plot_registration: argument 'fixed' .*batch"):
        viz.plot_registration(img[None, None], img[None, None], img[None, None], p)
    with pytest.raises(ValueError, match="plot_registration: argument 'moved_seg'"):
        viz.plot_registration(img, img, img, p, moved_seg=torch.zeros(10, 13, dtype=torch.long))
    with pytest.raises(TypeError, match="plot_registration: argument 'fixed_seg'.*integer"):
        viz.plot_registration(img, img, img, p, fixed_seg=torch.rand(10, 12))
    with pytest.raises(TypeError, match="plot_registration: argument 'fixed'"):
        viz.plot_registration("image", img, img, p)
    assert not p.exists()


def test_errors_fields(tmp_path):
    p = tmp_path / "x.png"
    with pytest.raises(ValueError, match=r"plot_grid: argument 'disp' .*\(3, 8, 8\)"):
        viz.plot_grid(torch.zeros(3, 8, 8), p)
    with pytest.raises(ValueError, match="plot_grid: argument 'disp' .*batch"):
        viz.plot_grid(torch.zeros(1, 2, 8, 8), p)
    with pytest.raises(ValueError, match="plot_grid: argument 'background'"):
        viz.plot_grid(torch.zeros(2, 8, 8), p, background=torch.zeros(8, 9))
    with pytest.raises(ValueError, match="plot_grid: argument 'spacing'"):
        viz.plot_grid(torch.zeros(2, 8, 8), p, spacing=0)
    with pytest.raises(ValueError, match="plot_flow: argument 'disp'"):
        viz.plot_flow(torch.zeros(2, 8), p)
    with pytest.raises(ValueError, match="plot_jacobian: argument 'disp'"):
        viz.plot_jacobian(torch.zeros(3, 8, 8, 1), p)
    with pytest.raises(ValueError, match=r"plot_overview: argument 'disp' must have shape \(2, 8, 8\)"):
        img = torch.zeros(8, 8)
        viz.plot_overview(img, img, img, torch.zeros(2, 8, 9), p)
    with pytest.raises(ValueError, match=r"flow_to_rgb: argument 'disp2d' .*\(2, H, W\)"):
        viz.flow_to_rgb(np.zeros((3, 4, 4, 4)))
    with pytest.raises(ValueError, match="flow_to_rgb: argument 'max_magnitude'"):
        viz.flow_to_rgb(np.zeros((2, 4, 4)), max_magnitude=0.0)
    assert not p.exists()


def test_errors_tables(tmp_path):
    p = tmp_path / "x.png"
    with pytest.raises(ValueError, match="plot_training_curves: .*'step' column"):
        viz.plot_training_curves({"loss": [1, 2]}, p)
    with pytest.raises(ValueError, match="plot_training_curves: .*none of the columns"):
        viz.plot_training_curves({"step": [1, 2], "epoch": [0, 0]}, p)
    with pytest.raises(ValueError, match="plot_training_curves: cannot read"):
        viz.plot_training_curves(tmp_path / "missing.csv", p)
    with pytest.raises(ValueError, match="plot_dice_boxplot: argument 'per_structure'"):
        viz.plot_dice_boxplot({}, p)
    with pytest.raises(ValueError, match="plot_dice_boxplot: .*no finite values"):
        viz.plot_dice_boxplot({"m": {"WM": [float("nan")]}}, p)
    assert not p.exists()
