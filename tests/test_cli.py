"""The command line end to end on small synthetic NIfTI files with a non-identity affine."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from morphreg import io
from morphreg.cli import main
from morphreg.data import synthetic_shapes

AFFINE = np.array([[-1.0, 0, 0, 80], [0, 0, 1.2, -112], [0, -1, 0, 96], [0, 0, 0, 1]])
TINY = ["--enc", "4", "4", "4", "4", "--dec", "4", "4", "4", "4", "4", "4"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    images, labels = synthetic_shapes(10, (40, 36), n_labels=4, seed=1)
    (root / "img").mkdir()
    (root / "seg").mkdir()
    for i in range(10):
        nib.save(nib.Nifti1Image(images[i][..., None], AFFINE), root / "img" / f"s{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(labels[i][..., None].astype(np.uint8), AFFINE), root / "seg" / f"s{i:02d}.nii.gz")
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    code = main(["train", "--data", str(dataset / "img"), "--segs", str(dataset / "seg"), "--loss", "ncc",
                 "--steps", "6", "--val-every", "3", "--checkpoint-every", "3", "--lr", "1e-3",
                 "--no-progress", "--out", str(run), *TINY])
    assert code == 0
    return run


def test_train_writes_a_complete_run(trained):
    for name in ("model.pt", "last.pt", "state.pt", "metrics.csv", "settings.json", "split.json",
                 "train.log", "training_curves.png"):
        assert (trained / name).is_file(), name
    rows = list(csv.DictReader(open(trained / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [3, 6]
    # a real Dice at every validation (the string "nan" would be truthy)
    val_dice = [float(r["val_dice"]) for r in rows]
    assert all(math.isfinite(d) and 0.0 < d <= 1.0 for d in val_dice), val_dice
    assert not list(trained.glob("*.tmp")) and not list(trained.glob(".*tmp"))


def test_register_outputs_carry_the_fixed_geometry(dataset, trained, tmp_path, capsys):
    out = tmp_path
    code = main(["register", "--model", str(trained), "--moving", str(dataset / "img" / "s00.nii.gz"),
                 "--fixed", str(dataset / "img" / "s01.nii.gz"), "--moved", str(out / "moved.nii.gz"),
                 "--warp", str(out / "warp.nii.gz"), "--moving-seg", str(dataset / "seg" / "s00.nii.gz"),
                 "--moved-seg", str(out / "moved_seg.nii.gz"), "--fixed-seg", str(dataset / "seg" / "s01.nii.gz")])
    assert code == 0
    assert "Dice (mean over" in capsys.readouterr().out
    moved = nib.load(out / "moved.nii.gz")
    assert np.allclose(moved.affine, AFFINE)
    assert moved.shape[:2] == (40, 36)
    assert moved.get_data_dtype() == np.float32
    seg = nib.load(out / "moved_seg.nii.gz")
    assert np.allclose(seg.affine, AFFINE) and seg.get_data_dtype() == np.uint8
    assert set(np.unique(seg.get_fdata())) <= set(range(5))
    warp = nib.load(out / "warp.nii.gz")
    assert np.allclose(warp.affine, AFFINE)
    assert warp.shape == (40, 36, 1, 1, 2)
    assert b"units=voxel" in warp.header["descrip"].tobytes()
    # warping with the saved field reproduces the moved image
    assert main(["warp", "--moving", str(dataset / "img" / "s00.nii.gz"), "--warp", str(out / "warp.nii.gz"),
                 "--moved", str(out / "again.nii.gz")]) == 0
    again = nib.load(out / "again.nii.gz").get_fdata()
    assert np.allclose(again, moved.get_fdata(), atol=1e-5)
    assert main(["warp", "--moving", str(dataset / "seg" / "s00.nii.gz"), "--warp", str(out / "warp.nii.gz"),
                 "--moved", str(out / "again_seg.nii.gz")]) == 0
    again_seg = nib.load(out / "again_seg.nii.gz")
    assert again_seg.get_data_dtype() == np.uint8
    assert np.array_equal(again_seg.get_fdata(), seg.get_fdata())


def test_register_mm_warp_and_resampled_moving(dataset, trained, tmp_path, capsys):
    # the moving image on another grid (shifted by 2 voxels through its affine)
    shifted = AFFINE.copy()
    shifted[:3, 3] += AFFINE[:3, 0] * 2
    data = nib.load(dataset / "img" / "s00.nii.gz").get_fdata().astype(np.float32)
    nib.save(nib.Nifti1Image(data, shifted), tmp_path / "moving.nii.gz")
    code = main(["register", "--model", str(trained / "model.pt"), "--moving", str(tmp_path / "moving.nii.gz"),
                 "--fixed", str(dataset / "img" / "s01.nii.gz"), "--moved", str(tmp_path / "moved.nii.gz"),
                 "--warp", str(tmp_path / "warp.nii.gz"), "--warp-units", "mm"])
    assert code == 0
    assert "resampled onto the fixed grid" in capsys.readouterr().err
    warp = nib.load(tmp_path / "warp.nii.gz")
    assert warp.shape == (40, 36, 1, 1, 3) and b"units=mm" in warp.header["descrip"].tobytes()
    voxel = io.load_warp(tmp_path / "warp.nii.gz").disp
    assert voxel.shape == (2, 40, 36)


def _dice_oracle(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the non-zero labels present in either map, by plain numpy."""
    labels = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    return float(np.mean([2.0 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)) for k in labels]))


