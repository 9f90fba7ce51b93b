"""Cohort throughput: `morphreg register --pairs` with 1 and 2 local workers, in pairs per hour.

    python -m benchmarks.speed.bench_cohort                 # writes docs/results/cohort.md
    python -m benchmarks.speed.bench_cohort --repeat3d 1 --pairs2d 32 --no-kill   # a quick look

Two cohorts, each run as one `morphreg register --pairs` command per row of the table (Python
start-up, the workers' start-up and every write included in the wall time):

* **3D dense**: the two neurite-OASIS 3D volumes (160 x 192 x 224), both directions, listed
  ``--repeat3d`` times, ``--method dense`` (greedy, fast preset), writing moved image, warp and
  moved seg35 labels; ``--workers 1`` (this process, the engine's threads) against ``--workers 2``
  (two Dask worker processes, the engine's threads each).
* **2D network**: the built-in ``brain2d`` on the first ``--pairs2d`` rows of the OASIS 2D test
  pairs (``benchmarks/work/oasis2d/test_pairs_seg24.csv``, 160 x 192, seg24), batches of 16,
  ``--workers 1`` against ``--workers 2``, in the order 1, 2, 2, 1 (interleaved).
* **A killed worker** (unless ``--no-kill``): the 3D cohort sent with ``--scheduler`` to a
  ``dask scheduler`` and two ``dask worker`` processes on localhost; one worker is SIGKILLed
  while it runs a row; the table says what ``cohort.csv`` holds afterwards.

What the engine chose (the ``running ...`` line of each command, and the plan without
``--workers``) is reported beside each row. CPU time is the children's user + system time
(``getrusage``; the Dask worker processes are children of the command). Peak memory: the largest
sum of the resident sets of the command's process tree (sampled every 0.1 s with psutil), and the
largest per-job peak in ``cohort.csv``. The machine is shared: the load average at the start and
end of each run is printed next to it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from benchmarks.common import (
    BENCH,
    RESULTS,
    WORK,
    cpu_model,
    md_table,
    module_command,
    module_env,
    oasis3d_dir,
    write_text,
)

PAIRS2D = BENCH / "work" / "oasis2d" / "test_pairs_seg24.csv"
SCRIPT = "benchmarks/speed/bench_cohort.py"


class TreeSampler:
    """Peak of the summed RSS of a process and its descendants, and their CPU time, sampled in a thread.

    CPU time: the last user + system time seen of every process of the tree (a worker process that
    exits is counted up to its last sample, at most ``every`` seconds short), so it includes worker
    processes whose parent does not wait for them (``getrusage(RUSAGE_CHILDREN)`` misses those).
    """

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self.cpu: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                total = 0
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        with proc.oneshot():
                            total += proc.memory_info().rss
                            times = proc.cpu_times()
                            self.cpu[(proc.pid, proc.create_time())] = times.user + times.system
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(self.every)

    def stop(self) -> tuple[int, float]:
        """``(peak bytes, CPU seconds)``."""
        self._stop.set()
        self._thread.join()
        return self.peak, sum(self.cpu.values())


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cohort(cmd: list[str], out: Path, during=None) -> dict[str, object]:
    """Run one cohort command; its wall, CPU, load, peak memory, plan line and cohort.csv."""
    load0, cpu0, start = os.getloadavg()[0], _cpu_children(), time.perf_counter()
    proc = subprocess.Popen(cmd, env=module_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    extra = during(proc) if during else None
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    peak, tree_cpu = sampler.stop()
    cpu, load1 = _cpu_children() - cpu0, os.getloadavg()[0]
    lines = stdout.strip().splitlines()
    table = list(csv.DictReader((out / "cohort.csv").open())) if (out / "cohort.csv").exists() else []
    job_peak = max((float(r["peak_memory_mb"]) for r in table if r.get("peak_memory_mb")), default=float("nan"))
    return {"cmd": cmd, "rc": proc.returncode, "wall": wall, "cpu": max(cpu, tree_cpu),
            "cpu_rusage": cpu, "cpu_sampled": tree_cpu, "load0": load0, "load1": load1,
            "tree_peak_mb": peak / 1e6, "job_peak_mb": job_peak,
            "plan": next((line for line in lines if line.startswith("running ")), ""),
            "summary": lines[-1] if lines else "", "stderr": stderr.strip().splitlines()[-3:],
            "statuses": [r["status"] for r in table], "workers_seen": sorted({r["worker"] for r in table}),
            "table": table, "extra": extra}


def pairs_3d(work: Path, repeat: int) -> tuple[Path, int]:
    data = oasis3d_dir()
    subjects = [data / "OASIS_OAS1_0001_MR1", data / "OASIS_OAS1_0002_MR1"]
    rows = []
    for r in range(repeat):
        for a, b in ((0, 1), (1, 0)):
            rows.append(f"{subjects[a]}/aligned_norm.nii.gz,{subjects[b]}/aligned_norm.nii.gz,"
                        f"{subjects[a]}/aligned_seg35.nii.gz,{subjects[b]}/aligned_seg35.nii.gz,"
                        f"r{r}_{a + 1}to{b + 1}")
    path = work / "pairs3d.csv"
    path.write_text("moving,fixed,moving_seg,fixed_seg,name\n" + "\n".join(rows) + "\n")
    return path, len(rows)


def pairs_2d(work: Path, n_pairs: int) -> tuple[Path, int]:
    """The first ``n_pairs`` rows of the OASIS 2D test pairs, with absolute paths."""
    with PAIRS2D.open() as handle:
        rows = list(csv.DictReader(handle))[:n_pairs]
    root = PAIRS2D.resolve().parent
    lines = [",".join(str(root / r[k]) for k in ("moving", "fixed", "moving_seg", "fixed_seg")) for r in rows]
    path = work / "pairs2d.csv"
    path.write_text("moving,fixed,moving_seg,fixed_seg\n" + "\n".join(lines) + "\n")
    return path, len(rows)


def auto_plan(csv_path: Path, spec_kwargs: dict[str, str], batch_size: int) -> str:
    """What the engine would choose without ``--workers`` for this cohort (the plan only; nothing runs)."""
    from morphreg.workflows.cohort import cohort_jobs, read_cohort_csv
    from morphreg.workflows.jobs import estimated_memory
    from morphreg.workflows.runner import Runner, plan_for
    from morphreg.workflows.spec import RegistrationSpec

    jobs = cohort_jobs(read_cohort_csv(csv_path), WORK / "reports" / "unused", RegistrationSpec(**spec_kwargs))
    per_task = batch_size if jobs[0].spec.batchable else 1
    tasks = -(-len(jobs) // per_task)
    return plan_for(Runner(), tasks, estimated_memory(jobs[0], per_task), batched=jobs[0].spec.batchable).reason


def start_dask(work: Path) -> tuple[list[subprocess.Popen], Path]:
    """``dask scheduler`` and two single-threaded ``dask worker`` processes on localhost."""
    sched_file = work / "scheduler.json"
    sched_file.unlink(missing_ok=True)
    env = module_env(DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="2")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)]
    for _ in range(300):
        if sched_file.exists() and sched_file.stat().st_size:
            break
        time.sleep(0.1)
    for _ in range(2):
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                       str(sched_file), "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                                       "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=module_env(OMP_NUM_THREADS="1"), start_new_session=True))
    return procs, sched_file


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def killed_worker_run(csv_path: Path, n: int, work: Path) -> dict[str, object]:
    """The 3D cohort on a localhost Dask scheduler with two workers; one is SIGKILLed mid-row."""
    from distributed import Client

    procs, sched_file = start_dask(work)
    out = work / "out3d_killed"
    shutil.rmtree(out, ignore_errors=True)
    try:
        address = json.loads(sched_file.read_text())["address"]
        with Client(address, timeout="30s", set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
            pids = client.run(os.getpid)

            def kill_one(proc: subprocess.Popen) -> dict[str, object]:
                deadline = time.time() + 900
                while time.time() < deadline and proc.poll() is None:
                    busy = [w for w, keys in client.processing().items() if keys]
                    if len(busy) == 2 and list(out.glob("*_moved_seg.nii.gz")):  # one row done, two running
                        time.sleep(5)  # well into the next rows
                        victim = busy[0]
                        os.kill(pids[victim], signal.SIGKILL)
                        return {"killed": victim, "at_s": time.time(), "done_before": len(list(
                            out.glob("*_moved_seg.nii.gz")))}
                    time.sleep(0.2)
                return {"killed": None}

            cmd = module_command("morphreg", "register", "--method", "dense", "--pairs", str(csv_path), "--out",
                                 str(out), "--scheduler", str(sched_file), "--threads", "1", "--no-progress")
            result = run_cohort(cmd, out, during=kill_one)
    finally:
        stop_all(procs)
    files = sorted(p.name for p in out.iterdir())
    hidden = [f for f in files if f.startswith(".")]
    result["outputs"] = sum(f.endswith("_moved.nii.gz") for f in files)
    result["hidden"] = hidden
    result["n"] = n
    return result


def measure(args: argparse.Namespace) -> dict[str, object]:
    """Run every cohort (and the killed-worker run); everything the report needs."""
    started = time.strftime("%Y-%m-%d %H:%M")
    csv3d, n3d = pairs_3d(args.work, args.repeat3d)
    csv2d, n2d = pairs_2d(args.work, args.pairs2d)
    auto3d = auto_plan(csv3d, {"method": "dense"}, 1)
    auto2d = auto_plan(csv2d, {"model": "brain2d"}, 16)
    dense = ["--method", "dense"]
    network = ["--model", "brain2d", "--batch-size", "16"]
    runs = [("3D dense (greedy, fast)", csv3d, n3d, dense, w) for w in (1, 2)]
    runs += [("2D network brain2d, batch 16", csv2d, n2d, network, w) for w in (1, 2, 2, 1)]
    raw = []
    for i, (label, csv_path, n, method, workers) in enumerate(runs):
        out = args.work / f"out{i}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = module_command("morphreg", "register", *method, "--pairs", str(csv_path), "--out", str(out),
                             "--workers", str(workers), "--device", "cpu", "--no-progress")
        r = run_cohort(cmd, out)
        r.update(label=label, n=n, workers=workers)
        r.pop("table")
        raw.append(r)
        shutil.rmtree(out, ignore_errors=True)
        print(json.dumps({k: r[k] for k in ("label", "workers", "wall", "cpu", "load0", "tree_peak_mb", "plan",
                                            "summary", "rc")}), flush=True)
        if r["rc"] != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {r['stderr']}")
    killed = killed_worker_run(csv3d, n3d, args.work) if args.kill else None
    return {"started": started, "node": platform.node(), "cpu_model": cpu_model(),
            "cores": len(os.sched_getaffinity(0)), "memory_gib": psutil.virtual_memory().total / 2**30,
            "python": platform.python_version(), "repeat3d": args.repeat3d, "pairs2d": args.pairs2d, "n3d": n3d,
            "n2d": n2d, "auto3d": auto3d, "auto2d": auto2d, "runs": raw, "killed": killed}


def killed_section(k: dict, n3d: int) -> list[str]:
    extra = k["extra"] or {}
    victim = extra.get("killed")
    what = (f"`{victim}`, after {extra['done_before']} row(s) had finished" if victim
            else "none: the run ended first")
    rows = [[r["row"], r["name"], r["status"], r["worker"] + (" (killed)" if r["worker"] == victim else ""),
             r["seconds"], r["dice"], r["peak_memory_mb"]] for r in k["table"]]
    survivors = sorted({r["worker"] for r in k["table"]} - {victim})
    rerun = len(k["table"]) - sum(r["worker"] == victim for r in k["table"])
    by_name: dict[str, set[str]] = {}
    for r in k["table"]:
        by_name.setdefault(r["name"].split("_", 1)[1], set()).add(r["dice"])
    same = all(len(v) == 1 for v in by_name.values())
    return [
        "## A killed worker (Dask scheduler on localhost)",
        "",
        f"The {n3d}-row 3D cohort, `register --method dense --pairs ... --scheduler scheduler.json --threads 1`, "
        "sent to a `dask scheduler` with two `dask worker --nthreads 1 --no-nanny` processes on this machine "
        "(`DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=2`). Once a row had finished and both workers were busy, "
        f"the script waited 5 s and SIGKILLed one worker: {what}.",
        "",
        md_table(["wall s", "CPU s (command only)", "exit code", "moved images written", "hidden temporaries left",
                  "load start / end"],
                 [[f"{k['wall']:.1f}", f"{k['cpu']:.1f}", k["rc"], f"{k['outputs']} of {n3d}", len(k["hidden"]),
                   f"{k['load0']:.1f} / {k['load1']:.1f}"]]),
        "",
        "`cohort.csv` afterwards:",
        "",
        md_table(["row", "name", "status", "worker", "s", "Dice (seg35)", "peak MB"], rows),
        "",
        f"Every row finished once; the row the killed worker was running was run again from the start on "
        f"{', '.join(f'`{w}`' for w in survivors)} ({rerun} of {len(k['table'])} rows ran there). The two rows of "
        f"each direction have {'the same' if same else 'DIFFERENT'} Dice, so the rerun wrote the same result. "
        f"Its last line: `{k['summary']}`. (The CPU column counts the command only: the `dask worker` processes are "
        "not its children.)" + (f" Data of this section: {k['note']}." if k.get("note") else ""),
        "",
    ]


def _duration(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{60 * hours:.0f} min"


def render(res: dict, out: Path) -> str:
    raw = res["runs"]
    rows = [[r["label"], f"`--workers {r['workers']}`", r["plan"].removeprefix("running "), r["n"], f"{r['wall']:.1f}",
             f"{r['cpu']:.1f}", f"{3600 * r['n'] / r['wall']:.0f}", f"{r['cpu'] / r['n']:.2f}",
             f"{r['tree_peak_mb'] / 1e3:.2f}", f"{r['job_peak_mb'] / 1e3:.2f}", f"{r['load0']:.1f} / {r['load1']:.1f}"]
            for r in raw]
    summary, rates = [], {}
    for label in dict.fromkeys(r["label"] for r in raw):
        by = {w: [r for r in raw if r["label"] == label and r["workers"] == w] for w in (1, 2)}
        rate = {w: sum(r["n"] for r in rs) * 3600 / sum(r["wall"] for r in rs) for w, rs in by.items()}
        cpu = {w: sum(r["cpu"] for r in rs) / sum(r["n"] for r in rs) for w, rs in by.items()}
        rates[label] = rate
        summary.append(f"- **{label}**: {rate[1]:.0f} pairs/hour with 1 worker, {rate[2]:.0f} with 2 "
                       f"(x{rate[2] / rate[1]:.2f}, all runs of each pooled); CPU s/pair {cpu[1]:.2f} vs {cpu[2]:.2f}; "
                       f"1000 pairs would take {_duration(1000 / rate[1])} / {_duration(1000 / rate[2])} on this "
                       "machine.")
    two = rates.get("2D network brain2d, batch 16")
    note = []
    if two and two[2] > 1.2 * two[1]:
        note = ["On this loaded machine the 2D network ran faster as 2 single-threaded worker processes than as the "
                "engine's default (one process, 2 torch threads), and with less CPU per pair: with the cores "
                "oversubscribed, a 2-thread process loses time whenever one of its threads is descheduled (its "
                "threads wait for each other at every parallel region), while two 1-thread processes do not. Whether "
                "the default should change needs the same comparison on a quiet machine; it was not available here.",
                ""]
    kill = ["--no-kill"] if res["killed"] is None else []
    text = [
        "# Cohort registration throughput",
        "",
        f"Generated by `python -m benchmarks.speed.bench_cohort --repeat3d {res['repeat3d']} --pairs2d "
        f"{res['pairs2d']}{' ' + kill[0] if kill else ''}` (`{SCRIPT}`) on {res['started']}, "
        f"{res['node'] or 'this machine'}: "
        f"{res['cpu_model']}, {res['cores']} usable cores, {res['memory_gib']:.0f} GiB, Python {res['python']}, "
        "CPU device.",
        "",
        "Each row is one `morphreg register --pairs CSV --out DIR --workers N --device cpu` command; the wall time "
        "includes Python and torch start-up, the start of the worker processes (a Dask `LocalCluster` for N > 1), "
        "and every write (moved image, warp, moved labels, `cohort.csv`). 3D: the two neurite-OASIS 3D volumes "
        f"(160 x 192 x 224, seg35), both directions, listed {res['repeat3d']} times, `--method dense` (fast preset). "
        f"2D: the built-in `brain2d` on the first {res['n2d']} OASIS 2D test pairs (`benchmarks/work/oasis2d/"
        "test_pairs_seg24.csv`, 160 x 192), `--batch-size 16`, run in the order 1, 2, 2, 1 workers. "
        "*Engine's choice*: the `running ...` line the command printed (threads per job chosen by the engine: "
        "the cores shared among the workers). CPU s: user + system time of the command and its worker processes "
        "(sampled every 0.1 s with psutil, or `getrusage` of the children when larger). "
        "Peak GB (tree): the largest sum of the resident sets of the command's processes (sampled every 0.1 s); "
        "peak GB (job): the largest per-job peak in `cohort.csv` (the resident peak of the process that ran it).",
        "",
        "**The machine was heavily loaded** by other jobs (a background training run at nice 19 and other "
        "sessions' benchmarks and tests; the 1-minute load average at the start and end of each run is in the last "
        "column; on 2 cores a load above 2 means the runs competed for them), so compare rows of one table only, "
        "and read the numbers as a lower bound for a quiet machine (a 3D dense pair takes about 27 s at 2 threads "
        "there, `docs/results/dense3d.md`).",
        "",
        md_table(["cohort", "asked", "engine's choice", "pairs", "wall s", "CPU s", "pairs/hour (wall)", "CPU s/pair",
                  "peak GB (tree)", "peak GB (job)", "load start / end"], rows),
        "",
        *summary,
        "",
        *note,
        "Without `--workers` the engine picks by itself (`plan_for`, the same call the command makes; nothing "
        f"run): 3D dense: {res['auto3d']}; 2D network: {res['auto2d']}. 3D classical jobs (~2.5 GB estimated each) "
        "get min(cores, memory / estimate, rows) worker processes; network cohorts and 2D jobs run in this process "
        "with every core (worker processes take seconds to start, more than a 2D job lasts).",
        "",
        *(killed_section(res["killed"], res["n3d"]) if res["killed"] else []),
    ]
    write_text(out, "\n".join(text))
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=WORK / "reports" / "cohort")
    parser.add_argument("--repeat3d", type=int, default=2, help="times the two 3D directions are listed")
    parser.add_argument("--pairs2d", type=int, default=128, help="2D test pairs (of 128)")
    parser.add_argument("--no-kill", dest="kill", action="store_false", help="skip the killed-worker run")
    parser.add_argument("--render", action="store_true", help="only write the report from WORK/results.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "cohort.md")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    saved = args.work / "results.json"
    if args.render:
        res = json.loads(saved.read_text())
    else:
        res = measure(args)
        saved.write_text(json.dumps(res, indent=1, default=str))
    print(render(res, args.out))


if __name__ == "__main__":
    main()
