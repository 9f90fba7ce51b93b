"""The lecture's learned families on one core, head to head: writes ``docs/results/lecture.md``.

    bash benchmarks/lecture/lecture_train.sh           # the runs (RUNS=runs/lecture), same CPU budget each
    python -m benchmarks.lecture.lecture_study [--runs runs/lecture]

Every model registers the study's 128 held-out OASIS 2D test pairs (``oasis_study/oasis2d_test_pairs.csv``;
64 subjects never used in training) in one forward pass, scored as the built-in model cards are
(``benchmarks/zoo/zoo_common.py``: seg24 Dice over the labels present, nearest-neighbour labels,
folding = % of voxels with det J <= 0). Inverse-consistency error: mean over the image of
``|φ_ab∘φ_ba - Id|`` and ``|φ_ba∘φ_ab - Id|`` in voxels (both directions registered). Seconds
per pair: the median forward pass, one thread. Paired test against the shipped ``brain2d``:
Wilcoxon signed-rank on the 128 per-pair seg24 Dice values (scipy). Per-pair rows go to
``benchmarks/work/lecture/pairs.csv`` (git-ignored); each checkpoint's scores are cached there by its
sha256 (``--only NAME`` scores a run as soon as it finishes).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from benchmarks import common
from benchmarks.zoo import zoo_common as zc
from morphreg.models import load_model
from morphreg.workflows.train.inverse_consistency import inverse_consistency_error

OUT = common.RESULTS / "lecture.md"
WORK = common.WORK / "lecture"
BRAIN2D = common.REPO / "src" / "morphreg" / "zoo" / "brain2d-v1.pt"  # brain2d as shipped before this study
BUDGET_NOTE = ("a cap of 10 CPU minutes per family (`--max-cpu-minutes 10`), one thread, `nice -n 19`, with each "
               "family's steps sized from a short timing so that its cosine schedule ends within the cap")


@dataclass(frozen=True)
class Family:
    name: str  # run folder under --runs ("" for the built-in brain2d)
    label: str
    settings: str  # what the family adds to brain2d's recipe, and what was scaled


FAMILIES = [
    Family("", "brain2d v1 (shipped before this study; VxmDense diffeomorphic + Dice)",
           "the shipped model: 8823 steps, 58 min wall on one thread (the model card)"),
    Family("vxm", "VxmDense, same recipe as brain2d (baseline)", "brain2d's recipe, cosine over 6200 steps"),
    Family("gradicon", "GradICON-trained VxmDense (Tian et al. 2023)",
           "+ GradICON penalty on both orders, weight 1.5 (uniGradICON's), pairs registered both ways "
           "(the similarity and Dice terms average both); brain2d's λ=0.5 diffusion term kept; cosine over 3500 steps"),
    Family("cascade", "recursive cascade, 3 stages (Zhao et al. 2019)",
           "3 VxmDense stages (paper: up to 10), composed into one field; the diffusion term on every stage; "
           "cosine over 3300 steps"),
    Family("transmorph", "TransMorph, Swin encoder (Chen et al. 2022)",
           "embed 24, depths 2-2-2, heads 2-4-8, window 4, patch 4 (paper: 96, 2-2-4-2, 4-4-8-8, window 5-7); "
           "no drop-path; cosine over 7500 steps"),
    Family("probabilistic", "probabilistic VoxelMorph-diff (Dalca et al. 2019)",
           "KL to the Laplacian prior with the paper's λ=10; NCC weighted 1/(2σ²), σ=0.112 and Dice weight 80 "
           "keep brain2d's NCC : smoothness : Dice ratios; mean velocity at test time; cosine over 6200 steps"),
]


def run_facts(run: Path) -> dict:
    """Steps, CPU and wall time, the learning rate at the end, the resumable state, of a training run."""
    rows = list(csv.DictReader(open(run / "metrics.csv", newline="")))
    settings = json.loads((run / "settings.json").read_text())
    log = (run / "train.log").read_text()
    # one "ran steps A-B in X CPU s, Y s wall" line per invocation (a resumed run has several)
    spans = [(float(c), float(w)) for c, w in re.findall(r"ran steps \d+-\d+ in ([\d.]+) CPU s, ([\d.]+) s wall", log)]
    if not spans:  # runs begun before that line existed log their CPU time only when the budget stopped them
        spans = [(float(c), float(rows[-1]["seconds"])) for c in re.findall(r"reached \(([\d.]+) CPU s\)", log)[-1:]]
    model = load_model(run / "model.pt")
    return {"steps": int(rows[-1]["step"]), "planned": int(settings["steps"]),
            "wall_s": sum(w for _, w in spans) if spans else float(rows[-1]["seconds"]),
            "cpu_s": sum(c for c, _ in spans) if spans else None, "lr_end": float(rows[-1]["lr"]),
            "kept_step": int(model.metadata.get("step", -1)), "val_dice": model.metadata.get("val_dice"),
            "state": str(run / "state.pt"), "stopped_by_budget": "max_cpu_minutes=" in log.split("ran steps")[-1]}


def finished(run: Path) -> bool:
    """A run that reached its steps or its budget (not one in progress)."""
    try:
        log = (run / "train.log").read_text().splitlines()
    except OSError:
        return False
    return (run / "model.pt").is_file() and bool(log) and ("ran steps" in log[-1] or "reached" in log[-1])


def evaluate(model: torch.nn.Module, stack: dict, pairs: list) -> dict:
    """Dice, folding (zoo scoring), inverse-consistency error and the forward time on the test pairs."""
    model.eval()
    normalise = model.metadata.get("normalise", "percentile")
    rows = zc.score_pairs(zc.network(model), stack, pairs, normalise=normalise)
    ic, seconds, cpu = [], [], []
    with torch.inference_mode():
        for m, f in pairs:
            a, b = zc.tensor(stack["slice_norm"][m], normalise), zc.tensor(stack["slice_norm"][f], normalise)
            t0, c0 = time.perf_counter(), time.process_time()
            ab = model(a, b).disp
            seconds.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            ic.append(float(inverse_consistency_error(ab, model(b, a).disp)[0]))
    rows.update(ic=ic)
    return {"rows": rows, "seconds": statistics.median(seconds), "cpu_seconds": statistics.median(cpu),
            "parameters": sum(p.numel() for p in model.parameters())}


def cached_evaluation(name: str, path: Path, stack: dict, pairs: list) -> dict:
    """:func:`evaluate` of the checkpoint ``path``, kept in ``WORK/NAME.json`` for that file's sha256 (a
    finished run is scored once, when it finishes; a changed checkpoint is scored again)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    cache = WORK / f"{name}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("sha256") == digest:
            return saved
    result = evaluate(load_model(path), stack, pairs)
    result.update(sha256=digest, load_average=common.load_average())
    WORK.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