def _seg(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj).astype(np.int64)


def test_evaluate_writes_reports(dataset, trained, tmp_path, capsys):
    # the trained run after 6 steps is nearly the identity; a flow head that deforms makes Dice
    # after registration differ from Dice before, so the two cannot be confused
    checkpoint = torch.load(trained / "model.pt", weights_only=True)
    weight = checkpoint["state_dict"]["flow.weight"]
    checkpoint["state_dict"]["flow.weight"] = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
    checkpoint["state_dict"]["flow.bias"] = torch.tensor([3.0, -2.0])  # plus a shift of (3, -2) voxels
    torch.save(checkpoint, tmp_path / "deforming.pt")
    trained = tmp_path / "deforming.pt"
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w") as handle:
        handle.write("moving,fixed,moving_seg,fixed_seg\n")
        for i in range(3):
            handle.write(f"{dataset}/img/s0{i}.nii.gz,{dataset}/img/s0{i + 1}.nii.gz,"
                         f"{dataset}/seg/s0{i}.nii.gz,{dataset}/seg/s0{i + 1}.nii.gz\n")
    code = main(["evaluate", "--model", str(trained), "--pairs", str(pairs), "--out", str(tmp_path / "rep"),
                 "--figures", "1", "--no-progress"])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "rep" / "pairs.csv")))
    assert len(rows) == 3
    for i, row in enumerate(rows):
        # the reported Dice, recomputed by numpy: before from the label files, after from the moved
        # labels that `morphreg register` writes for the same pair with the same model
        moving_seg, fixed_seg = dataset / "seg" / f"s0{i}.nii.gz", dataset / "seg" / f"s0{i + 1}.nii.gz"
        assert float(row["dice_before"]) == pytest.approx(_dice_oracle(_seg(moving_seg), _seg(fixed_seg)), abs=1e-6)
        assert main(["register", "--model", str(trained), "--moving", str(dataset / "img" / f"s0{i}.nii.gz"),
                     "--fixed", str(dataset / "img" / f"s0{i + 1}.nii.gz"), "--moving-seg", str(moving_seg),
                     "--moved", str(tmp_path / "moved.nii.gz"), "--moved-seg", str(tmp_path / "moved_seg.nii.gz")]) == 0
        after = _dice_oracle(_seg(tmp_path / "moved_seg.nii.gz"), _seg(fixed_seg))
        assert float(row["dice_after"]) == pytest.approx(after, abs=1e-6)
        assert abs(float(row["dice_after"]) - float(row["dice_before"])) > 1e-3
        assert float(row["folding_pct"]) >= 0.0 and float(row["seconds"]) > 0.0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["dice_after"]["mean"] == pytest.approx(np.mean([float(r["dice_after"]) for r in rows]), abs=1e-6)
    assert (tmp_path / "rep" / "summary.json").is_file()
    assert (tmp_path / "rep" / "figures" / "pair000_registration.png").is_file()
    assert (tmp_path / "rep" / "figures" / "dice_per_structure.png").is_file()


