"""Hard to break: a corpus of bad inputs through the CLI, crash-safe resume, determinism, DDP."""

from __future__ import annotations

import hashlib
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
from corpus import (
    API_BAD_INPUTS,
    API_ODD_INPUTS,
    BAD_INPUTS,
    NEEDS_READ_ONLY,
    SHAPE,
    TINY,
    build_corpus,
    nii,
    read_only_works,
    register_argv,
    release_corpus,
)

from morphreg.cli import main
from morphreg.data import synthetic_shapes
from morphreg.models import VxmDense


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = build_corpus(tmp_path_factory.mktemp("corpus"))
    yield folder
    release_corpus(folder)


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder`` with its size and content hash (folders too)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest())
            if p.is_file() else (-1, "folder") for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize(("name", "build", "pattern"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_with_one_line(name, build, pattern, corpus, capsys):
    if name in NEEDS_READ_ONLY and not read_only_works(corpus):
        pytest.skip("no folder here refuses new files to this user (root without chattr)")
    out = corpus / "out"
    out.mkdir(exist_ok=True)
    before = _snapshot(corpus)
    code = main(build(corpus))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, (name, err)
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert re.search(pattern, err[0]), err[0]
    assert _snapshot(corpus) == before  # nothing written or changed, not even half a file or an empty folder
    assert not Path("/tmp/morphreg_pwned").exists()


@pytest.mark.parametrize(("name", "build", "error", "pattern"), API_BAD_INPUTS, ids=[b[0] for b in API_BAD_INPUTS])
def test_api_bad_input_raises_one_clear_error(name, build, error, pattern, corpus):
    import warnings

    import morphreg

    kwargs = build(corpus)
    before = _snapshot(corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on the way either (a ComplexWarning is a silently wrong result)
        with pytest.raises(Exception) as info:
            morphreg.register(**kwargs)
    message = str(info.value)
    assert isinstance(info.value, error), (type(info.value), message)
    assert "\n" not in message and re.search(pattern, message), message
    assert _snapshot(corpus) == before


@pytest.mark.parametrize(("name", "build", "reference"), API_ODD_INPUTS, ids=[b[0] for b in API_ODD_INPUTS])
def test_api_odd_but_valid_arrays_give_the_plain_result(name, build, reference, corpus):
    import morphreg

    got, want = morphreg.register(**build(corpus)), morphreg.register(**reference(corpus))
    np.testing.assert_allclose(got.moved, want.moved, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want.moved).max())))
    np.testing.assert_allclose(got.disp, want.disp, atol=1e-5)
    assert (got.moved_seg is None) == (want.moved_seg is None)
    if got.moved_seg is not None:
        np.testing.assert_array_equal(got.moved_seg, want.moved_seg)


