"""The lecture's families through the command line: each trains (with the Dice term, diffeomorphic
integration, GradICON where it applies), resumes to the same weights, registers and evaluates;
misuse gets one clear line."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from morphreg.cli import main
from morphreg.data import synthetic_shapes

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
TINY = ["--enc", "4", "4", "4", "4", "--dec", "4", "4", "4", "4", "4", "4"]
FAMILIES = {
    "gradicon": ["--inverse-consistency", "gradicon", "--ic-weight", "1.5", *TINY],
    "cascade": ["--model", "cascade", "--stages", "2", *TINY],
    "transmorph": ["--model", "transmorph", "--inverse-consistency", "gradicon"],
    "probabilistic": ["--model", "probabilistic", "--image-sigma", "0.1", "--lambda", "10", *TINY],
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    images, labels = synthetic_shapes(8, (40, 36), n_labels=4, seed=1)
    for kind in ("img", "seg"):
        (root / kind).mkdir()
    for i in range(8):
        nib.save(nib.Nifti1Image(images[i][..., None], AFFINE), root / "img" / f"s{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(labels[i][..., None].astype(np.uint8), AFFINE), root / "seg" / f"s{i:02d}.nii.gz")
    return root


def _common(dataset):
    return ["train", "--data", str(dataset / "img"), "--segs", str(dataset / "seg"), "--seg-weight", "1",
            "--int-steps", "5", "--val-every", "2", "--val-pairs", "2", "--checkpoint-every", "2", "--no-progress",
            "--seed", "2"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_resumes_registers(family, dataset, tmp_path, capsys):
    common = [*_common(dataset), *FAMILIES[family]]
    assert main([*common, "--steps", "4", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--steps", "2", "--out", str(tmp_path / "b")]) == 0
    assert main([*common, "--steps", "4", "--out", str(tmp_path / "b"), "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    extra = []
    if family == "probabilistic":
        extra = ["--uncertainty", str(tmp_path / "u.nii.gz")]
    capsys.readouterr()
    code = main(["register", "--model", str(tmp_path / "a"), "--moving", str(dataset / "img" / "s06.nii.gz"),
                 "--fixed", str(dataset / "img" / "s07.nii.gz"), "--moved", str(tmp_path / "m.nii.gz"),
                 "--moving-seg", str(dataset / "seg" / "s06.nii.gz"), "--fixed-seg", str(dataset / "seg" / "s07.nii.gz"),
                 "--quiet", *extra])
    assert code == 0 and "Dice" in capsys.readouterr().out
    if family == "probabilistic":
        std = nib.load(tmp_path / "u.nii.gz").get_fdata()
        assert std.shape == (40, 36, 1) and np.all(np.isfinite(std)) and std.min() > 0
    assert a["model"] == {"gradicon": "VxmDense", "cascade": "CascadeVxm", "transmorph": "TransMorph",
                          "probabilistic": "ProbVxmDense"}[family]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--stages", "2"], "--stages is the number of networks of --model cascade"),
        (["--model", "cascade", "--stages", "11"], r"--stages must be an integer in \[1, 10\]"),
        (["--image-sigma", "0.1"], "--image-sigma is the image noise of --model probabilistic"),
        (["--model", "probabilistic", "--int-steps", "0"], "--model probabilistic is diffeomorphic"),
        (["--ic-weight", "1"], "--ic-weight weighs --inverse-consistency"),
        (["--model", "affine", "--inverse-consistency", "gradicon"], "not --model affine"),
        (["--model", "transmorph", "--hyper"], "--hyper conditions the deformable network"),
        (["--model", "cascade", "--int-steps", "5", "--bidir"], "--bidir is not available for --model cascade"),
    ],
)
def test_family_flags_misused_give_one_line(extra, message, dataset, tmp_path, capsys):
    code = main([*_common(dataset), "--steps", "2", *extra, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("morphreg train: error:"), err
    import re

    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "r").exists()


def test_uncertainty_refused_for_other_networks(dataset, tmp_path, capsys):
    assert main([*_common(dataset), *TINY, "--steps", "2", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    code = main(["register", "--model", str(tmp_path / "run"), "--moving", str(dataset / "img" / "s06.nii.gz"),
                 "--fixed", str(dataset / "img" / "s07.nii.gz"), "--moved", str(tmp_path / "m.nii.gz"),
                 "--uncertainty", str(tmp_path / "u.nii.gz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--uncertainty is written by a probabilistic network" in err[0], err
    assert not (tmp_path / "m.nii.gz").exists() and not (tmp_path / "u.nii.gz").exists()


def test_max_cpu_minutes_stops_a_run_resumably(dataset, tmp_path):
    out = tmp_path / "r"
    common = [*_common(dataset), *TINY, "--steps", "50"]
    assert main([*common, "--max-cpu-minutes", "0.000001", "--out", str(out)]) == 0  # 60 µs of CPU: one step
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 1
    assert "max_cpu_minutes=1e-06 reached" in (out / "train.log").read_text()
    assert main([*common, "--steps", "3", "--out", str(out), "--resume"]) == 0  # the budget may change on resume
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 3


def test_gradicon_cascade_under_ddp_matches_one_process_at_the_same_global_batch(dataset, tmp_path):
    import os
    import subprocess
    import sys

    common = ["train", "--data", str(dataset / "img"), "--loss", "ncc", "--steps", "4", "--val-every", "4",
              "--checkpoint-every", "4", "--seed", "7", "--no-progress", "--threads", "1", "--int-steps", "5",
              "--model", "cascade", "--stages", "2", "--inverse-consistency", "gradicon", *TINY]
    assert main([*common, "--batch-size", "2", "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "morphreg.cli", *common, "--batch-size", "1", "--out", str(tmp_path / "two")]
    result = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["state_dict"]
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["state_dict"]
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
