"""FreeSurfer LTA files, checked against FreeSurfer's own reading of them (derived here, not through
nitransforms), on fixed and moving grids that differ in shape, voxel size and orientation.

FreeSurfer's semantics (``utils/transform.cpp``, ``LTAchangeType``; ``mri_vol2vol``):
- a ``LINEAR_RAS_TO_RAS`` (type 1) LTA holds ``M`` mapping a src RAS point to a dst RAS point; its
  voxel form is ``vox2vox = inv(dst.vox2ras) @ M @ src.vox2ras`` (src voxel -> dst voxel);
- a volume-info block gives ``vox2ras = [Mdc @ diag(voxelsize) | c - Mdc @ diag(voxelsize) @ dim / 2]``
  with ``Mdc = [xras yras zras]`` (direction columns) and ``c = cras``;
- ``mri_vol2vol --mov MOV --targ TARG --lta A.lta`` (without ``--lta-inv``) takes src = MOV and
  dst = TARG, and fills target voxel ``j`` with MOV at voxel ``inv(vox2vox) @ j`` (trilinear).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from morphreg import io
from morphreg.io import load_matrix, save_matrix

FIXED_SHAPE, MOVING_SHAPE = (22, 19, 17), (21, 27, 24)


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _grid(rotation: np.ndarray, spacing, shape, centre) -> np.ndarray:
    """A vox2ras matrix whose voxel grid is centred on ``centre`` (RAS mm)."""
    a = np.eye(4)
    a[:3, :3] = rotation @ np.diag(spacing)
    a[:3, 3] = np.asarray(centre) - a[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return a


# fixed: oblique, anisotropic, x flipped; moving: axes permuted (an LPI-like scan), other spacing
FIXED_AFFINE = _grid(_rotation(2, 0.3) @ _rotation(0, 0.2), [-1.2, 0.9, 1.5], FIXED_SHAPE, [3.0, -2.0, 1.0])
MOVING_AFFINE = _grid(_rotation(1, 0.25) @ np.array([[0, -1, 0], [1, 0, 0], [0, 0, -1.0]]), [1.6, 1.3, 1.5],
                      MOVING_SHAPE, [0.0, 1.0, -1.5])


def _world_matrix() -> np.ndarray:
    """W: fixed RAS point -> moving RAS point (a rotation, scaling and a shift of several mm)."""
    w = np.eye(4)
    w[:3, :3] = _rotation(2, 0.12) @ _rotation(1, -0.08) @ np.diag([1.06, 0.95, 1.03])
    w[:3, 3] = [2.5, -1.8, 1.2]
    return w


def _content(points: np.ndarray) -> np.ndarray:
    """A smooth function of RAS position, ``points`` (3, N) mm."""
    out = np.zeros(points.shape[1])
    for centre, width, height in (([1, -1, 0], 7.0, 10.0), ([-5, 4, 3], 4.0, 6.0), ([6, 3, -4], 3.5, -5.0)):
        out += height * np.exp(-((points - np.asarray(centre, float)[:, None]) ** 2).sum(0) / (2 * width ** 2))
    return out


def _voxel_ras(affine: np.ndarray, shape) -> np.ndarray:
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return affine[:3, :3] @ index + affine[:3, 3:4]


def _parse_lta(path) -> dict:
    """The type, 4x4 matrix and src/dst volume-info blocks of an LTA text file."""
    lines = [line.split("#")[0].strip() for line in open(path).read().splitlines()]
    lines = [line for line in lines if line]
    out: dict = {}
    for k, line in enumerate(lines):
        if line.startswith("type"):
            out["type"] = int(line.split("=")[1])
        if line == "1 4 4":
            out["M"] = np.array([[float(v) for v in lines[k + 1 + r].split()] for r in range(4)])
        if line in ("src volume info", "dst volume info"):
            block = {}
            for entry in lines[k + 1:k + 9]:
                key, _, value = entry.partition("=")
                block[key.strip()] = value.split()
            out[line.split()[0]] = block
    return out


def _fs_vox2ras(block: dict) -> np.ndarray:
    dim = np.array([int(v) for v in block["volume"]], dtype=np.float64)
    size = np.array([float(v) for v in block["voxelsize"]])
    mdc = np.column_stack([[float(v) for v in block[k]] for k in ("xras", "yras", "zras")])
    c = np.array([float(v) for v in block["cras"]])
    a = np.eye(4)
    a[:3, :3] = mdc @ np.diag(size)
    a[:3, 3] = c - a[:3, :3] @ (dim / 2)
    return a


def _fs_vox2vox(path) -> tuple[np.ndarray, dict]:
    """FreeSurfer's vox2vox (src voxel -> dst voxel) of an LTA file, and the parsed file."""
    lta = _parse_lta(path)
    src, dst = _fs_vox2ras(lta["src"]), _fs_vox2ras(lta["dst"])
    if lta["type"] == 1:
        return np.linalg.inv(dst) @ lta["M"] @ src, lta
    assert lta["type"] == 0
    return lta["M"], lta