def test_resume_continues_to_the_same_weights(dataset, tmp_path):
    common = ["train", "--data", str(dataset / "img"), "--loss", "mse", "--lr", "1e-3", "--val-every", "2",
              "--checkpoint-every", "2", "--no-progress", "--seed", "3", *TINY]
    assert main([*common, "--steps", "4", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--steps", "2", "--out", str(tmp_path / "b")]) == 0
    assert main([*common, "--steps", "4", "--out", str(tmp_path / "b")]) == 1  # refuses to overwrite a run
    assert main([*common, "--steps", "4", "--out", str(tmp_path / "b"), "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader(open(tmp_path / "b" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["register", "--model", "{run}", "--moving", "{data}/img/missing.nii.gz", "--fixed",
          "{data}/img/s01.nii.gz", "--moved", "{tmp}/m.nii.gz"], "does not exist"),
        (["register", "--model", "{tmp}", "--moving", "{data}/img/s00.nii.gz", "--fixed",
          "{data}/img/s01.nii.gz", "--moved", "{tmp}/m.nii.gz"], "--model: checkpoint .*model.pt. does not exist"),
        (["register", "--model", "{run}", "--moving", "{tmp}/vol3d.nii.gz", "--fixed",
          "{data}/img/s01.nii.gz", "--moved", "{tmp}/m.nii.gz"], "3D but --fixed"),
        (["register", "--model", "{tmp}/plain.pt", "--moving", "{data}/img/s00.nii.gz", "--fixed",
          "{data}/img/s01.nii.gz", "--moved", "{tmp}/m.nii.gz"], "not a morphreg model"),
        (["register", "--moving", "{data}/img/s00.nii.gz", "--fixed", "{data}/img/s01.nii.gz",
          "--moved", "{tmp}/m.nii.gz"], "give --model"),
        (["train", "--data", "{data}/img", "--out", "{tmp}/r", "--seg-weight", "1"], "needs --segs"),
        (["train", "--data", "{tmp}/empty", "--out", "{tmp}/r"], "no image files|empty|no files"),
        (["warp", "--moving", "{data}/img/s00.nii.gz", "--warp", "{data}/img/s01.nii.gz",
          "--moved", "{tmp}/m.nii.gz"], "does not state its units"),
    ],
)
def test_bad_input_gives_one_clear_line(argv, message, dataset, trained, tmp_path, capsys):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), AFFINE), tmp_path / "vol3d.nii.gz")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    (tmp_path / "empty").mkdir()
    filled = [a.format(run=trained, data=dataset, tmp=tmp_path) for a in argv]
    code = main(filled)
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"morphreg {argv[0]}: error:")
    assert "Traceback" not in err
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "m.nii.gz").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "x", "--out", "y", "--loss", "ssd"],
        ["train", "--data", "x", "--out", "y", "--steps", "0"],
        ["train", "--data", "x", "--out", "y", "--lambda", "-1"],
        ["register", "--moving", "a"],
        ["fly"],
        ["warp", "--moving", "a", "--warp", "b", "--moved", "c", "--interp", "cubic"],
    ],
)
def test_usage_errors_exit_2_without_traceback(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_classical_methods_and_composition(dataset, trained, tmp_path, capsys):
    base = ["--moving", str(dataset / "img" / "s02.nii.gz"), "--fixed", str(dataset / "img" / "s03.nii.gz"),
            "--moving-seg", str(dataset / "seg" / "s02.nii.gz"), "--fixed-seg", str(dataset / "seg" / "s03.nii.gz")]
    for method in ("affine", "dense", "ffd"):
        extra = ["--matrix", str(tmp_path / "matrix.txt")] if method == "affine" else []
        code = main(["register", "--method", method, *base, "--moved", str(tmp_path / f"{method}.nii.gz"),
                     "--warp", str(tmp_path / f"{method}_warp.nii.gz"), *extra])
        assert code == 0
        captured = capsys.readouterr()
        out = captured.out
        if method == "affine":  # one progress bar per level on stderr (--quiet: none, below)
            assert "affine level 1/" in captured.err and "loss=" in captured.err
        before, after = (float(x) for x in
                         __import__("re").search(r"Dice .*: ([0-9.]+) \(before: ([0-9.]+)\)", out).groups()[::-1])
        if method != "affine":  # the synthetic subjects differ by smooth deformations, not by an affine
            assert after > before, (method, before, after)
        assert np.allclose(nib.load(tmp_path / f"{method}.nii.gz").affine, AFFINE)
    matrix = np.loadtxt(tmp_path / "matrix.txt")
    assert matrix.shape == (4, 4) and np.allclose(matrix[3], [0, 0, 0, 1])
    assert main(["register", "--method", "affine", *base, "--moved", str(tmp_path / "quiet.nii.gz"), "--quiet"]) == 0
    assert "level" not in capsys.readouterr().err
    # network with affine pre-alignment and instance optimisation: one composed warp
    assert main(["register", "--model", str(trained), "--affine", "--optimize", "20", *base,
                 "--moved", str(tmp_path / "composed.nii.gz"), "--warp", str(tmp_path / "composed_warp.nii.gz"),
                 "--matrix", str(tmp_path / "m2.txt")]) == 0
    assert (tmp_path / "m2.txt").exists()
    assert main(["warp", "--moving", str(dataset / "img" / "s02.nii.gz"), "--warp", str(tmp_path / "composed_warp.nii.gz"),
                 "--moved", str(tmp_path / "again.nii.gz")]) == 0
    assert np.allclose(nib.load(tmp_path / "again.nii.gz").get_fdata(),
                       nib.load(tmp_path / "composed.nii.gz").get_fdata(), atol=1e-5)


def test_learned_affine_network_trains_and_prepends(dataset, trained, tmp_path):
    run = tmp_path / "affine_run"
    assert main(["train", "--model", "affine", "--data", str(dataset / "img"), "--steps", "3", "--no-progress",
                 "--out", str(run)]) == 0
    from morphreg.models import AffineNet, load_model

    assert isinstance(load_model(run / "model.pt"), AffineNet)
    base = ["--moving", str(dataset / "img" / "s02.nii.gz"), "--fixed", str(dataset / "img" / "s03.nii.gz")]
    assert main(["register", "--model", str(run), *base, "--moved", str(tmp_path / "a.nii.gz")]) == 0
    assert main(["register", "--model", str(trained), "--affine-model", str(run), *base,
                 "--moved", str(tmp_path / "b.nii.gz")]) == 0
    assert main(["register", "--method", "dense", "--affine-model", str(run), *base,
                 "--moved", str(tmp_path / "c.nii.gz")]) == 1


def test_train_from_npz_stack_with_keys_and_seg_loss(tmp_path):
    images, labels = synthetic_shapes(8, (32, 36), n_labels=3, seed=4)
    np.savez(tmp_path / "stack.npz", subjects=np.array([f"sub{i}" for i in range(8)]), img=images, seg=labels)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "stack.npz"), "--npz-key", "img", "--segs",
                 str(tmp_path / "stack.npz"), "--seg-key", "seg", "--seg-weight", "0.5", "--steps", "3",
                 "--no-progress", "--out", str(run), *TINY]) == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert float(rows[-1]["seg"]) > 0.0  # the Dice term was computed
    split = json.loads((run / "split.json").read_text())
    assert sorted(split["train"] + split["val"]) == [f"sub{i}" for i in range(8)]
    assert not set(split["train"]) & set(split["val"])


