"""2D network cohort throughput: `morphreg register --model brain2d --pairs CSV --out DIR`, pairs per second.

    python -m benchmarks.speed.bench_cohort2d                        # writes docs/results/cohort2d.md
    python -m benchmarks.speed.bench_cohort2d --pairs 128 --rounds 1 --no-baseline   # a quick look

The OASIS 2D test pairs (``benchmarks/work/oasis2d/test_pairs_seg24.csv``, 128 pairs of 160 x 192
slices with seg24 labels) listed ``--pairs`` times in all (repeated rows get their own names),
registered with the built-in ``brain2d`` at ``--threads 2``, writing moved image, warp and moved
labels per row and ``cohort.csv``. Each configuration is one command (Python start-up, the
network's loading and every write included in its wall time), and the configurations run in
turn, ``--rounds`` times (interleaved: the machine is shared, so the ratios of one round mean
more than the absolute figures):

* **baseline**: the same command on the code of ``--baseline`` (a git revision, extracted with
  ``git archive`` into the work folder): one batch after the other, reading, network, writing in
  turn;
* **pipelined**: this checkout (:func:`morphreg.workflows.jobs.run_network_tasks`: the next batch is
  read and the last one written in background threads while a batch goes through the network),
  with ``.nii.gz`` and with ``--output-ext .nii`` outputs, and at several ``--batch-size``.

CPU time and peak memory come from ``os.wait4`` of the command (user + system time; its maximum
resident set), the largest per-row ``peak_memory_mb`` from its ``cohort.csv``. The load average
is printed at the start and the end of each command.

A second part states the floor on this machine: the network's forward pass per pair at batch
B with 1 and 2 threads (wall and CPU time), and every stage of one row in this process at one
thread, one row after the other (read, network inputs, finish: field check, warp, Dice; writes).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

from benchmarks.common import BENCH, REPO, RESULTS, WORK, cpu_model, md_table, write_text

PAIRS2D = BENCH / "work" / "oasis2d" / "test_pairs_seg24.csv"
SCRIPT = "benchmarks/speed/bench_cohort2d.py"
BASELINE = "115e706"  # main before the pipelined network cohort
OUT = WORK / "cohort2d"


def pairs_csv(n_pairs: int) -> Path:
    """``n_pairs`` rows cycling over the OASIS 2D test pairs (absolute paths, distinct names)."""
    with PAIRS2D.open() as handle:
        rows = list(csv.DictReader(handle))
    root = PAIRS2D.resolve().parent
    lines = [",".join(str(root / rows[i % len(rows)][k]) for k in ("moving", "fixed", "moving_seg", "fixed_seg"))
             + f",p{i:05d}" for i in range(n_pairs)]
    path = OUT / f"pairs{n_pairs}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("moving,fixed,moving_seg,fixed_seg,name\n" + "\n".join(lines) + "\n")
    return path


def baseline_src(revision: str) -> Path | None:
    """``src/`` of ``revision`` extracted into the work folder (``None`` without git)."""
    target = OUT / f"baseline-{revision}"
    if (target / "src" / "morphreg").is_dir():
        return target / "src"
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "src"], capture_output=True,
                                 check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"no baseline: git archive {revision} failed ({err})", file=sys.stderr)
        return None
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def run_command(src: Path, pairs: Path, out: Path, *extra: str) -> dict[str, object]:
    """One cohort command on the code in ``src``: wall, CPU, peak RSS (``os.wait4``), load, and its
    ``cohort.csv`` (rows done, the largest per-row peak memory)."""
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(REPO)]))
    env.setdefault("MORPHREG_DATA", "/work/shared/data")
    cmd = [sys.executable, "-m", "morphreg", "register", "--model", "brain2d", "--pairs", str(pairs), "--out",
           str(out), "--no-progress", *extra]
    log = out.parent / f"{out.name}.log"
    load0, start = os.getloadavg()[0], time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    text = log.read_text()
    table = list(csv.DictReader((out / "cohort.csv").open())) if (out / "cohort.csv").exists() else []
    inside = re.search(r" in ([0-9.]+) s \(", text)
    return {"wall": wall, "inside": float(inside[1]) if inside else float("nan"),
            "cpu": usage.ru_utime + usage.ru_stime, "user": usage.ru_utime, "sys": usage.ru_stime,
            "peak_mb": usage.ru_maxrss / 1024, "load0": load0, "load1": os.getloadavg()[0],
            "rc": os.waitstatus_to_exitcode(status), "done": sum(r["status"] == "done" for r in table),
            "rows": len(table), "row_peak_mb": max((float(r["peak_memory_mb"]) for r in table
                                                    if r.get("peak_memory_mb")), default=float("nan")),
            "tail": text.strip().splitlines()[-1:] if text.strip() else []}


def configurations(args: argparse.Namespace) -> list[tuple[str, Path, list[str]]]:
    """``(label, src, extra flags)`` of every command of a round."""
    here = REPO / "src"
    configs = []
    two = ["--threads", "2"]
    if not args.no_baseline:
        src = baseline_src(args.baseline)
        if src is not None:
            configs.append((f"baseline {args.baseline}, .nii.gz, batch 8", src, [*two, "--batch-size", "8"]))
    configs.append(("pipelined, .nii.gz, batch 8", here, [*two, "--batch-size", "8"]))
    configs.append(("pipelined, .nii, batch 8", here, [*two, "--batch-size", "8", "--output-ext", ".nii"]))
    for batch in args.batches:
        if batch != 8:
            configs.append((f"pipelined, .nii.gz, batch {batch}", here, [*two, "--batch-size", str(batch)]))
    configs.append(("pipelined, .nii.gz, batch 8, `--threads 1`", here, ["--threads", "1", "--batch-size", "8"]))
    return configs


def throughput(args: argparse.Namespace) -> tuple[list[str], dict[str, list[dict[str, object]]]]:
    pairs = pairs_csv(args.pairs)
    configs = configurations(args)
    results: dict[str, list[dict[str, object]]] = {label: [] for label, _, _ in configs}
    for round_ in range(args.rounds):
        for index, (label, src, extra) in enumerate(configs):
            result = run_command(src, pairs, OUT / f"out{index}", *extra)
            results[label].append(result)
            print(f"round {round_ + 1} {label}: {result['wall']:.1f} s wall, {result['cpu']:.1f} s CPU, "
                  f"{result['peak_mb']:.0f} MB, load {result['load0']:.1f}->{result['load1']:.1f}, "
                  f"{result['done']}/{args.pairs} done, rc {result['rc']}", flush=True)
    return [label for label, _, _ in configs], results


def _median(runs: list[dict[str, object]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]


def throughput_table(labels: list[str], results: dict[str, list[dict[str, object]]], n_pairs: int) -> str:
    reference = labels[0]
    rows = []
    for label in labels:
        runs = results[label]
        ratios = [float(ref["wall"]) / float(run["wall"]) for ref, run in zip(results[reference], runs)]  # type: ignore[arg-type]
        rows.append([
            label,
            f"{n_pairs / _median(runs, 'wall'):.1f}",
            f"{n_pairs / _median(runs, 'inside'):.1f}",
            f"{_median(runs, 'wall'):.1f} s ({min(float(r['wall']) for r in runs):.1f}-"  # type: ignore[arg-type]
            f"{max(float(r['wall']) for r in runs):.1f})",  # type: ignore[arg-type]
            f"{_median(runs, 'cpu'):.1f} s ({_median(runs, 'cpu') / n_pairs * 1e3:.1f} ms/pair)",
            " / ".join(f"{x:.2f}" for x in ratios),
            f"{_median(runs, 'peak_mb'):.0f} MB",
            f"{_median(runs, 'row_peak_mb'):.0f} MB",
            ", ".join(f"{float(r['load0']):.1f}->{float(r['load1']):.1f}" for r in runs),  # type: ignore[arg-type]
            f"{min(int(r['done']) for r in runs)}/{n_pairs}",  # type: ignore[call-overload]
        ])
    header = ["configuration", "pairs/s (command)", "pairs/s (rows only)", "wall, median (range)",
              "CPU user+sys, median", f"speed-up vs {reference.split(',')[0]} per round", "peak RSS",
              "largest row peak (cohort.csv)", "load 1-min, start->end, per round", "rows done"]
    return md_table(header, rows)


def same_outputs(first: Path, second: Path) -> str:
    """How many image files of ``first`` have byte-identical twins in ``second``."""
    names = sorted(p.name for p in first.glob("*.nii*"))
    same = sum((second / name).exists() and (first / name).read_bytes() == (second / name).read_bytes()
               for name in names)
    return f"{same} of {len(names)} files byte-identical"


def _timed_cpu(fn, repeats: int) -> tuple[float, float]:
    """Median wall and mean CPU (this process) seconds of ``fn()`` over ``repeats`` calls (after one warm-up)."""
    fn()
    walls, cpu0 = [], time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    return statistics.median(walls), (time.process_time() - cpu0) / repeats


def forward_floor(batches: list[int], n_pairs: int = 64) -> tuple[str, dict[int, float]]:
    """The brain2d forward pass per pair at batch B, 1 and 2 threads, on real pairs' network inputs:
    the table, and the least CPU seconds per pair at each thread count."""
    import torch

    from morphreg.workflows.cohort import cohort_jobs, read_cohort_csv
    from morphreg.workflows.jobs import load_job_pair
    from morphreg.workflows.spec import RegistrationSpec

    spec = RegistrationSpec(model="brain2d")
    jobs = cohort_jobs(read_cohort_csv(pairs_csv(n_pairs)), OUT / "floor", spec)
    pairs = [load_job_pair(job) for job in jobs[:max(batches)]]
    built = spec.build(pairs[0])
    from morphreg.workflows.files import network_input

    moving = torch.cat([network_input(p.moving, built.normalise) for p in pairs])
    fixed = torch.cat([network_input(p.fixed, built.normalise) for p in pairs])
    rows = []
    least: dict[int, float] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch in batches:
            repeats = max(3, 64 // batch)
            wall, cpu = _timed_cpu(lambda b=batch: built.registration(moving[:b], fixed[:b]), repeats)
            least[threads] = min(least.get(threads, float("inf")), cpu / batch)
            rows.append([threads, batch, f"{wall / batch * 1e3:.1f}", f"{cpu / batch * 1e3:.1f}",
                         f"{batch / wall:.0f}", f"{os.getloadavg()[0]:.1f}"])
    torch.set_num_threads(2)
    return md_table(["threads", "batch", "forward wall ms/pair (median)", "CPU ms/pair", "pairs/s (forward only)",
                     "load"], rows), least


def stages(n_rows: int = 48) -> tuple[str, float]:
    """Every stage of a row at one thread, one row after the other (medians over ``n_rows`` rows):
    the table, and the CPU seconds of a row besides the network pass (read, inputs, finish_job)."""
    import torch

    from morphreg import io, metrics
    from morphreg.workflows import files
    from morphreg.workflows.cohort import cohort_jobs, read_cohort_csv
    from morphreg.workflows.jobs import _one_of, finish_job, load_job_pair
    from morphreg.workflows.outputs import write_outputs
    from morphreg.workflows.spec import RegistrationSpec

    torch.set_num_threads(1)
    spec = RegistrationSpec(model="brain2d")
    rows = read_cohort_csv(pairs_csv(n_rows))
    gz, plain = (cohort_jobs(rows, OUT / f"stages{ext}", spec, extension=ext) for ext in (".nii.gz", ".nii"))
    times: dict[str, list[float]] = {}

    def clock(name: str, fn):
        start, cpu = time.perf_counter(), time.process_time()
        value = fn()
        times.setdefault(name, []).append(time.perf_counter() - start)
        times.setdefault(name + " CPU", []).append(time.process_time() - cpu)
        return value

    built = spec.build(load_job_pair(gz[0]))
    normalise = built.normalise
    for index in range(0, n_rows, 8):
        pairs = [clock("read the pair (4 NIfTI files, checks)", lambda j=j: load_job_pair(j))
                 for j in gz[index:index + 8]]
        inputs = [clock("network inputs (normalise)", lambda p=p: (files.network_input(p.moving, normalise),
                                                                  files.network_input(p.fixed, normalise)))
                  for p in pairs]
        start, cpu = time.perf_counter(), time.process_time()
        output = built.registration(torch.cat([i[0] for i in inputs]), torch.cat([i[1] for i in inputs]))
        times.setdefault("forward pass (batch 8, per pair)", []).extend([(time.perf_counter() - start) / 8] * 8)
        times.setdefault("forward pass (batch 8, per pair) CPU", []).extend([(time.process_time() - cpu) / 8] * 8)
        for k, (pair, job, job_plain) in enumerate(zip(pairs, gz[index:index + 8], plain[index:index + 8])):
            one = _one_of(output, k)
            disp = one.disp.detach().float().cpu()
            clock("  field check (NaN/inf)", lambda d=disp: files.check_finite_field(d))
            moved = clock("  warp image and labels", lambda p=pair, d=disp: files.warp_moving(p, d))
            clock("  Dice", lambda m=moved, p=pair: metrics.dice(io.to_tensor(m[1]), io.to_tensor(p.fixed_seg)))
            result = clock("finish (field check, warp, Dice)",
                           lambda p=pair, o=one: files.finish_registration(p, o, 0.0))
            for name, target in (("write 3 outputs, .nii.gz", job), ("write 3 outputs, .nii", job_plain)):
                clock(name, lambda t=target, p=pair, r=result: write_outputs(
                    p, r, t.outputs, t.formats, moving_path=t.moving, fixed_path=t.fixed))
            clock("finish_job (finish + write .nii.gz)", lambda p=pair, o=one, j=job: finish_job(j, p, o, 0.0))
    torch.set_num_threads(2)
    table = []
    for name in [n for n in times if not n.endswith(" CPU")]:
        table.append([name, f"{statistics.median(times[name]) * 1e3:.2f}",
                      f"{statistics.median(times[name + ' CPU']) * 1e3:.2f}"])
    besides = sum(statistics.median(times[f"{name} CPU"]) for name in (
        "read the pair (4 NIfTI files, checks)", "network inputs (normalise)", "finish_job (finish + write .nii.gz)"))
    return md_table(["stage of one row (1 thread)", "wall ms (median)", "CPU ms (median)"], table), besides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=512, help="rows of the cohort (cycling over the 128 test pairs)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every configuration")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64], help="--batch-size values")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the baseline code")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline commands")
    parser.add_argument("--out", type=Path, default=RESULTS / "cohort2d.md")
    args = parser.parse_args(argv)
    if not PAIRS2D.exists():
        print(f"no data: {PAIRS2D} (the OASIS 2D export)", file=sys.stderr)
        return 1
    started = time.strftime("%Y-%m-%d %H:%M")
    load_start = os.getloadavg()
    labels, results = throughput(args)
    identical = same_outputs(OUT / "out0", OUT / "out1") if labels[0].startswith("baseline") \
        else "not checked (no baseline)"
    pipelined = labels.index("pipelined, .nii.gz, batch 8")
    identical_threads = same_outputs(OUT / f"out{pipelined}", OUT / f"out{len(labels) - 1}")
    floor, least = forward_floor(sorted(set([1, *args.batches])))
    stage_table, besides = stages()
    ceiling_forward = 2 / least[1]
    ceiling_all = 2 / (least[1] + besides)
    load_end = os.getloadavg()
    def loads(values: tuple[float, float, float]) -> str:
        return " / ".join(f"{v:.1f}" for v in values)

    command = "python -m " + SCRIPT[:-3].replace("/", ".") + (" " + " ".join(argv) if argv else
                                                               " " + " ".join(sys.argv[1:])).rstrip()
    text = f"""# 2D network cohort throughput (`register --model brain2d --pairs`)

