"""`register --pairs CSV --out DIR`: batched cohort registration, bad rows skipped, resume."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from scipy import ndimage

from morphreg import io
from morphreg.cli import main
from morphreg.models import VxmDense


def _setup(tmp_path):
    rng = np.random.default_rng(0)
    affine = np.array([[-1.0, 0, 0, 10], [0, 0, 1, 0], [0, -1, 0, 5], [0, 0, 0, 1]])
    for i in range(4):
        image = ndimage.gaussian_filter(rng.random((20, 24)), 2).astype(np.float32)
        io.save_volume(io.Volume(image, affine), tmp_path / f"s{i}.nii.gz")
        io.save_volume(io.Volume((image > image.mean()).astype(np.uint8), affine), tmp_path / f"s{i}_seg.nii.gz")
    torch.manual_seed(0)
    model = VxmDense(2, enc=(4, 4), dec=(4, 4, 4))
    with torch.no_grad():
        model.flow.weight.normal_(0, 0.05)
    model.save(tmp_path / "model.pt", metadata={"normalise": "minmax"})
    rows = ["moving,fixed,moving_seg", "s0.nii.gz,s1.nii.gz,s0_seg.nii.gz", "s1.nii.gz,s2.nii.gz,s1_seg.nii.gz",
            "nothere.nii.gz,s2.nii.gz,", "s2.nii.gz,s3.nii.gz,s2_seg.nii.gz", "s3.nii.gz,s0.nii.gz,s3_seg.nii.gz"]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")


def test_cohort_matches_single_pairs_skips_bad_rows_and_resumes(tmp_path, capsys):
    _setup(tmp_path)
    out = tmp_path / "out"
    argv = ["register", "--model", str(tmp_path / "model.pt"), "--pairs", str(tmp_path / "pairs.csv"), "--out",
            str(out), "--batch-size", "3", "--no-progress"]
    assert main(argv) == 1  # one bad row: reported, the others done
    captured = capsys.readouterr()
    assert "row 3" in captured.err and "nothere" in captured.err and "4 registered" in captured.out
    for number, (m, f) in {1: (0, 1), 2: (1, 2), 4: (2, 3), 5: (3, 0)}.items():
        name = f"{number:04d}_s{m}_to_s{f}"
        assert main(["register", "--model", str(tmp_path / "model.pt"), "--moving", str(tmp_path / f"s{m}.nii.gz"),
                     "--fixed", str(tmp_path / f"s{f}.nii.gz"), "--moved", str(tmp_path / "one.nii.gz"),
                     "--warp", str(tmp_path / "one_warp.nii.gz")]) == 0
        np.testing.assert_allclose(io.load_volume(out / f"{name}_moved.nii.gz").data,
                                   io.load_volume(tmp_path / "one.nii.gz").data, atol=1e-5)
        np.testing.assert_allclose(io.load_warp(out / f"{name}_warp.nii.gz").disp,
                                   io.load_warp(tmp_path / "one_warp.nii.gz").disp, atol=1e-5)
        assert (out / f"{name}_moved_seg.nii.gz").exists()
    assert "error" in (out / "cohort.csv").read_text()
    capsys.readouterr()
    (out / "0004_s2_to_s3_moved.nii.gz").unlink()
    assert main(argv + ["--resume"]) == 1
    assert "1 registered, 3 already done, 1 failed" in capsys.readouterr().out


def test_evaluate_accepts_subject_ids_with_image_and_label_folders(tmp_path, capsys):
    _setup(tmp_path)
    (tmp_path / "img").mkdir()
    (tmp_path / "seg").mkdir()
    for i in range(3):
        (tmp_path / f"s{i}.nii.gz").rename(tmp_path / "img" / f"SUBJ_{i}.nii.gz")
        (tmp_path / f"s{i}_seg.nii.gz").rename(tmp_path / "seg" / f"SUBJ_{i}.nii.gz")
    (tmp_path / "ids.csv").write_text("moving,fixed\nSUBJ_0,SUBJ_1\nSUBJ_1,SUBJ_2\n")
    base = ["evaluate", "--model", str(tmp_path / "model.pt"), "--pairs", str(tmp_path / "ids.csv"),
            "--figures", "0", "--no-hd95", "--no-progress"]
    assert main(base + ["--images", str(tmp_path / "img"), "--segs", str(tmp_path / "seg"),
                        "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "pairs.csv").read_text()
    assert "SUBJ_0.nii.gz" in text and "nan" not in text.split("\n")[1].split(",")[3]  # Dice from the seg folder
    assert (tmp_path / "rep" / "report.html").exists()
    capsys.readouterr()
    (tmp_path / "ids.csv").write_text("moving,fixed\nSUBJ_0,SUBJ_9\n")
    assert main(base + ["--images", str(tmp_path / "img"), "--out", str(tmp_path / "rep2")]) == 1
    assert "line 2: no image of subject 'SUBJ_9'" in capsys.readouterr().err


def test_cohort_refuses_every_single_pair_flag_in_one_line(tmp_path, capsys):
    """Each flag that names one pair's file (``--uncertainty`` included) is refused with --pairs, before any row."""
    from morphreg.cli.cohort import SINGLE_PAIR_FLAGS
    from morphreg.cli.register import OUTPUT_FLAGS

    _setup(tmp_path)
    assert set(OUTPUT_FLAGS) <= set(SINGLE_PAIR_FLAGS)  # a new output flag must be refused in cohorts too
    out = tmp_path / "out"
    for flag in SINGLE_PAIR_FLAGS:
        argv = ["register", "--model", str(tmp_path / "model.pt"), "--pairs", str(tmp_path / "pairs.csv"), "--out",
                str(out), "--no-progress", flag, str(tmp_path / "x.nii.gz")]
        assert main(argv) == 1, flag
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0] and "one pair" in err[0], (flag, err)
        assert not out.exists()


