"""``morphreg register --pairs CSV --out DIR``: the cohort form of ``register`` (flags -> jobs -> runner)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    UserError,
    check_folder_output,
    label_table,
    load_network,
    normalise_arg,
    note,
    runner_from_args,
    value_of,
)

SINGLE_PAIR_FLAGS = ("--moving", "--fixed", "--moved", "--warp", "--moving-seg", "--moved-seg", "--fixed-seg",
                     "--matrix", "--jacobian", "--inverse-warp", "--qc", "--uncertainty", "--init-matrix",
                     "--init-warp")


def _method(args: argparse.Namespace) -> str:
    single = [flag for flag in SINGLE_PAIR_FLAGS if value_of(args, flag)]
    if single:
        raise UserError(f"--pairs registers a cohort into --out; {', '.join(single)} belong to one pair: drop them "
                        "(each row's outputs are named after the row)")
    if not args.out:
        raise UserError("--pairs needs --out DIR (the folder for the moved images, warps and label maps)")
    method = args.method or ("network" if args.model else None)
    if method is None:
        raise UserError("--pairs needs --model (a trained network) or --method affine|rigid|dense|ffd")
    if method != "network" and args.model:
        raise UserError(f"--method {method} registers without a network; drop --model or --method")
    from .register import check_affine_flags

    check_affine_flags(args, method)
    return method


def run(args: argparse.Namespace) -> int:
    """``morphreg register --pairs``: exit 1 when any row failed (all rows are still attempted)."""
    from ..workflows.cohort import check_cohort_folder, cohort_jobs, cohort_settings, read_cohort_csv, register_cohort
    from ..workflows.outputs import OutputFormats
    from .register import _check_method_flags, spec_from_args

    method = _method(args)
    _check_method_flags(args, method)
    runner = runner_from_args(args, "register", progress=not args.no_progress)
    out = Path(args.out)
    check_folder_output("--out", out)
    formats = OutputFormats(args.warp_format, args.warp_units, args.matrix_format or "ras", label_table(args.labels))
    matrix = method in ("affine", "rigid") or bool(args.affine or args.affine_model)
    spec = spec_from_args(args, method)
    check_cohort_folder(out, cohort_settings(spec, formats, matrix), args.resume)  # before reading 10^5 rows
    try:
        rows = read_cohort_csv(args.pairs)
    except ValueError as err:
        raise UserError(f"--pairs: {err}") from None
    if method == "network":  # a bad --model / --affine-model fails once, before any row
        normalise_arg(args.normalise, load_network(args.model, "cpu"))
        if args.affine_model:
            load_network(args.affine_model, "cpu", "--affine-model")
    jobs = cohort_jobs(rows, out, spec, formats, matrix=matrix, extension=args.output_ext or ".nii.gz")
    summary = register_cohort(jobs, out, runner, batch_size=args.batch_size, resume=args.resume,
                              report=lambda line: note("register", line))
    rate = (summary.done / summary.seconds) * 3600 if summary.seconds > 0 else float("nan")
    print(f"{summary.done} registered, {summary.skipped} already done, {summary.failed} failed in "
          f"{summary.seconds:.1f} s ({rate:.0f} pairs/hour); list: {out / 'cohort.csv'}")
    return 0 if summary.failed == 0 else 1
