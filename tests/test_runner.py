"""The runner: plans from cores and memory, in-process runs, and a real Dask scheduler with workers on
localhost that loses a worker (SIGKILL) mid-row; interrupted runs; resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from morphreg import io
from morphreg.cli import main
from morphreg.workflows.runner import Runner, map_items, plan_local

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _images(folder: Path, n: int, shape=(32, 32)) -> None:
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.random(shape), 3)
    for i in range(n):
        image = ndimage.shift(base, (i % 3 - 1, (i * 2) % 5 - 2), order=1).astype(np.float32)
        io.save_volume(io.Volume(image, np.eye(4)), folder / f"s{i}.nii.gz")
        io.save_volume(io.Volume((image > image.mean()).astype(np.uint8), np.eye(4)), folder / f"s{i}_seg.nii.gz")


def _pairs(folder: Path, rows: list[tuple[int, int]], bad: bool = False) -> Path:
    lines = ["moving,fixed,moving_seg,fixed_seg"] + [f"s{m}.nii.gz,s{f}.nii.gz,s{m}_seg.nii.gz,s{f}_seg.nii.gz"
                                                     for m, f in rows]
    if bad:
        lines.insert(2, "missing.nii.gz,s0.nii.gz,,")
    path = folder / "pairs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _table(out: Path) -> list[dict[str, str]]:
    with open(out / "cohort.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_plan_is_bounded_by_cores_memory_and_tasks():
    plan = plan_local(Runner(), tasks=10, memory_per_task=2 * 10**9, n_cores=16, memory=5 * 10**9)
    assert (plan.mode, plan.workers, plan.threads) == ("local", 2, 8)  # memory: 5 GB / 2 GB per task
    assert "16 cores" in plan.reason and "2 GB per task" in plan.reason
    plan = plan_local(Runner(workers=8), tasks=10, memory_per_task=2 * 10**9, n_cores=16, memory=5 * 10**9)
    assert plan.workers == 2 and "--workers 8 lowered to 2 by the memory" in plan.reason
    plan = plan_local(Runner(workers=8), tasks=3, memory_per_task=10**6, n_cores=4, memory=10**10)
    assert (plan.workers, plan.threads) == (3, 1) and "lowered to 3 by the tasks" in plan.reason
    assert plan_local(Runner(), tasks=1, memory_per_task=1, n_cores=4, memory=10**10).mode == "process"
    assert plan_local(Runner(threads=3), tasks=8, memory_per_task=1, n_cores=4, memory=10**10).threads == 3
    with pytest.raises(ValueError, match=r"`workers` must be an integer in \[1, 1024\]"):
        Runner(workers=0)


def test_map_items_in_process_keeps_the_order(capsys):
    assert map_items(abs, [-3, 2, -1], Runner(workers=1, progress=False)) == [3, 2, 1]
    assert "in this process" in capsys.readouterr().out


def test_classical_cohort_matches_the_one_pair_command(tmp_path, capsys):
    _images(tmp_path, 3)
    pairs = _pairs(tmp_path, [(0, 1), (1, 2)], bad=True)
    out = tmp_path / "out"
    argv = ["register", "--method", "affine", "--pairs", str(pairs), "--out", str(out), "--workers", "1",
            "--no-progress"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.count("row 2 (0002_missing_to_s0)") == 1 and "does not exist" in captured.err
    assert [r["status"] for r in _table(out)] == ["done", "error", "done"]
    assert float(_table(out)[0]["dice"]) > 0.5
    assert main(["register", "--method", "affine", "--moving", str(tmp_path / "s1.nii.gz"), "--fixed",
                 str(tmp_path / "s2.nii.gz"), "--moved", str(tmp_path / "one.nii.gz"), "--matrix",
                 str(tmp_path / "one.txt"), "--quiet"]) == 0
    np.testing.assert_allclose(io.load_volume(out / "0003_s1_to_s2_moved.nii.gz").data,
                               io.load_volume(tmp_path / "one.nii.gz").data, atol=1e-5)
    assert (out / "0003_s1_to_s2_matrix.txt").read_text() == (tmp_path / "one.txt").read_text()
    assert (out / "0003_s1_to_s2_moved_seg.nii.gz").exists()
    capsys.readouterr()
    (out / "0001_s0_to_s1_warp.nii.gz").unlink()  # an interrupted row: one output missing -> rerun
    (out / ".0003_s1_to_s2_moved.1a2b3c4d.tmp.nii.gz").write_bytes(b"half")  # a killed writer's temporary
    assert main(argv + ["--resume"]) == 1
    assert "1 registered, 1 already done, 1 failed" in capsys.readouterr().out
    assert not list(out.glob(".*"))


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=ENV,
                            start_new_session=True)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_dask_cluster_on_localhost_survives_a_worker_killed_mid_row(tmp_path):
    """`dask scheduler` + two `dask worker` processes; one worker is SIGKILLed while it runs a row: every row
    still finishes exactly once, the bad row is reported once (not retried), cohort.csv is complete."""
    from distributed import Client

    _images(tmp_path, 4, shape=(48, 48))
    pairs = _pairs(tmp_path, [(0, 1), (1, 2), (2, 3), (3, 0), (1, 0), (2, 1)], bad=True)
    sched_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(sched_file),
              "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"]
    scheduler_env = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "2"}
    processes = [subprocess.Popen(dask + ["--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                                          str(sched_file)], stdout=open(tmp_path / "scheduler.log", "wb"),
                                  stderr=subprocess.STDOUT, env={**ENV, **scheduler_env}, start_new_session=True)]
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        processes += [_start(worker, tmp_path / f"worker{i}.log") for i in range(2)]
        address = json.loads(sched_file.read_text())["address"]
        with Client(address, timeout="30s", set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            pids = client.run(os.getpid)
            out = tmp_path / "out"
            cohort = subprocess.Popen(
                [sys.executable, "-m", "morphreg", "register", "--method", "dense", "--levels", "2", "--iterations",
                 "150", "150", "--pairs", str(pairs), "--out", str(out), "--scheduler", str(sched_file),
                 "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
            processes.append(cohort)
            victim = None
            deadline = time.time() + 120
            while victim is None and time.time() < deadline and cohort.poll() is None:
                busy = [w for w, keys in client.processing().items() if keys]
                if busy and list(out.glob("*_moved_seg.nii.gz")):  # rows are running and one is done
                    victim = busy[0]
                time.sleep(0.05)
            assert victim is not None, "the run ended before a worker could be killed"
            os.kill(pids[victim], signal.SIGKILL)
            stdout, stderr = cohort.communicate(timeout=300)
        assert cohort.returncode == 1, (stdout, stderr)  # the bad row
        assert stderr.count("row 2 (0002_missing_to_s0)") == 1 and stderr.count("; skipped") == 1, stderr
        table = _table(out)
        assert [int(r["row"]) for r in table] == list(range(1, 8))  # every row, once
        assert [r["status"] for r in table] == ["done", "error"] + ["done"] * 5, table
        for row in table:
            if row["status"] == "done":
                moved = io.load_volume(out / f"{row['name']}_moved.nii.gz").data
                assert moved.shape == (48, 48) and np.isfinite(moved).all()
                assert io.load_warp(out / f"{row['name']}_warp.nii.gz").disp.shape == (2, 48, 48)
        assert not [p for p in out.iterdir() if p.name.startswith(".") and "tmp" not in p.name]
        assert "6 registered, 0 already done, 1 failed" in stdout
    finally:
        _stop(processes)


def test_scheduler_that_cannot_be_reached_is_one_line_and_fast(tmp_path, capsys, monkeypatch):
    _images(tmp_path, 2)
    pairs = _pairs(tmp_path, [(0, 1)])
    start = time.perf_counter()
    monkeypatch.setenv("MORPHREG_SCHEDULER", "tcp://127.0.0.1:9")
    argv = ["register", "--method", "affine", "--pairs", str(pairs), "--out", str(tmp_path / "out"),
            "--scheduler-timeout", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "environment variable MORPHREG_SCHEDULER 'tcp://127.0.0.1:9': cannot connect" in err[0]
    assert time.perf_counter() - start < 8 and not (tmp_path / "out").exists()


def test_interrupted_cohort_lists_pending_rows_and_resumes(tmp_path):
    _images(tmp_path, 4, shape=(48, 48))
    pairs = _pairs(tmp_path, [(0, 1), (1, 2), (2, 3), (3, 0)] * 3)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "morphreg", "register", "--method", "dense", "--levels", "2", "--iterations", "150",
            "150", "--pairs", str(pairs), "--out", str(out), "--workers", "1", "--no-progress"]
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
    deadline = time.time() + 120
    while not list(out.glob("*_moved_seg.nii.gz")) and time.time() < deadline and run.poll() is None:
        time.sleep(0.05)  # the moved labels are written last: one row is complete
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    statuses = [r["status"] for r in _table(out)]
    assert "done" in statuses and "pending" in statuses and len(statuses) == 12
    assert not list(out.glob(".*"))  # the interrupted write removed its temporary
    done = statuses.count("done")
    finished = subprocess.run(argv + ["--resume"], capture_output=True, env=ENV, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"{12 - done} registered, {done} already done, 0 failed" in finished.stdout
    assert [r["status"] for r in _table(out)].count("pending") == 0
