"""The QC figure: anatomical orientation from the affine, label tables."""

from __future__ import annotations

import numpy as np
import pytest

from morphreg import io
from morphreg.io import read_label_table
from morphreg.viz.qc import anatomical_views, plot_qc, to_ras


def test_to_ras_reorders_and_flips_by_the_affine():
    # array axes: i -> towards L (x flipped), j -> towards S, k -> towards A, spacings 2, 3, 4 mm (LSA)
    affine = np.array([[-2.0, 0, 0, 0], [0, 0, 4.0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])
    data = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    ras, spacing = to_ras(data, affine)
    assert ras.shape == (5, 7, 6)
    np.testing.assert_allclose(spacing, [2.0, 4.0, 3.0])
    # RAS voxel (x, y, z) is array voxel (4 - x, z, y)
    assert ras[0, 2, 1] == data[4, 1, 2] and ras[4, 0, 0] == data[0, 0, 0]
    views = {v.name: v for v in anatomical_views(ras.shape, spacing)}
    assert views["axial"].marks == ("L", "R", "P", "A")
    assert views["sagittal"].marks == ("P", "A", "I", "S")
    assert views["coronal"].extent == (0.0, 10.0, 0.0, 18.0)  # 5 x 2 mm wide, 6 x 3 mm high


def test_2d_slice_gets_its_own_plane():
    # the OASIS 2D affine: a coronal slice (array axes: x flipped, then towards I)
    affine = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -0.5], [0, -1, 0, 96], [0, 0, 0, 1]])
    ras, spacing = to_ras(np.zeros((16, 20), np.float32), affine)
    views = anatomical_views(ras.shape, spacing)
    assert [v.name for v in views] == ["coronal"] and views[0].marks == ("L", "R", "I", "S")


def test_label_tables():
    table = read_label_table("seg24")
    assert table.names[1] == "Left-Cerebral-White-Matter" and table.names[24] == "Right-Choroid-Plexus"
    assert read_label_table("seg35").names[13] == "Brain-Stem"
    assert read_label_table("seg4").names[4] == "CSF"
    with pytest.raises(ValueError, match="line 1"):
        read_label_table(__file__)


def test_plot_qc_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    vol = io.Volume(rng.random((12, 10, 8)).astype(np.float32), affine)
    seg = io.Volume((rng.random((12, 10, 8)) * 3).astype(np.uint8), affine)
    path = plot_qc(tmp_path / "qc.png", vol, vol, vol, np.ones((12, 10, 8)), names=("s1", "s2"), moved_seg=seg,
                   labels=read_label_table("seg4"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
