"""ITK/ANTs/FSL/LTA exports applied by SimpleITK (and ANTs where installed) reproduce morphreg's output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from morphreg import io, spatial
from morphreg.io import load_itk_warp, load_matrix, save_itk_warp, save_matrix
from morphreg.spatial import affine_to_disp

sitk = pytest.importorskip("SimpleITK")


def _oblique_affine(ndim: int) -> np.ndarray:
    """A flipped, anisotropic, rotated voxel-to-RAS matrix (in-plane rotation only in 2D)."""
    a = np.eye(4)
    theta = 0.3
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    if ndim == 3:
        phi = 0.2
        rot = rot @ np.array([[1, 0, 0], [0, np.cos(phi), -np.sin(phi)], [0, np.sin(phi), np.cos(phi)]])
    a[:3, :3] = rot @ np.diag([-1.2, 0.9, 1.5])  # x flipped (LAS-like), anisotropic
    a[:3, 3] = [30.0, -12.0, 7.0]
    return a


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    return ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32) * 10


def _smooth_disp(shape: tuple[int, ...], amplitude: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(1)
    from scipy import ndimage

    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 3) for _ in shape])
    return (field / np.abs(field).max() * amplitude).astype(np.float32)


def _write(volume: io.Volume, path) -> None:
    io.save_volume(volume, path)


def _sitk_resample(moving_path, fixed_path, transform) -> np.ndarray:
    moving, fixed = (_read_2d(p, sitk.sitkFloat64) for p in (moving_path, fixed_path))
    if transform.GetDimension() == 3 and moving.GetDimension() == 2:
        moving, fixed = (sitk.ReadImage(str(p), sitk.sitkFloat64) for p in (moving_path, fixed_path))
    out = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    return np.transpose(sitk.GetArrayFromImage(out))  # ITK arrays are (z, y, x)


def _read_2d(path, pixel):
    """A morphreg 2D NIfTI (X x Y x 1) as the 2D image ANTs/ITK see (the z = 0 slice)."""
    image = sitk.ReadImage(str(path), pixel)
    return image[:, :, 0] if image.GetDimension() == 3 else image


def _interior(ndim: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(3, s - 3) for s in shape)


SHAPES = {2: (24, 20), 3: (18, 16, 14)}


@pytest.mark.parametrize("ndim", [2, 3])
def test_itk_warp_reproduces_moved_in_simpleitk(tmp_path, ndim):
    shape = SHAPES[ndim]
    affine = _oblique_affine(ndim)
    moving = io.Volume(_image(shape), affine)
    disp = _smooth_disp(shape)
    moved = spatial.warp(io.to_tensor(moving), torch.from_numpy(disp)[None])[0, 0].numpy()
    _write(moving, tmp_path / "moving.nii.gz")
    _write(io.Volume(np.zeros(shape, np.float32), affine), tmp_path / "fixed.nii.gz")
    save_itk_warp(disp, tmp_path / "warp.nii.gz", affine)
    field = sitk.ReadImage(str(tmp_path / "warp.nii.gz"), sitk.sitkVectorFloat64)
    assert field.GetDimension() == ndim and field.GetNumberOfComponentsPerPixel() == ndim
    transform = sitk.DisplacementFieldTransform(field)
    theirs = _sitk_resample(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz", transform)
    if ndim == 2:
        theirs = theirs.reshape(shape)
    inner = _interior(ndim, shape)
    err = np.abs(theirs[inner] - moved[inner]).max() / np.ptp(moved)
    assert err < 1e-4, err
    # the wrong frame (RAS vectors, not LPS) must be caught by the same check
    wrong = load_itk_warp(tmp_path / "warp.nii.gz")
    np.testing.assert_allclose(wrong.disp, disp, atol=1e-4)  # round trip back to voxels


@pytest.mark.parametrize("ndim", [2, 3])
def test_ras_vectors_would_fail(tmp_path, ndim):
    """The comparison above can fail: a field left in RAS (the issue's bug) is far off."""
    shape = SHAPES[ndim]
    affine = _oblique_affine(ndim)
    moving = io.Volume(_image(shape), affine)
    disp = _smooth_disp(shape)
    moved = spatial.warp(io.to_tensor(moving), torch.from_numpy(disp)[None])[0, 0].numpy()
    _write(moving, tmp_path / "moving.nii.gz")
    _write(io.Volume(np.zeros(shape, np.float32), affine), tmp_path / "fixed.nii.gz")
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    save_itk_warp(disp, tmp_path / "warp.nii.gz", affine)
    img = sitk.ReadImage(str(tmp_path / "warp.nii.gz"), sitk.sitkVectorFloat64)
    arr = sitk.GetArrayFromImage(img)
    arr[..., :2] *= -1  # back to RAS
    bad = sitk.GetImageFromArray(arr, isVector=True)
    bad.CopyInformation(img)
    theirs = _sitk_resample(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz",
                            sitk.DisplacementFieldTransform(bad)).reshape(shape)
    inner = _interior(ndim, shape)
    assert np.abs(theirs[inner] - moved[inner]).max() / np.ptp(moved) > 1e-2
    del flip


def _affine_moved(moving: io.Volume, fixed_affine: np.ndarray, matrix_world: np.ndarray) -> np.ndarray:
    """morphreg's own moved image for a world matrix (fixed RAS point -> moving RAS point)."""
    ndim = moving.ndim
    vox = np.linalg.inv(moving.affine) @ matrix_world @ fixed_affine  # fixed voxel -> moving voxel
    idx = [0, 1, 3] if ndim == 2 else [0, 1, 2, 3]
    m = torch.from_numpy(vox[np.ix_(idx[:-1], idx)])[None].float()
    disp = affine_to_disp(m, moving.shape)
    return spatial.warp(io.to_tensor(moving), disp)[0, 0].numpy()


def _world_matrix(ndim: int, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A small affine map about the image centre (so that most samples stay inside the image)."""
    centre = np.eye(4)
    centre[:3, 3] = (affine @ np.r_[(np.asarray(shape) - 1) / 2, [0] * (3 - ndim), 1])[:3]
    m = np.eye(4)
    t = 0.1
    m[:2, :2] = [[np.cos(t) * 1.05, -np.sin(t)], [np.sin(t), np.cos(t) * 0.97]]
    m[:2, 3] = [1.3, -0.8]
    if ndim == 3:
        m[2, :] = [0.02, -0.03, 1.02, 0.6]
    if ndim == 2:
        centre[2, 3] = 0.0  # keep the plane z = 0 of the 2D transform
    return centre @ m @ np.linalg.inv(centre)


@pytest.mark.parametrize("ndim", [2, 3])
def test_itk_matrix_reproduces_moved_in_simpleitk(tmp_path, ndim):
    shape = SHAPES[ndim]
    affine = _oblique_affine(ndim)
    moving = io.Volume(_image(shape), affine)
    fixed = io.Volume(np.zeros(shape, np.float32), affine)
    matrix = _world_matrix(ndim, affine, shape)
    moved = _affine_moved(moving, affine, matrix)
    _write(moving, tmp_path / "moving.nii.gz")
    _write(fixed, tmp_path / "fixed.nii.gz")
    for name in ("a.mat", "a.txt"):
        save_matrix(matrix, tmp_path / name, "itk", fixed, moving)
        transform = sitk.ReadTransform(str(tmp_path / name))
        theirs = _sitk_resample(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz", transform).reshape(shape)
        inner = _interior(ndim, shape)
        err = np.abs(theirs[inner] - moved[inner]).max() / np.ptp(moved)
        assert err < 1e-4, (name, err)
        np.testing.assert_allclose(load_matrix(tmp_path / name, "itk", fixed, moving), matrix, atol=1e-6)


@pytest.mark.parametrize("fmt", ["ras", "fsl", "lta"])
def test_matrix_round_trips(tmp_path, fmt):
    shape = SHAPES[3]
    fixed = io.Volume(np.zeros(shape, np.float32), _oblique_affine(3))
    moving_affine = _oblique_affine(3)
    moving_affine[:3, 3] += [2.0, 1.0, -3.0]
    moving = io.Volume(_image(shape), moving_affine)
    matrix = _world_matrix(3, fixed.affine, shape)
    save_matrix(matrix, tmp_path / f"a.{fmt}", fmt, fixed, moving)
    np.testing.assert_allclose(load_matrix(tmp_path / f"a.{fmt}", fmt, fixed, moving), matrix, atol=1e-4)


def test_fsl_matrix_matches_flirt_convention(tmp_path):
    """FLIRT's matrix maps input (moving) scaled-voxel coordinates to reference (fixed) ones: the
    inverse of morphreg's fixed -> moving direction (``flirt -in moving -ref fixed -applyxfm -init``)."""
    shape = SHAPES[3]
    fixed = io.Volume(np.zeros(shape, np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    moving = io.Volume(_image(shape), np.diag([2.0, 2.0, 2.0, 1.0]))
    matrix = np.eye(4)
    matrix[:3, 3] = [4.0, -2.0, 6.0]  # fixed RAS point + t = moving RAS point
    save_matrix(matrix, tmp_path / "a.mat", "fsl", fixed, moving)
    flirt = np.loadtxt(tmp_path / "a.mat")
    # FLIRT maps input (moving) to reference (fixed): the inverse shift, and x reversed in FSL's
    # frame (a positive-determinant affine is flipped to radiological scaled voxels)
    np.testing.assert_allclose(flirt[:3, :3], np.eye(3), atol=1e-6)
    np.testing.assert_allclose(flirt[:3, 3], [4.0, 2.0, -6.0], atol=1e-5)


def test_ants_applies_warp_and_matrix(tmp_path):
    """antspyx (where installed) reproduces morphreg's moved image from the exported field and matrix."""
    ants = pytest.importorskip("ants")
    shape = SHAPES[3]
    affine = _oblique_affine(3)
    moving = io.Volume(_image(shape), affine)
    fixed = io.Volume(np.zeros(shape, np.float32), affine)
    io.save_volume(moving, tmp_path / "moving.nii.gz")
    io.save_volume(fixed, tmp_path / "fixed.nii.gz")
    ants_moving = ants.image_read(str(tmp_path / "moving.nii.gz"))
    ants_fixed = ants.image_read(str(tmp_path / "fixed.nii.gz"))
    inner = _interior(3, shape)
    disp = _smooth_disp(shape)
    moved = spatial.warp(io.to_tensor(moving), torch.from_numpy(disp)[None])[0, 0].numpy()
    save_itk_warp(disp, tmp_path / "warp.nii.gz", affine)
    theirs = ants.apply_transforms(ants_fixed, ants_moving, [str(tmp_path / "warp.nii.gz")],
                                   interpolator="linear").numpy()
    assert np.abs(theirs[inner] - moved[inner]).max() / np.ptp(moved) < 1e-4
    matrix = _world_matrix(3, affine, shape)
    save_matrix(matrix, tmp_path / "a.mat", "itk", fixed, moving)
    theirs = ants.apply_transforms(ants_fixed, ants_moving, [str(tmp_path / "a.mat")], interpolator="linear").numpy()
    moved = _affine_moved(moving, affine, matrix)
    assert np.abs(theirs[inner] - moved[inner]).max() / np.ptp(moved) < 1e-4


@pytest.mark.parametrize("ndim", [2, 3])
def test_cli_register_exports_apply_in_simpleitk(tmp_path, ndim):
    """`register --warp-format itk --matrix-format itk`: SimpleITK reproduces --moved from each file;
    `morphreg warp` reads the ITK field back (detected) and reproduces --moved too."""
    from morphreg.cli import main

    shape = SHAPES[ndim]
    affine = _oblique_affine(ndim)
    fixed = io.Volume(_image(shape, seed=3), affine)
    from scipy import ndimage

    # the same content shifted by a voxel fraction, on the same grid (moved is then one interpolation)
    moving = io.Volume(ndimage.shift(fixed.data, [0.7, -0.4, 0.3][:ndim], order=3, mode="nearest"), affine)
    io.save_volume(moving, tmp_path / "moving.nii.gz")
    io.save_volume(fixed, tmp_path / "fixed.nii.gz")
    args = ["register", "--method", "affine", "--moving", str(tmp_path / "moving.nii.gz"),
            "--fixed", str(tmp_path / "fixed.nii.gz"), "--moved", str(tmp_path / "moved.nii.gz"),
            "--warp", str(tmp_path / "warp.nii.gz"), "--warp-format", "itk",
            "--matrix", str(tmp_path / "affine.mat"), "--matrix-format", "itk"]
    assert main(args) == 0
    ours = io.load_volume(tmp_path / "moved.nii.gz").data
    inner = _interior(ndim, shape)
    field = _read_2d(tmp_path / "warp.nii.gz", sitk.sitkVectorFloat64) if ndim == 2 else \
        sitk.ReadImage(str(tmp_path / "warp.nii.gz"), sitk.sitkVectorFloat64)
    for transform in (sitk.DisplacementFieldTransform(field), sitk.ReadTransform(str(tmp_path / "affine.mat"))):
        theirs = _sitk_resample(tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz", transform).reshape(shape)
        assert np.abs(theirs[inner] - ours[inner]).max() / np.ptp(ours) < 1e-3
    assert main(["warp", "--moving", str(tmp_path / "moving.nii.gz"), "--warp", str(tmp_path / "warp.nii.gz"),
                 "--moved", str(tmp_path / "again.nii.gz")]) == 0
    np.testing.assert_allclose(io.load_volume(tmp_path / "again.nii.gz").data, ours, atol=1e-4 * np.ptp(ours))


def test_cli_warp_asks_for_format_of_unlabelled_field(tmp_path, capsys):
    """A NIfTI vector field that says nothing about itself is refused with the flag to give."""
    import nibabel as nib

    from morphreg.cli import main

    shape = SHAPES[3]
    nib.save(nib.Nifti1Image(np.zeros(shape + (1, 3), np.float32), np.eye(4)), str(tmp_path / "w.nii.gz"))
    io.save_volume(io.Volume(_image(shape), np.eye(4)), tmp_path / "m.nii.gz")
    argv = ["warp", "--moving", str(tmp_path / "m.nii.gz"), "--warp", str(tmp_path / "w.nii.gz"),
            "--moved", str(tmp_path / "out.nii.gz")]
    assert main(argv) == 1
    assert "--warp-format itk" in capsys.readouterr().err
    assert main(argv + ["--warp-format", "itk"]) == 0


def test_cli_init_matrix_and_init_warp_from_itk(tmp_path):
    """--init-matrix (ITK .mat, detected) and --init-warp (ITK field, detected) start a registration: with
    --method affine on a pair that differs by exactly that transform, the result stays at it."""
    from morphreg.cli import main

    shape = SHAPES[3]
    affine = _oblique_affine(3)
    moving = io.Volume(_image(shape, seed=5), affine)
    matrix = _world_matrix(3, affine, shape)
    fixed = io.Volume(_affine_moved(moving, affine, matrix), affine)  # fixed = moving pulled back by the matrix
    io.save_volume(moving, tmp_path / "m.nii.gz")
    io.save_volume(fixed, tmp_path / "f.nii.gz")
    save_matrix(matrix, tmp_path / "init.mat", "itk", fixed, moving)
    base = ["register", "--method", "affine", "--moving", str(tmp_path / "m.nii.gz"), "--fixed",
            str(tmp_path / "f.nii.gz")]
    assert main(base + ["--moved", str(tmp_path / "a.nii.gz"), "--init-matrix", str(tmp_path / "init.mat"),
                        "--matrix", str(tmp_path / "out.txt")]) == 0
    found = load_matrix(tmp_path / "out.txt", "ras", fixed, moving)
    np.testing.assert_allclose(found, matrix, atol=0.05)  # the init composed with a (near-)identity result
    inner = _interior(3, shape)
    moved = io.load_volume(tmp_path / "a.nii.gz").data
    assert np.abs(moved[inner] - fixed.data[inner]).max() / np.ptp(fixed.data) < 0.02
    disp = affine_to_disp(torch.from_numpy((np.linalg.inv(affine) @ matrix @ affine)[:3]).float(), shape)
    save_itk_warp(disp[0].numpy(), tmp_path / "init_warp.nii.gz", affine)
    assert main(base + ["--moved", str(tmp_path / "b.nii.gz"), "--init-warp", str(tmp_path / "init_warp.nii.gz")]) == 0
    moved = io.load_volume(tmp_path / "b.nii.gz").data
    assert np.abs(moved[inner] - fixed.data[inner]).max() / np.ptp(fixed.data) < 0.02


def test_with_initial_composes_after_the_start():
    """The registration sees moving warped by the start, and its result is composed after it; the
    matrices chain (initial first), and the world matrix of the chain is the initial one for an
    identity result."""
    from morphreg.workflows.pipeline import WithInitial, as_output, world_matrix
    from morphreg.workflows.warps import matrix_disp

    shape = SHAPES[2]
    affine = _oblique_affine(2)
    fixed = io.Volume(np.zeros(shape, np.float32), affine)
    matrix = _world_matrix(2, affine, shape)
    start, start_matrix = matrix_disp(matrix, fixed)
    seen = {}

    def register(moving, fixed_t):
        seen["moving"] = moving
        identity = torch.eye(2, 3)[None]
        return as_output(torch.full_like(start, 0.0), matrix=identity)

    image = torch.from_numpy(_image(shape))[None, None]
    out = WithInitial(register, start, start_matrix)(image, image)
    torch.testing.assert_close(out.disp, start)
    torch.testing.assert_close(seen["moving"], spatial.warp(image, start))
    np.testing.assert_allclose(world_matrix(out.matrix, affine), matrix, atol=1e-5)


def test_every_option_has_help_and_help_shows_defaults(capsys):
    import argparse

    from morphreg.cli import build_parser, main

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {act.option_strings[0]}" for name, sub in commands.items() for act in sub._actions
               if act.option_strings and not act.help]
    assert missing == []
    assert main(["register", "--help"]) == 0
    text = capsys.readouterr().out
    assert "(default: morphreg)" in text and "(default: voxel)" in text and "(default: ras)" in text
    assert main(["train", "--help"]) == 0
    assert "(default: 1500)" in capsys.readouterr().out



def test_itk_export_of_a_coronal_2d_slice_is_refused_before_work(tmp_path, capsys):
    """ITK/ANTs read a 2D NIfTI slice in the world x-y plane only; a coronal slice (OASIS 2D) is refused up front."""
    from morphreg.cli import main

    shape = (24, 20)
    affine = np.array([[-1.0, 0, 0, 80], [0, 0, 1.0, -0.5], [0, -1.0, 0, 96], [0, 0, 0, 1]])
    for name in ("m", "f"):
        io.save_volume(io.Volume(_image(shape), affine), tmp_path / f"{name}.nii.gz")
    argv = ["register", "--method", "affine", "--moving", str(tmp_path / "m.nii.gz"), "--fixed",
            str(tmp_path / "f.nii.gz"), "--moved", str(tmp_path / "o.nii.gz"), "--warp", str(tmp_path / "w.nii.gz"),
            "--warp-format", "itk"]
    assert main(argv) == 1
    assert "x-y plane" in capsys.readouterr().err and not (tmp_path / "o.nii.gz").exists()
