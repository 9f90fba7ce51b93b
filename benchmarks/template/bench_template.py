"""Does a population template help? OASIS 2D atlas segmentation with a template vs one raw subject,
and a small 3D template; writes ``docs/results/template.md``.

    python -m benchmarks.template.bench_template 2d      # build the 2D template, segment the test subjects
    python -m benchmarks.template.bench_template 3d      # a 3D template of the two OASIS 3D volumes
    python -m benchmarks.template.bench_template report  # docs/results/template.md from the two JSON files

2D: ``morphreg template --method dense`` over the first ``N_TEMPLATE`` training subjects of the
project's split (``benchmarks/oasis_study/prepare_oasis2d.py``: the first 300 subjects of
``oasis2d.npz`` train, the last 64 test; no test subject enters the template), with their seg24
maps (``template_seg`` is their majority vote). Then ``morphreg segment --method dense`` labels
``N_TEST`` test subjects with (a) the template + template_seg as the atlas and (b) one raw training
subject as the atlas, for each of ``RAW_ATLASES`` training subjects outside the template's set;
Dice over the 24 structures against each test subject's own seg24. Every command runs in this
process through ``morphreg.cli.main`` with 1 torch thread, as a user would run it.

3D: ``morphreg template --method dense`` of the two neurite-OASIS 3D volumes (``aligned_norm``,
with ``aligned_seg35``), downsampled by ``DOWNSAMPLE_3D`` (a voxel of 2 mm), ``ITERATIONS_3D``
iterations, 2 torch threads; the Dice of the two subjects' label maps in template space against
their Dice on the raw grid.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, WORK, load_average, md_table, oasis2d_npz, oasis3d_dir, write_text
from benchmarks.oasis_study.prepare_oasis2d import AFFINE, N_TRAIN
from morphreg import io, metrics, spatial
from morphreg.cli import main as morphreg

OUT = WORK / "template"
N_TEMPLATE = 32
ITERATIONS_2D = 4
RAW_ATLASES = (100, 150, 200, 250, 299)  # training subjects outside the template's set (0..N_TEMPLATE-1)
N_TEST = 40
SEG = "seg24"
DOWNSAMPLE_3D = 2
ITERATIONS_3D = 2
PAGE = RESULTS / "template.md"
FIGURE_2D = RESULTS / "template_oasis2d.png"
FIGURE_3D = RESULTS / "template_oasis3d.png"


def _cpu() -> float:
    """CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run(argv: list[str]) -> dict[str, float | str]:
    """One morphreg command with its wall and CPU time and the load around it."""
    load, wall, cpu = load_average(), time.perf_counter(), _cpu()
    code = morphreg(argv)
    if code != 0:
        raise SystemExit(f"morphreg {' '.join(argv)} failed with exit code {code}")
    return {"wall_s": time.perf_counter() - wall, "cpu_s": _cpu() - cpu, "load_before": load,
            "load_after": load_average()}


def _write_subjects(stack: np.lib.npyio.NpzFile, indices, folder: Path) -> list[str]:
    names = [str(stack["subjects"][i]) for i in indices]
    for kind, key in (("img", "slice_norm"), (SEG, SEG)):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i, name in zip(indices, names):
            io.save_volume(io.Volume(stack[key][i], AFFINE), folder / kind / f"{name}.nii.gz")
    return names


def _dice(predicted: Path, truth: Path) -> float:
    a = torch.from_numpy(io.load_volume(predicted).data.astype(np.int64))[None, None]
    b = torch.from_numpy(io.load_volume(truth).data.astype(np.int64))[None, None]
    return float(metrics.dice(a, b, labels=list(range(1, 25))).mean[0])


def _segment(atlas: Path, atlas_seg: Path, test: Path, out: Path, names: list[str]) -> dict[str, object]:
    timing = _run(["segment", "--atlas", str(atlas), "--atlas-seg", str(atlas_seg), "--images", str(test / "img"),
                   "--out", str(out), "--method", "dense", "--no-progress", "--workers", "1",
                   "--threads", "1"])
    scores = [_dice(out / f"{name}_seg.nii.gz", test / SEG / f"{name}.nii.gz") for name in names]
    return {"dice": scores, "mean": statistics.fmean(scores), "sd": statistics.stdev(scores), **timing}


