"""A raw OASIS volume to the MNI152 2009a template in one command, against ANTs SyN and PICSL greedy.

    python -m benchmarks.classical.bench_to_template3d            # writes docs/results/to_template3d.md
    python -m benchmarks.classical.bench_to_template3d --subjects 1 --methods morphreg   # a quick look

Moving: the neurite-OASIS 3D volumes (``aligned_norm``, 160 x 192 x 224, 1 mm, an LIA-like
orientation, skull-stripped) with their ``aligned_seg4`` maps (1 cortex, 2 subcortical grey
matter, 3 white matter, 4 CSF). Fixed: the ICBM 2009a nonlinear symmetric template (MNI152
2009a, 197 x 233 x 189, 1 mm, RAS, skull-stripped) as nilearn ships it
(``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``), with its grey- and
white-matter probability maps (``..._gm_...``, ``..._wm_...``, uint8, probability x 255).

Each method runs in its own child process, reading the files and writing the moved image and the
moved seg4 map on the template grid, with 2 threads:

* ``morphreg``: ``morphreg register --method dense --affine --threads 2`` (one command: moments,
  the affine pyramid, then the greedy dense method, one composed warp; the wall time includes
  the Python start-up); ``morphreg default``: the same command without ``--affine`` (the default
  for 3D images on grids that differ must give the same output);
* ``ants``: ``ants.registration(fixed, moving, type_of_transform="SyN")`` (antspyx, its defaults),
  ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=2``, labels by ``apply_transforms(nearestNeighbor)``;
* ``greedy``: the picsl_greedy Python API, greedy's documented whole-brain settings: ``-a -dof 12
  -m NCC 2x2x2 -ia-image-centers -n 100x50x10``, then ``-m NCC 2x2x2 -it affine.mat -n 100x50x10
  -s 1.732vox 0.7071vox`` (its default smoothing), ``-threads 2``, labels resliced with ``-ri NN``.

Scores, from the written maps: Dice of grey matter (seg4 labels 1 + 2) and white matter (label 3)
against the template's tissue maps thresholded at probability 0.5, and against the argmax of
(GM, WM, CSF = 1 - GM - WM) inside the template's brain (T1 > 0). ``none``: the seg4 map
resampled onto the template grid through the two headers only (world coordinates), for scale.

The rounds are interleaved (each subject: every method once, the order reversed every round).
Wall and CPU time (user + system of the child, ``getrusage``) and the load average come with each
run; a cProfile of one morphreg run splits its time into start-up, reading, the affine stage, the
deformable stage and writing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, WORK, cpu_model, md_table, module_command, module_env, oasis3d_dir, write_text

SCRIPT = "benchmarks/classical/bench_to_template3d.py"
REPORT = RESULTS / "to_template3d.md"
SUBJECTS = {"1": "OASIS_OAS1_0001_MR1", "2": "OASIS_OAS1_0002_MR1"}
METHODS = ("morphreg", "ants", "greedy", "morphreg_default")
TARGET_S = 30.0


def mni_paths() -> dict[str, Path]:
    import nilearn

    data = Path(nilearn.__file__).parent / "datasets" / "data"
    return {k: data / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}


def subject_paths(subject: str) -> dict[str, Path]:
    folder = oasis3d_dir() / SUBJECTS[subject]
    return {"moving": folder / "aligned_norm.nii.gz", "moving_seg": folder / "aligned_seg4.nii.gz"}


# ---- the commands, each in a child process --------------------------------------------------------------


def morphreg_command(p: dict[str, Path], fixed: Path, out: Path, threads: int, affine: bool) -> list[str]:
    return module_command("morphreg", "register", "--method", "dense", *(["--affine"] if affine else []),
                          "--moving", str(p["moving"]), "--fixed", str(fixed), "--moved", str(out / "moved.nii.gz"),
                          "--moving-seg", str(p["moving_seg"]), "--moved-seg", str(out / "seg4.nii.gz"),
                          "--threads", str(threads), "--quiet")


def child_ants(p: dict[str, Path], fixed: Path, out: Path) -> None:
    import ants

    f, m = ants.image_read(str(fixed)), ants.image_read(str(p["moving"]))
    reg = ants.registration(fixed=f, moving=m, type_of_transform="SyN", outprefix=str(out / "ants_"))
    seg = ants.apply_transforms(f, ants.image_read(str(p["moving_seg"])), reg["fwdtransforms"],
                                interpolator="nearestNeighbor")
    ants.image_write(seg, str(out / "seg4.nii.gz"))
    ants.image_write(reg["warpedmovout"], str(out / "moved.nii.gz"))


def child_greedy(p: dict[str, Path], fixed: Path, out: Path, threads: int) -> None:
    from picsl_greedy import Greedy3D

    g = Greedy3D()
    common = f"-d 3 -threads {threads} -i {fixed} {p['moving']} -m NCC 2x2x2 -n 100x50x10"
    g.execute(f"{common} -a -dof 12 -ia-image-centers -o {out / 'affine.mat'}")
    g.execute(f"{common} -it {out / 'affine.mat'} -s 1.732vox 0.7071vox -o {out / 'warp.nii.gz'}")
    g.execute(f"-d 3 -threads {threads} -rf {fixed} -rm {p['moving']} {out / 'moved.nii.gz'} "
              f"-ri NN -rm {p['moving_seg']} {out / 'seg4.nii.gz'} -r {out / 'warp.nii.gz'} {out / 'affine.mat'}")


def child(method: str, subject: str, out: Path, threads: int) -> None:
    p, fixed = subject_paths(subject), mni_paths()["t1"]
    if method == "ants":
        child_ants(p, fixed, out)
    elif method == "greedy":
        child_greedy(p, fixed, out, threads)
    else:
        raise SystemExit(f"unknown child method {method}")


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_method(method: str, subject: str, out: Path, threads: int) -> dict[str, object]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    p, fixed = subject_paths(subject), mni_paths()["t1"]
    if method.startswith("morphreg"):
        cmd = morphreg_command(p, fixed, out, threads, affine=method == "morphreg")
    else:
        cmd = module_command("benchmarks.classical.bench_to_template3d", "--child", method, "--subject", subject,
                             "--child-out", str(out), "--threads", str(threads))
    env = module_env(ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    load0, cpu0, start = os.getloadavg()[0], _cpu_children(), time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu, load1 = time.perf_counter() - start, _cpu_children() - cpu0, os.getloadavg()[0]
    if done.returncode != 0:
        raise SystemExit(f"{method} on subject {subject} failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"method": method, "subject": subject, "wall": wall, "cpu": cpu, "load0": load0, "load1": load1,
            "seg": str(out / "seg4.nii.gz"), "cmd": " ".join(cmd)}


# ---- scores ------------------------------------------------------------------------------------------


def template_tissues() -> dict[str, dict[str, np.ndarray]]:
    """``{'p>0.5': {'gm': mask, 'wm': mask}, 'argmax': {...}}`` on the template grid."""
    import nibabel as nib

    paths = mni_paths()
    gm = np.asarray(nib.load(paths["gm"]).dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(nib.load(paths["wm"]).dataobj, dtype=np.float32) / 255.0
    brain = np.asarray(nib.load(paths["t1"]).dataobj) > 0
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    label = np.argmax(np.stack([gm, wm, csf]), axis=0)
    return {"p>0.5": {"gm": gm > 0.5, "wm": wm > 0.5},
            "argmax": {"gm": brain & (label == 0), "wm": brain & (label == 1)}}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def score(seg_path: Path, tissues: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    import nibabel as nib

    seg = np.asarray(nib.load(str(seg_path)).dataobj).astype(np.int64).reshape(tissues["p>0.5"]["gm"].shape)
    mine = {"gm": np.isin(seg, (1, 2)), "wm": seg == 3}
    return {f"{kind} {t}": dice(mine[t], ref[t]) for kind, ref in tissues.items() for t in ("gm", "wm")}


def unregistered_seg(subject: str, out: Path) -> Path:
    """The seg4 map resampled onto the template grid through the headers (nearest neighbour)."""
    import nibabel as nib
    from nilearn.image import resample_to_img

    out.mkdir(parents=True, exist_ok=True)
    img = resample_to_img(nib.load(str(subject_paths(subject)["moving_seg"])), nib.load(str(mni_paths()["t1"])),
                          interpolation="nearest", force_resample=True, copy_header=True)
    path = out / f"none_{subject}.nii.gz"
    nib.save(img, str(path))
    return path


# ---- where morphreg's time goes ---------------------------------------------------------------------------


STAGES = (  # (label, function names whose cumulative time is the stage; the first one found counts)
    ("read the images, resample onto the template grid (load_pair)", ("load_pair",)),
    ("affine stage (register_affine: moments + pyramid)", ("register_affine",)),
    ("deformable stage (register_greedy)", ("register_greedy", "register_dense")),
    ("warp the raw moving image and labels (warp_moving)", ("warp_moving",)),
    ("write the outputs (write_outputs)", ("write_outputs",)),
    ("the whole command (cli main)", ("main",)),
)


def profile_morphreg(subject: str, out: Path, threads: int) -> dict[str, object]:
    """cProfile of one `morphreg register --method dense --affine` (in a child, with start-up)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    prof = out / "morphreg.prof"
    cmd = morphreg_command(subject_paths(subject), mni_paths()["t1"], out, threads, affine=True)
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), *cmd[1:]]
    load0, start = os.getloadavg()[0], time.perf_counter()
    subprocess.run(cmd, env=module_env(OMP_NUM_THREADS=str(threads)), check=True, capture_output=True)
    return summarise_profile(prof, time.perf_counter() - start, load0, os.getloadavg()[0])


