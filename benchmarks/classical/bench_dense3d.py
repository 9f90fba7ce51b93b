"""3D pairwise registration on the shared OASIS pair: morphreg dense/affine against ANTs, SimpleITK
demons and FireANTs, both directions, at a fixed thread count. Writes docs/results/dense3d.md.

Each (method, direction) runs in its own subprocess (so peak memory is its own), including
reading the images and writing the outputs; Dice (seg35, seg4) and folding are computed
afterwards from the written label maps and fields.

    python -m benchmarks.classical.bench_dense3d [--threads 2] [--methods ...] [--timeout 600]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, module_command, module_env, oasis3d_dir, write_text

DATA = oasis3d_dir()
SUBJECTS = {"1": DATA / "OASIS_OAS1_0001_MR1", "2": DATA / "OASIS_OAS1_0002_MR1"}
METHODS = ["morphreg_dense_fast", "morphreg_dense_accurate", "morphreg_affine", "ants_synonly", "ants_syn",
           "ants_affine", "sitk_demons", "fireants_greedy", "picsl_greedy_doc", "picsl_greedy_r4"]
#: PICSL greedy (``picsl_greedy``'s Python API): its documented brain settings (NCC 2x2x2, 100x50x10,
#: the default -s 1.732vox 0.7071vox) and the best variant found here (radius 4, morphreg's window).
PICSL_GREEDY = {"picsl_greedy_doc": "-m NCC 2x2x2 -n 100x50x10", "picsl_greedy_r4": "-m NCC 4x4x4 -n 100x50x10"}
REPORT = RESULTS / "dense3d.md"


def _paths(moving: str, fixed: str) -> dict[str, Path]:
    m, f = SUBJECTS[moving], SUBJECTS[fixed]
    return {"moving": m / "aligned_norm.nii.gz", "fixed": f / "aligned_norm.nii.gz",
            "moving_seg35": m / "aligned_seg35.nii.gz", "fixed_seg35": f / "aligned_seg35.nii.gz",
            "moving_seg4": m / "aligned_seg4.nii.gz", "fixed_seg4": f / "aligned_seg4.nii.gz"}


# ---- one method, run in a child process; returns the written seg35/seg4 and a Jacobian-determinant array


def run_morphreg(method: str, p: dict[str, Path], out: Path) -> dict:
    from morphreg.cli import main

    argv = ["register", "--moving", str(p["moving"]), "--fixed", str(p["fixed"]), "--moved", str(out / "moved.nii.gz"),
            "--warp", str(out / "warp.nii.gz"), "--moving-seg", str(p["moving_seg35"]),
            "--moved-seg", str(out / "seg35.nii.gz"), "--quiet"]
    if method == "morphreg_affine":
        argv += ["--method", "affine"]
    else:
        argv += ["--method", "dense", "--preset", method.rsplit("_", 1)[1]]
    code = main(argv)
    assert code == 0
    # seg4 with the written warp (the same transform), not timed
    return {"warp": str(out / "warp.nii.gz"), "extra_seg4": True}


def run_ants(method: str, p: dict[str, Path], out: Path) -> dict:
    import ants

    kind = {"ants_synonly": "SyNOnly", "ants_syn": "SyN", "ants_affine": "Affine"}[method]
    fixed, moving = ants.image_read(str(p["fixed"])), ants.image_read(str(p["moving"]))
    reg = ants.registration(fixed=fixed, moving=moving, type_of_transform=kind, outprefix=str(out / "ants_"))
    for name in ("seg35", "seg4"):
        seg = ants.apply_transforms(fixed, ants.image_read(str(p[f"moving_{name}"])), reg["fwdtransforms"],
                                    interpolator="nearestNeighbor")
        ants.image_write(seg, str(out / f"{name}.nii.gz"))
    ants.image_write(reg["warpedmovout"], str(out / "moved.nii.gz"))
    warps = [t for t in reg["fwdtransforms"] if t.endswith(".nii.gz")]
    if warps:
        jac = ants.create_jacobian_determinant_image(fixed, warps[0])
        return {"jacobian": jac.numpy().tolist() and None, "fold": float((jac.numpy() <= 0).mean())}
    return {"fold": 0.0}


def run_sitk_demons(p: dict[str, Path], out: Path) -> dict:
    """FastSymmetricForcesDemons, histogram matching, pyramid 4/2/1 (shrink + smooth), field sigma 1.5."""
    import SimpleITK as sitk

    fixed = sitk.ReadImage(str(p["fixed"]), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(p["moving"]), sitk.sitkFloat32)
    matcher = sitk.HistogramMatchingImageFilter()
    matcher.SetNumberOfHistogramLevels(1024)
    matcher.SetNumberOfMatchPoints(7)
    matcher.ThresholdAtMeanIntensityOn()
    moving = matcher.Execute(moving, fixed)
    field = None
    for shrink, iterations in ((4, 100), (2, 50), (1, 25)):
        f = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, 0.5 * shrink), [shrink] * 3) if shrink > 1 else fixed
        m = sitk.Shrink(sitk.SmoothingRecursiveGaussian(moving, 0.5 * shrink), [shrink] * 3) if shrink > 1 else moving
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(iterations)
        demons.SetSmoothDisplacementField(True)
        demons.SetStandardDeviations(1.5)
        if field is None:
            field = demons.Execute(f, m)
        else:
            init = sitk.Resample(field, f, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())
            field = demons.Execute(f, m, init)
    transform = sitk.DisplacementFieldTransform(sitk.Image(field))
    for name in ("seg35", "seg4"):
        seg = sitk.ReadImage(str(p[f"moving_{name}"]))
        sitk.WriteImage(sitk.Resample(seg, fixed, transform, sitk.sitkNearestNeighbor, 0), str(out / f"{name}.nii.gz"))
    sitk.WriteImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0), str(out / "moved.nii.gz"))
    jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
    return {"fold": float((jac <= 0).mean())}


def run_fireants(p: dict[str, Path], out: Path) -> dict:
    """FireANTs GreedyRegistration (its defaults: CC 7, Adam lr 0.5, scales 4/2/1) on the CPU."""
    import numpy as np
    import torch
    from fireants.io import BatchedImages, Image
    from fireants.registration.greedy import GreedyRegistration

    fixed, moving = Image.load_file(str(p["fixed"]), device="cpu"), Image.load_file(str(p["moving"]), device="cpu")
    reg = GreedyRegistration([4, 2, 1], [200, 100, 50], BatchedImages([fixed]), BatchedImages([moving]))
    reg.optimize()
    import nibabel as nib
    import torch.nn.functional as F

    for name in ("seg35", "seg4"):
        labels = BatchedImages([Image.load_file(str(p[f"moving_{name}"]), device="cpu")])
        with torch.no_grad():  # FireANTs' own warped grid (align_corners=True, as its evaluate), nearest labels
            grid = reg.get_warped_coordinates(BatchedImages([fixed]), labels)
            moved = F.grid_sample(labels().float(), grid, mode="nearest", align_corners=True)
        array = moved[0, 0].numpy().astype(np.int16).transpose(2, 1, 0)  # SimpleITK (z, y, x) -> NIfTI (x, y, z)
        nib.save(nib.Nifti1Image(array, nib.load(p["fixed"]).affine), out / f"{name}.nii.gz")
    return {"fold": None}


def run_picsl_greedy(method: str, p: dict[str, Path], out: Path) -> dict:
    """PICSL greedy's deformable registration (the pair shares one grid: no affine stage), then its
    own reslicing of seg35 and seg4 (nearest neighbour); the field is read back for folding."""
    from picsl_greedy import Greedy3D

    threads = os.environ.get("OMP_NUM_THREADS", "1")
    g = Greedy3D()
    g.execute(f"-d 3 -threads {threads} -i {p['fixed']} {p['moving']} {PICSL_GREEDY[method]} "
              f"-o {out / 'greedy_warp.nii.gz'}")
    g.execute(f"-d 3 -threads {threads} -rf {p['fixed']} -rm {p['moving']} {out / 'moved.nii.gz'} -ri NN "
              f"-rm {p['moving_seg35']} {out / 'seg35.nii.gz'} -rm {p['moving_seg4']} {out / 'seg4.nii.gz'} "
              f"-r {out / 'greedy_warp.nii.gz'}")
    return {"itk_warp": str(out / "greedy_warp.nii.gz")}


def child(method: str, direction: str, out: Path) -> None:
    moving, fixed = direction.split("to")
    p = _paths(moving, fixed)
    start, cpu = time.perf_counter(), time.process_time()
    if method.startswith("morphreg"):
        info = run_morphreg(method, p, out)
    elif method.startswith("ants"):
        info = run_ants(method, p, out)
    elif method == "sitk_demons":
        info = run_sitk_demons(p, out)
    elif method in PICSL_GREEDY:
        info = run_picsl_greedy(method, p, out)
    else:
        info = run_fireants(p, out)
    info["wall_s"] = time.perf_counter() - start
    info["cpu_s"] = time.process_time() - cpu
    info["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / "info.json").write_text(json.dumps(info))


def score(method: str, direction: str, out: Path) -> dict:
    import nibabel as nib
    import numpy as np
    import torch

    from morphreg import io, metrics, spatial

    moving, fixed = direction.split("to")
    p = _paths(moving, fixed)
    info = json.loads((out / "info.json").read_text())
    if info.get("warp"):
        warp = io.load_warp(info["warp"])
        disp = torch.from_numpy(np.ascontiguousarray(warp.disp)).float()[None]  # (1, ndim, *spatial)
        info["fold"] = float(metrics.folding_fraction(disp)) / 100  # a fraction, as the peers' rows
        seg4 = torch.from_numpy(np.asarray(nib.load(p["moving_seg4"]).dataobj).astype(np.int64))[None, None]
        nib.save(nib.Nifti1Image(spatial.warp(seg4, disp, mode="nearest")[0, 0].numpy().astype(np.int16),
                                 nib.load(p["fixed"]).affine), out / "seg4.nii.gz")
    if info.get("itk_warp"):  # greedy's field: LPS mm on the fixed grid (the ITK convention)
        warp = io.load_itk_warp(info["itk_warp"])
        info["fold"] = float(metrics.folding_fraction(torch.from_numpy(warp.disp)[None])) / 100
    for name in ("seg35", "seg4"):
        fixed_seg = torch.from_numpy(np.asarray(nib.load(p[f"fixed_{name}"]).dataobj).astype(np.int64))[None, None]
        moved = torch.from_numpy(np.asarray(nib.load(out / f"{name}.nii.gz").dataobj).astype(np.int64))
        info[f"dice_{name}"] = float(metrics.dice(moved.reshape(fixed_seg.shape), fixed_seg).mean)
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--directions", nargs="+", default=["1to2", "2to1"])
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--report", type=Path, default=REPORT, help="markdown report to write")
    parser.add_argument("--from-json", nargs="+", type=Path, default=None,
                        help="only rewrite the report from the JSON lines printed by earlier runs")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], Path(args.child[2]))
        return 0
    if args.from_json:
        rows = [json.loads(line) for path in args.from_json for line in path.read_text().splitlines()
                if line.startswith("{")]
        write_report(rows, args)
        return 0
    env = module_env(OMP_NUM_THREADS=str(args.threads), ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(args.threads),
                     MKL_NUM_THREADS=str(args.threads))
    rows = []
    for method in args.methods:
        for direction in args.directions:
            with tempfile.TemporaryDirectory() as tmp:
                load = os.getloadavg()[0]
                try:
                    command = module_command("benchmarks.classical.bench_dense3d", "--child", method, direction, tmp)
                    started = time.perf_counter()
                    subprocess.run(command, env=env, check=True, timeout=args.timeout, capture_output=True, text=True)
                    process_s = time.perf_counter() - started  # interpreter start, imports, I/O: all of it
                    info = score(method, direction, Path(tmp))
                    info["process_s"] = process_s
                except subprocess.TimeoutExpired:
                    info = {"error": f"did not finish in {args.timeout:.0f} s"}
                except (subprocess.CalledProcessError, OSError, ValueError, KeyError) as err:
                    tail = getattr(err, "stderr", "") or str(err)
                    info = {"error": tail.strip().splitlines()[-1][:120] if tail.strip() else type(err).__name__}
            info.update(method=method, direction=direction, load=load, threads=args.threads)
            print(json.dumps(info), flush=True)
            rows.append(info)
            write_report(rows, args)  # after every row: a partial run still leaves a report
    return 0


def write_report(rows: list[dict], args: argparse.Namespace) -> None:
    def fmt(value: object, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    lines = ["# 3D pairwise registration: OASIS OAS1_0001 <-> OAS1_0002 (160x192x224)", "",
             (f"Rows measured by earlier runs of `python -m benchmarks.classical.bench_dense3d "
              f"--threads {args.threads}` "
              f"(their JSON lines: {', '.join(f'`{p.name}`' for p in args.from_json)}), report written by "
              f"`bench_dense3d.py {' '.join(sys.argv[1:])}`" if args.from_json else
              f"Generated by `python -m benchmarks.classical.bench_dense3d {' '.join(sys.argv[1:])}`")
             + f" on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; each method at the threads of its row, "
             "one subprocess each (reading and writing included). The machine was shared with other jobs: "
             "`load` is the 1-minute load average (2 cores) when the run started; compare CPU time.", "",
             "`process s` is the wall time of the whole child process (interpreter start included).", "",
             "| method | direction | Dice seg35 | Dice seg4 | folding % | wall s | process s | CPU s | peak MB "
             "| threads | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['direction']} | {r['error']} | | | | | | | "
                         f"{r.get('threads', args.threads)} | {r['load']:.1f} |")
            continue
        fold = None if r.get("fold") is None else 100 * r["fold"]
        lines.append(f"| {r['method']} | {r['direction']} | {r['dice_seg35']:.4f} | {r['dice_seg4']:.4f} | "
                     f"{fmt(fold, '.4f')} | {r['wall_s']:.1f} | {fmt(r.get('process_s'), '.1f')} | {r['cpu_s']:.1f} | "
                     f"{r['peak_mb']:.0f} | "
                     f"{r.get('threads', args.threads)} | {r['load']:.1f} |")
    lines += ["", "## Headline (CPU time ratios, morphreg dense vs the deformable peers of the same direction)", ""]
    for r in rows:
        if not r["method"].startswith("morphreg_dense") or "error" in r:
            continue
        peers = [p for p in rows if p["direction"] == r["direction"] and not p["method"].startswith("morphreg")
                 and not p["method"].endswith("affine") and "error" not in p]  # deformable peers only
        better = [p for p in peers if p["dice_seg35"] >= r["dice_seg35"]]
        if better:
            best = min(better, key=lambda p: p["cpu_s"])
            lines.append(f"- {r['method']} {r['direction']}: fastest peer at equal or better Dice seg35 is "
                         f"{best['method']} ({best['dice_seg35']:.4f}); CPU time ratio morphreg/peer = "
                         f"{r['cpu_s'] / best['cpu_s']:.2f}")
        elif peers:
            best = max(peers, key=lambda p: p["dice_seg35"])
            fastest = min(peers, key=lambda p: p["cpu_s"])
            lines.append(f"- {r['method']} {r['direction']}: no peer reaches its Dice seg35 {r['dice_seg35']:.4f} "
                         f"(best peer {best['method']} {best['dice_seg35']:.4f}); CPU time ratio to the best peer "
                         f"{r['cpu_s'] / best['cpu_s']:.2f}, to the fastest peer ({fastest['method']}) "
                         f"{r['cpu_s'] / fastest['cpu_s']:.2f}")
    greedy_rows = [r for r in rows if r["method"] in PICSL_GREEDY and "error" not in r]
    if greedy_rows:
        lines += ["", "## Against PICSL greedy (same run, same direction: morphreg / greedy)", ""]
        for r in rows:
            if not r["method"].startswith("morphreg_dense") or "error" in r:
                continue
            for g in (g for g in greedy_rows if g["direction"] == r["direction"]):
                lines.append(f"- {r['method']} vs {g['method']} {r['direction']}: Dice seg35 {r['dice_seg35']:.4f} vs "
                             f"{g['dice_seg35']:.4f}; wall {r['wall_s'] / g['wall_s']:.2f}, CPU time "
                             f"{r['cpu_s'] / g['cpu_s']:.2f}")
    lines += ["", "Settings: morphreg dense = `register --method dense --preset fast|accurate` (greedy compositive "
              "local NCC, radius 4, fluid sigma 1, elastic sigma 0.5, step 1 voxel, levels 4/2/1); morphreg affine = "
              "`register --method affine` (defaults); ANTs = `ants.registration(type_of_transform=...)` defaults; "
              "SimpleITK = FastSymmetricForcesDemons after histogram matching (1024 levels, 7 points), pyramid 4/2/1 "
              "with 100/50/25 iterations, displacement-field sigma 1.5; FireANTs = GreedyRegistration defaults on "
              "the CPU, scales 4/2/1, 200/100/50 iterations, under the time limit (--timeout); "
              "moved labels by its own warped grid, nearest; folding not computed; PICSL greedy = `picsl_greedy` "
              "`Greedy3D().execute` deformable only (the pair shares one grid), `picsl_greedy_doc` its documented "
              "brain settings `-m NCC 2x2x2 -n 100x50x10` (default `-s 1.732vox 0.7071vox`), `picsl_greedy_r4` "
              "`-m NCC 4x4x4 -n 100x50x10` (morphreg's window), `-threads` = the row's threads, labels resliced by "
              "greedy `-ri NN`, folding from its field read with `morphreg.io.load_itk_warp`.", ""]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.report, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
