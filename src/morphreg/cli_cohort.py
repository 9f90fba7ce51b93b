"""``morphreg register --pairs CSV --out DIR``: the cohort form of ``register`` (flags -> workflow)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import UserError, _check_folder_output, _device_or_error, _load_network, _normalise_arg


def cmd_register_cohort(args: argparse.Namespace) -> int:
    from .workflows.cohort import read_cohort_csv, register_cohort
    from .workflows.register import network_register_fn

    single = [flag for flag in ("--moving", "--fixed", "--moved", "--warp", "--moving-seg", "--moved-seg",
                                "--fixed-seg", "--matrix", "--jacobian", "--inverse-warp", "--qc", "--init-matrix",
                                "--init-warp") if getattr(args, flag[2:].replace("-", "_"), None)]
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
    out = Path(args.out)
    _check_folder_output("--out", out)
    try:
        rows = read_cohort_csv(args.pairs)
    except ValueError as err:
        raise UserError(f"--pairs: {err}") from None
    device = _device_or_error(args.device)
    model = _load_network(args.model, device)
    register = network_register_fn(model, device)
    summary = register_cohort(rows, out, register, normalise=_normalise_arg(args.normalise, model),
                              batch_size=args.batch_size, resume=args.resume, warp_units=args.warp_units,
                              progress=not args.no_progress,
                              report=lambda line: print(f"morphreg register: {line}", file=sys.stderr))
    rate = summary.done / summary.seconds if summary.seconds > 0 else float("nan")
    print(f"{summary.done} registered, {summary.skipped} already done, {summary.failed} failed in "
          f"{summary.seconds:.1f} s ({rate:.1f} pairs/s); list: {out / 'cohort.csv'}")
    return 0 if summary.failed == 0 else 1
