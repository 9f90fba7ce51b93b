"""`morphreg.register(...)` and `morphreg register ...` give the same field for every method, on
images with a few hot voxels (where min-max and percentile normalisation differ)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import morphreg
from morphreg import io
from morphreg.cli import main

SHAPE = (40, 36)
AFFINE = np.eye(4)  # morphreg.register takes arrays on this grid


def _images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    fixed = ndimage.gaussian_filter(rng.random(SHAPE), 3.0)
    fixed = (fixed - fixed.min()) / np.ptp(fixed) * 100
    moving = ndimage.shift(fixed, (1.5, -1.0), order=3, mode="nearest")
    moving = ndimage.map_coordinates(moving, np.indices(SHAPE) + 0.8 * np.sin(np.indices(SHAPE) / 6.0)[::-1],
                                     order=3, mode="nearest")
    for image, spots in ((moving, [(5, 7), (30, 20), (12, 30)]), (fixed, [(33, 4), (8, 18)])):
        for spot in spots:
            image[spot] = 40 * image.max()  # hot voxels: min-max squashes the rest towards 0
    return moving.astype(np.float32), fixed.astype(np.float32)


METHODS = [("affine", []), ("rigid", []), ("dense", ["--iterations", "20", "10"]), ("ffd", []), ("brain2d", [])]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api_cli")
    moving, fixed = _images()
    io.save_volume(io.Volume(moving, AFFINE), folder / "m.nii.gz")
    io.save_volume(io.Volume(fixed, AFFINE), folder / "f.nii.gz")
    return folder, moving, fixed


@pytest.mark.parametrize("method,extra", METHODS, ids=[m for m, _ in METHODS])
def test_api_and_cli_give_the_same_field(files, method, extra):
    folder, moving, fixed = files
    network = method == "brain2d"
    kind = ["--model", method] if network else ["--method", method]
    warp = folder / f"{method}.warp.nii.gz"
    argv = ["register", *kind, "--moving", str(folder / "m.nii.gz"), "--fixed", str(folder / "f.nii.gz"),
            "--moved", str(folder / f"{method}.moved.nii.gz"), "--warp", str(warp), "--quiet", *extra]
    assert main(argv) == 0
    cli = io.load_warp(warp).disp
    options = {"model": method} if network else {"method": method}
    if method == "dense":
        options["iterations"] = [20, 10]
    api = morphreg.register(moving, fixed, **options).disp
    assert api.shape == cli.shape
    assert np.abs(api - cli).max() < 1e-3, np.abs(api - cli).max()
    # the comparison sees the normalisation: min-max scaling moves the field (a network's input too)
    other = morphreg.register(moving, fixed, normalise="minmax",
                              **options).disp
    assert np.abs(other - cli).max() > 1e-2


def test_normalisation_default_is_stated_once():
    """The command line and the API take the classical default from one constant."""
    from morphreg.workflows import spec

    assert spec.network_normalisation(None) == spec.CLASSICAL_NORMALISATION == "percentile"
