"""The gzip layer of morphreg.io: ISA-L when installed, the standard library otherwise; files stay
plain gzip that every tool reads; ``.nii`` outputs are not compressed; damage is still refused."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from morphreg import io
from morphreg.io import gzip_files

AFFINE = np.diag([1.0, 1.5, 2.0, 1.0])


@pytest.fixture(params=["isal", "stdlib"])
def compressor(request, monkeypatch):
    """Both back ends: ISA-L (skipped where it is missing) and the standard library's fallback."""
    if request.param == "isal":
        pytest.importorskip("isal")
        assert gzip_files.gzip_module().__name__ == "isal.igzip"
    else:
        monkeypatch.setattr(gzip_files, "gzip_module", lambda: gzip)
    return request.param


def test_volume_and_warp_round_trip_and_are_plain_gzip(tmp_path: Path, compressor) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((6, 7, 8)).astype(np.float32)
    io.save_volume(io.Volume(image, AFFINE), tmp_path / "a.nii.gz")
    disp = rng.normal(size=(3, 6, 7, 8)).astype(np.float32)
    io.save_warp(disp, tmp_path / "w.nii.gz", AFFINE)
    # a standard gzip stream: the standard library and nibabel read it without morphreg
    raw = gzip.decompress((tmp_path / "a.nii.gz").read_bytes())
    assert np.array_equal(nib.Nifti1Image.from_bytes(raw).get_fdata(dtype=np.float32), image)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "w.nii.gz").dataobj)[:, :, :, 0, :],
                          np.moveaxis(disp, 0, -1))
    back = io.load_volume(tmp_path / "a.nii.gz")
    assert np.array_equal(back.data, image) and np.allclose(back.affine, AFFINE)
    assert np.array_equal(io.load_warp(tmp_path / "w.nii.gz").disp, disp)


def test_mgz_round_trip(tmp_path: Path, compressor) -> None:
    labels = np.arange(4 * 5 * 6, dtype=np.int32).reshape(4, 5, 6)
    io.save_volume(io.Volume(labels, AFFINE), tmp_path / "s.mgz")
    assert np.array_equal(io.load_volume(tmp_path / "s.mgz").data, labels)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "s.mgz").dataobj), labels)


def test_nii_output_is_written_uncompressed(tmp_path: Path) -> None:
    io.save_warp(np.zeros((3, 4, 5, 6), np.float32), tmp_path / "w.nii", AFFINE)
    data = (tmp_path / "w.nii").read_bytes()
    assert data[344:348] == b"n+1\x00"  # the NIfTI-1 magic of a single file, no gzip header
    assert len(data) == 352 + 3 * 4 * 5 * 6 * 4


def test_a_flipped_bit_is_refused_by_either_back_end(tmp_path: Path, compressor) -> None:
    io.save_volume(io.Volume(np.linspace(0, 1, 512, dtype=np.float32).reshape(8, 8, 8), AFFINE), tmp_path / "a.nii.gz")
    damaged = bytearray((tmp_path / "a.nii.gz").read_bytes())
    damaged[-6] ^= 0x01  # inside the CRC32 trailer
    (tmp_path / "a.nii.gz").write_bytes(bytes(damaged))
    with pytest.raises(io.ImageReadError, match=r"damaged gzip data \(CRC check failed"):
        io.load_volume(tmp_path / "a.nii.gz")