def _mri_vol2vol(path, moving: np.ndarray, targ_shape) -> np.ndarray:
    """``mri_vol2vol --mov moving --targ fixed --lta path`` (trilinear, 0 outside)."""
    vox2vox, _ = _fs_vox2vox(path)
    targ_to_mov = np.linalg.inv(vox2vox)
    index = np.indices(targ_shape, dtype=np.float64).reshape(3, -1)
    coords = targ_to_mov[:3, :3] @ index + targ_to_mov[:3, 3:4]
    return ndimage.map_coordinates(moving, coords, order=1, mode="constant", cval=0.0).reshape(targ_shape)


def _volumes() -> tuple[io.Volume, io.Volume]:
    moving = _content(_voxel_ras(MOVING_AFFINE, MOVING_SHAPE)).reshape(MOVING_SHAPE).astype(np.float32)
    fixed = _content(_voxel_ras(FIXED_AFFINE, FIXED_SHAPE)).reshape(FIXED_SHAPE).astype(np.float32)
    return io.Volume(fixed, FIXED_AFFINE), io.Volume(moving, MOVING_AFFINE)


def _inside(vox: np.ndarray) -> np.ndarray:
    """Fixed voxels whose moving sample lies at least 1 voxel inside the moving grid."""
    index = np.indices(FIXED_SHAPE, dtype=np.float64).reshape(3, -1)
    coords = vox[:3, :3] @ index + vox[:3, 3:4]
    upper = np.asarray(MOVING_SHAPE, dtype=np.float64)[:, None] - 2
    return np.all((coords >= 1) & (coords <= upper), axis=0).reshape(FIXED_SHAPE)


def test_lta_export_maps_fixed_voxels_to_the_right_moving_voxels(tmp_path):
    """The file's blocks name the grids (src = moving, dst = fixed, as ``mri_vol2vol --mov moving
    --targ fixed`` needs) and its vox2vox sends every fixed voxel to ``inv(A_mov) W A_fix`` of it."""
    fixed, moving = _volumes()
    w = _world_matrix()
    save_matrix(w, tmp_path / "a.lta", "lta", fixed, moving)
    vox2vox, lta = _fs_vox2vox(tmp_path / "a.lta")
    np.testing.assert_allclose(_fs_vox2ras(lta["src"]), MOVING_AFFINE, atol=1e-5)
    np.testing.assert_allclose(_fs_vox2ras(lta["dst"]), FIXED_AFFINE, atol=1e-5)
    assert [int(v) for v in lta["src"]["volume"]] == list(MOVING_SHAPE)
    # vox2vox maps src (moving) voxels to dst (fixed) voxels: its inverse is fixed voxel -> moving voxel
    expected = np.linalg.inv(MOVING_AFFINE) @ w @ FIXED_AFFINE
    np.testing.assert_allclose(np.linalg.inv(vox2vox), expected, atol=1e-6)


def test_mri_vol2vol_reading_of_lta_export_reproduces_moved(tmp_path):
    """Resampling the moving image the way ``mri_vol2vol`` reads the exported file gives morphreg's
    moved image (moving resampled onto the fixed grid, then warped by W) and the analytic answer."""
    from morphreg import spatial
    from morphreg.workflows.warps import matrix_disp

    fixed, moving = _volumes()
    w = _world_matrix()
    save_matrix(w, tmp_path / "a.lta", "lta", fixed, moving)
    theirs = _mri_vol2vol(tmp_path / "a.lta", moving.data, FIXED_SHAPE)
    on_fixed = io.resample_to(moving, fixed)
    disp, _ = matrix_disp(w, fixed)
    ours = spatial.warp(io.to_tensor(on_fixed), disp)[0, 0].numpy()
    truth = _content(w[:3, :3] @ _voxel_ras(FIXED_AFFINE, FIXED_SHAPE) + w[:3, 3:4]).reshape(FIXED_SHAPE)
    inside = _inside(np.linalg.inv(MOVING_AFFINE) @ w @ FIXED_AFFINE)
    assert inside.mean() > 0.3
    scale = np.ptp(truth[inside])
    assert np.abs(theirs - truth)[inside].mean() / scale < 0.01
    assert np.abs(theirs - ours)[inside].mean() / scale < 0.01


