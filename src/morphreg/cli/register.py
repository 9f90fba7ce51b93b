"""``morphreg register``: one pair (this module) or a cohort (:mod:`.cohort`).

Parses and checks the flags, builds the registration from :mod:`morphreg.workflows.pipeline`,
runs it with :func:`morphreg.workflows.files.register_pair` and writes with
:func:`morphreg.workflows.outputs.write_outputs`.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    DEVICE_CHOICES,
    NORMALISE_HELP,
    UsageError,
    UserError,
    add_precision_flag,
    add_runner_args,
    check_distinct,
    check_outputs,
    device_or_error,
    int_at_least,
    label_table,
    non_negative_float,
    non_negative_int,
    note,
    positive_int,
    subject_names,
    value_of,
)

WARP_FORMAT_HELP = ("morphreg: vectors in --warp-units, pull-back moved(x)=moving(x+u(x)); itk: an ITK/ANTs "
                    "displacement field (X,Y,Z,1,3) on the fixed grid, vectors in LPS mm mapping each fixed-image "
                    "point to its moving-image point, for antsApplyTransforms/ants.apply_transforms/SimpleITK "
                    "DisplacementFieldTransform")
MATRIX_FORMAT_HELP = ("format of --matrix (default: ras) and of a plain-text --init-matrix (which FSL and morphreg "
                      "both write, so it is refused without this flag); ras: 4x4 text, RAS mm, fixed-image point "
                      "-> moving-image point; itk: ITK transform (.mat binary, .txt/.tfm text; LPS mm, "
                      "fixed->moving, for sitk.ReadTransform and ANTs); fsl: FLIRT matrix (FSL scaled voxels, "
                      "moving->fixed as FLIRT stores it); lta: FreeSurfer LTA (RAS-to-RAS, src=moving grid, "
                      "dst=fixed grid, for mri_vol2vol --mov MOVING --targ FIXED --lta A.lta)")
OUTPUT_FLAGS = ("--moved", "--warp", "--moved-seg", "--matrix", "--jacobian", "--inverse-warp", "--qc", "--uncertainty")
INPUT_FLAGS = ("--moving", "--fixed", "--moving-seg", "--fixed-seg", "--model", "--affine-model", "--init-matrix",
               "--init-warp")
OUTPUT_KINDS = {"--moved": "volume", "--moved-seg": "volume", "--warp": "warp", "--jacobian": "volume",
                "--inverse-warp": "warp", "--uncertainty": "volume", "--matrix": "matrix"}


def _add_pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--moving", default=None, help="moving image (NIfTI, MGZ, NPZ, ...): the image that is warped")
    p.add_argument("--fixed", default=None, help="fixed image: the target grid and anatomy")
    p.add_argument("--moved", default=None, help="output: moving image on the fixed grid")
    p.add_argument("--pairs", default=None,
                   help="cohort: CSV moving,fixed[,moving_seg,fixed_seg][,name] (paths relative to the CSV), each row "
                        "registered with --model (in batches) or --method into --out as <name>_moved.nii.gz, "
                        "_warp.nii.gz, _moved_seg.nii.gz, _matrix.txt (affine); statuses in --out/cohort.csv")
    p.add_argument("--out", default=None, help="cohort output folder (with --pairs)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="cohort: pairs per network pass")
    p.add_argument("--output-ext", choices=[".nii.gz", ".nii"], default=None,
                   help="cohort: extension of the moved images, warps and moved labels in --out (default .nii.gz; "
                        ".nii writes them uncompressed: larger files, faster to write and to read)")
    p.add_argument("--resume", action="store_true",
                   help="cohort: continue the run in --out (same method and output settings, checked against its "
                        "cohort.json), skipping rows whose outputs exist; without it --out must be new or empty")
    p.add_argument("--no-progress", action="store_true", help="cohort: no progress bar")
    add_runner_args(p)


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warp", default=None, help="output: displacement field (NIfTI vector image)")
    p.add_argument("--warp-units", choices=["voxel", "mm"], default="voxel",
                   help="units of the --warp vectors in morphreg format: voxels along the array axes, or RAS mm")
    p.add_argument("--warp-format", choices=["morphreg", "itk"], default="morphreg", help=WARP_FORMAT_HELP)
    p.add_argument("--inverse-warp", default=None,
                   help="output: the inverse field (moving grid -> fixed, in --warp-format/--warp-units): exact for "
                        "diffeomorphic networks, otherwise a fixed-point inverse whose residual is printed")
    p.add_argument("--jacobian", default=None,
                   help="output: Jacobian determinant of the transform on the fixed grid (<= 0: folding)")
    p.add_argument("--uncertainty", default=None,
                   help="output: per-voxel standard deviation of the velocity posterior (voxels, RMS over its "
                        "components) of a probabilistic network (train --model probabilistic)")
    p.add_argument("--qc", default=None,
                   help="output: quality-control figure (PNG) in anatomical orientation: images, difference, "
                        "Jacobian over the anatomy, named structures")
    p.add_argument("--labels", default=None,
                   help="structure names for --qc: seg4, seg24, seg35 (FreeSurfer names of the neurite-OASIS maps) "
                        "or a FreeSurfer LUT file (ID name R G B A); default: label values")
    p.add_argument("--moving-seg", default=None, help="label map of the moving image (warped with nearest neighbour)")
    p.add_argument("--moved-seg", default=None, help="output: warped moving labels")
    p.add_argument("--fixed-seg", default=None, help="fixed labels (Dice is printed)")
    p.add_argument("--npz-key", default=None,
                   help="array of an .npz --moving/--fixed (e.g. slice_norm); the other image may be NIfTI")
    p.add_argument("--no-resample", action="store_true",
                   help="refuse moving/fixed on different grids instead of resampling moving onto the fixed grid")
    p.add_argument("--matrix", default=None, help="output: affine matrix for affine/rigid (see --matrix-format)")
    p.add_argument("--matrix-format", choices=["ras", "itk", "fsl", "lta"], default=None, help=MATRIX_FORMAT_HELP)


def _add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--affine", action=argparse.BooleanOptionalAction, default=None,
                   help="affine pre-alignment (moments, then a multi-resolution optimisation) before the network or "
                        "--method dense|ffd, composed into one warp (its matrix with --matrix); default: on for 3D "
                        "--method dense|ffd on grids that differ without --init-matrix/--init-warp, else off")
    p.add_argument("--affine-model", default=None,
                   help="learned affine pre-alignment: run directory or checkpoint of `train --model affine`")
    p.add_argument("--optimize", type=non_negative_int, default=0,
                   help="instance-specific optimisation steps refining the network's field")
    p.add_argument("--loss", choices=["mse", "ncc", "gncc", "mi"], default=None,
                   help="similarity for --method/--optimize: mse, ncc (local), gncc (global NCC), mi "
                        "(default: for affine/rigid gncc, or mi where the two contrasts are not linearly "
                        "related (T1 to PD); ncc otherwise)")
    p.add_argument("--lambda", dest="weight", type=non_negative_float, default=None,
                   help="regularisation weight; with --method dense it selects the variational Adam solver "
                        "instead of the default greedy diffeomorphic one (as does a --loss other than ncc); "
                        "with a HyperMorph --model, the lambda it registers with")
    p.add_argument("--preset", choices=["fast", "accurate"], default=None,
                   help="--method dense: levels and iterations (fast: 100 50 8; accurate: 200 100 40)")
    p.add_argument("--levels", type=int_at_least(1), default=None, help="--method dense: pyramid levels")
    p.add_argument("--iterations", type=int_at_least(0), nargs="+", default=None,
                   help="--method dense: iterations per level, coarse to fine (e.g. 200 100 50)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--init-matrix", default=None,
                   help="start from this affine (fixed->moving points): ITK .mat/.txt/.tfm, LTA and morphreg's own "
                        "--matrix files are recognised; a plain 4x4 text file needs --matrix-format fsl|ras")
    p.add_argument("--init-warp", default=None,
                   help="start from this displacement field on the fixed grid (morphreg's, or ITK/ANTs as "
                        "--warp-format itk or as the file states)")
    p.add_argument("--normalise", choices=["minmax", "percentile", "none"], default=None, help=NORMALISE_HELP)
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where to register (auto: cuda when available)")
    add_precision_flag(p)


def add_parser(command: Any) -> None:
    """Add ``register`` (``command(name, help)`` makes a subparser with --debug)."""
    p = command("register", "register a moving image to a fixed one")
    p.add_argument("--model", default=None,
                   help="run directory or checkpoint of a trained network, or a built-in model (`morphreg models`)")
    p.add_argument("--method", choices=["network", "affine", "rigid", "dense", "ffd"], default=None,
                   help="registration without a network (affine, rigid, dense, ffd); default: network")
    _add_pair_args(p)
    _add_output_args(p)
    _add_method_args(p)


def _method(args: argparse.Namespace) -> str:
    """The registration method the flags ask for, after checking that they go together."""
    missing = [flag for flag in ("--moving", "--fixed", "--moved") if value_of(args, flag) is None]
    if missing:  # a usage error (exit 2), as argparse's own required arguments
        raise UsageError(f"morphreg register: error: the following arguments are required: {', '.join(missing)} "
                         "(one pair), or give --pairs CSV --out DIR (a cohort)")
    method = args.method or ("network" if args.model else None)
    if method is None:
        raise UserError("give --model (a trained network) or --method affine|rigid|dense|ffd")
    if method != "network" and args.model:
        raise UserError(f"--method {method} registers without a network; drop --model or --method")
    if args.moved_seg and not args.moving_seg:
        raise UserError("--moved-seg needs --moving-seg")
    check_affine_flags(args, method)
    if args.uncertainty and method != "network":
        raise UserError(f"--uncertainty is the posterior of a probabilistic network; --method {method} has none")
    chained = [flag for flag in ("--affine", "--affine-model", "--optimize", "--init-matrix", "--init-warp")
               if value_of(args, flag)]
    if args.uncertainty and chained:
        raise UserError(f"--uncertainty is the network's own posterior; it is not defined after {chained[0]}")
    return method


def check_affine_flags(args: argparse.Namespace, method: str) -> None:
    """``--affine``/``--affine-model`` go with a deformable method (one pair or a cohort)."""
    if args.affine_model and method != "network":
        raise UserError("--affine-model prepends a learned alignment to a network: give --model, or use --affine "
                        "with --method dense|ffd")
    if args.affine and method in ("affine", "rigid"):
        raise UserError(f"--affine prepends affine alignment to a deformable method; --method {method} is linear "
                        "already: drop --affine")
    if args.affine and args.affine_model:
        raise UserError("give --affine (optimised) or --affine-model (learned), not both")


def _check_method_flags(args: argparse.Namespace, method: str) -> None:
    from ..workflows.pipeline import is_greedy

    if (args.preset or args.levels or args.iterations) and not is_greedy(method, args.loss, args.weight):
        raise UserError("--preset/--levels/--iterations set the greedy dense method: use --method dense "
                        "(without --lambda, with --loss ncc)")
    if args.precision != "float32" and method != "network":
        raise UserError(f"--precision sets a network's arithmetic; --method {method} runs in float32")
    if args.levels and args.iterations and len(args.iterations) not in (1, args.levels):
        raise UserError(f"--iterations needs 1 or --levels ({args.levels}) values, got {len(args.iterations)}")
    if args.matrix and method not in ("affine", "rigid") and not args.affine:
        raise UserError("--matrix is written by affine alignment: use --method affine|rigid or --affine")
    if args.init_matrix and args.init_warp:
        raise UserError("give --init-matrix or --init-warp, not both")


def spec_from_args(args: argparse.Namespace, method: str) -> Any:
    """The :class:`~morphreg.workflows.spec.RegistrationSpec` the flags describe (one pair or a cohort)."""
    from ..workflows.spec import RegistrationSpec

    return RegistrationSpec(
        method=method, model=args.model if method == "network" else None, affine=args.affine,
        affine_model=args.affine_model, optimize=args.optimize, loss=args.loss, weight=args.weight,
        preset=args.preset, levels=args.levels, iterations=tuple(args.iterations) if args.iterations else None,
        normalise=args.normalise, precision=args.precision, inverse=bool(value_of(args, "--inverse-warp")),
        init_matrix=value_of(args, "--init-matrix"), init_warp=value_of(args, "--init-warp"),
        init_matrix_format=args.matrix_format, init_warp_format="itk" if args.warp_format == "itk" else "auto",
        device=args.device, progress=not args.quiet and not args.pairs)


def _print_dice(pair: Any, result: Any) -> None:
    import torch

    from ..workflows.files import dice_before

    if result.dice is None:
        return
    before = dice_before(pair, result.dice.labels)
    after_mean = float(torch.nanmean(result.dice.per_label))
    before_text = f" (before: {float(torch.nanmean(before.per_label)):.4f})" if before is not None else ""
    print(f"Dice (mean over {result.dice.labels.numel()} labels): {after_mean:.4f}{before_text}")


def run(args: argparse.Namespace) -> int:
    """``morphreg register``."""
    from ..workflows.jobs import PairJob, register_job
    from ..workflows.outputs import OutputFormats, OutputPaths

    if args.pairs:
        from .cohort import run as run_cohort

        if args.uncertainty:
            raise UserError("--uncertainty is written for one pair (--moving/--fixed), not a --pairs cohort")
        return run_cohort(args)
    if args.output_ext:
        raise UserError(f"--output-ext {args.output_ext} names the files of a --pairs cohort; with one pair, end "
                        "--moved/--warp/--moved-seg with the extension you want (.nii: uncompressed)")
    method = _method(args)
    _check_method_flags(args, method)
    labels = label_table(args.labels)  # a bad --labels fails before any work
    check_outputs(args, OUTPUT_FLAGS, kinds=OUTPUT_KINDS)
    check_distinct({flag: value_of(args, flag) for flag in OUTPUT_FLAGS},
                   {flag: value_of(args, flag) for flag in INPUT_FLAGS})
    device = device_or_error(args.device)
    paths = OutputPaths(args.moved, args.warp, args.moved_seg, args.matrix, args.jacobian, args.inverse_warp, args.qc,
                        args.uncertainty)
    formats = OutputFormats(args.warp_format, args.warp_units, args.matrix_format or "ras", labels,
                            subject_names(args.moving, args.fixed))  # type: ignore[arg-type]
    job = PairJob(1, "pair", args.moving, args.fixed, paths, spec_from_args(args, method), formats, args.moving_seg,
                  args.fixed_seg, key=args.npz_key, resample=not args.no_resample)
    pair, result = register_job(job, device=device, report=lambda line: note("register", line))
    print(f"registered in {result.seconds:.3f} s; moved image: {args.moved}")
    _print_dice(pair, result)
    return 0
