"""`morphreg segment`: atlas label propagation and majority voting."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from morphreg import io
from morphreg.cli import main
from morphreg.workflows.segment import majority_vote


def test_majority_vote_counts_and_breaks_ties_to_the_smaller_label():
    a = np.array([[1, 2], [3, 0]])
    b = np.array([[1, 3], [2, 0]])
    c = np.array([[2, 3], [1, 5]])
    np.testing.assert_array_equal(majority_vote([a, b, c]), [[1, 3], [1, 0]])
    np.testing.assert_array_equal(majority_vote([a, b]), [[1, 2], [2, 0]])


def test_segment_recovers_labels_of_shifted_images(tmp_path):
    shape = (40, 36)
    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    labels = ((yy - 20) ** 2 / 100 + (xx - 18) ** 2 / 64 < 1).astype(np.uint8) + \
        ((yy - 20) ** 2 / 25 + (xx - 18) ** 2 / 16 < 1).astype(np.uint8)
    image = ndimage.gaussian_filter(labels.astype(np.float32), 1.0)
    affine = np.eye(4)
    io.save_volume(io.Volume(image, affine), tmp_path / "atlas.nii.gz")
    io.save_volume(io.Volume(labels, affine), tmp_path / "atlas_seg.nii.gz")
    (tmp_path / "images").mkdir()
    truth = {}
    for name, shift in (("subj_a", (3, -2)), ("subj_b", (-2, 4))):
        io.save_volume(io.Volume(ndimage.shift(image, shift, order=1), affine), tmp_path / "images" / f"{name}.nii.gz")
        truth[name] = ndimage.shift(labels, shift, order=0)
    argv = ["segment", "--atlas", str(tmp_path / "atlas.nii.gz"), "--atlas-seg", str(tmp_path / "atlas_seg.nii.gz"),
            "--atlas", str(tmp_path / "atlas.nii.gz"), "--atlas-seg", str(tmp_path / "atlas_seg.nii.gz"),
            "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--method", "affine",
            "--no-progress"]
    assert main(argv) == 0
    for name, expected in truth.items():
        found = io.load_volume(tmp_path / "out" / f"{name}_seg.nii.gz").data
        before = np.mean(labels == expected)
        after = np.mean(found == expected)
        assert after > 0.98 and after > before + 0.05, (name, before, after)