@pytest.mark.parametrize(
    "argv",
    [["train", "--data", "x", "--out", "y", "--loss", "ssd"], ["register", "--bogus-flag"],
     ["train", "--data", "x", "--out", "y", "--steps", "-3"], ["warp", "--interp", "cubic"]],
)
def test_unknown_flags_and_values_are_usage_errors(argv, capsys):
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_debug_shows_the_traceback(corpus, capsys):
    assert main([*register_argv(corpus, moving="empty.nii.gz"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def _train_cmd(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--loss", "ncc", "--lr", "1e-3", "--steps", str(steps),
            "--val-every", "5", "--checkpoint-every", "5", "--seed", "7", "--no-progress", "--threads", "1",
            "--out", str(out), *TINY, *extra]


def _rank_errors(stderr: str) -> str:
    """What the ranks printed, without torchrun's own traceback (which only says that a rank failed)."""
    return "\n".join(line for line in stderr.splitlines()
                     if "torch/distributed/elastic" not in line and not line.startswith((" ", "Traceback")))[:3000]


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
    split = (tmp_path / "killed" / "split.json").read_bytes()  # written when the run began
    assert main(_train_cmd(corpus / "img", tmp_path / "killed", steps, "--deterministic", "--resume")) == 0
    assert (tmp_path / "killed" / "split.json").read_bytes() == split  # a run's split is never rewritten
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
    result = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)
    assert result.returncode == 0, _rank_errors(result.stderr)
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
    result = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=env, timeout=300)
    assert result.returncode == 0, _rank_errors(result.stderr)
    drop_time = lambda path: [r.rsplit(",", 1)[0] for r in path.read_text().splitlines()]  # noqa: E731
    one, two = drop_time(tmp_path / "one" / "pairs.csv"), drop_time(tmp_path / "two" / "pairs.csv")
    assert len(one) == 6 and one == two


def test_every_command_tears_down_its_process_group(tmp_path):
    """A torchrun rank left its gloo group to interpreter exit and could abort (SIGABRT) after succeeding."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert main(["models"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Issue 9, second round: the classes that are not a single refused command


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize(("steps", "lr", "pattern"), [
    ("4", "1e30", r"the loss became (nan|inf|-inf) at step 2: training diverged; nothing was saved"),
    ("4", "1e6", r"the loss became (nan|inf|-inf) at step \d: training diverged; nothing was saved"),
    ("1", "1e30", r"the field the network predicts became NaN or infinite by step 1: training diverged"),
])
def test_diverging_training_stops_before_backward_and_saves_no_model(steps, lr, pattern, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", str(corpus / "img"), "--steps", steps, "--lr", lr, "--no-progress", "--out", str(out),
            *TINY]
    assert main(argv) == 1
    line = _one_line(capsys)
    assert re.search(pattern, line), line
    assert not any((out / name).exists() for name in ("model.pt", "last.pt", "state.pt"))


def test_an_image_over_the_memory_budget_is_refused_from_its_header(corpus, monkeypatch, capsys):
    monkeypatch.setenv("MORPHREG_MEMORY_LIMIT", "32K")  # one image may take 4 kB as float32; these need 5.1 kB
    assert main(register_argv(corpus)) == 1
    line = _one_line(capsys)
    assert re.search(r"s0.nii.gz': its header declares 32x40 voxels of float32 \(5.1 kB in memory\), more than "
                     r"the 4.1 kB one input may take \(1/8 of the memory limit 33 kB \(MORPHREG_MEMORY_LIMIT\)\)",
                     line), line


@pytest.mark.parametrize("name", ["claims_32gb.nii.gz", "claims_67mb.nii.gz", "claims_67mb.nii", "claims.npy"])
def test_size_claims_are_refused_without_allocating_them(corpus, name):
    import tracemalloc

    from morphreg import io

    tracemalloc.start()
    try:
        with pytest.raises(io.ImageReadError, match="declares"):
            io.load_volume(corpus / name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak  # the claims are 67 MB to 32 GB; nothing of that size was allocated


def test_a_zip_bomb_npz_is_refused_by_its_declared_sizes(tmp_path, monkeypatch):
    from morphreg import io

    np.savez_compressed(tmp_path / "bomb.npz", vol=np.zeros((512, 512, 64), np.float32))  # 64 MB in 65 kB
    monkeypatch.setenv("MORPHREG_MEMORY_LIMIT", "128M")
    with pytest.raises(io.ImageReadError, match=r"array 'vol' declares 67 MB uncompressed, more than the 17 MB"):
        io.load_volume(tmp_path / "bomb.npz")


def test_memory_errors_give_one_line(corpus, monkeypatch, capsys):
    from morphreg.workflows import files as register

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 3.20 GiB for an array with shape (1000, 1000, 800)")

    monkeypatch.setattr(register.io, "load_volume", exhausted)
    assert main(register_argv(corpus)) == 1
    assert re.search(r"error: out of memory \(MemoryError\): .*\(memory limit", _one_line(capsys))

    def allocator(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(register.io, "load_volume", allocator)
    assert main(register_argv(corpus)) == 1
    line = _one_line(capsys)
    assert "out of memory (RuntimeError)" in line and "DefaultCPUAllocator" not in line


def test_an_evaluation_without_figures_survives_a_broken_matplotlib(corpus, tmp_path, monkeypatch, capsys):
    import morphreg

    monkeypatch.setitem(sys.modules, "morphreg.viz", None)  # what a bad MPLBACKEND does to the import
    monkeypatch.delattr(morphreg, "viz", raising=False)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"moving,fixed\n{corpus}/img/s0.nii.gz,{corpus}/img/s1.nii.gz\n")
    common = ["evaluate", "--model", str(corpus / "run"), "--pairs", str(pairs), "--no-progress", "--no-hd95"]
    assert main([*common, "--figures", "0", "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "summary.json").is_file()
    assert main([*common, "--figures", "1", "--out", str(tmp_path / "ev2")]) == 1
    assert "cannot draw figures: matplotlib does not load" in _one_line(capsys)
    assert not (tmp_path / "ev2").exists()


def test_a_malformed_world_size_is_named(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert main(["train", "--data", str(corpus / "img"), "--out", str(tmp_path / "r"), *TINY]) == 1
    assert "environment variable WORLD_SIZE must be a non-negative integer (torchrun sets it), got 'two'" in \
        _one_line(capsys)
    assert not (tmp_path / "r").exists()


def test_resume_names_a_damaged_metrics_file(corpus, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(corpus / "run", run)
    header, first, *rest = (run / "metrics.csv").read_bytes().split(b"\n")
    (run / "metrics.csv").write_bytes(b"\n".join([header, b"\0" + first, *rest]))
    assert main(["train", "--data", str(corpus / "img"), "--out", str(run), "--resume", "--steps", "4",
                 "--no-progress", *TINY]) == 1
    assert re.search(r"cannot resume: '.*metrics.csv' is damaged", _one_line(capsys))


def test_matrix_goes_into_a_new_folder_atomically(corpus, tmp_path):
    matrix = tmp_path / "new" / "folder" / "affine.txt"
    assert main(["register", "--method", "rigid", "--moving", str(corpus / "img/s0.nii.gz"), "--fixed",
                 str(corpus / "img/s1.nii.gz"), "--moved", str(tmp_path / "moved.nii.gz"), "--matrix",
                 str(matrix)]) == 0
    assert np.loadtxt(matrix).shape == (4, 4)
    assert [p.name for p in matrix.parent.iterdir()] == ["affine.txt"]  # no temporary file left behind


def test_a_2d_image_with_trailing_singleton_axes_is_2d(tmp_path):
    from morphreg import io

    nii(tmp_path / "x.nii.gz", np.arange(20, dtype=np.float32).reshape(4, 5, 1, 1, 1))
    volume = io.load_volume(tmp_path / "x.nii.gz")
    assert volume.shape == (4, 5) and volume.data[3, 4] == 19


def test_an_npz_array_pairs_with_a_nifti_image(corpus, tmp_path):
    images, _ = synthetic_shapes(2, SHAPE, n_labels=3, seed=2)
    np.savez(tmp_path / "two.npz", a=images[0], b=images[1])
    fixed = nii(tmp_path / "fixed.nii.gz", images[1], np.eye(4))
    assert main(["register", "--model", str(corpus / "run"), "--moving", str(tmp_path / "two.npz"), "--npz-key", "a",
                 "--fixed", str(fixed), "--moved", str(tmp_path / "moved.nii.gz")]) == 0


@pytest.mark.parametrize("steps", ["21", "63", "70"])
def test_int_steps_is_bounded_on_the_command_line(steps, capsys):
    assert main(["train", "--data", "x", "--out", "y", "--int-steps", steps]) == 2
    assert "expected an integer in [0, 20]" in capsys.readouterr().err


def test_int_steps_is_bounded_in_the_core():
    from morphreg import spatial

    velocity = torch.zeros(1, 2, 8, 8)
    assert torch.equal(spatial.integrate(velocity, spatial.MAX_INT_STEPS), velocity)
    with pytest.raises(ValueError, match=r"argument 'steps' must be an integer in \[0, 20\], got 21"):
        spatial.integrate(velocity, 21)
    with pytest.raises(ValueError, match=r"argument 'int_steps' must be an integer in \[0, 20\], got 64"):
        VxmDense(2, int_steps=64)


@pytest.mark.parametrize(("values", "problem"), [
    (np.array([[0.0, 1.5]]), r"non-integer values such as 1\.5"),
    (np.array([[0.0, np.nan]]), r"non-integer values such as nan"),
    (np.array([[0.0, 3e9]], np.float32), r"values up to 3e\+09"),
    (np.array([[0, 2**40]], np.int64), r"values up to 1\.1e\+12"),
    (np.array([[0, -2]], np.int8), r"negative values \(smallest -2\)"),
    (np.array([[0.0, -1.0]]), r"negative values \(smallest -1\)"),
])
def test_one_label_policy(values, problem):
    from morphreg.data import as_label_map

    with pytest.raises(ValueError, match=r"^--segs 'x' must be an integer label map \(whole numbers in \[0, "
                                         r"2147483647\]\); found " + problem):
        as_label_map(values, "--segs 'x'")


def test_label_policy_keeps_valid_maps():
    from morphreg.data import as_label_map

    assert as_label_map(np.array([[0.0, 7.0]], np.float32), "x").dtype == np.int32
    assert as_label_map(np.array([[0, 200]], np.uint8), "x").dtype == np.uint8
    assert as_label_map(np.array([[True, False]]), "x").dtype == np.uint8
    assert as_label_map(np.array([[0, 2**31 - 1]], np.int64), "x").max() == 2**31 - 1


def test_absurd_widths_are_refused_before_building(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MORPHREG_MEMORY_LIMIT", "1G")
    assert main(["train", "--data", str(corpus / "img"), "--out", str(tmp_path / "r"), "--steps", "1",
                 "--enc", "5000", "5000", "5000", "5000", "--no-progress"]) == 1
    assert re.search(r"the requested network: its VxmDense config .* needs 2\.\d GB of weights, more than the "
                     r"268 MB a model may take", _one_line(capsys))


# ---------------------------------------------------------------------------------------------
# Issue 18, third round: what the 131-case probe still found


def _pairs_csv(corpus: Path, path: Path, n: int = 6, bad_row: int | None = None) -> Path:
    lines = ["moving,fixed,moving_seg,fixed_seg"]
    for i in range(n):
        moving = corpus / "truncated.nii.gz" if i + 1 == bad_row else corpus / "img" / f"s{i}.nii.gz"
        lines.append(f"{moving},{corpus}/img/s{i + 1}.nii.gz,{corpus}/seg/s{i}.nii.gz,{corpus}/seg/s{i + 1}.nii.gz")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_reads_every_row_before_registering_any(corpus, tmp_path, capsys):
    """An unreadable file in row 6 stops `evaluate` before row 1 is registered: one line naming the
    CSV line and the file, and nothing written (no figures of rows 1-4, no report folder)."""
    pairs = _pairs_csv(corpus, tmp_path / "pairs.csv", bad_row=6)
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(corpus / "run"), "--pairs", str(pairs), "--out", str(out),
                 "--no-progress", "--no-hd95"]) == 1
    line = _one_line(capsys)
    assert re.search(r"pairs.csv' line 7: .*cannot read '.*truncated.nii.gz'", line), line
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


def test_evaluate_reports_the_pairs_that_finished(corpus, tmp_path, capsys, monkeypatch):
    """A pair whose registration fails mid-run does not discard the others: the report covers the
    finished pairs, summary.json and report.html list the failed row, and one line says so."""
    import json

    from morphreg.workflows import evaluate as evaluation

    real = evaluation.score_pair

    def flaky(register, pair, **kwargs):
        if pair.name == "0002":
            raise RuntimeError("the registration of this pair diverged")
        return real(register, pair, **kwargs)

    monkeypatch.setattr(evaluation, "score_pair", flaky)
    pairs = _pairs_csv(corpus, tmp_path / "pairs.csv")
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(corpus / "run"), "--pairs", str(pairs), "--out", str(out),
                 "--no-progress", "--no-hd95", "--figures", "0"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "diverged (1 of 6 pairs failed; the report in" in line and "covers the 5 that finished" in line, line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_pairs"] == 5 and [f["row"] for f in summary["failed"]] == [3]
    assert len((out / "pairs.csv").read_text().splitlines()) == 6  # header + 5 pairs
    assert "Failed pairs (1" in (out / "report.html").read_text()


@pytest.mark.parametrize("via", ["segs", "pairs"])
def test_a_huge_label_value_for_the_dice_loss_names_its_file(corpus, tmp_path, capsys, via):
    """`--seg-weight` with a label value of 1e9: refused before training, naming the label map."""
    import shutil

    (tmp_path / "seg").mkdir()
    for i in range(8):
        shutil.copy(corpus / "seg" / f"s{i}.nii.gz", tmp_path / "seg" / f"s{i}.nii.gz")
    labels = nib.load(str(corpus / "seg" / "s3.nii.gz")).get_fdata().astype(np.int32)
    labels[labels == 1] = 1_000_000_000
    nii(tmp_path / "seg" / "s3.nii.gz", labels)
    if via == "segs":
        data = ["--data", str(corpus / "img"), "--segs", str(tmp_path / "seg")]
        named = r"--segs '.*seg': label map 3 \(s3\)"
    else:
        pairs = tmp_path / "pairs.csv"
        pairs.write_text("moving,fixed,moving_seg,fixed_seg\n" + "".join(
            f"{corpus}/img/s{i}.nii.gz,{corpus}/img/s{i + 1}.nii.gz,{tmp_path}/seg/s{i}.nii.gz,"
            f"{tmp_path}/seg/s{i + 1}.nii.gz\n" for i in range(4)))
        data = ["--data", str(corpus / "img"), "--pairs", str(pairs)]
        named = r"--pairs '.*pairs.csv' line \d: (moving|fixed)_seg '.*s3.nii.gz'"
    assert main(["train", *data, "--seg-weight", "0.01", "--out", str(tmp_path / "run"), "--no-progress",
                 *TINY]) == 1
    line = _one_line(capsys)
    assert re.search(r"the largest label value is 1000000000 \(" + named + r"\), so the Dice loss", line), line


def test_too_many_enc_levels_name_enc_and_the_levels_the_input_allows(corpus, tmp_path, capsys):
    """`--enc` with 20 levels on 2D images of the corpus: one line naming --enc and the number of
    levels their size allows, before anything is written (was: out of memory after the run started)."""
    out = tmp_path / "run"
    twenty = ["4"] * 20
    assert main(["train", "--data", str(corpus / "img"), "--out", str(out), "--steps", "2", "--no-progress",
                 "--enc", *twenty, "--dec", *twenty]) == 1
    allowed = (2 * min(SHAPE)).bit_length() - 1
    line = _one_line(capsys)
    assert re.search(rf"--enc has 20 levels, but an input of shape \(\d+, \d+\) allows at most {allowed} ", line), line
    assert not out.exists()