def test_a_killed_cohort_leaves_its_settings_and_pending_rows_and_resumes_only_with_them(tmp_path, monkeypatch):
    """What a SIGKILL leaves: written before the first row runs, cohort.json and cohort.csv (every row pending)."""
    import csv

    import pytest

    from morphreg.workflows import cohort, runner
    from morphreg.workflows.spec import RegistrationSpec

    _setup(tmp_path)
    out = tmp_path / "out"
    rows = cohort.read_cohort_csv(tmp_path / "pairs.csv")
    jobs = cohort.cohort_jobs(rows, out, RegistrationSpec(method="affine"))
    seen = {}

    def killed(self, *args, **kwargs):  # the state a SIGKILL at the first row would leave behind
        seen["settings"] = (out / cohort.SETTINGS).is_file()
        with open(out / "cohort.csv", newline="") as handle:
            seen["statuses"] = [r["status"] for r in csv.DictReader(handle)]
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.Engine, "run_jobs", killed)
    with pytest.raises(KeyboardInterrupt):
        cohort.register_cohort(jobs, out, runner.Runner(workers=1, progress=False), say=lambda line: None)
    assert seen == {"settings": True, "statuses": ["pending"] * 5}
    settings = cohort.cohort_settings(RegistrationSpec(method="affine"), jobs[0].formats, False)
    cohort.check_cohort_folder(out, settings, resume=True)  # the same run: accepted
    with pytest.raises(ValueError, match=r"already holds files \(cohort.csv, cohort.json\); pass `resume`"):
        cohort.check_cohort_folder(out, settings, resume=False)
    other = cohort.cohort_settings(RegistrationSpec(method="rigid"), jobs[0].formats, False)
    with pytest.raises(ValueError, match=r"its settings differ from this one's \(registration.method 'affine' -> "
                                         r"'rigid'\)"):
        cohort.check_cohort_folder(out, other, resume=True)


def _voxels(path):
    return io.load_warp(path).disp if "_warp" in path.name else io.load_volume(path).data


def _jobs(tmp_path, out):
    from morphreg.workflows.cohort import cohort_jobs, read_cohort_csv
    from morphreg.workflows.spec import RegistrationSpec

    return cohort_jobs(read_cohort_csv(tmp_path / "pairs.csv"), out, RegistrationSpec(model=str(tmp_path / "model.pt")))


