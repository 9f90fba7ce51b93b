"""``morphreg demo``: train and evaluate on data the demo makes itself (or the user's)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import non_negative_int, positive_float, positive_int
from .train import add_data_args


def add_parser(command: Any) -> None:
    """Add ``demo`` (``command(name, help)`` makes a subparser with --debug)."""
    p = command("demo", "train and evaluate on a synthetic data set the demo makes itself")
    p.add_argument("--out", default="demo_out", help="output folder")
    add_data_args(p, required=False)
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: sized for ~5 min)")
    p.add_argument("--subjects", type=positive_int, default=200, help="synthetic subjects")
    p.add_argument("--test-pairs", type=positive_int, default=24, help="held-out pairs evaluated")
    p.add_argument("--max-minutes", type=positive_float, default=6.0,
                   help="training time budget (stops early on a slow or busy machine)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the data, split and training")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """``morphreg demo``."""
    from ..workflows.demo import DemoOptions, run_demo

    run_demo(DemoOptions(out=args.out, data=args.data, segs=args.segs, key=args.npz_key, seg_key=args.seg_key,
                         steps=args.steps, subjects=args.subjects, test_pairs=args.test_pairs,
                         max_minutes=args.max_minutes, seed=args.seed, threads=args.threads,
                         progress=not args.no_progress))
    return 0
