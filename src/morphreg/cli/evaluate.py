"""``morphreg evaluate``: a network over a CSV of pairs -> Dice, HD95, folding, time, report.html."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    DEVICE_CHOICES,
    NORMALISE_HELP,
    UserError,
    add_precision_flag,
    add_runner_args,
    apply_lambda,
    check_folder_output,
    device_or_error,
    label_table,
    load_network,
    non_negative_int,
    normalise_arg,
    positive_float,
    runner_from_args,
    subject_names,
)


def add_parser(command: Any) -> None:
    """Add ``evaluate`` (``command(name, help)`` makes a subparser with --debug)."""
    p = command("evaluate", "evaluate a trained network on a CSV of pairs")
    p.add_argument("--model", required=True, help="run directory, checkpoint, or built-in model name")
    p.add_argument("--lambda", dest="weight", type=positive_float, default=None,
                   help="lambda of a HyperMorph --model (default: its own)")
    p.add_argument("--pairs", required=True,
                   help="CSV moving,fixed[,moving_seg,fixed_seg] of paths, or of subject IDs with --images [--segs]")
    p.add_argument("--images", default=None,
                   help="folder of images named <subject ID>.<ext>: the --pairs cells are subject IDs")
    p.add_argument("--segs", default=None, help="folder of label maps named <subject ID>.<ext> (with --images)")
    p.add_argument("--out", required=True, help="report folder: pairs.csv, structures.csv, summary.json, report.html")
    p.add_argument("--figures", type=non_negative_int, default=4, help="pairs that get figures")
    p.add_argument("--labels", default=None,
                   help="structure names: seg4, seg24, seg35 (FreeSurfer names of the neurite-OASIS maps) or a "
                        "FreeSurfer LUT file (ID name R G B A)")
    p.add_argument("--no-hd95", action="store_true", help="skip the 95th-percentile Hausdorff distance (slowest)")
    p.add_argument("--normalise", choices=["minmax", "percentile", "none"], default=None, help=NORMALISE_HELP)
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where to register (auto: cuda when available)")
    add_precision_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runner_args(p, "pairs")


def _check_out(args: argparse.Namespace) -> Path:
    from .. import io
    from .._files import ReportDir

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; give a folder for the report")
    check_folder_output("--out", out)  # a writable place, checked before any pair is registered
    for name in ReportDir.FILES:
        if io.same_path(out / name, args.pairs):
            raise UserError(f"--out '{out}' would overwrite the --pairs input '{args.pairs}' with its own {name}; "
                            "give another --out (or move the pairs list)")
    return out


def _rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The pairs CSV's rows (paths), from paths or from subject IDs with --images [--segs]."""
    from ..data import read_pairs_csv
    from ..workflows.subjects import resolve_subject_pairs

    if args.images:
        try:
            return resolve_subject_pairs(args.pairs, args.images, args.segs)
        except ValueError as err:
            raise UserError(f"--pairs/--images/--segs: {err}") from None
    if args.segs:
        raise UserError("--segs names label maps by subject ID: give --images too")
    return read_pairs_csv(args.pairs)


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"{summary['n_pairs']} pairs")
    for key in ("dice_before", "dice_after", "hd95_before", "hd95_after", "folding_pct", "sdlogj", "seconds"):
        stats = summary.get(key, {})
        if stats.get("n"):
            print(f"  {key:<12} {stats['mean']:.4f} ± {stats['sd']:.4f}")


def run(args: argparse.Namespace) -> int:
    """``morphreg evaluate``: the pairs run on the runner (--workers/--scheduler), or under torchrun
    the ranks share them and rank 0 reports."""
    import torch

    from ..workflows.distributed import check_env, init_from_env
    from ..workflows.evaluate import (
        check_pair_rows,
        evaluate_jobs,
        evaluate_pairs,
        evaluation_jobs,
        load_pair_rows,
    )
    from ..workflows.pipeline import NetworkRegistration
    from ..workflows.report_html import write_html_report
    from ..workflows.spec import RegistrationSpec

    check_env()
    out = _check_out(args)
    device = device_or_error(args.device)
    info = init_from_env(device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    model = load_network(args.model, device)
    apply_lambda(model, args.weight, "")
    normalise = normalise_arg(args.normalise, model)
    rows = _rows(args)
    labels = label_table(args.labels)
    names = labels.names if labels else None
    if info.enabled:  # torchrun: every rank takes every world_size-th pair
        check_pair_rows(args.pairs, rows, model.ndim)  # a bad row fails before the first registration
        pairs = load_pair_rows(args.pairs, rows, normalise, model.ndim)
        registration = NetworkRegistration(model, device, precision=args.precision)
        summary = evaluate_pairs(registration, pairs, out, figures=args.figures,
                                 with_hd95=not args.no_hd95, progress=not args.no_progress, label_names=names)
    else:
        runner = runner_from_args(args, "evaluate", progress=not args.no_progress)
        spec = RegistrationSpec(method="network", model=args.model, weight=args.weight, normalise=args.normalise,
                                precision=args.precision, device=str(device))
        jobs = evaluation_jobs(args.pairs, rows, spec, out, ndim=model.ndim, figures=args.figures,
                               with_hd95=not args.no_hd95, label_names=names)
        summary = evaluate_jobs(jobs, out, runner, figures=args.figures)
    if info.is_main:
        _print_summary(summary)
        page = write_html_report(out, title=f"morphreg evaluate: {subject_names(args.model)[0]} on "
                                 f"{Path(args.pairs).name}", label_names=names)
        print(f"report: {out / 'summary.json'}, {page}")
    failed = summary.get("failed") or []
    if failed:
        raise UserError(f"{failed[0]['message']} ({len(failed)} of {summary['n_pairs'] + len(failed)} pairs failed; "
                        f"the report in '{out}' covers the {summary['n_pairs']} that finished and summary.json lists "
                        "the failed rows)")
    return 0