def summarise_profile(prof: Path, wall: float, load0: float, load1: float) -> dict[str, object]:
    """Stage times (cumulative s of :data:`STAGES`) and the top morphreg functions of a cProfile file."""
    stats = pstats.Stats(str(prof))
    by_name: dict[str, tuple[float, str]] = {}
    for (filename, _, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "morphreg" in filename and cumulative > by_name.get(name, (0.0, ""))[0]:
            by_name[name] = (cumulative, f"{Path(filename).parent.name}/{Path(filename).name}:{name}")
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    stages = []
    for label, names in STAGES:
        hit = next(((by_name[n][0], by_name[n][1]) for n in names if n in by_name), None)
        stages.append((label, hit[0] if hit else float("nan"), hit[1] if hit else "not found"))
    top = sorted(((v[0], v[1]) for k, v in by_name.items()), reverse=True)[:25]
    return {"wall": wall, "profiled_total": total, "stages": stages, "top": top, "load0": load0, "load1": load1}


# ---- the run -----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", nargs="+", default=["1", "2"], choices=sorted(SUBJECTS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--render", action="store_true", help="only write the report from WORK/results.json")
    parser.add_argument("--work", type=Path, default=WORK / "reports" / "to_template3d")
    parser.add_argument("--out", type=Path, default=REPORT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--subject", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.subject, args.child_out, args.threads)
    work = args.work.resolve()
    saved = work / "results.json"
    if args.render:
        res = json.loads(saved.read_text())
    else:
        res = measure(args, work)
        res["command"] = " ".join(a for a in sys.argv[1:] if a != "--render")
        saved.write_text(json.dumps(res, indent=1, default=str))
        if args.profile:
            res["profile"] = profile_morphreg(args.subjects[0], work / "profile", args.threads)
            saved.write_text(json.dumps(res, indent=1, default=str))
    write_report(res, args.out)


def measure(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """The interleaved runs, their scores, the unregistered baseline and the default-path check."""
    started = time.strftime("%Y-%m-%d %H:%M")
    runs = []
    for r, subject in enumerate(args.subjects):
        order = args.methods if r % 2 == 0 else args.methods[::-1]
        for method in order:
            res = run_method(method, subject, work / f"{method}_{subject}", args.threads)
            runs.append(res)
            print(json.dumps({k: res[k] for k in ("method", "subject", "wall", "cpu", "load0")}), flush=True)
    return {"started": started, "node": platform.node(), "cpu_model": cpu_model(),
            "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(), "subjects": args.subjects,
            "threads": args.threads, **scores(runs, args.subjects, work), "profile": None}


def scores(runs: list[dict], subjects: list[str], work: Path) -> dict[str, object]:
    import nibabel as nib

    tissues = template_tissues()
    for res in runs:
        res["scores"] = score(Path(res["seg"]), tissues)
    none = {s: score(unregistered_seg(s, work), tissues) for s in subjects}
    methods = {r["method"] for r in runs}
    same_default = None
    if {"morphreg", "morphreg_default"} <= methods:
        same_default = all(np.array_equal(np.asarray(nib.load(str(work / f"morphreg_{s}" / "seg4.nii.gz")).dataobj),
                                          np.asarray(nib.load(str(work / f"morphreg_default_{s}" / "seg4.nii.gz"))
                                                     .dataobj)) for s in subjects)
    return {"runs": runs, "none": none, "same_default": same_default}


LABELS = {"morphreg": "`morphreg register --method dense --affine`",
          "morphreg_default": "`morphreg register --method dense` (affine by default)",
          "ants": "ANTs `registration(type_of_transform=\"SyN\")`",
          "greedy": "PICSL greedy `-a -dof 12` then deformable, NCC 2x2x2, 100x50x10"}


def _load(run: dict) -> str:
    end = run.get("load1")
    return f"{run['load0']:.1f} / {'n/a' if end is None else f'{end:.1f}'}"


def write_report(data: dict, out: Path) -> None:
    import nibabel as nib

    runs, none, same_default, prof = data["runs"], data["none"], data["same_default"], data["profile"]
    subjects, threads = data["subjects"], data["threads"]
    keys = ("p>0.5 gm", "p>0.5 wm", "argmax gm", "argmax wm")
    rows = [[LABELS[r["method"]], r["subject"], *(f"{r['scores'][k]:.4f}" for k in keys), f"{r['wall']:.1f}",
             f"{r['cpu']:.1f}", _load(r)] for r in runs]
    rows += [["none (headers only)", subject, *(f"{s[k]:.4f}" for k in keys), "", "", ""]
             for subject, s in none.items()]
    mean_rows, cpu_mean = [], {}
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        cpu_mean[method] = float(np.mean([r["cpu"] for r in mine]))
        mean_rows.append([LABELS[method], len(mine), *(f"{np.mean([r['scores'][k] for r in mine]):.4f}" for k in keys),
                          f"{np.mean([r['wall'] for r in mine]):.1f}", f"{cpu_mean[method]:.1f}",
                          f"{np.mean([r['load0'] for r in mine]):.1f}"])
    mean_rows.append(["none (headers only)", len(none), *(f"{np.mean([s[k] for s in none.values()]):.4f}"
                                                          for k in keys), "", "", ""])
    fixed = nib.load(str(mni_paths()["t1"]))
    moving = nib.load(str(subject_paths(subjects[0])["moving"]))
    morph = [r for r in runs if r["method"].startswith("morphreg")]
    header = ["method", "subject", "GM Dice (p>0.5)", "WM Dice (p>0.5)", "GM Dice (argmax)", "WM Dice (argmax)",
              "wall s", "CPU s", "load start / end"]
    command = data.get("command") or f"--threads {threads}"
    text = [
        "# Raw grids to a template in one command",
        "",
        f"Generated by `python -m benchmarks.classical.bench_to_template3d {command}` "
        f"(`{SCRIPT}`) on "
        f"{data['started']}, {data['node'] or 'this machine'}: {data['cpu_model']}, {data['cores']} usable cores, "
        f"Python {data['python']}; every method with {threads} threads, each run in its own process "
        "(reading the files and writing the moved image and labels included; for morphreg the wall time is the "
        "whole command, Python start-up included).",
        "",
        "**Template**: ICBM 2009a nonlinear symmetric (MNI152 2009a; Fonov et al. 2009/2011, McConnell Brain Imaging "
        "Centre), as shipped in nilearn (`nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`, "
        f"with its `_gm_` and `_wm_` probability maps): {' x '.join(map(str, fixed.shape))}, 1 mm, "
        f"{''.join(nib.aff2axcodes(fixed.affine))}, skull-stripped. **Moving**: the neurite-OASIS 3D `aligned_norm` "
        f"volumes (OAS1_0001, OAS1_0002), {' x '.join(map(str, moving.shape))}, 1 mm, "
        f"{''.join(nib.aff2axcodes(moving.affine))}: another grid and another orientation. Their `aligned_seg4` maps "
        "(1 cortex, 2 subcortical grey matter, 3 white matter, 4 CSF; `oasis3d_neurite/seg4_labels.txt`) are warped "
        "onto the template grid with nearest neighbour; GM = labels 1 + 2, WM = label 3. Reference tissue: the "
        "template's GM/WM probability maps thresholded at 0.5, and the argmax of (GM, WM, CSF = 1 - GM - WM) inside "
        "the template's brain (T1 > 0). *none*: the seg4 map resampled through the two headers only.",
        "",
        "**The machine was heavily loaded** (a background training run at nice 19, other sessions' benchmarks and "
        "the full test suite; load average at the start and end of each run in the last column; on 2 cores a load "
        "above 2 means the runs competed), so the wall times are several times those of a quiet machine; the CPU "
        "times compare the tools better. Runs are interleaved: for each subject every method once, the order "
        "reversed for the next subject.",
        "",
        "## Mean over the subjects",
        "",
        md_table(["method", "subjects", *header[2:-1], "load at start"], mean_rows),
        "",
        "## Every run",
        "",
        md_table(header, rows),
        "",
    ]
    if morph:
        walls = [r["wall"] for r in morph]
        cpus = [r["cpu"] for r in morph]
        verdict = "meets" if max(walls) < TARGET_S else "misses"
        floor = min(cpus) / threads
        reach = ("the target looks within reach on a quiet machine" if floor < TARGET_S else
                 "the target is missed even on a quiet machine unless the CPU time itself drops (oversubscribed "
                 "threads also burn CPU while they wait, so part of it may be the load)")
        ratios = ", ".join(f"{m} {cpu_mean[m] / cpu_mean['morphreg']:.2f}x" for m in ("ants", "greedy")
                           if m in cpu_mean and "morphreg" in cpu_mean)
        text += [f"**The {TARGET_S:.0f} s target.** morphreg in one command: {', '.join(f'{w:.0f}' for w in walls)} s "
                 f"wall at {threads} threads on this loaded machine: it {verdict} the target here. Its CPU time was "
                 f"{min(cpus):.0f}-{max(cpus):.0f} s; at that CPU time {threads} perfectly used threads would still "
                 f"need {floor:.0f} s, so {reach}. "
                 f"CPU time relative to morphreg `--affine`: {ratios}."]
    if same_default is not None:
        text += ["", "**Default path.** Without `--affine` (3D images on grids that differ) the command runs the "
                 "affine stage by default: its moved seg4 map is "
                 f"{'identical to' if same_default else 'DIFFERENT from'} the "
                 "`--affine` run's for every subject."]
    if prof:
        total = prof["profiled_total"]
        stage_rows = [[label, f"{sec:.1f}", f"{100 * sec / total:.0f} %", f"`{where}`"]
                      for label, sec, where in prof["stages"]]
        wall = prof.get("wall")
        sec = {label.split(" ")[0]: value for label, value, _ in prof["stages"]}
        by_stage = {"affine": sec["affine"], "deformable": sec["deformable"],
                    "io": sec["read"] + sec["warp"] + sec["write"]}
        text += [
            "",
            "## Where morphreg's time goes",
            "",
            f"One more `morphreg register --method dense --affine` (subject {subjects[0]}) under `python -m cProfile`"
            + (f", {wall:.0f} s wall" if wall == wall and wall is not None else "")
            + f" (load {_load(prof)}): the profiled program took {total:.0f} s. Cumulative times of the functions "
            "of each stage (the loaded machine inflates them all; the shares are what matters):",
            "",
            md_table(["stage", "s", "share", "function"], stage_rows),
            "",
            f"The affine stage costs {by_stage['affine'] / by_stage['deformable']:.2f}x the deformable stage "
            f"({100 * by_stage['affine'] / total:.0f} % vs {100 * by_stage['deformable'] / total:.0f} % of the "
            f"program); reading, resampling, warping and writing together {by_stage['io']:.1f} s "
            f"({100 * by_stage['io'] / total:.0f} %). Notes for the `speed` helper (who works on `optimize/affine.py` "
            "and `io/nifti.py`; neither is edited here): see the functions below for where each stage spends its "
            "time (the affine stage's Adam loop `_optimise_levels`/`run_adam`; the deformable stage's separable "
            "filters `_filters._filter_axis` and `spatial.sample`).",
            "",
            "<details><summary>the 25 morphreg functions with the largest cumulative time</summary>",
            "",
            md_table(["cumulative s", "function"], [[f"{sec:.2f}", f"`{name}`"] for sec, name in prof["top"]]),
            "",
            "</details>",
        ]
    commands = {}
    for r in runs:
        commands.setdefault(r["method"], r["cmd"].replace(sys.executable, "python"))
    text += ["", "Commands (subject " + runs[0]["subject"] + "):", "",
             *(f"- {m}: `{c}`" for m, c in commands.items()), ""]
    if data.get("note"):
        text += [f"Data note: {data['note']}", ""]
    write_text(out, "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
