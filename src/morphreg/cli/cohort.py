"""``morphreg register --pairs CSV --out DIR``: the cohort form of ``register`` (flags -> workflow)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UserError, check_folder_output, device_or_error, load_network, normalise_arg, note, value_of

SINGLE_PAIR_FLAGS = ("--moving", "--fixed", "--moved", "--warp", "--moving-seg", "--moved-seg", "--fixed-seg",
                     "--matrix", "--jacobian", "--inverse-warp", "--qc", "--init-matrix", "--init-warp")


def _check_flags(args: argparse.Namespace) -> None:
    single = [flag for flag in SINGLE_PAIR_FLAGS if value_of(args, flag)]
    if single:
        raise UserError(f"--pairs registers a cohort into --out; {', '.join(single)} belong to one pair: drop them")
    if not args.out:
        raise UserError("--pairs needs --out DIR (the folder for the moved images, warps and label maps)")
    if not args.model or (args.method not in (None, "network")):
        raise UserError("--pairs registers with a network: give --model (cohorts of --method runs are not supported)")
    if args.affine or args.affine_model or args.optimize:
        raise UserError("--pairs runs the network alone; drop --affine/--affine-model/--optimize")
    if args.warp_format != "morphreg":
        raise UserError("--pairs writes morphreg warps; convert single fields with `register --warp-format itk`")


def run(args: argparse.Namespace) -> int:
    """``morphreg register --pairs``: exit 1 when any row failed (all rows are still attempted)."""
    from ..workflows.cohort import read_cohort_csv, register_cohort
    from ..workflows.pipeline import NetworkRegistration

    _check_flags(args)
    out = Path(args.out)
    check_folder_output("--out", out)
    try:
        rows = read_cohort_csv(args.pairs)
    except ValueError as err:
        raise UserError(f"--pairs: {err}") from None
    device = device_or_error(args.device)
    model = load_network(args.model, device)
    summary = register_cohort(rows, out, NetworkRegistration(model, device),
                              normalise=normalise_arg(args.normalise, model), batch_size=args.batch_size,
                              resume=args.resume, warp_units=args.warp_units, progress=not args.no_progress,
                              report=lambda line: note("register", line))
    rate = summary.done / summary.seconds if summary.seconds > 0 else float("nan")
    print(f"{summary.done} registered, {summary.skipped} already done, {summary.failed} failed in "
          f"{summary.seconds:.1f} s ({rate:.1f} pairs/s); list: {out / 'cohort.csv'}")
    return 0 if summary.failed == 0 else 1