def run_2d() -> None:
    torch.set_num_threads(1)
    root = OUT / "oasis2d"
    shutil.rmtree(root, ignore_errors=True)
    stack = np.load(oasis2d_npz())
    train = _write_subjects(stack, range(N_TEMPLATE), root / "train")
    raw = _write_subjects(stack, RAW_ATLASES, root / "raw")
    test = _write_subjects(stack, range(N_TRAIN, N_TRAIN + N_TEST), root / "test")
    template = root / "T"
    build = _run(["template", "--images", str(root / "train" / "img"), "--segs", str(root / "train" / SEG),
                  "--out", str(template), "--method", "dense", "--iterations", str(ITERATIONS_2D), "--threads", "1",
                  "--workers", "1", "--quiet"])
    shutil.copyfile(template / "qc.png", FIGURE_2D)
    log = (template / "log.csv").read_text()
    results = {"template": _segment(template / "template.nii.gz", template / "template_seg.nii.gz", root / "test",
                                    root / "seg_template", test)}
    for index, name in zip(RAW_ATLASES, raw):
        results[f"raw {name}"] = _segment(root / "raw" / "img" / f"{name}.nii.gz", root / "raw" / SEG /
                                          f"{name}.nii.gz", root / "test", root / f"seg_raw_{index}", test)
    summary = {"n_template": N_TEMPLATE, "template_subjects": train, "iterations": ITERATIONS_2D, "n_test": N_TEST,
               "test_subjects": test, "build": build, "log_csv": log, "segment": results,
               "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    (OUT / "oasis2d.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: (v["mean"], v["sd"]) for k, v in results.items()}, indent=1))