def test_demo_runs_end_to_end_on_its_own_data(tmp_path, capsys, monkeypatch):
    from morphreg.workflows import demo

    seen = {}

    def recording_train(settings, train_set, val_set, *args, **kwargs):
        seen["train"], seen["val"] = train_set, val_set
        return train(settings, train_set, val_set, *args, **kwargs)

    def recording_evaluate(register, pairs, *args, **kwargs):
        seen["test"] = list(pairs)
        return evaluate_pairs(register, iter(seen["test"]), *args, **kwargs)

    train, evaluate_pairs = demo.train, demo.evaluate_pairs
    monkeypatch.setattr(demo, "train", recording_train)
    monkeypatch.setattr(demo, "evaluate_pairs", recording_evaluate)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--subjects", "30", "--test-pairs", "3", "--steps", "4",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Dice before | Dice after" in printed and "mean |" in printed
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["n_pairs"] == 3
    for name in ("pair000_registration.png", "pair000_overview.png", "pair000_jacobian.png", "dice_per_structure.png"):
        assert (out / "eval" / "figures" / name).stat().st_size > 1000
    assert (out / "training_curves.png").is_file()

    # the checkpoint is chosen on data disjoint from the reported test pairs (and from training),
    # checked on the label maps the demo actually handed to training and to evaluation
    def fingerprints(maps):
        return {hashlib.sha1(np.asarray(m).astype(np.int64).tobytes()).hexdigest()[:12] for m in maps}

    test_maps = fingerprints(s[0, 0].numpy() for p in seen["test"] for s in (p.moving_seg, p.fixed_seg))
    val_maps = fingerprints(seen["val"].segs)
    assert len(test_maps) == 4 and len(val_maps) >= 2  # 3 consecutive pairs; at least one validation pair
    assert not test_maps & val_maps
    assert not test_maps & fingerprints(seen["train"].segs)
    assert not val_maps & fingerprints(seen["train"].segs)
    subjects = summary["subjects"]
    assert not set(subjects["test"]) & set(subjects["validation"])
    assert not set(subjects["train"]) & (set(subjects["test"]) | set(subjects["validation"]))

    # the reported Dice before registration, recomputed from the demo's own synthetic subjects
    _, labels = synthetic_shapes(30, demo.DEMO_SHAPE, n_labels=8, seed=0)
    rows = list(csv.DictReader(open(out / "eval" / "pairs.csv")))
    for row in rows:
        moving, fixed = int(row["moving"]), int(row["fixed"])
        assert moving in subjects["test"] and fixed in subjects["test"]
        assert float(row["dice_before"]) == pytest.approx(_dice_oracle(labels[moving], labels[fixed]), abs=1e-6)
    assert summary["dice_before"]["mean"] == pytest.approx(np.mean([float(r["dice_before"]) for r in rows]), abs=1e-6)
