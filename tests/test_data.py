"""Tests of morphreg.data: collections, normalisation, splits, pairing and synthetic subjects."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from morphreg import data, io
from morphreg.io import ImageReadError, Volume

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("MORPHREG_DATA", REPO / ".." / "shared" / "data"))
OASIS2D = DATA_ROOT / "oasis2d_neurite" / "oasis2d.npz"


def _write(path: Path, array: np.ndarray) -> Path:
    io.save_volume(Volume(array, np.eye(4)), path)
    return path


def _mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    scores = []
    for label in np.union1d(np.unique(a), np.unique(b)):
        if label == 0:
            continue
        x, y = a == label, b == label
        scores.append(2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    return float(np.mean(scores))


# --------------------------------------------------------------------------------------------
# load_collection


def test_collection_from_directory_sorted_by_name(tmp_path: Path) -> None:
    for name, value in (("c.nii.gz", 3), ("a.npy", 1), ("b.nii", 2)):
        _write(tmp_path / name, np.full((4, 5), value, np.float32))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".a.tmp.nii.gz").write_bytes(b"half-written temp file")  # hidden: skipped
    arrays, names = data.load_collection(tmp_path)
    assert names == ["a", "b", "c"]
    assert [float(a[0, 0]) for a in arrays] == [1.0, 2.0, 3.0]
    assert all(a.shape == (4, 5) and a.dtype == np.float32 for a in arrays)


def test_collection_from_txt_list(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    _write(tmp_path / "imgs" / "s2.nii.gz", np.full((3, 4, 5), 2, np.uint8))
    absolute = _write(tmp_path / "s1.npz", np.full((3, 4, 5), 1, np.uint8))
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text(f"# training subjects\n\n../imgs/s2.nii.gz\n  {absolute}  \n")
    arrays, names = data.load_collection(listing)
    assert names == ["s2", "s1"]  # list order, not sorted
    assert [int(a.max()) for a in arrays] == [2, 1]
    assert arrays[0].dtype == np.uint8


def test_collection_from_glob_names_unique_by_folder(tmp_path: Path) -> None:
    for subject, value in (("OAS2", 2), ("OAS1", 1)):
        (tmp_path / subject).mkdir()
        _write(tmp_path / subject / "slice_norm.nii.gz", np.full((4, 4), value, np.float32))
    arrays, names = data.load_collection(str(tmp_path / "*" / "slice_norm.nii.gz"))
    assert names == ["OAS1/slice_norm", "OAS2/slice_norm"]
    assert [float(a.max()) for a in arrays] == [1.0, 2.0]


def test_collection_from_npz_stack(tmp_path: Path) -> None:
    stack = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    np.savez(
        tmp_path / "named.npz", img=stack, seg=stack.astype(np.uint8), subjects=np.array(["x", "y", "z"])
    )
    np.save(tmp_path / "plain.npy", stack)
    arrays, names = data.load_collection(tmp_path / "named.npz", key="seg")
    assert names == ["x", "y", "z"] and arrays[2].dtype == np.uint8
    np.testing.assert_array_equal(np.stack(arrays), stack.astype(np.uint8))
    arrays, names = data.load_collection(tmp_path / "plain.npy")
    assert names == ["0", "1", "2"] and len(arrays) == 3
    with pytest.raises(ImageReadError, match=r"named\.npz'.*pass key=.*\['img', 'seg', 'subjects'\]"):
        data.load_collection(tmp_path / "named.npz")
    np.save(tmp_path / "flat.npy", stack[0])
    with pytest.raises(ImageReadError, match=r"flat\.npy'.*stack \(N, X, Y\).*got shape \(4, 5\)"):
        data.load_collection(tmp_path / "flat.npy")


def test_collection_errors_name_the_spec(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"load_collection: directory '.*empty' holds no image"):
        data.load_collection(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"load_collection: '.*missing' does not exist"):
        data.load_collection(tmp_path / "missing")
    listing = tmp_path / "list.txt"
    listing.write_text("a.nii.gz\n")
    with pytest.raises(ValueError, match=r"'.*list\.txt' line 1: file '.*a\.nii\.gz' does not exist"):
        data.load_collection(listing)
    (tmp_path / "blank.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match=r"the list '.*blank\.txt' names no files"):
        data.load_collection(tmp_path / "blank.txt")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _write(mixed / "a.npy", np.zeros((4, 5), np.float32))
    _write(mixed / "b.npy", np.zeros((4, 6), np.float32))
    with pytest.raises(ValueError, match=r"images in '.*mixed' have inconsistent shapes.*\(4, 6\)"):
        data.load_collection(mixed)
    single = _write(tmp_path / "one.nii.gz", np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"argument 'spec' must be a directory.*single file"):
        data.load_collection(single)
    with pytest.raises(ValueError, match=r"pattern '.*\*\.mgz' matches no image files"):
        data.load_collection(str(mixed / "*.mgz"))


@pytest.mark.skipif(not OASIS2D.is_file(), reason=f"real data not found at {OASIS2D}")
def test_collection_real_oasis2d_npz() -> None:
    images, names = data.load_collection(OASIS2D, key="slice_norm")
    segs, seg_names = data.load_collection(OASIS2D, key="seg4")
    assert len(images) == len(segs) == 364 and names == seg_names
    listed = (OASIS2D.parent / "subjects.txt").read_text().split()
    assert names == listed and names[0] == "OASIS_OAS1_0002_MR1"
    assert images[0].shape == (160, 192) and images[0].dtype == np.float32
    assert 0.0 <= float(images[0].min()) and float(images[0].max()) <= 1.0
    assert segs[0].dtype == np.uint8 and set(np.unique(segs[0])) == {0, 1, 2, 3, 4}


# --------------------------------------------------------------------------------------------
# normalisation and splits


def test_normalise_intensity_known_answers() -> None:
    x = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_allclose(data.normalise_intensity(x), [[0, 0.25], [0.5, 1.0]])
    assert data.normalise_intensity(x).dtype == np.float32
    ramp = np.linspace(0, 1000, 1001)[None]  # percentiles 0.5/99.5 are 5 and 995
    out = data.normalise_intensity(ramp, "percentile")
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out[0, [0, 5, 500, 995, 1000]], [0, 0, 0.5, 1, 1], atol=1e-6)
    const = data.normalise_intensity(np.full((3, 4), 7.0), "percentile")
    assert np.array_equal(const, np.zeros((3, 4))) and not np.isnan(const).any()
    with pytest.raises(ValueError, match=r"normalise_intensity: argument 'method' must be one of"):
        data.normalise_intensity(x, "zscore")


def test_split_subjects_deterministic_disjoint_sorted() -> None:
    train, val = data.split_subjects(50, 0.2, seed=3)
    assert (train, val) == data.split_subjects(50, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert train == sorted(train) and val == sorted(val)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(50))
    assert data.split_subjects(50, 0.2, seed=4).val != val
    assert data.split_subjects(5, 0.01).val.__len__() == 1  # at least one validation subject
    assert data.split_subjects(5, 0.0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(ValueError, match=r"split_subjects: argument 'val_fraction' must be in"):
        data.split_subjects(5, 1.0)
    with pytest.raises(ValueError, match=r"split_subjects: argument 'n' must be an integer >= 1"):
        data.split_subjects(0)


# --------------------------------------------------------------------------------------------
# PairDataset


def _images(n: int = 6, shape: tuple[int, ...] = (8, 10)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random(shape).astype(np.float32) * 5 + i for i in range(n)]


def _segs(n: int = 6, shape: tuple[int, ...] = (8, 10)) -> list[np.ndarray]:
    return [np.full(shape, i, np.uint8) for i in range(n)]


def test_random_pairs_deterministic_per_index_and_distinct() -> None:
    images = _images()
    a = data.PairDataset(images, _segs(), seed=7, pairs_per_epoch=40)
    b = data.PairDataset(images, _segs(), seed=7, pairs_per_epoch=40)
    assert len(a) == 40
    pairs = [a.pair_indices(i) for i in range(40)]
    assert pairs == [b.pair_indices(i) for i in reversed(range(40))][::-1]
    assert all(j != k for j, k in pairs)
    assert len(set(pairs)) > 15  # many different pairs
    item = a[5]
    j, k = pairs[5]
    # subject i's segmentation is filled with i: the item's tensors come from the drawn pair
    assert int(item["moving_seg"].max()) == j and int(item["fixed_seg"].max()) == k
    assert (item["moving_index"], item["fixed_index"]) == (j, k)
    torch.testing.assert_close(a[5]["moving"], b[5]["moving"])
    assert item["moving"].shape == (1, 8, 10) and item["moving"].dtype == torch.float32
    assert item["moving_seg"].shape == (1, 8, 10) and item["moving_seg"].dtype == torch.int64
    np.testing.assert_allclose(item["moving"][0].numpy(), data.normalise_intensity(images[j]))
    other_seed = data.PairDataset(images, seed=8, pairs_per_epoch=40)
    assert [other_seed.pair_indices(i) for i in range(40)] != pairs
    a.set_epoch(1)
    assert [a.pair_indices(i) for i in range(40)] != pairs
    a.set_epoch(0)
    assert [a.pair_indices(i) for i in range(40)] == pairs


def test_items_without_segs_have_no_seg_keys_and_batch() -> None:
    ds = data.PairDataset(_images(4, (6, 5, 4)))
    assert len(ds) == 4
    item = ds[0]
    assert set(item) == {"moving", "fixed", "moving_index", "fixed_index"}
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["moving"].shape == (3, 1, 6, 5, 4)
    before = ds[0]["moving"].clone()
    item["moving"] += 1.0  # items are copies: the dataset is not modified through them
    torch.testing.assert_close(ds[0]["moving"], before)


def test_atlas_and_explicit_pairs() -> None:
    images, segs = _images(3), _segs(3)
    atlas = np.linspace(0, 2, 80, dtype=np.float32).reshape(8, 10)
    atlas_seg = np.full((8, 10), 9, np.int32)
    ds = data.PairDataset(images, segs, "atlas", atlas=atlas, atlas_seg=atlas_seg)
    assert len(ds) == 3 and ds.pair_indices(2) == (2, -1)
    item = ds[2]
    np.testing.assert_allclose(item["fixed"][0].numpy(), atlas / 2, atol=1e-7)
    assert int(item["fixed_seg"].max()) == 9 and int(item["moving_seg"].max()) == 2
    pairs = data.PairDataset(images, segs, "pairs", pairs=[(0, 2), (2, 1)])
    assert len(pairs) == 2 and [pairs.pair_indices(i) for i in range(2)] == [(0, 2), (2, 1)]
    assert int(pairs[1]["moving_seg"].max()) == 2 and int(pairs[1]["fixed_seg"].max()) == 1
    with pytest.raises(IndexError):
        pairs[2]


def test_augment_gamma_deterministic_and_in_range() -> None:
    images = _images(3)
    ds = data.PairDataset(images, augment=True, seed=1)
    plain = data.PairDataset(images, seed=1)
    a, b = ds[1], ds[1]
    torch.testing.assert_close(a["moving"], b["moving"])
    for key in ("moving", "fixed"):
        base = plain[1][key].double()
        aug = a[key].double()
        inside = (base > 0.05) & (base < 0.95)
        gammas = torch.log(aug[inside]) / torch.log(base[inside])
        assert torch.allclose(gammas, gammas[0], atol=1e-4)  # one gamma per image
        assert 0.8 - 1e-4 <= float(gammas[0]) <= 1.25 + 1e-4
        assert abs(float(gammas[0]) - 1.0) > 1e-3


def test_random_pairs_and_augmentation_frozen() -> None:
    """The seeded sequence of pairs and gammas, frozen from the pre-package data.py (a611dd9).

    Splitting the pairing strategies into samplers must not change a training run's numbers.
    """
    images = np.linspace(0, 1, 5 * 8 * 6, dtype=np.float32).reshape(5, 8, 6)
    ds = data.PairDataset(images, pairing="random", pairs_per_epoch=8, seed=3, augment=True, normalise=None)
    expected = {
        0: ([(2, 0), (1, 0), (3, 4), (1, 3), (0, 3), (3, 0), (3, 0), (0, 3)], [23.6066, 12.7137, 32.9084],
            [7.0411, 3.1315, 43.1554]),
        1: ([(0, 3), (3, 2), (2, 3), (3, 4), (2, 0), (0, 2), (2, 3), (2, 3)], [6.7962, 32.0829, 20.7332],
            [33.3801, 24.6026, 34.7385]),
    }
    for epoch, (pairs, moving_sums, fixed_sums) in expected.items():
        ds.set_epoch(epoch)
        assert [ds.pair_indices(i) for i in range(8)] == pairs
        assert [(ds[i]["moving_index"], ds[i]["fixed_index"]) for i in range(8)] == pairs
        assert [float(ds[i]["moving"].sum()) for i in range(3)] == pytest.approx(moving_sums, abs=1e-4)
        assert [float(ds[i]["fixed"].sum()) for i in range(3)] == pytest.approx(fixed_sums, abs=1e-4)


def test_pair_dataset_errors() -> None:
    with pytest.raises(ValueError, match=r"PairDataset: pairing='random' needs at least 2 images"):
        data.PairDataset(_images(1))
    with pytest.raises(ValueError, match=r"PairDataset: argument 'pairing' must be one of"):
        data.PairDataset(_images(), pairing="all")
    with pytest.raises(ValueError, match=r"PairDataset: pairing='atlas' needs argument 'atlas'"):
        data.PairDataset(_images(), pairing="atlas")
    with pytest.raises(ValueError, match=r"argument 'pairs' item 1 must be two indices in \[0, 6\)"):
        data.PairDataset(_images(), pairing="pairs", pairs=[(0, 1), (0, 6)])
    with pytest.raises(ValueError, match=r"argument 'segs' must match 'images'"):
        data.PairDataset(_images(), _segs(5))
    with pytest.raises(TypeError, match=r"argument 'segs' must hold integer label maps"):
        data.PairDataset(_images(), [s.astype(np.float32) for s in _segs()])
    with pytest.raises(ValueError, match=r"all arrays of 'images' must have one shape"):
        data.PairDataset([np.zeros((4, 4)), np.zeros((4, 5))])
    with pytest.raises(ValueError, match=r"augment=True needs images in \[0, 1\]"):
        data.PairDataset(_images(), augment=True, normalise=None)


# --------------------------------------------------------------------------------------------
# read_pairs_csv


def test_read_pairs_csv(tmp_path: Path) -> None:
    for name in ("m.nii.gz", "f.nii.gz", "ms.nii.gz", "fs.nii.gz"):
        _write(tmp_path / "vols" / name, np.zeros((3, 3), np.float32))
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(
        "moving, fixed, moving_seg, fixed_seg, note\n"
        f"vols/m.nii.gz, vols/f.nii.gz, vols/ms.nii.gz, {tmp_path / 'vols' / 'fs.nii.gz'}, x\n"
        "\n"
        "vols/f.nii.gz,vols/m.nii.gz,vols/fs.nii.gz,vols/ms.nii.gz,\n"
    )
    rows = data.read_pairs_csv(csv_path)
    assert len(rows) == 2
    assert rows[0] == {
        "moving": tmp_path / "vols" / "m.nii.gz",
        "fixed": tmp_path / "vols" / "f.nii.gz",
        "moving_seg": tmp_path / "vols" / "ms.nii.gz",
        "fixed_seg": tmp_path / "vols" / "fs.nii.gz",
    }
    (tmp_path / "plain.csv").write_text("moving,fixed\nvols/m.nii.gz,vols/f.nii.gz\n")
    assert list(data.read_pairs_csv(tmp_path / "plain.csv")[0]) == ["moving", "fixed"]


def test_read_pairs_csv_errors(tmp_path: Path) -> None:
    _write(tmp_path / "a.npy", np.zeros((3, 3), np.float32))
    cases = {
        "empty.csv": ("", r"'.*empty\.csv' is empty"),
        "nohead.csv": ("a.npy,a.npy\n", r"header row with columns moving,fixed.*missing"),
        "onlyhead.csv": ("moving,fixed\n", r"has a header but no pairs"),
        "cell.csv": ("moving,fixed\na.npy,\n", r"line 2: empty 'fixed' cell"),
        "gone.csv": ("moving,fixed\na.npy,b.npy\n", r"line 2: fixed file '.*b\.npy' does not exist"),
        "half.csv": ("moving,fixed,moving_seg\na.npy,a.npy,a.npy\n", r"'moving_seg' but not"),
    }
    for name, (text, pattern) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=rf"read_pairs_csv: pairs file .*{pattern}"):
            data.read_pairs_csv(tmp_path / name)
    with pytest.raises(ValueError, match=r"read_pairs_csv: pairs file '.*x\.csv' does not exist"):
        data.read_pairs_csv(tmp_path / "x.csv")


# --------------------------------------------------------------------------------------------
# synthetic_shapes


def test_synthetic_shapes_deterministic_related_subjects() -> None:
    start = time.perf_counter()
    images, labels = data.synthetic_shapes(64, (96, 112), n_labels=8, seed=0)
    assert time.perf_counter() - start < 2.0
    assert images.shape == labels.shape == (64, 96, 112)
    assert images.dtype == np.float32 and labels.dtype == np.uint8
    assert images.min() >= 0.0 and images.max() <= 1.0
    again_images, again_labels = data.synthetic_shapes(10, (96, 112), n_labels=8, seed=0)
    np.testing.assert_array_equal(again_images, images[:10])  # subject i depends on (seed, i)
    np.testing.assert_array_equal(again_labels, labels[:10])
    for seg in labels[:10]:
        assert set(np.unique(seg)) == set(range(9))  # background + 8 structures
    dices = [_mean_dice(labels[0], labels[i]) for i in range(1, 10)]
    assert 0.3 < min(dices) and max(dices) < 0.95
    other = data.synthetic_shapes(2, (96, 112), n_labels=8, seed=1)[1]
    assert not np.array_equal(other[0], labels[0])
    # image intensities follow the labels: mean intensity differs between structures
    means = [images[0][labels[0] == label].mean() for label in range(9)]
    assert means[0] < 0.2 and min(abs(np.diff(sorted(means)))) > 0.02


def test_synthetic_shapes_3d_and_errors() -> None:
    images, labels = data.synthetic_shapes(2, (24, 28, 20), n_labels=5, seed=2)
    assert images.shape == (2, 24, 28, 20) and labels.max() == 5
    assert 0.3 < _mean_dice(labels[0], labels[1]) < 0.95
    with pytest.raises(ValueError, match=r"synthetic_shapes: argument 'shape' must have 2 or 3"):
        data.synthetic_shapes(2, (16,))
    with pytest.raises(ValueError, match=r"synthetic_shapes: argument 'n_labels' must be"):
        data.synthetic_shapes(2, (16, 16), n_labels=300)
