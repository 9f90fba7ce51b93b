"""``morphreg demo``: the main job end to end on data the demo makes itself.

1. Make a 2D data set of synthetic "brains" (random smooth label maps warped per subject,
   images drawn from the labels with random intensities, noise and blur; SynthMorph in spirit)
   — or read the user's images (``DemoOptions.data``/``segs``).
2. Train a VoxelMorph network (NCC, λ = 1) for a few minutes on the CPU.
3. Register held-out pairs in one forward pass each, print a before/after Dice table per
   structure, and write figures (registration, deformation grid, flow, Jacobian, curves).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._files import atomic_write_text
from ..data import PairDataset, load_collection, split_subjects, synthetic_shapes
from .evaluate import EvalPair, evaluate_pairs
from .pipeline import NetworkRegistration
from .train import TrainSettings, train
from .training_data import load_optional_segs, subset

DEMO_SHAPE = (96, 112)
DEMO_STEPS = 4000


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs on and how long.

    Attributes:
        out: output folder (run, evaluation, figures, ``demo_summary.json``).
        data, segs: the user's images and label maps (any form :func:`morphreg.data.load_collection`
            reads); ``None``: synthetic subjects.
        key, seg_key: array names of ``.npz`` data / label maps.
        steps: training steps (``None``: :data:`DEMO_STEPS`).
        subjects: synthetic subjects made when ``data`` is ``None``.
        test_pairs: held-out pairs evaluated.
        max_minutes: training time budget.
        seed: seed of the data, the split and the training.
        threads: CPU threads (``None``: torch's default).
        progress: progress bars.
    """

    out: str | Path = "demo_out"
    data: str | None = None
    segs: str | None = None
    key: str | None = None
    seg_key: str | None = None
    steps: int | None = None
    subjects: int = 200
    test_pairs: int = 24
    max_minutes: float = 6.0
    seed: int = 0
    threads: int | None = None
    progress: bool = True


def _demo_data(options: DemoOptions) -> tuple[list[np.ndarray], list[np.ndarray] | None, str]:
    if options.data is None:
        images, labels = synthetic_shapes(options.subjects, DEMO_SHAPE, n_labels=8, seed=options.seed)
        return list(images), list(labels), f"{options.subjects} synthetic subjects {DEMO_SHAPE[0]}x{DEMO_SHAPE[1]}"
    images, _ = load_collection(options.data, key=options.key)
    segs = load_optional_segs(options.segs, options.seg_key, len(images))
    return images, segs, f"{len(images)} images from {options.data}"


def _split_three_ways(n: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Disjoint (train, validation, test) subject indices: a seeded 20 % (at least 4 subjects) is
    held out, and split into up to 9 validation subjects (8 pairs; a third of the held-out ones,
    at least 2) for choosing the checkpoint and the rest for the reported test pairs."""
    if n < 5:
        raise ValueError(
            f"demo: needs at least 5 images (1 to train, 2 to choose the checkpoint, 2 to test), got {n}"
        )
    held_out = split_subjects(n, val_fraction=max(0.2, 4 / n), seed=seed)
    n_val = max(2, min(9, len(held_out.val) // 3))
    return held_out.train, held_out.val[:n_val], held_out.val[n_val:]


def run_demo(options: DemoOptions) -> dict[str, object]:
    """Run the demo; returns the evaluation summary (also written to ``OUT/eval/summary.json``)."""
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    if options.threads:
        torch.set_num_threads(options.threads)
    start = time.perf_counter()
    images, segs, source = _demo_data(options)
    train_ids, val_ids, test = _split_three_ways(len(images), options.seed)
    n_test_pairs = min(options.test_pairs, len(test) - 1)
    val_pairs = [(i, i + 1) for i in range(len(val_ids) - 1)]
    train_set = PairDataset(subset(images, train_ids), subset(segs, train_ids), seed=options.seed,
                            normalise="percentile")
    # the checkpoint is chosen on validation subjects that no reported test pair contains
    val_set = PairDataset(subset(images, val_ids), subset(segs, val_ids), "pairs", pairs=val_pairs,
                          normalise="percentile")
    steps = options.steps or DEMO_STEPS
    settings = TrainSettings(loss="ncc", weight=1.0, steps=steps, lr=1e-3, lr_schedule="cosine",
                             seed=options.seed, device="cpu", val_every=max(steps // 5, 1),
                             checkpoint_every=max(steps // 5, 1), max_minutes=options.max_minutes)
    print(f"morphreg demo: {source}; training VxmDense (NCC, lambda=1) for {steps} steps "
          f"(at most {options.max_minutes:g} min) "
          f"on {len(train_ids)} subjects, choosing the checkpoint on {len(val_pairs)} validation pairs, "
          f"testing on {n_test_pairs} held-out pairs")
    result = train(settings, train_set, val_set, out / "run", progress=options.progress)
    train_seconds = time.perf_counter() - start
    if result.step < steps:
        print(f"morphreg demo: the time budget ended training at step {result.step} of {steps}")

    from ..models import VxmDense

    model = VxmDense.load(out / "run" / "model.pt")
    test_set = PairDataset(subset(images, test), subset(segs, test), "pairs",
                           pairs=[(i, i + 1) for i in range(n_test_pairs)], normalise="percentile")

    def pairs():
        for k in range(len(test_set)):
            item = test_set[k]
            segs = [item[key][None] if key in item else None for key in ("moving_seg", "fixed_seg")]
            yield EvalPair(f"test{k:02d}", item["moving"][None], item["fixed"][None], *segs,
                           moving_name=str(test[item["moving_index"]]), fixed_name=str(test[item["fixed_index"]]))

    summary = evaluate_pairs(NetworkRegistration(model, torch.device("cpu")), pairs(), out / "eval",
                             figures=4, method="morphreg demo", progress=options.progress)
    from .. import viz

    viz.plot_training_curves(out / "run" / "metrics.csv", out / "training_curves.png")
    _print_table(summary, out)
    summary["train_seconds"] = round(train_seconds, 1)
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    summary["best_val_dice"] = result.best_val_dice
    summary["subjects"] = {"train": train_ids, "validation": val_ids, "test": test}
    atomic_write_text(out / "demo_summary.json", json.dumps(summary, indent=2))
    print(f"total time {summary['total_seconds']:.0f} s (training {train_seconds:.0f} s); "
          f"figures in {out / 'eval' / 'figures'}")
    return summary


def _print_table(summary: dict, out: Path) -> None:
    import csv

    rows = list(csv.DictReader(open(out / "eval" / "structures.csv")))
    if not rows:
        print("no label maps: Dice not computed (see the figures)")
        return
    by_label: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        by_label.setdefault(row["structure"], []).append((float(row["dice_before"]), float(row["dice_after"])))
    print(f"\n{'structure':>10} | Dice before | Dice after")
    print(f"{'-' * 10}-+-------------+-----------")
    for name, values in sorted(by_label.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0]):
        b = np.nanmean([v[0] for v in values])
        a = np.nanmean([v[1] for v in values])
        print(f"{name:>10} | {b:11.3f} | {a:10.3f}")
    d0, d1 = summary["dice_before"], summary["dice_after"]
    print(f"{'mean':>10} | {d0['mean']:11.3f} | {d1['mean']:10.3f}   ({d1['n']} pairs)")
    fold = summary["folding_pct"]["mean"]
    print(f"folding: {fold:.3f} % of pixels; {summary['seconds']['mean'] * 1000:.1f} ms per pair")
