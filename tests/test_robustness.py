"""Hard to break: a corpus of bad inputs through the CLI, crash-safe resume, determinism, DDP."""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from morphreg.cli import main
from morphreg.data import synthetic_shapes
from morphreg.models import VxmDense

AFFINE = np.diag([1.5, 1.0, 1.0, 1.0])
AFFINE[:3, 3] = [-30, 20, 5]
TINY = ["--enc", "4", "4", "4", "4", "--dec", "4", "4", "4", "4", "4", "4"]
SHAPE = (32, 40)


def _nii(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def build_corpus(d: Path) -> Path:
    """Good files, a trained tiny model, and the bad inputs, in folder ``d``."""
    images, labels = synthetic_shapes(8, SHAPE, n_labels=3, seed=2)
    (d / "img").mkdir()
    (d / "seg").mkdir()
    for i in range(8):
        _nii(d / "img" / f"s{i}.nii.gz", images[i])
        _nii(d / "seg" / f"s{i}.nii.gz", labels[i].astype(np.uint8))
    good = d / "img" / "s0.nii.gz"
    data = images[1]
    _nii(d / "nan.nii.gz", np.where(data > 0.5, np.nan, data).astype(np.float32))
    _nii(d / "inf.nii.gz", np.where(data > 0.5, np.inf, data).astype(np.float32))
    _nii(d / "constant.nii.gz", np.full(SHAPE, 0.3, np.float32))
    _nii(d / "vol3d.nii.gz", np.zeros((8, 8, 8), np.float32))
    _nii(d / "vol4d.nii.gz", np.zeros((8, 8, 8, 3), np.float32))
    _nii(d / "vol5d.nii.gz", np.zeros((8, 8, 8, 2, 3), np.float32))
    _nii(d / "other_shape.nii.gz", np.zeros((30, 40), np.float32) + images[2][:30])
    _nii(d / "float_seg.nii.gz", labels[0].astype(np.float32) + 0.25)
    np.save(d / "vec1d.npy", np.arange(10, dtype=np.float32))
    np.savez(d / "stack.npz", a=images[0], b=images[1])
    (d / "empty.nii.gz").write_bytes(b"")
    raw = good.read_bytes()
    (d / "truncated.nii.gz").write_bytes(raw[: len(raw) // 3])
    (d / "garbage.nii").write_bytes(os.urandom(600))
    (d / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(50))
    (d / "folder.nii.gz").mkdir()
    with gzip.open(d / "notnifti.nii.gz", "wb") as handle:
        handle.write(b"hello" * 100)
    run = d / "run"
    assert main(["train", "--data", str(d / "img"), "--steps", "2", "--no-progress", "--out", str(run), *TINY]) == 0
    VxmDense(3, enc=(4, 4, 4, 4), dec=(4,) * 6).save(d / "model3d.pt")
    ckpt = torch.load(run / "model.pt", weights_only=True)
    ckpt["config"]["enc"] = [8, 8, 8, 8]
    torch.save(ckpt, d / "wrong_shape.pt")
    torch.save({"weights": torch.zeros(3)}, d / "plain.pt")

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/morphreg_pwned",))

    torch.save({"format": "x", "payload": Exploit()}, d / "evil.pt")
    model_bytes = (run / "model.pt").read_bytes()
    (d / "truncated.pt").write_bytes(model_bytes[: len(model_bytes) // 2])
    (d / "empty.pt").write_bytes(b"")
    (d / "pairs_nocols.csv").write_text("a,b\nx,y\n")
    (d / "pairs_empty.csv").write_text("")
    (d / "pairs_missing.csv").write_text(f"moving,fixed\n{d}/img/s0.nii.gz,{d}/img/nope.nii.gz\n")
    (d / "segs_few").mkdir()
    for i in range(3):
        _nii(d / "segs_few" / f"s{i}.nii.gz", labels[i].astype(np.uint8))
    main(["register", "--model", str(run), "--moving", str(good), "--fixed", str(d / "img" / "s1.nii.gz"),
          "--moved", str(d / "moved_ok.nii.gz"), "--warp", str(d / "warp2d.nii.gz")])
    return d


def _register(d: Path, moving: str = "img/s0.nii.gz", fixed: str = "img/s1.nii.gz", model: str = "run",
              *extra: str) -> list[str]:
    return ["register", "--model", str(d / model), "--moving", str(d / moving), "--fixed", str(d / fixed),
            "--moved", str(d / "out" / "moved.nii.gz"), *extra]


# (name, argv builder, pattern the single error line must match)
BAD_INPUTS = [
    ("missing file", lambda d: _register(d, moving="img/none.nii.gz"), r"file does not exist"),
    ("empty file", lambda d: _register(d, moving="empty.nii.gz"), r"file is empty"),
    ("truncated file", lambda d: _register(d, moving="truncated.nii.gz"), r"not a readable image \(truncated or corrupt\?\)"),
    ("corrupt file", lambda d: _register(d, moving="garbage.nii"), r"not a readable image \(truncated or corrupt\?\)"),
    ("gzip of non-NIfTI", lambda d: _register(d, moving="notnifti.nii.gz"), r"not a readable image \(truncated or corrupt\?\)"),
    ("unknown extension", lambda d: _register(d, moving="image.png"), r"unknown file extension; supported"),
    ("directory as image", lambda d: _register(d, moving="folder.nii.gz"), r"not a regular file"),
    ("NaN image", lambda d: _register(d, moving="nan.nii.gz"), r"NaN"),
    ("inf image", lambda d: _register(d, fixed="inf.nii.gz"), r"inf"),
    ("constant image", lambda d: _register(d, fixed="constant.nii.gz"), r"constant"),
    ("1D array", lambda d: _register(d, moving="vec1d.npy"), r"expected a 2D or 3D image.*got shape \(10,\)"),
    ("4D array", lambda d: _register(d, moving="vol4d.nii.gz"), r"expected a 2D or 3D image.*got shape \(8, 8, 8, 3\)"),
    ("5D array", lambda d: _register(d, moving="vol5d.nii.gz"), r"got shape \(8, 8, 8, 2, 3\).*use morphreg.io.load_warp"),
    ("2D vs 3D", lambda d: _register(d, moving="vol3d.nii.gz"), r"3D but --fixed"),
    ("different shape, --no-resample", lambda d: _register(d, "other_shape.nii.gz", "img/s1.nii.gz", "run",
                                                            "--no-resample"), r"different grids"),
    ("float label map", lambda d: _register(d, "img/s0.nii.gz", "img/s1.nii.gz", "run", "--moving-seg",
                                            str(d / "float_seg.nii.gz")), r"integer label map"),
    ("npz without key", lambda d: _register(d, moving="stack.npz"), r"key"),
    ("3D model for 2D images", lambda d: _register(d, model="model3d.pt"), r"3D network"),
    ("checkpoint of another shape", lambda d: _register(d, model="wrong_shape.pt"), r"do not match"),
    ("not a morphreg checkpoint", lambda d: _register(d, model="plain.pt"), r"not a morphreg model"),
    ("pickle that runs code", lambda d: _register(d, model="evil.pt"), r"refused: it references code"),
    ("truncated checkpoint", lambda d: _register(d, model="truncated.pt"), r"not a readable"),
    ("empty checkpoint", lambda d: _register(d, model="empty.pt"), r"empty"),
    ("run dir without model", lambda d: _register(d, model="img"), r"does not exist"),
    ("--moved-seg without --moving-seg", lambda d: _register(d, "img/s0.nii.gz", "img/s1.nii.gz", "run",
                                                             "--moved-seg", str(d / "x.nii.gz")), r"--moving-seg"),
    ("warp of wrong dimension", lambda d: ["warp", "--moving", str(d / "vol3d.nii.gz"), "--warp",
                                           str(d / "warp2d.nii.gz"), "--moved", str(d / "out" / "moved.nii.gz")],
     r"3D but --warp"),
    ("image given as warp", lambda d: ["warp", "--moving", str(d / "img/s0.nii.gz"), "--warp",
                                       str(d / "img/s1.nii.gz"), "--moved", str(d / "out" / "moved.nii.gz")],
     r"does not state its units"),
    ("pairs CSV without columns", lambda d: ["evaluate", "--model", str(d / "run"), "--pairs",
                                             str(d / "pairs_nocols.csv"), "--out", str(d / "out" / "ev")],
     r"columns"),
    ("empty pairs CSV", lambda d: ["evaluate", "--model", str(d / "run"), "--pairs", str(d / "pairs_empty.csv"),
                                   "--out", str(d / "out" / "ev")], r"empty"),
    ("pairs CSV naming a missing file", lambda d: ["evaluate", "--model", str(d / "run"), "--pairs",
                                                   str(d / "pairs_missing.csv"), "--out", str(d / "out" / "ev")],
     r"does not exist"),
    ("segs count mismatch", lambda d: ["train", "--data", str(d / "img"), "--segs", str(d / "segs_few"),
                                       "--out", str(d / "out" / "r")], r"3 label maps but --data holds 8"),
    ("empty training folder", lambda d: ["train", "--data", str(d / "out" / "nothing"), "--out",
                                         str(d / "out" / "r")], r"does not exist|no image|empty"),
    ("output under a file", lambda d: ["register", "--model", str(d / "run"), "--moving", str(d / "img/s0.nii.gz"),
                                       "--fixed", str(d / "img/s1.nii.gz"), "--moved",
                                       str(d / "img/s2.nii.gz" / "moved.nii.gz")], r"is a file, not a folder"),
]


@pytest.mark.parametrize(("name", "build", "pattern"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_with_one_line(name, build, pattern, corpus, capsys):
    out = corpus / "out"
    out.mkdir(exist_ok=True)
    before = set(out.rglob("*"))
    code = main(build(corpus))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, (name, err)
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert re.search(pattern, err[0]), err[0]
    assert set(out.rglob("*")) == before  # nothing written, not even half a file
    assert not Path("/tmp/morphreg_pwned").exists()


@pytest.mark.parametrize(
    "argv",
    [["train", "--data", "x", "--out", "y", "--loss", "ssd"], ["register", "--bogus-flag"],
     ["train", "--data", "x", "--out", "y", "--steps", "-3"], ["warp", "--interp", "cubic"]],
)
def test_unknown_flags_and_values_are_usage_errors(argv, capsys):
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_debug_shows_the_traceback(corpus, capsys):
    assert main([*_register(corpus, moving="empty.nii.gz"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def _train_cmd(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--loss", "ncc", "--lr", "1e-3", "--steps", str(steps),
            "--val-every", "5", "--checkpoint-every", "5", "--seed", "7", "--no-progress", "--threads", "1",
            "--out", str(out), *TINY, *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_deterministic_runs_are_bit_identical(corpus, tmp_path):
    for name in ("a", "b"):
        assert main(_train_cmd(corpus / "img", tmp_path / name, 6, "--deterministic")) == 0
    a, b = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "metrics.csv").read_text().split("\n")[1:] != []
    rows_a = [r.split(",")[:6] for r in (tmp_path / "a" / "metrics.csv").read_text().splitlines()]
    rows_b = [r.split(",")[:6] for r in (tmp_path / "b" / "metrics.csv").read_text().splitlines()]
    assert rows_a == rows_b


def test_sigkill_then_resume_matches_an_uninterrupted_run(corpus, tmp_path):
    steps = 40
    assert main(_train_cmd(corpus / "img", tmp_path / "clean", steps, "--deterministic")) == 0
    cmd = [sys.executable, "-m", "morphreg.cli", *_train_cmd(corpus / "img", tmp_path / "killed", steps,
                                                             "--deterministic")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "state.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and torch.load(state, weights_only=True)["step"] >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(state, weights_only=True)["step"]
    assert 10 <= killed_at < steps
    assert main(_train_cmd(corpus / "img", tmp_path / "killed", steps, "--deterministic", "--resume")) == 0
    clean, resumed = _weights(tmp_path / "clean" / "last.pt"), _weights(tmp_path / "killed" / "last.pt")
    assert all(torch.equal(clean[k], resumed[k]) for k in clean)
    clean_rows = (tmp_path / "clean" / "metrics.csv").read_text().splitlines()
    resumed_rows = (tmp_path / "killed" / "metrics.csv").read_text().splitlines()
    strip = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # noqa: E731  (drop wall time)
    assert strip(clean_rows) == strip(resumed_rows)


def test_ddp_two_processes_match_one_process_at_the_same_global_batch(corpus, tmp_path):
    steps = 6
    single = _train_cmd(corpus / "img", tmp_path / "single", steps, "--batch-size", "2")
    assert main(single) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "morphreg.cli", *_train_cmd(corpus / "img", tmp_path / "ddp", steps, "--batch-size", "1")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = _weights(tmp_path / "single" / "last.pt"), _weights(tmp_path / "ddp" / "last.pt")
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"DDP check: max |weight difference| after {steps} steps = {worst:.3g}")
    assert worst < 1e-5, worst
    loss_one = [float(r.split(",")[1]) for r in (tmp_path / "single" / "metrics.csv").read_text().splitlines()[1:]]
    loss_two = [float(r.split(",")[1]) for r in (tmp_path / "ddp" / "metrics.csv").read_text().splitlines()[1:]]
    print(f"DDP check: losses 1 process {loss_one}, 2 processes {loss_two}")
    assert np.allclose(loss_one, loss_two, rtol=1e-4, atol=1e-6)
    assert not (tmp_path / "ddp" / "train.log.1").exists()


def test_batch_evaluation_splits_pairs_across_ranks(corpus, tmp_path):
    pairs = tmp_path / "pairs.csv"
    lines = ["moving,fixed,moving_seg,fixed_seg"]
    for i in range(5):
        lines.append(f"{corpus}/img/s{i}.nii.gz,{corpus}/img/s{i + 1}.nii.gz,{corpus}/seg/s{i}.nii.gz,"
                     f"{corpus}/seg/s{i + 1}.nii.gz")
    pairs.write_text("\n".join(lines) + "\n")
    common = ["evaluate", "--model", str(corpus / "run"), "--pairs", str(pairs), "--figures", "0", "--no-hd95",
              "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "morphreg.cli", *common, "--out", str(tmp_path / "two")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    drop_time = lambda path: [r.rsplit(",", 1)[0] for r in path.read_text().splitlines()]  # noqa: E731
    one, two = drop_time(tmp_path / "one" / "pairs.csv"), drop_time(tmp_path / "two" / "pairs.csv")
    assert len(one) == 6 and one == two
