"""`register --method dense|ffd --affine`: affine alignment, then the deformable method, one composed
warp (and the matrix with --matrix); the default for 3D pairs on different grids; the API agrees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

import morphreg
from morphreg import io, spatial
from morphreg.cli import main
from morphreg.workflows.pipeline import affine_by_default

SHAPE = (28, 26, 24)


def _brain(shape=SHAPE) -> np.ndarray:
    """An asymmetric blob with inner structure (a crude 3D 'brain')."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt(((grid / np.array([0.7, 0.6, 0.5]).reshape(3, 1, 1, 1)) ** 2).sum(0))
    inner = np.exp(-(((grid[0] - 0.25) ** 2 + (grid[1] + 0.2) ** 2 + grid[2] ** 2) / 0.05))
    return ((r < 1) * 60 + inner * 80 + (grid[1] > 0.15) * (r < 1) * 30).astype(np.float32)


def _labels(image: np.ndarray) -> np.ndarray:
    return np.digitize(image, [30, 75, 110]).astype(np.uint8)


def _moved_by(matrix: np.ndarray, image: np.ndarray, order: int) -> np.ndarray:
    """``image`` pulled back by the voxel matrix (fixed voxel -> moving voxel)."""
    return ndimage.affine_transform(image, matrix[:3, :3], matrix[:3, 3], order=order, mode="constant")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """moving = fixed under a 10 degree rotation, 8 % scaling and a 2-voxel shift (one grid)."""
    root = tmp_path_factory.mktemp("affine_first")
    fixed = _brain()
    theta = np.deg2rad(10)
    lin = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]) * 1.08
    centre = (np.array(SHAPE) - 1) / 2
    matrix = np.eye(4)
    matrix[:3, :3] = lin
    matrix[:3, 3] = centre - lin @ centre + [2.0, -1.5, 1.0]
    # moving(M x) = fixed(x) => moving = fixed pulled back by inv(M)
    inverse = np.linalg.inv(matrix)
    moving = _moved_by(inverse, fixed, 1)
    affine = np.diag([1.0, 1.1, 1.2, 1.0])
    for name, data in (("fixed", fixed), ("moving", moving), ("fixed_seg", _labels(fixed)),
                       ("moving_seg", _moved_by(inverse, _labels(fixed), 0))):
        io.save_volume(io.Volume(data, affine), root / f"{name}.nii.gz")
    return root


def _args(root, out, *extra):
    return ["register", "--moving", str(root / "moving.nii.gz"), "--fixed", str(root / "fixed.nii.gz"),
            "--moving-seg", str(root / "moving_seg.nii.gz"), "--fixed-seg", str(root / "fixed_seg.nii.gz"),
            "--moved", str(out / "moved.nii.gz"), "--warp", str(out / "warp.nii.gz"),
            "--moved-seg", str(out / "moved_seg.nii.gz"), "--quiet", *extra]


def _dice(text: str) -> float:
    import re

    return float(re.search(r"Dice .*: ([0-9.]+) \(before", text).group(1))


@pytest.mark.parametrize("method", ["dense", "ffd"])
def test_affine_then_deformable_writes_one_composed_warp(pair, tmp_path, capsys, method):
    schedule = ["--iterations", "20", "10"] if method == "dense" else []
    (tmp_path / "plain").mkdir()
    assert main(_args(pair, tmp_path / "plain", "--method", method, *schedule)) == 0
    plain = _dice(capsys.readouterr().out)
    (tmp_path / "aff").mkdir()
    assert main(_args(pair, tmp_path / "aff", "--method", method, *schedule, "--affine",
                      "--matrix", str(tmp_path / "aff" / "m.txt"))) == 0
    with_affine = _dice(capsys.readouterr().out)
    assert with_affine > plain + 0.02, (plain, with_affine)
    matrix = np.loadtxt(tmp_path / "aff" / "m.txt")
    assert matrix.shape == (4, 4) and abs(np.linalg.det(matrix[:3, :3]) - 1.08**3) < 0.05
    # the warp is the whole transform: `morphreg warp` reproduces the moved image from it alone
    assert main(["warp", "--moving", str(pair / "moving.nii.gz"), "--warp", str(tmp_path / "aff" / "warp.nii.gz"),
                 "--moved", str(tmp_path / "again.nii.gz")]) == 0
    np.testing.assert_allclose(io.load_volume(tmp_path / "again.nii.gz").data,
                               io.load_volume(tmp_path / "aff" / "moved.nii.gz").data, atol=1e-4)


