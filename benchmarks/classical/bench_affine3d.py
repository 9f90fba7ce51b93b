"""3D affine registration on the shared OASIS pair: `morphreg register --method affine` (its
defaults) against antspyx `ants.registration(type_of_transform="Affine")` (its defaults), both
directions, at a fixed thread count, in one run. Writes docs/results/affine3d.md.

Each (method, direction) runs in its own subprocess (bench_dense3d's child: reading the images,
registering, writing the moved image, the warp and the moved seg35; peak memory is its own);
Dice (seg35, seg4) is computed afterwards from the written label maps (bench_dense3d's scoring).
A second table checks the cross-contrast case on the BrainWeb T1/PD slices (2D, a known 10 degree
rotation) with the default loss and with each loss forced.

    python -m benchmarks.classical.bench_affine3d [--threads 2] [--timeout 600]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.classical.bench_dense3d import score
from benchmarks.common import (
    PROJECT_DATA,
    RESULTS,
    data_dir,
    load_average,
    machine_facts,
    module_command,
    module_env,
    write_text,
)

METHODS = ["morphreg_affine", "ants_affine"]
DIRECTIONS = ["1to2", "2to1"]
REPORT = RESULTS / "affine3d.md"
BRAINWEB = data_dir() / "itk_brainweb_t1_pd_2d"
if not BRAINWEB.is_dir():
    BRAINWEB = PROJECT_DATA / "itk_brainweb_t1_pd_2d"


def run_pair(method: str, direction: str, threads: int, timeout: float) -> dict:
    """One (method, direction) in a child process; its timings, memory and Dice."""
    env = module_env(OMP_NUM_THREADS=str(threads), ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads),
                     MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as tmp:
        load = os.getloadavg()[0]
        try:
            command = module_command("benchmarks.classical.bench_dense3d", "--child", method, direction, tmp)
            subprocess.run(command, env=env, check=True, timeout=timeout, capture_output=True, text=True)
            info = score(method, direction, Path(tmp))
        except subprocess.TimeoutExpired:
            info = {"error": f"did not finish in {timeout:.0f} s"}
        except (subprocess.CalledProcessError, OSError, ValueError, KeyError) as err:
            tail = getattr(err, "stderr", "") or str(err)
            info = {"error": tail.strip().splitlines()[-1][:120] if tail.strip() else type(err).__name__}
    info.update(method=method, direction=direction, load=load)
    return info


def cross_contrast_rows() -> list[dict]:
    """BrainWeb T1/PD slice, the moving one rotated by 10 degrees about the centre: the angle found."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from morphreg import spatial
    from morphreg.optimize import register_affine

    def read(name: str) -> torch.Tensor:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(BRAINWEB / f"Brain{name}Slice.png")))
        grey = array[..., 0] if array.ndim == 3 else array  # the PNGs are stored as RGB
        return torch.from_numpy(np.ascontiguousarray(grey, np.float32))[None, None]

    t1, pd = read("T1"), read("ProtonDensity")
    shape = t1.shape[2:]
    angle = math.radians(10.0)
    centre = (torch.tensor(shape, dtype=torch.float64) - 1) / 2
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    truth = torch.eye(3, dtype=torch.float64)
    truth[:2, :2], truth[:2, 2] = rot, centre - rot @ centre  # fixed voxel -> moving voxel
    inverse = torch.linalg.inv(truth)[:2].float()[None]
    rows = []
    for name, source, fixed in (("PD -> T1", pd, t1), ("T1 -> PD", t1, pd)):
        moving = spatial.warp(source, spatial.affine_to_disp(inverse, shape), padding="zeros")
        for loss in ("auto", "gncc", "mi"):
            result = register_affine(moving, fixed, loss=loss)
            m = result.matrix_voxel[0].double()
            found = math.degrees(math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1]))
            rows.append({"pair": name, "loss": loss if loss != "auto" else f"auto (chose {result.loss})",
                         "angle": found})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--directions", nargs="+", default=DIRECTIONS, choices=DIRECTIONS)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--report", type=Path, default=REPORT, help="markdown report to write")
    args = parser.parse_args()
    facts = machine_facts()
    rows = []
    for direction in args.directions:  # interleaved: both methods see about the same load
        for method in args.methods:
            info = run_pair(method, direction, args.threads, args.timeout)
            print(json.dumps(info), flush=True)
            rows.append(info)
    facts["load average (1/5/15 min) at the end"] = load_average()
    contrast = cross_contrast_rows() if BRAINWEB.is_dir() else []
    write_report(rows, contrast, facts, args)
    return 0


def write_report(rows: list[dict], contrast: list[dict], facts: dict[str, str], args: argparse.Namespace) -> None:
    lines = ["# 3D affine registration: OASIS OAS1_0001 <-> OAS1_0002 (160x192x224)", "",
             f"Generated by `python -m benchmarks.classical.bench_affine3d {' '.join(sys.argv[1:])}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; every method at {args.threads} threads "
             "(OMP_NUM_THREADS, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS), one subprocess each, reading the images and "
             "writing the moved image, the warp and the moved seg35 included. The machine may be shared with other "
             "jobs: `load` is the 1-minute load average (2 cores) when the row started; compare CPU time, and "
             "compare rows of similar load.", "",
             "| method | direction | Dice seg35 | Dice seg4 | wall s | CPU s | peak MB | load |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['direction']} | {r['error']} | | | | | {r['load']:.1f} |")
            continue
        lines.append(f"| {r['method']} | {r['direction']} | {r['dice_seg35']:.4f} | {r['dice_seg4']:.4f} | "
                     f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_mb']:.0f} | {r['load']:.1f} |")
    lines += ["", "## Ratios (same direction, same run)", ""]
    for direction in args.directions:
        pair = {r["method"]: r for r in rows if r["direction"] == direction and "error" not in r}
        if {"morphreg_affine", "ants_affine"} <= pair.keys():
            ours, ants = pair["morphreg_affine"], pair["ants_affine"]
            lines.append(f"- {direction}: Dice seg35 morphreg - ANTs = {ours['dice_seg35'] - ants['dice_seg35']:+.4f}; "
                         f"CPU time morphreg / ANTs = {ours['cpu_s'] / ants['cpu_s']:.2f}; "
                         f"wall morphreg / ANTs = {ours['wall_s'] / ants['wall_s']:.2f}")
    if contrast:
        lines += ["", "## Across contrasts: BrainWeb T1/PD slice, moving rotated by 10 degrees (2D, 1 thread)", "",
                  "`register_affine(moving, fixed, loss=...)`, other options at their defaults; the angle found "
                  "(truth 10.00).", "", "| pair | loss | angle (deg) |", "|---|---|---|"]
        lines += [f"| {r['pair']} | {r['loss']} | {r['angle']:.2f} |" for r in contrast]
    lines += ["", "## Settings", "",
              "- morphreg: `morphreg register --method affine --moving M --fixed F --moved OUT --warp W --moving-seg S "
              "--moved-seg OUT --quiet` (defaults: loss `auto` -> gncc on this pair, moments init, 3 levels x 100 "
              "Adam iterations, 2^13 random points per iteration, parameters averaged over the second half of the "
              "finest level).",
              "- ANTs: `ants.registration(fixed, moving, type_of_transform=\"Affine\")` defaults (COM init, Mattes MI "
              "32 bins, 20% regular sampling, shrink 6x4x2x1, smoothing 3x2x1x0, 2100x1200x1200x10 iterations with "
              "convergence test), then `apply_transforms` (nearest neighbour) for seg35 and seg4.",
              "- seg4 of morphreg is warped (untimed) with the written warp.", "", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in facts.items()]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