def _row(family: Family, result: dict, base: dict | None, facts: dict | None) -> str:
    dice = result["rows"]["seg24"]
    if base is None:
        test = "(reference)"
    else:
        diff = np.asarray(dice) - np.asarray(base["rows"]["seg24"])
        p = stats.wilcoxon(dice, base["rows"]["seg24"]).pvalue
        test = f"{diff.mean():+.3f}, p = {p:.1e}"
    if facts is None:
        training = "8823 steps, 58 min wall"
    else:
        cpu = f"{facts['cpu_s'] / 60:.1f} CPU min" if facts["cpu_s"] else "CPU time not logged"
        training = f"{facts['steps']} / {facts['planned']} steps, {cpu}, {facts['wall_s'] / 60:.0f} min wall"
    return (f"| {family.label} | {zc.mean_sd(dice)} | {test} | {np.mean(result['rows']['folding']):.4f} | "
            f"{np.mean(result['rows']['ic']):.3f} | {result['cpu_seconds']:.3f} ({result['seconds']:.3f}) | "
            f"{result['parameters']:,} | {training} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=common.REPO / "runs" / "lecture")
    parser.add_argument("--only", nargs="+", default=None, help="score these runs now (cached), write no report")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stack, pairs = zc.test_pairs()
    load_start = common.load_average()
    results, facts, missing = {}, {}, []
    for family in FAMILIES:
        if args.only is not None and (family.name or "brain2d") not in args.only:
            continue
        if family.name and not finished(args.runs / family.name):
            missing.append(family.name)
            continue
        path = BRAIN2D if not family.name else args.runs / family.name / "model.pt"
        results[family.name] = cached_evaluation(family.name or "brain2d", Path(path), stack, pairs)
        facts[family.name] = run_facts(args.runs / family.name) if family.name else None
        print(f"{family.label}: seg24 {np.mean(results[family.name]['rows']['seg24']):.4f}", flush=True)
    if args.only is not None:
        return
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "pair", "seg24", "folding_pct", "ic_error"])
        for name, result in results.items():
            for k, (d, fo, ic) in enumerate(zip(result["rows"]["seg24"], result["rows"]["folding"],
                                                result["rows"]["ic"])):
                writer.writerow([name or "brain2d", k, f"{d:.5f}", f"{fo:.5f}", f"{ic:.5f}"])
    write_report(results, facts, missing, load_start, args.runs)