def test_cli_lta_export_applies_like_mri_vol2vol(tmp_path):
    """End to end: ``register --method affine --matrix A.lta`` on different grids; FreeSurfer's
    reading of A.lta resamples the moving image to morphreg's ``--moved``."""
    from morphreg.cli import main

    fixed, moving = _volumes()
    # the moving image holds the fixed content moved by W0 (moving(q) = content(inv(W0) q))
    w0 = _world_matrix()
    q = _voxel_ras(MOVING_AFFINE, MOVING_SHAPE)
    inv = np.linalg.inv(w0)
    moving = io.Volume(_content(inv[:3, :3] @ q + inv[:3, 3:4]).reshape(MOVING_SHAPE).astype(np.float32),
                       MOVING_AFFINE)
    io.save_volume(moving, tmp_path / "m.nii.gz")
    io.save_volume(fixed, tmp_path / "f.nii.gz")
    argv = ["register", "--method", "affine", "--moving", str(tmp_path / "m.nii.gz"),
            "--fixed", str(tmp_path / "f.nii.gz"), "--moved", str(tmp_path / "moved.nii.gz"),
            "--matrix", str(tmp_path / "a.lta"), "--matrix-format", "lta",
            "--init-matrix", str(tmp_path / "w0.lta")]
    save_matrix(w0, tmp_path / "w0.lta", "lta", fixed, moving)  # --init-matrix reads it back
    assert main(argv) == 0
    ours = io.load_volume(tmp_path / "moved.nii.gz").data
    theirs = _mri_vol2vol(tmp_path / "a.lta", moving.data, FIXED_SHAPE)
    w = load_matrix(tmp_path / "a.lta", "lta", fixed, moving)
    inside = _inside(np.linalg.inv(MOVING_AFFINE) @ w @ FIXED_AFFINE)
    scale = np.ptp(fixed.data[inside])
    assert np.abs(theirs - ours)[inside].mean() / scale < 0.01
    # the other reading (src and dst swapped, as the file used to be) is far off: the check can fail
    swapped = tmp_path / "swapped.lta"
    lta = _parse_lta(tmp_path / "a.lta")
    _write_fs_lta(swapped, lta["M"], fixed, moving)
    wrong = _mri_vol2vol(swapped, moving.data, FIXED_SHAPE)
    assert np.abs(wrong - ours)[inside].mean() / scale > 0.05


def _write_fs_lta(path, m: np.ndarray, src: io.Volume, dst: io.Volume, lta_type: int = 1) -> None:
    """An LTA as FreeSurfer writes it (own writer: type line with its name, subject and fscale)."""
    def block(v: io.Volume) -> str:
        a = v.affine
        size = np.linalg.norm(a[:3, :3], axis=0)
        mdc = a[:3, :3] / size
        c = a[:3, :3] @ (np.asarray(v.shape, dtype=np.float64) / 2) + a[:3, 3]
        def triple(values) -> str:
            return " ".join(f"{float(v):.15e}" for v in values)

        rows = ["valid = 1  # volume info valid", "filename = /data/x.mgz",
                "volume = " + " ".join(str(n) for n in v.shape), "voxelsize = " + triple(size)]
        rows += [f"{k}   = " + triple(mdc[:, i]) for i, k in enumerate(("xras", "yras", "zras"))]
        rows.append("cras   = " + triple(c))
        return "\n".join(rows)

    name = {0: "LINEAR_VOX_TO_VOX", 1: "LINEAR_RAS_TO_RAS"}[lta_type]
    text = (f"# transform file {path}\n# created by someone\ntype      = {lta_type} # {name}\nnxforms   = 1\n"
            "mean      = 0.0000 0.0000 0.0000\nsigma     = 10000.0000\n1 4 4\n"
            + "\n".join(" ".join(f"{v:.15e}" for v in row) for row in m)
            + f"\nsrc volume info\n{block(src)}\ndst volume info\n{block(dst)}\nsubject unknown\nfscale 0.100000\n")
    open(path, "w").write(text)


@pytest.mark.parametrize("orientation", ["mov_to_targ", "targ_to_mov", "vox2vox"])
def test_lta_import_reads_freesurfer_files_either_way(tmp_path, orientation):
    """`load_matrix` (and so `--init-matrix`) reads FreeSurfer-written LTAs in both orientations and
    in voxel form as the same fixed -> moving W."""
    fixed, moving = _volumes()
    w = _world_matrix()
    path = tmp_path / "fs.lta"
    if orientation == "mov_to_targ":  # mri_robust_register --mov moving --dst fixed
        _write_fs_lta(path, np.linalg.inv(w), moving, fixed)
    elif orientation == "targ_to_mov":  # the same registration inverted (lta_convert --invert)
        _write_fs_lta(path, w, fixed, moving)
    else:  # LINEAR_VOX_TO_VOX: moving voxel -> fixed voxel
        _write_fs_lta(path, np.linalg.inv(FIXED_AFFINE) @ np.linalg.inv(w) @ MOVING_AFFINE, moving, fixed, 0)
    np.testing.assert_allclose(load_matrix(path, "lta", fixed, moving), w, atol=1e-5)  # nitransforms parses f4


def test_lta_round_trip_on_different_grids(tmp_path):
    fixed, moving = _volumes()
    w = _world_matrix()
    save_matrix(w, tmp_path / "a.lta", "lta", fixed, moving)
    np.testing.assert_allclose(load_matrix(tmp_path / "a.lta", "lta", fixed, moving), w, atol=1e-6)
    # nitransforms' reader (which ignores the grid blocks and assumes src = moving) agrees
    from nitransforms.linear import load

    np.testing.assert_allclose(load(str(tmp_path / "a.lta"), fmt="fs").matrix, w, atol=1e-6)


def test_lta_not_an_lta_is_one_line(tmp_path):
    fixed, moving = _volumes()
    (tmp_path / "bad.lta").write_text("type = 1\nnonsense\n")
    with pytest.raises(ValueError, match="cannot read .*bad.lta.* as a FreeSurfer LTA: it is not a FreeSurfer LTA file"):
        load_matrix(tmp_path / "bad.lta", "lta", fixed, moving)