def test_background_writers_match_the_one_pair_path_and_report_a_row_that_cannot_be_written(tmp_path):
    """Batches pipelined with writer threads: every file byte for byte what one batch at a time writes (a Dask
    worker's task), the voxels those of one job at a time; a row whose warp cannot be written (a folder in its
    place) is an error with the reason, the others are done."""
    from morphreg.workflows.jobs import run_network_batch, run_network_tasks, run_pair_job

    _setup(tmp_path)
    jobs = _jobs(tmp_path, tmp_path / "out")
    blocked = jobs[1].outputs.warp
    blocked.mkdir(parents=True)
    seen = []
    statuses = {s.row: s for s in run_network_tasks([jobs[:3], jobs[3:]], writers=3, on_status=seen.append)}
    assert sorted(statuses) == [1, 2, 3, 4, 5] and len(seen) == 5
    assert {row: s.status for row, s in statuses.items()} == {1: "done", 2: "error", 3: "error", 4: "done", 5: "done"}
    assert blocked.name in statuses[2].message and "nothere" in statuses[3].message
    assert all(s.peak_memory_mb > 0 and s.seconds > 0 for s in statuses.values())
    assert not list((tmp_path / "out").glob(".*"))  # no temporary left by the failed write
    batches = _jobs(tmp_path, tmp_path / "batches")
    for task in (batches[:3], batches[3:]):
        run_network_batch(task)
    for one in _jobs(tmp_path, tmp_path / "one"):
        if one.row in (1, 4, 5):
            assert run_pair_job(one).status == "done"
            for mine, batch, single in zip(jobs[one.row - 1].output_files(), batches[one.row - 1].output_files(),
                                           one.output_files()):
                assert mine.read_bytes() == batch.read_bytes(), mine.name
                np.testing.assert_allclose(_voxels(mine), _voxels(single), atol=1e-5)


def test_interrupted_network_batches_finish_the_rows_being_written(tmp_path, monkeypatch):
    """Ctrl-C while batches are pipelined: the rows already handed to the writers are written whole (no temporary
    left), the interruption propagates, and a row reported done has all its outputs."""
    import time

    from morphreg.io import volume
    from morphreg.workflows.jobs import run_network_tasks

    write_image = volume.write_image

    def slow(img, path):  # each moved image takes 0.2 s to write: rows are mid-write when Ctrl-C comes
        time.sleep(0.2)
        write_image(img, path)

    monkeypatch.setattr(volume, "write_image", slow)
    _setup(tmp_path)
    jobs = _jobs(tmp_path, tmp_path / "out")
    seen = []

    def stop(status):
        seen.append(status)
        if len(seen) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_network_tasks([[job] for job in jobs], on_status=stop)
    assert not list((tmp_path / "out").glob(".*"))
    for status in seen:
        if status.status == "done":
            assert jobs[status.row - 1].finished()


def test_cohort_writes_uncompressed_nifti_with_output_ext(tmp_path, capsys):
    """--output-ext .nii: the same voxels as .nii.gz, in plain NIfTI files; --resume knows them; refused for one pair."""
    _setup(tmp_path)
    base = ["register", "--model", str(tmp_path / "model.pt"), "--pairs", str(tmp_path / "pairs.csv"), "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "gz")]) == 1
    assert main(base + ["--out", str(tmp_path / "nii"), "--output-ext", ".nii"]) == 1
    name = "0001_s0_to_s1"
    for kind in ("moved", "warp", "moved_seg"):
        plain = tmp_path / "nii" / f"{name}_{kind}.nii"
        assert plain.read_bytes()[:2] != b"\x1f\x8b" and not (tmp_path / "nii" / f"{name}_{kind}.nii.gz").exists()
        assert gzip.decompress((tmp_path / "gz" / f"{name}_{kind}.nii.gz").read_bytes()) == plain.read_bytes()
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "nii"), "--output-ext", ".nii", "--resume"]) == 1
    assert "0 registered, 4 already done, 1 failed" in capsys.readouterr().out
    assert main(["register", "--model", str(tmp_path / "model.pt"), "--moving", str(tmp_path / "s0.nii.gz"), "--fixed",
                 str(tmp_path / "s1.nii.gz"), "--moved", str(tmp_path / "m.nii"), "--output-ext", ".nii"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output-ext" in err[0] and not (tmp_path / "m.nii").exists()
