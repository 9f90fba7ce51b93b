"""Cohort throughput: `morphreg register --pairs` with 1 and 2 local workers, in pairs per hour.

    nice -n 10 python -m benchmarks.speed.bench_cohort            # writes docs/results/cohort.md

Two cohorts, each run as one `morphreg register --pairs` command (Python start-up, the workers'
start-up and every write included in the wall time):

* **3D dense**: the two neurite-OASIS 3D volumes (160 x 192 x 224), both directions, listed
  ``--repeat3d`` times, ``--method dense`` (greedy, fast preset), writing moved image, warp and
  moved seg35 labels; ``--workers 1`` (one process, 2 torch threads) against ``--workers 2``
  (two processes, 1 thread each).
* **2D network**: the built-in ``brain2d`` on ``--pairs2d`` neurite-OASIS 2D slice pairs
  (160 x 192, subject i to i + 1, exported from ``oasis2d.npz`` to NIfTI), batches of 16,
  ``--workers 1`` against ``--workers 2``.

CPU time is the children's user + system time (``getrusage``). The machine is shared: the load
average at the start of each run is printed next to it.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, WORK, module_command, module_env, oasis2d_npz, oasis3d_dir, write_text


def timed(cmd: list[str]) -> tuple[float, float, float, str]:
    """``(wall s, CPU s, 1-min load at start, last stdout line)`` of one command."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, env=module_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, load, done.stdout.strip().splitlines()[-1]


def pairs_3d(work: Path, repeat: int) -> tuple[Path, int]:
    data = oasis3d_dir()
    subjects = [data / "OASIS_OAS1_0001_MR1", data / "OASIS_OAS1_0002_MR1"]
    rows = []
    for _ in range(repeat):
        for moving, fixed in ((subjects[0], subjects[1]), (subjects[1], subjects[0])):
            rows.append(f"{moving}/aligned_norm.nii.gz,{fixed}/aligned_norm.nii.gz,{moving}/aligned_seg35.nii.gz,"
                        f"{fixed}/aligned_seg35.nii.gz")
    path = work / "pairs3d.csv"
    path.write_text("moving,fixed,moving_seg,fixed_seg\n" + "\n".join(rows) + "\n")
    return path, len(rows)


def pairs_2d(work: Path, n_pairs: int) -> tuple[Path, int]:
    from morphreg import io

    folder = work / "oasis2d"
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(oasis2d_npz()) as data:
        images, segs = data["slice_norm"][: n_pairs + 1], data["seg24"][: n_pairs + 1]
    for i, (image, seg) in enumerate(zip(images, segs)):
        io.save_volume(io.Volume(image.astype(np.float32), np.eye(4)), folder / f"s{i:03d}.nii.gz")
        io.save_volume(io.Volume(seg.astype(np.uint8), np.eye(4)), folder / f"s{i:03d}_seg.nii.gz")
    rows = [f"{folder}/s{i:03d}.nii.gz,{folder}/s{i + 1:03d}.nii.gz,{folder}/s{i:03d}_seg.nii.gz,"
            f"{folder}/s{i + 1:03d}_seg.nii.gz" for i in range(n_pairs)]
    path = work / "pairs2d.csv"
    path.write_text("moving,fixed,moving_seg,fixed_seg\n" + "\n".join(rows) + "\n")
    return path, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=WORK / "cohort")
    parser.add_argument("--repeat3d", type=int, default=2, help="times the two 3D directions are listed")
    parser.add_argument("--pairs2d", type=int, default=128, help="2D slice pairs")
    parser.add_argument("--out", type=Path, default=RESULTS / "cohort.md")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    csv3d, n3d = pairs_3d(args.work, args.repeat3d)
    csv2d, n2d = pairs_2d(args.work, args.pairs2d)
    runs = [("3D dense (greedy, fast)", csv3d, n3d, ["--method", "dense"]),
            ("2D network brain2d, batch 16", csv2d, n2d, ["--model", "brain2d", "--batch-size", "16"])]
    table = ["| cohort | workers x threads | rows | wall s | CPU s | pairs/hour (wall) | CPU s/pair | load at start |",
             "|---|---|---|---|---|---|---|---|"]
    for label, csv_path, n, method in runs:
        for workers in (1, 2):
            out = args.work / f"out_{n}_{workers}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = module_command("morphreg", "register", *method, "--pairs", str(csv_path), "--out", str(out),
                                 "--workers", str(workers), "--device", "cpu", "--no-progress")
            wall, cpu, load, line = timed(cmd)
            threads = max(1, (len(os.sched_getaffinity(0))) // workers)
            table.append(f"| {label} | {workers} x {threads} | {n} | {wall:.1f} | {cpu:.1f} | {3600 * n / wall:.0f} | "
                         f"{cpu / n:.2f} | {load:.1f} |")
            print(table[-1], "--", line, flush=True)
    text = [
        "# Cohort registration throughput",
        "",
        f"Generated by `nice -n 10 python -m benchmarks.speed.bench_cohort --repeat3d {args.repeat3d} --pairs2d "
        f"{args.pairs2d}` on {platform.node() or 'this machine'} ({len(os.sched_getaffinity(0))} usable cores), "
        f"Python {platform.python_version()}, CPU device.",
        "",
        "Each row is one `morphreg register --pairs CSV --out DIR --workers N` command; the wall time includes "
        "Python and torch start-up, the start of the N worker processes (a Dask `LocalCluster`), and every write "
        "(moved image, warp, moved labels, `cohort.csv`). 3D: the two neurite-OASIS 3D volumes (160 x 192 x 224), "
        f"both directions, listed {args.repeat3d} times. 2D: the built-in `brain2d` on {args.pairs2d} neurite-OASIS "
        "2D slice pairs (160 x 192, subject i to i + 1). CPU s = the children's user + system time.",
        "",
        "**The machine is shared** with other jobs (the 1-minute load average at the start of each run is in the "
        "last column; on 2 cores a load above 2 means the runs competed for them), so compare rows of one table "
        "only, and read the numbers as a lower bound for a quiet machine.",
        "",
        *table,
        "",
    ]
    write_text(args.out, "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
