"""Instance-specific optimisation on OASIS 2D test pairs (acceptance of instance optimisation).

    python -m benchmarks.classical.bench_instance --model benchmarks/work/runs/oasis2d_ncc [--pairs 20] [--write]

On the first N of the fixed test pairs (``WORK/oasis2d/test_pairs_seg24.csv``), compares:
the network alone; the network refined per pair by ``--optimize`` Adam steps (the training loss,
NCC + λ‖∇u‖², the network untouched); dense optimisation alone (stationary velocity, NCC,
λ = 1, 3 levels). Reports seg24 Dice, % folding and seconds per pair; ``--write`` writes
``docs/results/instance.md``. Run with one thread (``--threads``) for stable ratios.
"""

from __future__ import annotations

import argparse
import itertools
import platform
from pathlib import Path

import torch

from benchmarks.common import RESULTS, WORK, write_text
from morphreg.models import load_model
from morphreg.workflows.evaluate import evaluate_pairs, pairs_from_csv
from morphreg.workflows.pipeline import FieldOptimisation, NetworkRegistration, Refine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=WORK / "runs" / "oasis2d_ncc")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--optimize", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model / "model.pt" if args.model.is_dir() else args.model)
    normalise = model.metadata.get("normalise", "minmax")
    network = NetworkRegistration(model, torch.device("cpu"))
    csv_path = args.work / "oasis2d" / "test_pairs_seg24.csv"
    dense = FieldOptimisation("dense", "ncc", 1.0)  # a stationary velocity, 3 levels x 100 Adam steps

    methods = {"network alone": network}
    methods.update({f"network + {n} optimisation steps": Refine(network, n, "ncc", 1.0) for n in args.optimize})
    methods["dense optimisation alone (velocity, 3 levels x 100)"] = dense
    rows = []
    for name, fn in methods.items():
        pairs = itertools.islice(pairs_from_csv(csv_path, normalise, ndim=2), args.pairs)
        out = args.work / "instance" / name.split(" ")[0] / name.replace(" ", "_").replace("(", "").replace(")", "")
        summary = evaluate_pairs(fn, pairs, out, figures=0, with_hd95=False, method=name, progress=False)
        rows.append((name, summary))
        print(f"{name}: Dice {summary['dice_after']['mean']:.4f} ± {summary['dice_after']['sd']:.4f}, "
              f"folding {summary['folding_pct']['mean']:.3f} %, {summary['seconds']['mean']:.3f} s/pair", flush=True)
    before = rows[0][1]["dice_before"]
    lines = [
        "# Instance-specific optimisation on OASIS 2D",
        "",
        f"Command: `python -m benchmarks.classical.bench_instance --model {args.model} --pairs {args.pairs} --write`  ",
        f"Machine: {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); network: "
        f"{model.config}, trained step {model.metadata.get('step')}.  ",
        f"Pairs: the first {args.pairs} of `benchmarks/oasis_study/oasis2d_test_pairs.csv` (test subjects never "
        f"used in training); seg24 Dice before registration {before['mean']:.4f} ± {before['sd']:.4f}.",
        "",
        "| method | seg24 Dice | % folding | SDlogJ | s / pair |",
        "|---|---|---|---|---|",
    ]
    for name, s in rows:
        lines.append(f"| {name} | {s['dice_after']['mean']:.4f} ± {s['dice_after']['sd']:.4f} | "
                     f"{s['folding_pct']['mean']:.3f} | {s['sdlogj']['mean']:.3f} | {s['seconds']['mean']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        target = RESULTS / "instance.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text(target, text)


if __name__ == "__main__":
    main()
