"""The OASIS 2D study: morphreg against no registration, ANTs SyN/SyNCC, voxelmorph 0.3.4 and
MONAI on the same 128 fixed test pairs (64 test subjects never used in training).

    python -m benchmarks.oasis_study.study_oasis2d check                   # adapter conventions -> check.json
    python -m benchmarks.oasis_study.study_oasis2d train-peer --method vxm034 --steps 1000
    python -m benchmarks.oasis_study.study_oasis2d evaluate --method ants_syn
    python -m benchmarks.oasis_study.study_oasis2d machine                 # machine facts -> machine.json
    python -m benchmarks.oasis_study.study_oasis2d time --method ants_syn  # dedicated timing, memory -> timing.json
    python -m benchmarks.oasis_study.study_oasis2d list [--train-args]     # method names (for run_study.sh)

``bash benchmarks/oasis_study/run_study.sh`` runs everything (morphreg models are trained by the
``morphreg train`` command line there). Every method is scored by one code path,
``morphreg.workflows.evaluate.evaluate_pairs``: once with the seg24 label maps, once with the
seg4 label maps of the same pairs (the second pass reuses the fields of the first; each pair is
registered once). Outputs: ``benchmarks/work/study/eval/METHOD/{seg24,seg4}/`` (evaluate_pairs'
reports) and ``METHOD/method.json`` (time, memory, settings, checks).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import cpu_model, maxrss_mib, threads_one
from benchmarks.oasis_study import study_config as cfg
from benchmarks.oasis_study.study_fields import FieldRecorder, FieldReplay


def load_test_pairs(seg: str, normalise: str | None, limit: int | None = None) -> list[Any]:
    """The fixed test pairs (``test_pairs_SEG.csv`` of prepare_oasis2d.py) read by morphreg's own
    ``pairs_from_csv`` (images normalised by ``normalise``, labels integer, spacing from the
    affine), as a list."""
    from morphreg.workflows.evaluate import pairs_from_csv

    pairs = []
    for pair in pairs_from_csv(cfg.OASIS2D / f"test_pairs_{seg}.csv", normalise, ndim=2):
        if limit and len(pairs) >= limit:
            break
        pair.moving_name = Path(pair.moving_name).name.split(".")[0]
        pair.fixed_name = Path(pair.fixed_name).name.split(".")[0]
        pairs.append(pair)
    return pairs




def build_register_fn(m: cfg.Method) -> tuple[Any, dict[str, Any]]:
    """(register_fn with ``last_seconds``, info) for a method."""
    import torch

    from benchmarks.common import TimedRegistration as timed

    info: dict[str, Any] = {
        "name": m.name,
        "label": m.label,
        "kind": m.kind,
        "group": m.group,
        "normalise": cfg.NORMALISE,
    }
    if m.kind == "none":
        return timed(lambda moving, fixed: torch.zeros(1, moving.dim() - 2, *moving.shape[2:])), info
    if m.kind == "ants":
        from benchmarks.oasis_study import study_peers

        study_peers.ants_threads_one()
        import ants

        info["ants_version"] = getattr(ants, "__version__", "?")
        info["transform"] = m.transform
        info["time_note"] = "ants.registration call only (dense-field extraction for scoring not counted)"
        return timed(study_peers.AntsRegisterFn(m.transform, cfg.SEED)), info
    if m.kind == "peer":
        from benchmarks.oasis_study import study_peers

        path = cfg.run_dir(m) / "model.pt"
        model = study_peers.load_peer(m.peer, path)
        info["parameters"] = sum(p.numel() for p in model.parameters())
        info["train"] = json.loads((cfg.run_dir(m) / "train.json").read_text())
        return timed(study_peers.peer_register_fn(m.peer, model)), info
    from morphreg.models import VxmDense
    from morphreg.workflows.pipeline import NetworkRegistration

    path = cfg.run_dir(m) / m.checkpoint
    model = VxmDense.load(path, map_location="cpu")
    # the intensity normalisation the network was trained with (legacy checkpoints: min-max)
    info["normalise"] = model.metadata.get("normalise", "minmax")
    info["parameters"] = sum(p.numel() for p in model.parameters())
    info["checkpoint"] = str(path.relative_to(cfg.ROOT)) if path.is_relative_to(cfg.ROOT) else str(path)
    info["train"] = _morphreg_train_info(cfg.run_dir(m), m.checkpoint)
    return timed(NetworkRegistration(model, torch.device("cpu"))), info


def _morphreg_train_info(run: Path, checkpoint: str) -> dict[str, Any]:
    import csv

    import torch

    settings = json.loads((run / "settings.json").read_text())
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    ckpt = torch.load(run / checkpoint, map_location="cpu", weights_only=True)
    meta = ckpt.get("metadata", {}) if isinstance(ckpt, dict) else {}
    # metrics.csv's clock restarts when a run is resumed: add up the segments
    total, last = 0.0, 0.0
    for row in rows:
        value = float(row["seconds"]) if row.get("seconds") else last
        if value < last:
            total += last
        last = value
    total += last
    return {
        "steps": int(rows[-1]["step"]) if rows else 0,
        "seconds": total if rows else math.nan,
        "checkpoint_step": meta.get("step"),
        "loss": settings.get("loss"),
        "normalise": settings.get("normalise"),
        "lambda": settings.get("weight"),
        "seg_weight": settings.get("seg_weight"),
        "int_steps": settings.get("int_steps"),
        "int_downsize": settings.get("int_downsize"),
        "lr": settings.get("lr"),
        "threads": settings.get("threads"),
    }


def cmd_evaluate(args: argparse.Namespace) -> int:
    threads_one()
    import torch

    from morphreg.workflows.evaluate import evaluate_pairs

    m = cfg.method(args.method)
    out = Path(args.out) if args.out else cfg.STUDY / "eval" / m.name
    out.mkdir(parents=True, exist_ok=True)
    register, info = build_register_fn(m)
    pairs24 = load_test_pairs("seg24", info["normalise"], args.limit)
    pairs4 = load_test_pairs("seg4", info["normalise"], args.limit)
    names24 = cfg.read_label_names(cfg.data_dir() / "oasis2d_neurite" / "seg24_labels.txt")
    names4 = cfg.read_label_names(cfg.data_dir() / "oasis2d_neurite" / "seg4_labels.txt")

    # seg24 pass: every pair registered (timed, while another job may run: see cmd_time) and
    # scored; the fields are kept for the seg4 pass.
    recorder = FieldRecorder(register)

    t0 = time.perf_counter()
    evaluate_pairs(
        recorder,
        pairs24,
        out / "seg24",
        labels=sorted(names24),
        label_names=names24,
        figures=0,
        method=m.label,
        progress=False,
    )
    info["wall_seconds_seg24_pass"] = time.perf_counter() - t0
    # seg4 pass on the same fields
    evaluate_pairs(
        FieldReplay(recorder),
        pairs4,
        out / "seg4",
        labels=sorted(names4),
        label_names=names4,
        figures=0,
        method=m.label,
        progress=False,
    )
    if hasattr(register, "checks"):
        checks = np.asarray(register.checks)
        info["ants_warp_corr_min"] = float(checks.min()) if checks.size else math.nan
        info["ants_warp_corr_mean"] = float(checks.mean()) if checks.size else math.nan
    examples = [d[0].numpy() for d in recorder.disps[: cfg.EXAMPLE_PAIRS]]
    np.savez_compressed(out / "examples.npz", disp=np.stack(examples))
    info["n_pairs"] = len(pairs24)
    info["threads"] = torch.get_num_threads()
    info["loadavg_after"] = os.getloadavg()
    (out / "method.json").write_text(json.dumps(info, indent=1, default=str))
    summary = json.loads((out / "seg24" / "summary.json").read_text())
    print(
        f"{m.name}: Dice seg24 {summary['dice_after']['mean']:.4f} ± {summary['dice_after']['sd']:.4f}, "
        f"folding {summary['folding_pct']['mean']:.4f} %, {summary['seconds']['mean']:.4g} s/pair",
        flush=True,
    )
    return 0


def cmd_time(args: argparse.Namespace) -> int:
    """Dedicated timing and memory measurement, run with nothing else of the study running.

    In a fresh process: imports, the method (model weights) and the test images are loaded;
    ``ru_maxrss`` (the process's resident high-water mark) is read; ``WARMUP_PAIRS`` pairs are
    registered (not timed); the first ``TIME_PAIRS`` pairs are registered one by one, each call
    timed (``last_seconds``: the network forward pass, or the ``ants.registration`` call);
    ``ru_maxrss`` is read again. The difference is the memory registration needs on top of the
    loaded process.
    """
    threads_one()
    import torch

    m = cfg.method(args.method)
    out = Path(args.out) if args.out else cfg.STUDY / "eval" / m.name
    out.mkdir(parents=True, exist_ok=True)
    register, info = build_register_fn(m)
    pairs = load_test_pairs("seg24", info["normalise"], args.pairs)
    gc.collect()
    load_before = os.getloadavg()
    baseline = maxrss_mib()
    for pair in pairs[: cfg.WARMUP_PAIRS]:
        register(pair.moving, pair.fixed)
    seconds = []
    for pair in pairs:
        register(pair.moving, pair.fixed)
        seconds.append(float(register.last_seconds))
    peak = maxrss_mib()
    timing = {
        "method": m.name,
        "pairs": len(pairs),
        "warmup_pairs": cfg.WARMUP_PAIRS,
        "seconds": seconds,
        "mean": float(np.mean(seconds)),
        "sd": float(np.std(seconds, ddof=1)) if len(seconds) > 1 else 0.0,
        "median": float(np.median(seconds)),
        "threads": torch.get_num_threads(),
        "memory": {"baseline_maxrss_mib": baseline, "peak_maxrss_mib": peak, "registration_mib": peak - baseline},
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "time_note": info.get("time_note", "network forward pass in torch.inference_mode()"),
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=1))
    print(
        f"{m.name}: {timing['mean']:.4g} ± {timing['sd']:.2g} s/pair over {len(pairs)} pairs, "
        f"+{peak - baseline:.1f} MiB (peak {peak:.0f} MiB), load {load_before[0]:.2f}",
        flush=True,
    )
    return 0


def cmd_train_peer(args: argparse.Namespace) -> int:
    threads_one()
    from benchmarks.oasis_study import study_peers

    m = cfg.method(args.method)
    out = Path(args.out) if args.out else cfg.run_dir(m)
    info = study_peers.train_peer(
        m.peer,
        str(cfg.OASIS2D / "train" / "img"),
        out,
        steps=args.steps,
        loss=m.loss,
        weight=float(m.weight),
        lr=cfg.LR,
        seed=cfg.SEED,
        val_fraction=cfg.VAL_FRACTION,
        normalise=cfg.NORMALISE,
    )
    print(json.dumps(info))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    threads_one()
    from benchmarks.oasis_study import study_peers

    report = study_peers.check_conventions()
    out = Path(args.out) if args.out else cfg.STUDY / "check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


def machine_facts() -> dict[str, Any]:
    import torch

    cpu = cpu_model()
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("morphreg", "numpy", "scipy", "monai", "voxelmorph", "neurite", "ants"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception as err:  # noqa: BLE001 - report what is missing
            versions[mod] = f"not importable ({type(err).__name__})"
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)),
        "memory": mem,
        "platform": platform.platform(),
        "versions": versions,
        "threads_per_job": 1,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def cmd_machine(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else cfg.STUDY / "machine.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    facts.update({k: os.environ.get(k) for k in ("STEPS", "PARALLEL", "ONLY") if os.environ.get(k)})
    out.write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts, indent=1))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for m in cfg.methods_2d():
        if (args.kind and m.kind != args.kind) or (args.group and m.group != args.group):
            continue
        if args.train_args:
            if m.kind != "morphreg" or m.group == "acceptance":
                continue
            extra = " ".join(a.replace("TRAIN_SEG24", str(cfg.OASIS2D / "train" / "seg24")) for a in m.extra_train_args)
            print(f"{m.name}|--loss {m.loss} --lambda {m.weight:g} --normalise {cfg.NORMALISE} {extra}".rstrip())
        else:
            print(m.name)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("evaluate", help="register and score the test pairs with one method")
    p.add_argument("--method", required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--limit", type=int, default=None, help="first N pairs only (smoke tests)")
    p.set_defaults(fn=cmd_evaluate)
    p = sub.add_parser("time", help="dedicated timing and memory measurement of one method")
    p.add_argument("--method", required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--pairs", type=int, default=cfg.TIME_PAIRS, help="the first N test pairs")
    p.set_defaults(fn=cmd_time)
    p = sub.add_parser("train-peer", help="train voxelmorph's or MONAI's network like morphreg's")
    p.add_argument("--method", required=True, choices=["vxm034", "vxm034_paper", "monai"])
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_train_peer)
    p = sub.add_parser("check", help="check the adapters' displacement conventions")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("machine", help="write machine facts")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_machine)
    p = sub.add_parser("list", help="list methods (for run_study.sh)")
    p.add_argument("--kind", default=None)
    p.add_argument("--group", default=None)
    p.add_argument("--train-args", action="store_true", help="name|morphreg train arguments of the morphreg runs")
    p.set_defaults(fn=cmd_list)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
