"""The OASIS 3D part of the study: the two neurite-OASIS volumes (OAS1_0001, OAS1_0002,
``aligned_norm`` 160x192x224, already affinely aligned to one grid), registered in both
directions, scored on seg35 and seg4 by ``morphreg.workflows.evaluate.evaluate_pairs``.

    python -m benchmarks.oasis_study.study_oasis3d --method ants_syn    # or none, morphreg_dense, morphreg_dense_diffeo
    python -m benchmarks.oasis_study.study_oasis3d --method morphreg_dense --scale 0.5   # smoke test at 1/2 size

With two volumes there is nothing to train a network on, so morphreg's entry is instance
optimisation (``morphreg.optimize.register_dense``), settings in ``study_config.DENSE3D``.
Outputs: ``benchmarks/work/study/oasis3d/METHOD/{seg35,seg4}/`` and ``METHOD/method.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import maxrss_mib
from benchmarks.oasis_study import study_config as cfg
from benchmarks.oasis_study.study_fields import FieldRecorder, FieldReplay


def load_pairs(seg: str, scale: float = 1.0) -> list[Any]:
    import torch
    import torch.nn.functional as F

    from morphreg import io
    from morphreg.data import normalise_intensity
    from morphreg.workflows.evaluate import EvalPair

    root = cfg.data_dir() / "oasis3d_neurite"
    images, labels = {}, {}
    for s in cfg.SUBJECTS_3D:
        img = torch.from_numpy(
            normalise_intensity(io.load_volume(root / s / "aligned_norm.nii.gz").data, cfg.NORMALISE)
        )[None, None]
        lab = torch.from_numpy(io.load_volume(root / s / f"aligned_{seg}.nii.gz").data.astype(np.int64))[None, None]
        if scale != 1.0:  # smoke tests only
            size = [int(round(n * scale)) for n in img.shape[2:]]
            img = F.interpolate(img, size=size, mode="trilinear", align_corners=True)
            lab = F.interpolate(lab.double(), size=size, mode="nearest").long()
        images[s], labels[s] = img, lab
    a, b = cfg.SUBJECTS_3D
    return [
        EvalPair(f"{m[11:15]}to{f[11:15]}", images[m], images[f], labels[m], labels[f], moving_name=m, fixed_name=f)
        for m, f in ((a, b), (b, a))
    ]


def build(m: cfg.Method3D) -> tuple[Any, dict[str, Any]]:
    import torch

    from benchmarks.common import TimedRegistration as timed

    info: dict[str, Any] = {"name": m.name, "label": m.label, "kind": m.kind, "normalise": cfg.NORMALISE}
    if m.kind == "none":
        return timed(lambda moving, fixed: torch.zeros(1, moving.dim() - 2, *moving.shape[2:])), info
    if m.kind == "ants":
        from benchmarks.oasis_study import study_peers

        study_peers.ants_threads_one()
        info["transform"] = m.transform
        info["time_note"] = "ants.registration call only (dense-field extraction for scoring not counted)"
        return timed(study_peers.AntsRegisterFn(m.transform, cfg.SEED)), info
    from morphreg.optimize import register_dense

    options = dict(m.options)
    info["options"] = options
    losses: list[list[float]] = []

    def run(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        result = register_dense(moving, fixed, **options)
        losses.append([result.loss_history[0], result.loss_history[-1]] if result.loss_history else [])
        return result.disp

    info["loss_first_last"] = losses
    return timed(run), info




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=[m.name for m in cfg.methods_3d()])
    parser.add_argument("--out", default=None)
    parser.add_argument("--scale", type=float, default=1.0, help="resize the volumes first (smoke tests only)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from morphreg.workflows.evaluate import evaluate_pairs

    m = cfg.method_3d(args.method)
    out = Path(args.out) if args.out else cfg.STUDY / "oasis3d" / m.name
    out.mkdir(parents=True, exist_ok=True)
    pairs35, pairs4 = load_pairs("seg35", args.scale), load_pairs("seg4", args.scale)
    names35 = cfg.read_label_names(cfg.data_dir() / "oasis3d_neurite" / "seg35_labels.txt")
    names4 = cfg.read_label_names(cfg.data_dir() / "oasis3d_neurite" / "seg4_labels.txt")
    register, info = build(m)
    recorder = FieldRecorder(register)

    gc.collect()
    baseline = maxrss_mib()
    t0 = time.perf_counter()
    # HD95 is left out in 3D (35 labels x 7 M voxels of distance transforms per direction)
    evaluate_pairs(
        recorder,
        pairs35,
        out / "seg35",
        labels=sorted(names35),
        label_names=names35,
        figures=0,
        with_hd95=False,
        method=m.label,
        progress=False,
    )
    info["wall_seconds"] = time.perf_counter() - t0
    info["memory"] = {
        "baseline_maxrss_mib": baseline,
        "peak_maxrss_mib": maxrss_mib(),
        "registration_mib": maxrss_mib() - baseline,
        "note": "high-water mark over registering and scoring both directions",
    }
    evaluate_pairs(
        FieldReplay(recorder),
        pairs4,
        out / "seg4",
        labels=sorted(names4),
        label_names=names4,
        figures=0,
        with_hd95=False,
        method=m.label,
        progress=False,
    )
    if hasattr(register, "checks"):
        info["ants_warp_corr"] = register.checks
    info["scale"] = args.scale
    info["loadavg_after"] = __import__("os").getloadavg()
    info["shape"] = list(pairs35[0].fixed.shape[2:])
    info["threads"] = torch.get_num_threads()
    # central slices (one per axis) of the first direction, for the report's figure
    from morphreg import spatial

    first = pairs35[0]
    moved = spatial.warp(first.moving, recorder.disps[0])[0, 0].numpy()
    det = spatial.jacobian_det(recorder.disps[0])[0].numpy()
    slices = {}
    for k in range(3):
        centre = moved.shape[k] // 2
        slices[f"moved{k}"] = np.take(moved, centre, axis=k)
        slices[f"fixed{k}"] = np.take(first.fixed[0, 0].numpy(), centre, axis=k)
        slices[f"moving{k}"] = np.take(first.moving[0, 0].numpy(), centre, axis=k)
        slices[f"det{k}"] = np.take(det, centre, axis=k)
    np.savez_compressed(out / "examples.npz", **slices)
    (out / "method.json").write_text(json.dumps(info, indent=1, default=str))
    summary = json.loads((out / "seg35" / "summary.json").read_text())
    print(
        f"3D {m.name}: Dice seg35 {summary['dice_after']['mean']:.4f}, folding {summary['folding_pct']['mean']:.4f} %,"
        f" {summary['seconds']['mean']:.1f} s/pair",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
