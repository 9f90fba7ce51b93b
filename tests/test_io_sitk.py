"""Images read through SimpleITK keep ITK's geometry, in morphreg's RAS frame."""

from __future__ import annotations

import numpy as np
import pytest

from morphreg import io

sitk = pytest.importorskip("SimpleITK")


def _oblique_image(ndim):
    rng = np.random.default_rng(0)
    shape = (7, 6, 5)[:ndim]
    image = sitk.GetImageFromArray(rng.random(shape[::-1]).astype(np.float32))
    theta = 0.4
    if ndim == 3:
        direction = [np.cos(theta), -np.sin(theta), 0, np.sin(theta), np.cos(theta), 0, 0, 0, -1]
    else:
        direction = [np.cos(theta), -np.sin(theta), np.sin(theta), np.cos(theta)]
    image.SetDirection(direction)
    image.SetSpacing([1.5, 0.7, 2.0][:ndim])
    image.SetOrigin([10.0, -4.0, 3.0][:ndim])
    return image


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_nrrd_and_metaimage_match_the_nifti_sitk_writes(tmp_path, ext):
    image = _oblique_image(3)
    sitk.WriteImage(image, str(tmp_path / f"a{ext}"))
    sitk.WriteImage(image, str(tmp_path / "a.nii.gz"))  # ITK's own LPS -> NIfTI (RAS) conversion
    ours = io.load_volume(tmp_path / f"a{ext}")
    reference = io.load_volume(tmp_path / "a.nii.gz")
    np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-5)
    np.testing.assert_array_equal(ours.data, reference.data)
    # voxel (i, j, k) of the array is ITK's index (i, j, k): same physical point
    point_lps = np.array(image.TransformIndexToPhysicalPoint((2, 3, 1)))
    np.testing.assert_allclose(ours.affine @ [2, 3, 1, 1], [-point_lps[0], -point_lps[1], point_lps[2], 1], atol=1e-6)


def test_png_rgb_grey_is_one_channel_2d(tmp_path):
    grey = (np.arange(20 * 30) % 251).reshape(20, 30).astype(np.uint8)  # (rows y, columns x)
    rgb = sitk.GetImageFromArray(np.stack([grey] * 3, axis=-1), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "a.png"))
    volume = io.load_volume(tmp_path / "a.png")
    assert volume.shape == (30, 20)  # (x, y)
    np.testing.assert_array_equal(volume.data, grey.T)
    np.testing.assert_allclose(volume.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))  # ITK's identity LPS grid, in RAS


def test_brainweb_png_pair_registers(tmp_path):
    import os
    from pathlib import Path

    from morphreg.cli import main

    data = Path(os.environ.get("MORPHREG_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    root = data / "itk_brainweb_t1_pd_2d"
    if not (root / "BrainT1Slice.png").exists():
        pytest.skip("BrainWeb T1/PD pair not found (set MORPHREG_DATA)")
    assert main(["register", "--method", "rigid", "--loss", "mi", "--moving", str(root / "BrainProtonDensitySlice.png"),
                 "--fixed", str(root / "BrainT1Slice.png"), "--moved", str(tmp_path / "moved.nii.gz")]) == 0
    size = sitk.ReadImage(str(root / "BrainT1Slice.png")).GetSize()  # ITK's (x, y)
    assert io.load_volume(tmp_path / "moved.nii.gz").shape == tuple(size)


def test_dicom_series_folder(tmp_path):
    """A folder of DICOM slices (written by SimpleITK) reads as one volume with its geometry in RAS."""
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # ITK array order (z, y, x)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.9, 2.0))
    image.SetOrigin((5.0, -3.0, 10.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        position = "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in (("0008|0060", "MR"), ("0020|000e", "1.2.3.4.5"), ("0020|000d", "1.2.3.4"),
                           ("0020|0013", str(k + 1)), ("0020|0032", position), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0028|0030", "0.9\\0.8"), ("0018|0050", "2.0")):
            slice_k.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"{k}.dcm"))
        writer.Execute(slice_k)
    ours = io.load_volume(tmp_path)
    np.testing.assert_array_equal(ours.data, volume.transpose(2, 1, 0))
    np.testing.assert_allclose(ours.affine, [[-0.8, 0, 0, -5.0], [0, -0.9, 0, 3.0], [0, 0, 2.0, 10.0], [0, 0, 0, 1]],
                               atol=1e-6)