def test_api_matches_the_command_line(pair, tmp_path):
    assert main(_args(pair, tmp_path, "--method", "dense", "--iterations", "20", "10", "--affine")) == 0
    result = morphreg.register(str(pair / "moving.nii.gz"), str(pair / "fixed.nii.gz"), method="dense",
                               iterations=(20, 10), affine=True)
    np.testing.assert_allclose(result.disp, io.load_warp(tmp_path / "warp.nii.gz").disp, atol=1e-4)
    with pytest.raises(ValueError, match="linear already"):
        morphreg.register(str(pair / "moving.nii.gz"), str(pair / "fixed.nii.gz"), method="affine", affine=True)


def test_default_is_affine_for_3d_grids_that_differ(pair, tmp_path, capsys):
    # the fixed image on another grid (a 2-voxel shift of its origin and another shape): grids differ
    fixed = io.load_volume(pair / "fixed.nii.gz")
    shifted = fixed.affine.copy()
    shifted[:3, 3] += [2.0, 0.0, -1.2]
    io.save_volume(io.Volume(fixed.data[:, :, 1:], shifted), tmp_path / "fixed2.nii.gz")
    base = ["register", "--method", "dense", "--iterations", "20", "10", "--moving", str(pair / "moving.nii.gz"),
            "--fixed", str(tmp_path / "fixed2.nii.gz"), "--quiet"]
    assert main([*base, "--moved", str(tmp_path / "a.nii.gz")]) == 0
    assert "aligning affinely before --method dense (--no-affine to skip)" in capsys.readouterr().err
    assert main([*base, "--moved", str(tmp_path / "b.nii.gz"), "--no-affine"]) == 0
    assert "aligning affinely" not in capsys.readouterr().err
    assert not np.allclose(io.load_volume(tmp_path / "a.nii.gz").data, io.load_volume(tmp_path / "b.nii.gz").data)
    # one grid: no affine stage unless asked
    assert main(_args(pair, tmp_path, "--method", "dense", "--iterations", "20", "10")) == 0
    assert "aligning affinely" not in capsys.readouterr().err


@pytest.mark.parametrize(("method", "ndim", "differ", "initial", "expected"), [
    ("dense", 3, True, False, True), ("ffd", 3, True, False, True), ("dense", 3, False, False, False),
    ("dense", 2, True, False, False), ("dense", 3, True, True, False), ("network", 3, True, False, False),
    ("affine", 3, True, False, False),
])
def test_affine_by_default_table(method, ndim, differ, initial, expected):
    assert affine_by_default(method, ndim, differ, initial=initial) is expected


@pytest.mark.parametrize(("extra", "message"), [
    (["--method", "affine", "--affine"], "--method affine is linear already"),
    (["--method", "dense", "--affine-model", "x.pt"], "--affine-model prepends a learned alignment"),
])
def test_bad_combinations_are_refused(pair, tmp_path, capsys, extra, message):
    assert main(_args(pair, tmp_path, *extra)) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "moved.nii.gz").exists()


def test_affine_then_keeps_the_composition_order():
    """AffineThen's field = compose(affine, deformable): warping once equals warping twice."""
    from morphreg.workflows.pipeline import AffineThen, as_output

    gen = torch.Generator().manual_seed(0)
    affine_disp = torch.randn(1, 3, 10, 9, 8, generator=gen) * 0.3
    deform = torch.randn(1, 3, 10, 9, 8, generator=gen) * 0.3
    out = AffineThen(lambda m, f: as_output(affine_disp), lambda m, f: as_output(deform))(
        torch.zeros(1, 1, 10, 9, 8), torch.zeros(1, 1, 10, 9, 8))
    np.testing.assert_allclose(out.disp, spatial.compose(affine_disp, deform), atol=1e-6)
