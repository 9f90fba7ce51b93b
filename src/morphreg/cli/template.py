"""``morphreg template``: an unbiased population template (parser and command; the work is in
:mod:`morphreg.workflows.template`)."""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ._common import (
    DEVICE_CHOICES,
    NORMALISE_HELP,
    UserError,
    add_runner_args,
    check_folder_output,
    int_at_least,
    non_negative_float,
    note,
)


def add_parser(command: Any) -> None:
    """Add ``template`` (``command(name, help)`` makes a subparser with --debug)."""
    p = command("template", "build an unbiased population template (affine average, then iterative deformable "
                            "averaging moved by the inverse mean deformation)")
    p.add_argument("--images", required=True, help="folder of the subjects' images (2D or 3D; the first, sorted by "
                                                    "name, gives the template's grid)")
    p.add_argument("--segs", default=None, help="folder of their label maps, one per image in the same (sorted) "
                                                "order: writes template_seg.nii.gz (majority vote)")
    p.add_argument("--out", required=True, help="output folder T: template.nii.gz, template_seg.nii.gz, "
                                                "subjects/<name>_{warp,logjac}.nii.gz, log.csv, qc.html")
    p.add_argument("--method", choices=["dense", "ffd", "affine", "rigid"], default=None,
                   help="registration of each subject to the template (default dense: greedy diffeomorphic NCC)")
    p.add_argument("--model", default=None, help="register with a trained network instead (run folder, checkpoint "
                                                 "or built-in name)")
    p.add_argument("--iterations", type=int_at_least(0), default=4,
                   help="deformable iterations after the affine average (0: the affine average only)")
    p.add_argument("--loss", choices=["mse", "ncc", "mi"], default=None, help="similarity for --method")
    p.add_argument("--lambda", dest="weight", type=non_negative_float, default=None,
                   help="smoothness weight for --method (dense: selects the variational solver)")
    p.add_argument("--no-affine", action="store_true",
                   help="register deformably only in the iterations (default: affine first, composed)")
    p.add_argument("--normalise", choices=["minmax", "percentile", "none"], default=None, help=NORMALISE_HELP)
    p.add_argument("--device", choices=DEVICE_CHOICES, default="cpu", help="where the registrations run")
    add_runner_args(p, "registrations")
    p.add_argument("--resume", action="store_true", help="continue a build in --out (finished iterations and "
                                                         "subjects are kept)")
    p.add_argument("--keep-intermediate", action="store_true",
                   help="keep every iteration's moved images and warps (default: only the last iteration's)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _spec(args: argparse.Namespace) -> Any:
    """The registration of the iterations (``--method``/``--model``), checked before any work."""
    from ..workflows.spec import RegistrationSpec

    if args.model and args.method:
        raise UserError(f"--method {args.method} registers without a network; drop --model or --method")
    if args.model and (args.loss or args.weight is not None):
        raise UserError("--loss/--lambda set a --method; a --model registers as it was trained")
    method = "network" if args.model else args.method or "dense"
    return RegistrationSpec(method=method, model=args.model, affine=not args.no_affine and method not in
                            ("affine", "rigid"), loss=args.loss, weight=args.weight, normalise=args.normalise,
                            device=args.device)


def run(args: argparse.Namespace) -> int:
    """``morphreg template``."""
    from ..workflows.jobs import PairJob, estimated_memory
    from ..workflows.outputs import OutputPaths
    from ..workflows.runner import open_engine
    from ..workflows.template import build_template
    from ._common import device_or_error, runner_from_args
    from .segment import _images

    images = _images(Path(args.images))
    segs = None
    if args.segs:
        try:
            segs = _images(Path(args.segs))
        except UserError as err:
            raise UserError(str(err).replace("--images", "--segs", 1)) from None
    out = Path(args.out)
    check_folder_output("--out", out)
    device_or_error(args.device)
    spec = _spec(args)
    runner = runner_from_args(args, "template", progress=not args.quiet)
    report = None if args.quiet else (lambda line: note("template", line))
    memory = estimated_memory(PairJob(1, "probe", str(images[0]), str(images[0]), OutputPaths("-"), spec))
    say = (lambda line: None) if args.quiet else (lambda line: note("template", line))
    with ExitStack() as stack:
        engines: list[Any] = []

        def run_jobs(jobs: Any) -> Any:
            """The engine starts with the first registrations, after every input was checked."""
            if not engines:
                engines.append(stack.enter_context(open_engine(
                    runner, tasks=len(jobs), memory_per_task=memory, report=lambda line: note("template", line),
                    say=say)))
            return engines[0].run_jobs(jobs, batch_size=8 if spec.batchable else 1, resume=True)

        result = build_template(images, segs, out, spec, args.iterations, runner=run_jobs, resume=args.resume,
                                keep_intermediate=args.keep_intermediate, report=report)
    last = result.log[-1]
    print(f"template of {len(result.subjects)} images in {result.out} ({len(result.log) - 1} iteration(s) after the "
          f"affine average, {result.seconds:.1f} s); last mean displacement to the previous template "
          f"{last.mean_disp_norm:.3g} voxels; the subjects' warps fold in at most "
          f"{100 * max(result.folding.values()):.3g}% of the voxels")
    return 0