def write_report(results: dict, facts: dict, missing: list, load_start: str, runs: Path) -> None:
    base = results[""]
    lines = [
        "# The lecture's learned families on one core, head to head",
        "",
        "Written by `python -m benchmarks.lecture.lecture_study` from the runs of "
        "`bash benchmarks/lecture/lecture_train.sh` (do not edit by hand).",
        "",
        f"Every family was trained on the shared OASIS 2D training subjects (240 train / 60 validation, "
        f"morphreg's seeded split, seed 0, as `brain2d`) with the same budget: {BUDGET_NOTE}. That is "
        "**far below brain2d's 58 minutes** (8823 steps): the table compares the families at a small, "
        "equal budget, not at convergence. All start from brain2d's recipe (NCC window 9, λ=0.5 "
        "diffusion, 2 × Dice on the warped seg24 labels, stationary velocity integrated in 7 steps at 1/2 "
        "resolution, Adam 1e-3 with cosine decay, batch 1) and add their own part; the checkpoint is the "
        "best validation Dice (32 validation pairs every 500 steps and at the end), as brain2d's.",
        "",
        "Evaluation: the study's 128 held-out test pairs (`benchmarks/oasis_study/oasis2d_test_pairs.csv`, "
        "64 subjects never used in training), one forward pass each (a cascade is one call).",
        "",
        "| model | seg24 Dice (mean ± sd) | Δ vs brain2d, Wilcoxon | folding % | inverse-consistency error (voxels) "
        "| CPU s / pair (wall) | parameters | training |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family in FAMILIES:
        if family.name in results:
            lines.append(_row(family, results[family.name], None if family.name == "" else base,
                              facts.get(family.name)))
    used = [f["cpu_s"] / 60 for f in facts.values() if f and f["cpu_s"]]
    if used:
        by_budget = [name for name, f in facts.items() if f and f["stopped_by_budget"]]
        how = ("stopped by the cap: " + ", ".join(by_budget) if by_budget
               else "every run reached its planned steps before the cap")
        lines += ["", f"CPU time actually used: {min(used):.1f}–{max(used):.1f} min per family ({how}; "
                  "the step counts were sized on a slower, busier machine, so the budget is equal only to within "
                  f"{max(used) / min(used):.2f}x: read small differences with that in mind)."]
    lines += ["", "Columns: Δ is the mean per-pair difference from brain2d (paired over the 128 pairs), p its "
              "two-sided Wilcoxon signed-rank p-value. Folding: mean over pairs of the % of voxels with det J ≤ 0. "
              "Inverse-consistency error: mean length of φ_ab∘φ_ba − Id over the image (both orders). CPU s / pair: "
              "median CPU time of the forward pass on one thread (its median wall time in brackets; the machine "
              "was shared). "
              "Training: steps done / planned (the cosine schedule was sized for the budget from a short "
              "timing; where the run reached the budget first its learning rate had not decayed to 0), "
              "the CPU time used, and the wall time.", "", "## Settings per family (what was scaled)", ""]
    for family in FAMILIES:
        lines.append(f"- **{family.label}**: {family.settings}.")
    lines += ["", "## Where each run stands", "",
              "| run | steps | planned | lr at the end | kept checkpoint (step, validation Dice) | resumable state |",
              "|---|---|---|---|---|---|"]
    for family in FAMILIES:
        f = facts.get(family.name)
        if f:
            state = os.path.relpath(f["state"], common.REPO)
            lines.append(f"| {family.name} | {f['steps']} | {f['planned']} | {f['lr_end']:.2g} | {f['kept_step']}, "
                         f"{f['val_dice']:.4f} | `{state}` |")
    if missing:
        lines += ["", f"Not evaluated (the run had not finished): {', '.join(missing)}."]
    best_name = max((n for n in results if n), key=lambda n: np.mean(results[n]["rows"]["seg24"]), default=None)
    lines += ["", "## Ship rule", ""]
    if best_name is not None:
        best = results[best_name]
        diff = np.mean(best["rows"]["seg24"]) - np.mean(base["rows"]["seg24"])
        p = stats.wilcoxon(best["rows"]["seg24"], base["rows"]["seg24"]).pvalue
        if diff > 0 and p < 0.05:
            verdict = (f"`{best_name}` beats brain2d v1 on the held-out pairs ({diff:+.3f}, p = {p:.1e}). It was "
                       "retrained with the model-card procedure (`bash benchmarks/zoo/zoo_train.sh brain2d`; λ raised "
                       "to 1.0 beforehand because this run folded more than 0.01 % of voxels) and ships as `brain2d` "
                       "since 2026-12-07; the old weights are `brain2d-v1`. Its held-out numbers: "
                       "[zoo.md](zoo.md) and `morphreg models brain2d`.")
        else:
            verdict = (f"No family beats the shipped brain2d at this budget: the best, `{best_name}`, is "
                       f"{diff:+.3f} seg24 Dice from it (p = {p:.1e}). brain2d stays as it is.")
        lines.append(verdict)
    lines += ["", "## Machine", "", f"{common.cpu_model()}; torch {torch.__version__}; evaluation on 1 thread; "
              f"load average at the start / end of the evaluation: {load_start} / {common.load_average()} "
              "(2 cores shared with other sessions, so wall times are loose; the training budget is CPU time)."]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
