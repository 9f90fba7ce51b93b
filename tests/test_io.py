"""Tests of morphreg.io: round trips keep affine and dtype, errors name file and problem."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from morphreg import io
from morphreg.io import ImageReadError, Volume
from morphreg.io import volume as volume_module

# neurite-oasis style orientation (LIA-like flip/permutation) with a translation
OASIS_AFFINE = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -112], [0, -1, 0, 96], [0, 0, 0, 1]], dtype=np.float64)


def _rotation_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _affine(linear: np.ndarray, translation=(10.0, -20.0, 30.0)) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = translation
    return out


# anisotropic (2 mm along the 2nd voxel axis), rotated by 30 degrees, x flipped
ANISO_ROT_FLIP = _affine(_rotation_z(30.0) @ np.diag([-1.0, 2.0, 1.5]))


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_round_trip_keeps_affine_and_dtypes(tmp_path: Path, ext: str) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((6, 7, 5)).astype(np.float32)
    labels = rng.integers(0, 36, size=(6, 7, 5)).astype(np.uint8)
    io.save_volume(Volume(image, OASIS_AFFINE), tmp_path / f"img{ext}", description="an image")
    io.save_volume(Volume(labels, OASIS_AFFINE), tmp_path / f"seg{ext}")
    img = io.load_volume(tmp_path / f"img{ext}")
    seg = io.load_volume(tmp_path / f"seg{ext}")
    np.testing.assert_array_equal(img.affine, OASIS_AFFINE)
    np.testing.assert_array_equal(seg.affine, OASIS_AFFINE)
    assert img.data.dtype == np.float32 and seg.data.dtype == np.uint8
    np.testing.assert_array_equal(img.data, image)
    np.testing.assert_array_equal(seg.data, labels)
    assert img.ndim == 3 and img.shape == (6, 7, 5)
    assert img.header["descrip"].item() == b"an image"
    assert nib.load(tmp_path / f"seg{ext}").get_data_dtype() == np.uint8


def test_float64_written_as_float32_and_int64_labels_narrowed(tmp_path: Path) -> None:
    io.save_volume(Volume(np.ones((4, 5, 3)), np.eye(4)), tmp_path / "f.nii.gz")
    labels = np.arange(60, dtype=np.int64).reshape(4, 5, 3) * 4  # max 236 -> fits uint8
    io.save_volume(Volume(labels, np.eye(4)), tmp_path / "l.nii.gz")
    io.save_volume(Volume(labels.astype(np.int16) - 100, np.eye(4)), tmp_path / "s.nii.gz")
    assert nib.load(tmp_path / "f.nii.gz").get_data_dtype() == np.float32
    assert nib.load(tmp_path / "l.nii.gz").get_data_dtype() == np.uint8
    assert nib.load(tmp_path / "s.nii.gz").get_data_dtype() == np.int16
    np.testing.assert_array_equal(io.load_volume(tmp_path / "l.nii.gz").data, labels)


def test_nifti_xy1_is_read_as_2d_and_2d_is_written_as_xy1(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    nib.save(nib.Nifti1Image(data[..., None], OASIS_AFFINE), tmp_path / "slice.nii.gz")
    vol = io.load_volume(tmp_path / "slice.nii.gz")
    assert vol.ndim == 2 and vol.shape == (3, 4)
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_array_equal(vol.affine, OASIS_AFFINE)
    io.save_volume(vol, tmp_path / "again.nii")
    assert nib.load(tmp_path / "again.nii").shape == (3, 4, 1)
    np.testing.assert_array_equal(io.load_volume(tmp_path / "again.nii").data, data)


def test_4d_with_trailing_singleton_is_read_as_3d(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "v.nii.gz")
    assert io.load_volume(tmp_path / "v.nii.gz").shape == (2, 3, 4)


def test_nifti_keeps_geometry_codes_of_given_header(tmp_path: Path) -> None:
    src = nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), OASIS_AFFINE)
    src.set_sform(OASIS_AFFINE, code=1)
    src.set_qform(OASIS_AFFINE, code=1)
    nib.save(src, tmp_path / "src.nii.gz")
    vol = io.load_volume(tmp_path / "src.nii.gz")
    io.save_volume(vol, tmp_path / "out.nii.gz")
    out = nib.load(tmp_path / "out.nii.gz")
    assert int(out.header["sform_code"]) == 1 and int(out.header["qform_code"]) == 1
    np.testing.assert_allclose(out.get_qform(), OASIS_AFFINE, atol=1e-5)
    # without a header: sform 'aligned' holds the affine, units mm
    io.save_volume(Volume(vol.data, OASIS_AFFINE), tmp_path / "bare.nii.gz")
    bare = nib.load(tmp_path / "bare.nii.gz")
    assert int(bare.header["sform_code"]) == 2
    assert bare.header.get_xyzt_units()[0] == "mm"


def test_description_is_one_line_of_at_most_79_chars(tmp_path: Path) -> None:
    io.save_volume(Volume(np.zeros((2, 2)), np.eye(4)), tmp_path / "d.nii", "x" * 100 + "\ny")
    descrip = nib.load(tmp_path / "d.nii").header["descrip"].item()
    assert descrip == b"x" * 79


@pytest.mark.parametrize("ext", [".mgz", ".mgh"])
def test_mgz_round_trip(tmp_path: Path, ext: str) -> None:
    rng = np.random.default_rng(1)
    image = rng.random((5, 6, 7)).astype(np.float32)
    labels = rng.integers(0, 200, size=(5, 6, 7)).astype(np.uint8)
    io.save_volume(Volume(image, OASIS_AFFINE), tmp_path / f"img{ext}")
    io.save_volume(Volume(labels.astype(np.int64), OASIS_AFFINE), tmp_path / f"seg{ext}")
    img = io.load_volume(tmp_path / f"img{ext}")
    seg = io.load_volume(tmp_path / f"seg{ext}")
    np.testing.assert_allclose(img.affine, OASIS_AFFINE, atol=1e-5)
    np.testing.assert_array_equal(img.data, image)
    assert seg.data.dtype == np.uint8  # MGH has no int64: narrowed losslessly
    np.testing.assert_array_equal(seg.data, labels)


def test_numpy_formats(tmp_path: Path) -> None:
    data = np.arange(20, dtype=np.float32).reshape(4, 5)
    io.save_volume(Volume(data, OASIS_AFFINE), tmp_path / "a.npy")
    io.save_volume(Volume(data, OASIS_AFFINE), tmp_path / "a.npz")
    for name in ("a.npy", "a.npz"):
        vol = io.load_volume(tmp_path / name)
        np.testing.assert_array_equal(vol.data, data)
        np.testing.assert_array_equal(vol.affine, np.eye(4))  # numpy stores no geometry
        assert vol.header is None
    with np.load(tmp_path / "a.npz") as npz:
        assert npz.files == ["vol"]


def test_npz_key_handling(tmp_path: Path) -> None:
    a, b = np.zeros((3, 4), np.float32), np.ones((3, 4), np.uint8)
    np.savez(tmp_path / "two.npz", img=a, seg=b)
    np.savez(tmp_path / "named.npz", img=a, subjects=np.array(["s1"]))
    np.testing.assert_array_equal(io.load_volume(tmp_path / "two.npz", key="seg").data, b)
    assert io.load_volume(tmp_path / "two.npz", key="seg").data.dtype == np.uint8
    np.testing.assert_array_equal(io.load_volume(tmp_path / "named.npz").data, a)
    with pytest.raises(ImageReadError, match=r"two\.npz.*2 arrays.*\['img', 'seg'\]"):
        io.load_volume(tmp_path / "two.npz")
    with pytest.raises(ImageReadError, match=r"two\.npz.*no array named 'vol'.*\['img', 'seg'\]"):
        io.load_volume(tmp_path / "two.npz", key="vol")
    np.save(tmp_path / "one.npy", a)
    with pytest.raises(ValueError, match=r"load_volume: argument 'key' only applies to \.npz"):
        io.load_volume(tmp_path / "one.npy", key="img")


# --------------------------------------------------------------------------------------------
# read errors


def test_error_missing_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"load_volume: cannot read '.*nope\.nii\.gz'.*exist"):
        io.load_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "empty.nii.gz").touch()
    with pytest.raises(ImageReadError, match=r"empty\.nii\.gz'.*empty \(0 bytes\)"):
        io.load_volume(tmp_path / "empty.nii.gz")


def test_error_unknown_extension_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "img.xyz").write_bytes(b"x")
    with pytest.raises(ImageReadError, match=r"img\.xyz.*unknown file extension.*\.nii\.gz.*\.npz"):
        io.load_volume(tmp_path / "img.xyz")
    with pytest.raises(ValueError, match=r"save_volume.*unknown file extension"):
        io.save_volume(Volume(np.zeros((2, 2)), np.eye(4)), tmp_path / "out.tif")


@pytest.mark.parametrize("name", ["t.nii.gz", "t.nii", "t.mgz", "t.npy", "t.npz"])
def test_error_truncated_file(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(0)
    io.save_volume(Volume(rng.random((16, 16, 16)).astype(np.float32), np.eye(4)), tmp_path / name)
    blob = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ImageReadError, match=rf"cannot read '.*{name}'.*truncated or corrupt") as e:
        io.load_volume(tmp_path / name)
    assert "\n" not in str(e.value)
    assert e.value.__suppress_context__  # the nibabel/numpy traceback does not escape


def test_error_garbage_gzip(tmp_path: Path) -> None:
    (tmp_path / "g.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 10))
    with pytest.raises(ImageReadError, match=r"g\.nii\.gz'.*truncated or corrupt"):
        io.load_volume(tmp_path / "g.nii.gz")


@pytest.mark.parametrize("shape", [(7,), (2, 3, 4, 2), (2, 3, 4, 5, 6)], ids=["1d", "4d", "5d"])
def test_error_wrong_number_of_dims_names_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    pattern = r"x\.npy'.*2D or 3D image.*got shape " + re.escape(str(shape))
    with pytest.raises(ImageReadError, match=pattern):
        io.load_volume(tmp_path / "x.npy")


def test_error_5d_nifti_points_to_load_warp(tmp_path: Path) -> None:
    io.save_warp(np.zeros((3, 4, 5, 6), np.float32), tmp_path / "w.nii.gz", np.eye(4))
    with pytest.raises(ImageReadError, match=r"got shape \(4, 5, 6, 1, 3\).*use morphreg\.io\.load_warp"):
        io.load_volume(tmp_path / "w.nii.gz")


@pytest.mark.parametrize("bad, counts", [(np.nan, "1 NaN and 0 infinite"), (np.inf, "0 NaN and 1 infinite")])
def test_error_nan_inf(tmp_path: Path, bad: float, counts: str) -> None:
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = bad
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "n.nii.gz")
    with pytest.raises(ImageReadError, match=rf"n\.nii\.gz'.*{counts} value"):
        io.load_volume(tmp_path / "n.nii.gz")


def test_error_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageReadError, match=r"o\.npy'.*not a readable npy file"):
        io.load_volume(tmp_path / "o.npy")


# --------------------------------------------------------------------------------------------
# atomic writes


def test_save_creates_parent_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.nii.gz"
    io.save_volume(Volume(np.zeros((3, 3, 3), np.float32), np.eye(4)), target)
    assert _listing(target.parent) == ["out.nii.gz"]


@pytest.mark.parametrize("name", ["out.nii.gz", "out.mgz"])
def test_failed_save_keeps_old_target_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    target = tmp_path / name
    old = Volume(np.full((3, 3, 3), 7, np.uint8), OASIS_AFFINE)
    io.save_volume(old, target)
    before = target.read_bytes()
    seen: list[str] = []

    def broken_save(img: object, filename: Path) -> None:
        seen.append(str(filename))
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(volume_module, "write_image", broken_save)  # the one writer of nibabel images
    with pytest.raises(OSError, match="disk full"):
        io.save_volume(Volume(np.zeros((3, 3, 3), np.uint8), np.eye(4)), target)
    # the write went to a hidden temp file with the same suffix, in the same folder
    assert len(seen) == 1 and Path(seen[0]).parent == tmp_path
    assert Path(seen[0]).name.startswith(".") and Path(seen[0]).name.endswith(name[3:])
    assert target.read_bytes() == before
    assert _listing(tmp_path) == [name]
    monkeypatch.undo()
    np.testing.assert_array_equal(io.load_volume(target).data, old.data)


def test_failed_numpy_save_keeps_old_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.npy"
    io.save_volume(Volume(np.ones((2, 2), np.float32), np.eye(4)), target)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(np, "save", broken)
    with pytest.raises(RuntimeError, match="boom"):
        io.save_volume(Volume(np.zeros((2, 2), np.float32), np.eye(4)), target)
    monkeypatch.undo()
    assert _listing(tmp_path) == ["x.npy"]
    np.testing.assert_array_equal(io.load_volume(target).data, np.ones((2, 2)))


# --------------------------------------------------------------------------------------------
# warps


def _random_disp(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((len(shape), *shape)) * 2.0).astype(np.float32)


@pytest.mark.parametrize("units", ["voxel", "mm"])
@pytest.mark.parametrize("shape", [(5, 6, 4), (7, 5)], ids=["3d", "2d"])
@pytest.mark.parametrize("affine", [OASIS_AFFINE, ANISO_ROT_FLIP], ids=["oasis", "aniso-rot"])
def test_warp_round_trip(tmp_path: Path, units: str, shape: tuple[int, ...], affine: np.ndarray) -> None:
    ndim = len(shape)
    disp = _random_disp(shape)
    path = tmp_path / "warp.nii.gz"
    io.save_warp(disp, path, affine, units=units)
    img = nib.load(path)
    comps = ndim if units == "voxel" else 3
    assert img.shape == (*shape, *(1,) * (3 - ndim), 1, comps)
    assert int(img.header["intent_code"]) == 1007
    descrip = img.header["descrip"].item().decode()
    assert f"units={units}" in descrip and "pull-back" in descrip
    assert img.header["intent_name"].item() == f"units={units}".encode()
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    stored = np.asarray(img.dataobj).reshape(*shape, comps)
    # known answer: voxel vectors as given; mm vectors = A[:3, :ndim] @ voxel vector
    voxel_vectors = np.moveaxis(disp, 0, -1).astype(np.float64)
    expected = voxel_vectors if units == "voxel" else voxel_vectors @ affine[:3, :ndim].T
    np.testing.assert_allclose(stored, expected, rtol=1e-6, atol=1e-5)
    back = io.load_warp(path)
    assert back.disp.shape == disp.shape and back.disp.dtype == np.float32
    np.testing.assert_allclose(back.disp, disp, atol=1e-5)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)


def test_warp_mm_single_vector_known_answer(tmp_path: Path) -> None:
    # a 1-voxel step along axis 1 of a 2 mm anisotropic, x-flipped grid is 2 mm along RAS y
    affine = _affine(np.diag([-1.0, 2.0, 1.0]))
    disp = np.zeros((3, 2, 2, 2), np.float32)
    disp[1] = 1.0
    io.save_warp(torch.from_numpy(disp)[None], tmp_path / "w.nii", affine, units="mm")
    stored = np.asarray(nib.load(tmp_path / "w.nii").dataobj)
    np.testing.assert_allclose(stored[0, 0, 0, 0], [0.0, 2.0, 0.0])


def test_load_warp_units_must_be_known(tmp_path: Path) -> None:
    vxm_style = np.zeros((4, 5, 6, 3), np.float32)  # voxelmorph writes (X, Y, Z, 3), no units
    vxm_style[..., 0] = 1.5
    nib.save(nib.Nifti1Image(vxm_style, np.eye(4)), tmp_path / "vxm.nii.gz")
    with pytest.raises(ImageReadError, match=r"vxm\.nii\.gz'.*does not state its units"):
        io.load_warp(tmp_path / "vxm.nii.gz")
    field = io.load_warp(tmp_path / "vxm.nii.gz", units="voxel")
    assert field.disp.shape == (3, 4, 5, 6)
    np.testing.assert_array_equal(field.disp[0], 1.5)
    io.save_warp(np.zeros((2, 3, 4), np.float32), tmp_path / "w.nii.gz", np.eye(4), units="mm")
    with pytest.raises(ImageReadError, match=r"states units=mm, but units='voxel' was given"):
        io.load_warp(tmp_path / "w.nii.gz", units="voxel")


def test_save_warp_errors(tmp_path: Path) -> None:
    disp = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"save_warp: argument 'disp' must have shape \(ndim"):
        io.save_warp(np.zeros((3, 3, 4), np.float32), tmp_path / "w.nii", np.eye(4))
    with pytest.raises(ValueError, match=r"save_warp: argument 'units' must be one of"):
        io.save_warp(disp, tmp_path / "w.nii", np.eye(4), units="cm")
    with pytest.raises(ValueError, match=r"save_warp: argument 'path' must end in \.nii"):
        io.save_warp(disp, tmp_path / "w.npz", np.eye(4))
    with pytest.raises(ValueError, match=r"save_warp: argument 'affine' must be a 4x4"):
        io.save_warp(disp, tmp_path / "w.nii", np.eye(3))


# --------------------------------------------------------------------------------------------
# grids


@pytest.mark.parametrize("shape, shift", [((9, 8, 7), (2, -3, 1)), ((10, 9), (-2, 3))])
def test_resample_integer_voxel_translation_is_exact_shift(
    shape: tuple[int, ...], shift: tuple[int, ...]
) -> None:
    ndim = len(shape)
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    labels = rng.integers(1, 50, size=shape).astype(np.int16)
    fixed_affine = ANISO_ROT_FLIP
    step = np.eye(4)
    step[:ndim, 3] = shift
    moving_affine = fixed_affine @ step  # moving voxel v is at fixed voxel v + shift
    fixed = Volume(np.zeros(shape, np.float32), fixed_affine)
    # out[x] = moving[x - shift]: build the expected array by slicing
    dst = tuple(slice(max(s, 0), n + min(s, 0)) for s, n in zip(shift, shape))
    src = tuple(slice(max(-s, 0), n - max(s, 0)) for s, n in zip(shift, shape))
    for data, order in ((image, 1), (labels, 0)):
        out = io.resample_to(Volume(data, moving_affine), fixed, order=order)
        expected = np.zeros_like(data)
        expected[dst] = data[src]
        assert out.data.dtype == data.dtype
        if order == 0:
            np.testing.assert_array_equal(out.data, expected)
        else:
            np.testing.assert_allclose(out.data, expected, atol=1e-6)
        np.testing.assert_array_equal(out.affine, fixed_affine)


def test_resample_to_finer_grid_and_errors() -> None:
    moving = Volume(
        np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32), np.diag([2.0, 1.0, 1.0, 1.0])
    )
    fixed = Volume(np.zeros((7, 3), np.float32), np.eye(4))  # 1 mm grid over the 2 mm one
    out = io.resample_to(moving, fixed)
    np.testing.assert_allclose(out.data[:, 0], [0, 0.5, 1, 1.5, 2, 2.5, 3])
    with pytest.raises(ValueError, match=r"resample_to: argument 'order' must be 0"):
        io.resample_to(moving, fixed, order=3)
    with pytest.raises(ValueError, match=r"resample_to: 'moving' is 2D but 'fixed' is 3D"):
        io.resample_to(moving, Volume(np.zeros((2, 2, 2)), np.eye(4)))


def test_same_grid() -> None:
    a = Volume(np.zeros((4, 5)), OASIS_AFFINE)
    assert io.same_grid(a, Volume(np.ones((4, 5)), OASIS_AFFINE + 1e-5))
    assert not io.same_grid(a, Volume(np.zeros((5, 4)), OASIS_AFFINE))
    shifted = OASIS_AFFINE.copy()
    shifted[0, 3] += 0.01
    assert not io.same_grid(a, Volume(np.zeros((4, 5)), shifted))


def test_volume_validation() -> None:
    with pytest.raises(ValueError, match=r"Volume: argument 'data' must be a 2D .* got shape \(3,\)"):
        Volume(np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match=r"Volume: argument 'affine' must be a 4x4 matrix"):
        Volume(np.zeros((3, 3)), np.eye(3))
    vol = Volume(np.zeros((3, 4, 5)), ANISO_ROT_FLIP)
    np.testing.assert_allclose(vol.spacing, [1.0, 2.0, 1.5])


def test_tensor_conversions() -> None:
    image = Volume(np.random.default_rng(0).random((4, 5)).astype(np.float64), OASIS_AFFINE)
    labels = Volume(np.arange(20, dtype=np.uint8).reshape(4, 5), OASIS_AFFINE)
    t_img, t_lab = io.to_tensor(image), io.to_tensor(labels)
    assert t_img.shape == (1, 1, 4, 5) and t_img.dtype == torch.float32
    assert t_lab.shape == (1, 1, 4, 5) and t_lab.dtype == torch.int64
    back = io.from_tensor(t_lab, like=labels)
    assert back.data.dtype == np.uint8
    np.testing.assert_array_equal(back.data, labels.data)
    np.testing.assert_array_equal(back.affine, OASIS_AFFINE)
    moved = io.from_tensor(t_img[0] * 2, like=image)
    assert moved.data.dtype == np.float32 and moved.shape == (4, 5)
    with pytest.raises(ValueError, match=r"from_tensor: argument 't' must have shape .* \(4, 5\)"):
        io.from_tensor(torch.zeros(1, 1, 5, 4), like=image)


# --------------------------------------------------------------------------------------------
# headers nibabel fixes while loading: one morphreg line or silent acceptance, never nibabel's lines


def _raw_nifti(path: Path, shape: tuple[int, ...], pixdim, qform_code: int = 1, sform_code: int = 0,
               sform_matrix: bool = False) -> Path:
    """A single-file NIfTI written byte by byte, so nibabel's writer cannot repair the header."""
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["pixdim"][1:4] = pixdim
    header["qform_code"], header["sform_code"] = qform_code, sform_code
    if sform_matrix:
        header["srow_x"], header["srow_y"], header["srow_z"] = [2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]
    header["vox_offset"], header["magic"] = 352, b"n+1"
    raw = header.binaryblock + b"\0" * 4 + data.tobytes(order="F")
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("pixdim, value, why", [
    ([1.0, 0.0, 1.0], "0", "does not say how large its voxels are"),
    ([-1.2, 1.0, 1.0], "-1.2", "readers disagree"),
])
def test_zero_or_negative_voxel_size_is_one_morphreg_line(tmp_path, capfd, pixdim, value, why):
    """No sform: pixdim gives the geometry, and a 0 or negative voxel size leaves it undefined or
    read differently by nibabel and the NIfTI reference library: refused, naming file, axis, field."""
    from morphreg.cli import main

    bad = _raw_nifti(tmp_path / "bad.nii.gz", (12, 10, 8), pixdim)
    axis = [i for i, v in enumerate(pixdim) if v <= 0][0]
    with pytest.raises(ImageReadError, match=rf"bad.nii.gz'.*axis {axis} is {value} \(pixdim\[{axis + 1}\].*{why}"):
        io.load_volume(bad)
    io.save_volume(Volume(np.zeros((12, 10, 8), np.float32), np.eye(4)), tmp_path / "ok.nii.gz")
    capfd.readouterr()
    assert main(["register", "--method", "affine", "--moving", str(bad), "--fixed", str(tmp_path / "ok.nii.gz"),
                 "--moved", str(tmp_path / "out.nii.gz")]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("morphreg register: error:") and "bad.nii.gz" in err[0], err
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize("case", ["sform_given", "2d_third_axis"])
def test_pixdim_that_does_not_define_geometry_is_accepted_silently(tmp_path, capfd, caplog, case):
    """With a valid sform pixdim is not the geometry; the third axis of a 2D image has one voxel,
    whose size changes nothing: both load with nibabel's fix and without a line on stderr."""
    if case == "sform_given":
        path = _raw_nifti(tmp_path / "a.nii", (12, 10, 8), [0.0, -1.0, 1.0], sform_code=1, sform_matrix=True)
    else:
        path = _raw_nifti(tmp_path / "a.nii", (12, 10, 1), [1.5, 1.5, 0.0])
    capfd.readouterr()
    volume = io.load_volume(path)
    assert capfd.readouterr().err == ""
    # nibabel's handler writes to the stderr of its import time, which capfd may not see: its
    # records must not reach logging at all
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("nibabel")]
    if case == "sform_given":
        np.testing.assert_allclose(volume.affine[:3, :3], 2 * np.eye(3))
    else:
        assert volume.shape == (12, 10) and np.allclose(np.diag(volume.affine)[:2], 1.5)


def test_unknown_xform_code_is_refused(tmp_path, capfd, caplog):
    path = _raw_nifti(tmp_path / "a.nii", (12, 10, 8), [1.0, 1.0, 1.0], sform_code=7, sform_matrix=True)
    capfd.readouterr()
    with pytest.raises(ImageReadError, match=r"a.nii'.*sform_code 7 is not a NIfTI code"):
        io.load_volume(path)
    assert capfd.readouterr().err == ""
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("nibabel")]
