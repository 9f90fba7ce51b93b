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


@pytest.mark.parametrize("stored", ["percentile", "minmax"])
def test_register_uses_the_models_normalisation(tmp_path, stored):
    """A checkpoint's recorded normalisation is what `morphreg.register` (and the CLI) apply: the same
    weights saved with 'percentile' and with 'minmax' give different fields on images with hot voxels."""
    import torch

    from morphreg.models import VxmDense

    torch.manual_seed(0)
    net = VxmDense(2, enc=(4, 8), dec=(8, 8, 4))
    with torch.no_grad():
        net.flow.weight.normal_(0, 0.3)  # a field that depends on the input intensities
    net.save(tmp_path / "model.pt", metadata={"normalise": stored})
    moving, fixed = _images()
    other = "minmax" if stored == "percentile" else "percentile"
    implied = morphreg.register(moving, fixed, model=tmp_path / "model.pt").disp
    as_stored = morphreg.register(moving, fixed, model=tmp_path / "model.pt", normalise=stored).disp
    not_stored = morphreg.register(moving, fixed, model=tmp_path / "model.pt", normalise=other).disp
    np.testing.assert_array_equal(implied, as_stored)
    assert np.abs(implied - not_stored).max() > 1e-2 * max(np.abs(implied).max(), 1e-6)
    io.save_volume(io.Volume(moving, AFFINE), tmp_path / "m.nii.gz")
    io.save_volume(io.Volume(fixed, AFFINE), tmp_path / "f.nii.gz")
    assert main(["register", "--model", str(tmp_path / "model.pt"), "--moving", str(tmp_path / "m.nii.gz"),
                 "--fixed", str(tmp_path / "f.nii.gz"), "--moved", str(tmp_path / "o.nii.gz"),
                 "--warp", str(tmp_path / "w.nii.gz")]) == 0
    assert np.abs(io.load_warp(tmp_path / "w.nii.gz").disp - implied).max() < 1e-4