def run_3d() -> None:
    torch.set_num_threads(2)
    root = OUT / "oasis3d"
    shutil.rmtree(root, ignore_errors=True)
    names = ["OASIS_OAS1_0001_MR1", "OASIS_OAS1_0002_MR1"]
    for kind, file in (("img", "aligned_norm"), ("seg", "aligned_seg35")):
        (root / kind).mkdir(parents=True)
        for name in names:
            volume = io.load_volume(oasis3d_dir() / name / f"{file}.nii.gz")
            step = DOWNSAMPLE_3D
            affine = volume.affine.copy()
            affine[:3, :3] *= step
            affine[:3, 3] += volume.affine[:3, :3] @ np.full(3, (step - 1) / 2)  # centre of each 2x2x2 block
            if kind == "img":
                image = torch.from_numpy(volume.data.astype(np.float32))[None, None]
                data = torch.nn.functional.avg_pool3d(image, step)[0, 0].numpy()
            else:
                data = volume.data[step // 2::step, step // 2::step, step // 2::step]
            io.save_volume(io.Volume(data, affine), root / kind / f"{name}.nii.gz")
    template = root / "T"
    build = _run(["template", "--images", str(root / "img"), "--segs", str(root / "seg"), "--out", str(template),
                  "--method", "dense", "--iterations", str(ITERATIONS_3D), "--threads", "2", "--workers", "1",
                  "--quiet"])
    shutil.copyfile(template / "qc.png", FIGURE_3D)
    raw = [io.load_volume(root / "seg" / f"{n}.nii.gz").data for n in names]
    warped = []
    for name, seg in zip(names, raw):
        disp = torch.from_numpy(io.load_warp(template / "subjects" / f"{name}_warp.nii.gz").disp)[None]
        warped.append(spatial.warp(torch.from_numpy(seg.astype(np.int64))[None, None], disp, mode="nearest"))
    labels = list(range(1, 36))
    before = float(metrics.dice(torch.from_numpy(raw[0].astype(np.int64))[None, None],
                                torch.from_numpy(raw[1].astype(np.int64))[None, None], labels).mean[0])
    after = float(metrics.dice(warped[0], warped[1], labels).mean[0])
    summary = {"shape": list(io.load_volume(root / "img" / f"{names[0]}.nii.gz").shape), "downsample": DOWNSAMPLE_3D,
               "iterations": ITERATIONS_3D, "build": build, "log_csv": (template / "log.csv").read_text(),
               "dice_seg35_raw": before, "dice_seg35_in_template_space": after, "threads": torch.get_num_threads()}
    (OUT / "oasis3d.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def _log_table(text: str) -> str:
    rows = [line.split(",") for line in text.strip().splitlines()]
    keep = ["iteration", "registration", "mean_disp_norm", "max_disp_norm", "template_change", "sharpness", "seconds"]
    index = [rows[0].index(k) for k in keep]
    return md_table(keep, [[row[i] for i in index] for row in rows[1:]])


def _cost_note(two: dict) -> list[str]:
    """Seconds per registration: the affine-only stage of the build against the dense-only segment runs."""
    rows = [line.split(",") for line in two["log_csv"].strip().splitlines()]
    col = rows[0].index("registration_seconds") if "registration_seconds" in rows[0] else rows[0].index("seconds")
    affine = [float(r[col]) for r in rows[1:] if r[1] == "affine"]
    dense = [v["wall_s"] / two["n_test"] for v in two["segment"].values()]
    if not affine:
        return []
    per_affine = affine[0] / two["n_template"]
    return [f"Cost per registration (same 160 x 192 slices, 1 thread): the build's affine-only stage took "
            f"{per_affine:.2f} s per subject, while `segment --method dense` (dense only, no affine) took "
            f"{min(dense):.2f}-{max(dense):.2f} s per image, so most of the build's time is its affine stage.", ""]


def report() -> None:
    two = json.loads((OUT / "oasis2d.json").read_text())
    seg = two["segment"]
    raw_keys = [k for k in seg if k.startswith("raw ")]
    raw_means = [seg[k]["mean"] for k in raw_keys]
    pooled = [d for k in raw_keys for d in seg[k]["dice"]]
    tpl = seg["template"]
    rows = [[f"template ({two['n_template']} subjects) + majority-vote seg24", f"{tpl['mean']:.4f} ± {tpl['sd']:.4f}",
             f"{tpl['wall_s']:.1f}", f"{tpl['cpu_s']:.1f}"]]
    rows += [[f"one raw subject: {k[4:]}", f"{seg[k]['mean']:.4f} ± {seg[k]['sd']:.4f}", f"{seg[k]['wall_s']:.1f}",
              f"{seg[k]['cpu_s']:.1f}"] for k in raw_keys]
    rows.append([f"one raw subject, all {len(raw_keys)} pooled", f"{statistics.fmean(pooled):.4f} ± "
                 f"{statistics.stdev(pooled):.4f}", "", ""])
    wins = sum(t > max(seg[k]["dice"][i] for k in raw_keys) for i, t in enumerate(seg["template"]["dice"]))
    mean_raw = [statistics.fmean(seg[k]["dice"][i] for k in raw_keys) for i in range(len(tpl["dice"]))]
    gains = [t - r for t, r in zip(tpl["dice"], mean_raw)]
    beats_mean = sum(g > 0 for g in gains)
    build = two["build"]
    lines = [
        "# Population templates: `morphreg template`",
        "",
        "Written by `python -m benchmarks.template.bench_template report` (`benchmarks/template/bench_template.py`) "
        "from the JSON files of `bench_template 2d` and `bench_template 3d` (same script; see its docstring for "
        "every setting). Every morphreg command runs in the script's process through `morphreg.cli.main`, as typed "
        "by a user. **The 2-core machine was shared and heavily loaded** by other jobs while these ran (load "
        "averages below), so the times are upper bounds; the Dice values do not depend on the load.",
        "",
        "## OASIS 2D: a template as the atlas of `morphreg segment`, against one raw subject",
        "",
        f"Template: `morphreg template --method dense --iterations {two['iterations']}` of the first "
        f"{two['n_template']} training subjects of the project's split (first 300 of `oasis2d.npz` train, last 64 "
        "test; no test subject is in the template), with their seg24 maps (template_seg = majority vote of the "
        "warped maps). Then `morphreg segment --method dense` labels the first "
        f"{two['n_test']} test subjects with the template + template_seg as the atlas, and with each of "
        f"{len(raw_keys)} raw training subjects outside the template's set as the atlas (same method, same "
        "settings). Dice: mean over the 24 seg24 structures per test subject, then mean ± sd over the test subjects.",
        "",
        md_table(["atlas", f"seg24 Dice (n = {two['n_test']})", "segment wall s", "segment CPU s"], rows),
        "",
        f"The template beats the best single raw atlas on {wins} of {two['n_test']} test subjects (per subject, "
        f"against the best of the {len(raw_keys)} raw atlases for that subject). Mean of the raw atlases' means: "
        f"{statistics.fmean(raw_means):.4f} (best {max(raw_means):.4f}). Per test subject, template minus the mean "
        f"of the raw atlases: {statistics.fmean(gains):+.4f} ± {statistics.stdev(gains):.4f} (positive for "
        f"{beats_mean} of {len(gains)} subjects).",
        "",
        f"Build time: {build['wall_s']:.0f} s wall, {build['cpu_s']:.0f} s CPU (1 torch thread, in one process; "
        f"load average {build['load_before']} before, {build['load_after']} after; {two['cpus']} cores shared "
        f"with other work). Per-iteration log (`T/log.csv`; mean_disp_norm = mean displacement of the subjects "
        "to the previous template, voxels: the bias each update removes):",
        "",
        _log_table(two["log_csv"]),
        "",
        *_cost_note(two),
        f"![the 2D template after each iteration]({FIGURE_2D.name})",
        "",
    ]
    three_path = OUT / "oasis3d.json"
    if three_path.exists():
        three = json.loads(three_path.read_text())
        b3 = three["build"]
        lines += [
            "## OASIS 3D: a template of the two volumes",
            "",
            f"`morphreg template --method dense --iterations {three['iterations']}` of the two neurite-OASIS 3D "
            f"volumes (aligned_norm, with aligned_seg35), downsampled by {three['downsample']} to "
            f"{' x '.join(map(str, three['shape']))} (2 mm voxels), {three['threads']} torch threads: "
            f"{b3['wall_s']:.0f} s wall, {b3['cpu_s']:.0f} s CPU (load {b3['load_before']} before, "
            f"{b3['load_after']} after). The two subjects' seg35 Dice (35 structures) on the raw grid: "
            f"{three['dice_seg35_raw']:.4f}; in template space (each warped by its template warp): "
            f"{three['dice_seg35_in_template_space']:.4f}.",
            "",
            _log_table(three["log_csv"]),
            "",
            f"![the 3D template after each iteration]({FIGURE_3D.name})",
            "",
        ]
    write_text(PAGE, "\n".join(lines))
    print(f"wrote {PAGE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["2d", "3d", "report"])
    part = parser.parse_args().part
    {"2d": run_2d, "3d": run_3d, "report": report}[part]()


if __name__ == "__main__":
    sys.exit(main())