Generated by `{command.strip()}` ({SCRIPT}) on {started}: {cpu_model()}, {os.cpu_count()} cores,
Python {sys.version.split()[0]}, `--threads 2` unless a row says otherwise. Load average (1/5/15 min)
{loads(load_start)} at the start and {loads(load_end)} at the end: **the machine is shared** (other
sessions' tests, benchmarks and a training run), so the absolute figures move between rounds; compare the ratios
of one round.

{args.pairs} rows (the 128 OASIS 2D test pairs, 160 x 192, seg24, listed {args.pairs // 128 or 1}x with their own
names), each writing the moved image, the warp and the moved labels, plus `cohort.csv`; every configuration one
command per round, the configurations in turn ({args.rounds} rounds). *pairs/s (command)*: rows / the command's
wall time (Python start-up, imports and the network's loading included); *rows only*: rows / the time
`register --pairs` reports for its rows. CPU time and peak RSS: `os.wait4` of the command; the row peak is the largest
`peak_memory_mb` of `cohort.csv` (the process's peak resident memory when the row finished: one process runs all
rows, so every row's figure is the process's so far).

## Throughput

{throughput_table(labels, results, args.pairs)}

*baseline*: the code of `{args.baseline}` (one batch after the other: read, network pass, then write row by row,
the network loaded again for every batch). *pipelined*: `morphreg.workflows.jobs.run_network_tasks`: while a batch
goes through the network on the main thread, the next batch is read in a background thread and the rows of the
batch before are finished (field check, warp, Dice) and written by 4 writer threads (`ThreadPoolExecutor`); the
network is built once. Outputs of the last round, pipelined against baseline (`.nii.gz`, batch 8): {identical};
`tests/test_cohort.py` checks the same on a small cohort. `--output-ext .nii` writes the same images uncompressed.
With `--threads 1` the network pass has one torch thread and the reader and writer threads the other core (the
outputs against `--threads 2`, last round: {identical_threads}).

## The floor: the network pass

{floor}

## Where a row's time goes (one thread, one row after the other, this process)

{stage_table}

The writes are each output's `fsync` (atomic writes: temporary file, `fsync`, rename) more than gzip: `.nii` saves
little CPU. In the pipeline they run on the writer threads while the network runs.

## Why not 100 pairs/s on this machine

The forward pass alone costs at least {least[1] * 1e3:.1f} ms of CPU per pair at one thread ({least[2] * 1e3:.1f} ms at
two, where the threads also wait for each other; table above), so two cores doing nothing else would reach at most
2 / {least[1] * 1e3:.1f} ms = **{ceiling_forward:.0f} pairs/s** with no reading, finishing or writing at all. A row's
other stages add {besides * 1e3:.1f} ms of CPU (read, network inputs, `finish_job`; table above), so an idle 2-core
machine with everything overlapped perfectly tops out near 2 / {(least[1] + besides) * 1e3:.1f} ms =
**{ceiling_all:.0f} pairs/s**, and this shared one gets a share of that. The remaining levers are outside the cohort
path: a cheaper network pass (the model's code) and a cheaper NIfTI read (`morphreg.io`: nibabel's Python per file).
"""
    write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
