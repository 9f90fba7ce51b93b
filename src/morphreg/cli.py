"""The ``morphreg`` command line: parse, call a workflow, report. ``main(argv) -> exit code``.

Every expected failure (bad file, bad flag value, mismatched images, foreign checkpoint) ends
with exit code 1 and one line ``morphreg <command>: error: ...`` on stderr; argparse usage
errors exit with 2. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__

NORMALISE_HELP = ("intensity normalisation of each image: percentile (clip to the 0.5/99.5th percentiles, then "
                  "scale to [0, 1]; the default for training), minmax, or none; registration defaults to what the "
                  "network was trained with")


WARP_FORMAT_HELP = ("morphreg: vectors in --warp-units, pull-back moved(x)=moving(x+u(x)); itk: an ITK/ANTs "
                    "displacement field (X,Y,Z,1,3) on the fixed grid, vectors in LPS mm mapping each fixed-image "
                    "point to its moving-image point, for antsApplyTransforms/ants.apply_transforms/SimpleITK "
                    "DisplacementFieldTransform")
MATRIX_FORMAT_HELP = ("ras: 4x4 text, RAS mm, fixed-image point -> moving-image point; itk: ITK transform (.mat "
                      "binary, .txt/.tfm text; LPS mm, fixed->moving, for sitk.ReadTransform and ANTs); fsl: FLIRT "
                      "matrix (FSL scaled voxels, moving->fixed as FLIRT stores it); lta: FreeSurfer LTA (RAS-to-RAS)")


class UserError(Exception):
    """A problem with the user's input, reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so ``main`` can return the exit code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise _UsageError(f"{self.prog}: error: {message}")


class _UsageError(Exception):
    pass


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)
MAX_INT_STEPS = 20  # morphreg.spatial.MAX_INT_STEPS (kept here so that --help needs no torch import)


def _int_steps(text: str) -> int:
    """argparse type of --int-steps: an integer in [0, MAX_INT_STEPS]."""
    value = _non_negative_int(text)
    if value > MAX_INT_STEPS:
        raise argparse.ArgumentTypeError(
            f"expected an integer in [0, {MAX_INT_STEPS}], got {text!r} (7 is the usual choice; each step doubles "
            f"the field's reach, and {MAX_INT_STEPS} already covers any image)")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------
# parsers


def _add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, help="folder of images, .txt list of paths, glob, or .npz stack")
    p.add_argument("--npz-key", default=None, help="array key of --data when it is an .npz (e.g. slice_norm)")
    p.add_argument("--segs", default=None, help="label maps matching --data (same forms)")
    p.add_argument("--seg-key", default=None, help="array key of --segs when it is an .npz (e.g. seg24)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss", choices=["mse", "ncc"], default="ncc", help="image similarity")
    p.add_argument("--lambda", dest="weight", type=_non_negative_float, default=None,
                   help="smoothness weight (default: 0.01 for mse, 1.0 for ncc, as in the paper)")
    p.add_argument("--int-steps", type=_int_steps, default=0,
                   help=f"scaling-and-squaring steps, at most {MAX_INT_STEPS} (0: displacement model; "
                        "7: diffeomorphic)")
    p.add_argument("--int-downsize", type=int, choices=[1, 2, 4], default=1,
                   help="integrate the velocity at 1/N resolution")
    p.add_argument("--bidir", action="store_true", help="bidirectional similarity (needs --int-steps > 0)")
    p.add_argument("--seg-weight", type=_non_negative_float, default=0.0,
                   help="weight of the Dice loss on warped labels (semi-supervised; needs --segs)")
    p.add_argument("--hyper", action="store_true",
                   help="HyperMorph: one network for a range of --lambda values, drawn per step; --lambda is the "
                        "value validated (choose it at registration with `register --lambda`)")
    p.add_argument("--hyper-range", type=_positive_float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="lambda range of --hyper, sampled log-uniformly (default: --lambda / 20 to --lambda * 20)")
    p.add_argument("--steps", type=_positive_int, default=1500, help="optimisation steps")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="pairs per step and process")
    p.add_argument("--max-minutes", type=_positive_float, default=None,
                   help="stop (validated, checkpointed, resumable) after this much wall time")
    p.add_argument("--lr", type=_positive_float, default=1e-3,
                   help="Adam learning rate (docs/results/train_defaults.md: 1e-3 gains most in a short run)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="learning-rate schedule: constant, or cosine decay to zero over --steps")
    p.add_argument("--seed", type=_non_negative_int, default=0,
                   help="seed of the weights, the subject split and the pair sampling")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to train (auto: cuda when available)")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--val-fraction", type=_fraction, default=0.2, help="subjects held out for validation")
    p.add_argument("--val-pairs", type=_positive_int, default=16, help="validation pairs")
    p.add_argument("--val-every", type=_positive_int, default=100, help="validate every N steps")
    p.add_argument("--checkpoint-every", type=_positive_int, default=100,
                   help="save a resumable checkpoint every N steps")
    p.add_argument("--augment", action="store_true", help="random intensity gamma augmentation")
    p.add_argument("--normalise", choices=["minmax", "percentile", "none"], default=None, help=NORMALISE_HELP)
    p.add_argument("--enc", type=_positive_int, nargs="+", default=[16, 32, 32, 32], help="encoder widths")
    p.add_argument("--dec", type=_positive_int, nargs="+", default=[32, 32, 32, 32, 32, 16, 16],
                   help="decoder widths")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-identical reruns)")
    p.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="morphreg", description="Deformable registration of medical images (VoxelMorph and beyond).")
    parser.add_argument("--version", action="version", version=f"morphreg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=_DefaultsFormatter)
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        return p

    p = command("train", "train a VoxelMorph network on a collection of images")
    p.add_argument("--model", choices=["vxm", "affine"], default="vxm",
                   help="vxm: VxmDense deformable network (default); affine: AffineNet")
    _add_data_args(p, required=False)
    p.add_argument("--atlas", default=None, help="fixed atlas image (atlas-to-subject training)")
    p.add_argument("--atlas-seg", default=None, help="atlas label map (with --segs)")
    p.add_argument("--pairs", default=None, help="CSV moving,fixed[,moving_seg,fixed_seg] of training pairs")
    _add_train_args(p)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")

    p = command("register", "register a moving image to a fixed one")
    p.add_argument("--model", default=None,
                   help="run directory or checkpoint of a trained network, or a built-in model (`morphreg models`)")
    p.add_argument("--method", choices=["network", "affine", "rigid", "dense", "ffd"], default=None,
                   help="registration without a network (affine, rigid, dense, ffd); default: network")
    p.add_argument("--moving", default=None, help="moving image (NIfTI, MGZ, NPZ, ...): the image that is warped")
    p.add_argument("--fixed", default=None, help="fixed image: the target grid and anatomy")
    p.add_argument("--moved", default=None, help="output: moving image on the fixed grid")
    p.add_argument("--pairs", default=None,
                   help="cohort: CSV moving,fixed[,moving_seg,fixed_seg] (paths relative to the CSV), registered with "
                        "--model in batches into --out (instead of --moving/--fixed/--moved)")
    p.add_argument("--out", default=None, help="cohort output folder (with --pairs)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="cohort: pairs per network pass")
    p.add_argument("--resume", action="store_true", help="cohort: skip rows whose moved image exists in --out")
    p.add_argument("--no-progress", action="store_true", help="cohort: no progress bar")
    p.add_argument("--warp", default=None, help="output: displacement field (NIfTI vector image)")
    p.add_argument("--warp-units", choices=["voxel", "mm"], default="voxel",
                   help="units of the --warp vectors in morphreg format: voxels along the array axes, or RAS mm")
    p.add_argument("--warp-format", choices=["morphreg", "itk"], default="morphreg", help=WARP_FORMAT_HELP)
    p.add_argument("--inverse-warp", default=None,
                   help="output: the inverse field (moving grid -> fixed, in --warp-format/--warp-units): exact for "
                        "diffeomorphic networks, otherwise a fixed-point inverse whose residual is printed")
    p.add_argument("--jacobian", default=None,
                   help="output: Jacobian determinant of the transform on the fixed grid (<= 0: folding)")
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
    p.add_argument("--affine", action="store_true", help="affine pre-alignment (optimisation) before the network")
    p.add_argument("--affine-model", default=None,
                   help="learned affine pre-alignment: run directory or checkpoint of `train --model affine`")
    p.add_argument("--optimize", type=_non_negative_int, default=0,
                   help="instance-specific optimisation steps refining the network's field")
    p.add_argument("--loss", choices=["mse", "ncc", "gncc", "mi"], default=None,
                   help="similarity for --method/--optimize: mse, ncc (local), gncc (global NCC), mi "
                        "(default: gncc for affine/rigid, ncc otherwise)")
    p.add_argument("--lambda", dest="weight", type=_non_negative_float, default=None,
                   help="regularisation weight; with --method dense it selects the variational Adam solver "
                        "instead of the default greedy diffeomorphic one (as does a --loss other than ncc); "
                        "with a HyperMorph --model, the lambda it registers with")
    p.add_argument("--preset", choices=["fast", "accurate"], default=None,
                   help="--method dense: levels and iterations (fast: 100 50 8; accurate: 200 100 40)")
    p.add_argument("--levels", type=_int_at_least(1), default=None, help="--method dense: pyramid levels")
    p.add_argument("--iterations", type=_int_at_least(0), nargs="+", default=None,
                   help="--method dense: iterations per level, coarse to fine (e.g. 200 100 50)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--matrix", default=None, help="output: affine matrix for affine/rigid (see --matrix-format)")
    p.add_argument("--matrix-format", choices=["ras", "itk", "fsl", "lta"], default="ras", help=MATRIX_FORMAT_HELP)
    p.add_argument("--init-matrix", default=None,
                   help="start from this affine (fixed->moving points): ITK .mat/.txt/.tfm and LTA are recognised, "
                        "other files are read as --matrix-format says")
    p.add_argument("--init-warp", default=None,
                   help="start from this displacement field on the fixed grid (morphreg's, or ITK/ANTs as "
                        "--warp-format itk or as the file states)")
    p.add_argument("--normalise", choices=["minmax", "percentile", "none"], default=None, help=NORMALISE_HELP)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to register (auto: cuda when available)")

    p = command("warp", "apply a displacement field to an image or label map")
    p.add_argument("--moving", required=True, help="image or label map to warp (resampled onto the field's grid)")
    p.add_argument("--warp", required=True,
                   help="displacement field: morphreg's (states its units) or ITK/ANTs (LPS mm, fixed->moving)")
    p.add_argument("--warp-format", choices=["auto", "morphreg", "itk"], default="auto",
                   help="format of --warp; auto: read what the file states (morphreg units, or morphreg's ITK "
                        "export), else ask for this flag")
    p.add_argument("--moved", required=True, help="output: the warped image on the field's grid")
    p.add_argument("--interp", choices=["linear", "nearest"], default=None,
                   help="default: nearest for integer label maps, linear otherwise")
    p.add_argument("--npz-key", default=None, help="array of an .npz --moving")

    p = command("evaluate", "evaluate a trained network on a CSV of pairs")
    p.add_argument("--model", required=True, help="run directory, checkpoint, or built-in model name")
    p.add_argument("--lambda", dest="weight", type=_positive_float, default=None,
                   help="lambda of a HyperMorph --model (default: its own)")
    p.add_argument("--pairs", required=True,
                   help="CSV moving,fixed[,moving_seg,fixed_seg] of paths, or of subject IDs with --images [--segs]")
    p.add_argument("--images", default=None,
                   help="folder of images named <subject ID>.<ext>: the --pairs cells are subject IDs")
    p.add_argument("--segs", default=None, help="folder of label maps named <subject ID>.<ext> (with --images)")
    p.add_argument("--out", required=True, help="report folder: pairs.csv, structures.csv, summary.json, report.html")
    p.add_argument("--figures", type=_non_negative_int, default=4, help="pairs that get figures")
    p.add_argument("--labels", default=None,
                   help="structure names: seg4, seg24, seg35 (FreeSurfer names of the neurite-OASIS maps) or a "
                        "FreeSurfer LUT file (ID name R G B A)")
    p.add_argument("--no-hd95", action="store_true", help="skip the 95th-percentile Hausdorff distance (slowest)")
    p.add_argument("--normalise", choices=["minmax", "percentile", "none"], default=None, help=NORMALISE_HELP)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to register (auto: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    from .cli_segment import add_parser as add_segment_parser

    add_segment_parser(sub, command)

    p = command("models", "list the built-in models, or show one model's card")
    p.add_argument("name", nargs="?", default=None, help="a built-in model: show its full card")

    p = command("demo", "train and evaluate on a synthetic data set the demo makes itself")
    p.add_argument("--out", default="demo_out", help="output folder")
    _add_data_args(p, required=False)
    p.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: sized for ~5 min)")
    p.add_argument("--subjects", type=_positive_int, default=200, help="synthetic subjects")
    p.add_argument("--test-pairs", type=_positive_int, default=24, help="held-out pairs evaluated")
    p.add_argument("--max-minutes", type=_positive_float, default=6.0,
                   help="training time budget (stops early on a slow or busy machine)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the data, split and training")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


# ---------------------------------------------------------------------------------------------
# commands (heavy imports inside)


def _normalise_arg(value: str | None, model: Any = None) -> str | None:
    """The normalisation to apply: the flag, else the network's (legacy checkpoints: minmax)."""
    if value is None:
        if model is None:
            return "percentile"
        stored = getattr(model, "metadata", {}).get("normalise", "minmax")
        if stored not in ("minmax", "percentile", None):
            raise UserError(f"--model: the checkpoint records an unknown intensity normalisation {stored!r}; "
                            "pass --normalise minmax|percentile|none")
        return stored
    return None if value == "none" else value


def _load_network(path: str, device: Any, flag: str = "--model") -> Any:
    from . import zoo
    from .models import load_model
    from .models.checkpoint import CheckpointError

    target = Path(path)
    try:
        if not target.exists() and zoo.is_builtin(path):
            return zoo.load(path, map_location=device)
        if not target.exists() and not target.suffix and len(target.parts) == 1:
            raise UserError(f"{flag} '{path}' is neither a run folder, a checkpoint nor a built-in model "
                            f"(built-in: {', '.join(zoo.names()) or 'none'}; see `morphreg models`)")
        if target.is_dir():
            target = target / "model.pt"
        return load_model(target, map_location=device)
    except CheckpointError as err:
        raise UserError(f"{flag}: {err}") from None


def _apply_lambda(model: Any, weight: float | None, flag_context: str) -> None:
    """Set a HyperMorph network's lambda from --lambda; refuse --lambda for a network trained for one."""
    if weight is None:
        return
    if not hasattr(model, "check_weight"):
        context = f" {flag_context}" if flag_context else ""
        raise UserError(f"--lambda {weight:g}{context}: --model was trained for one lambda "
                        f"({model.metadata.get('weight', '?')}); only a HyperMorph model (train --hyper) takes "
                        "--lambda")
    try:
        model.default_weight = model.check_weight(weight)
    except ValueError as err:
        raise UserError(f"--lambda: {err}") from None


#: TrainSettings fields -> the train flags that set them (messages name flags, not parameters).
SETTING_FLAGS = {"model": "--model", "loss": "--loss", "weight": "--lambda", "int_steps": "--int-steps",
                 "int_downsize": "--int-downsize", "bidir": "--bidir", "seg_weight": "--seg-weight",
                 "batch_size": "--batch-size", "lr": "--lr", "lr_schedule": "--lr-schedule", "seed": "--seed",
                 "enc": "--enc", "dec": "--dec", "normalise": "--normalise", "val_fraction": "--val-fraction",
                 "val_pairs": "--val-pairs", "augment": "--augment",
                 "hyper": "--hyper", "hyper_range": "--hyper-range"}


def _resume_refusal(out: Path, changes: dict[str, tuple[Any, Any]]) -> UserError:
    listed = []
    for key, (old, new) in changes.items():
        if key in ("train", "val"):
            listed.append(f"the {key} subjects differ from split.json ({len(old)} saved, {len(new)} now)")
        else:
            listed.append(f"{SETTING_FLAGS.get(key, key)} {old!r} -> {new!r}")
    return UserError(f"cannot resume '{out}': the run began with other settings ({'; '.join(listed)}); resume "
                     "with the run's own flags (see settings.json and split.json) or start a new run in another --out")


def _check_hyper_args(args: argparse.Namespace) -> None:
    if args.hyper_range is not None and not args.hyper:
        raise UserError("--hyper-range is the lambda range of --hyper; add --hyper or drop --hyper-range")
    if not args.hyper:
        return
    if args.model != "vxm":
        raise UserError(f"--hyper conditions the deformable network on lambda; it does not apply to "
                        f"--model {args.model}")
    if args.hyper_range is not None:
        low, high = args.hyper_range
        weight = args.weight if args.weight is not None else {"mse": 0.01, "ncc": 1.0}[args.loss]
        if not low < high:
            raise UserError(f"--hyper-range LOW HIGH needs LOW < HIGH, got {low:g} {high:g}")
        if not low <= weight <= high:
            raise UserError(f"--lambda {weight:g} (the value validated) must lie within --hyper-range {low:g} {high:g}")


def cmd_train(args: argparse.Namespace) -> int:
    from .workflows.datasets import build_training_data, split_changes, split_record
    from .workflows.distributed import check_env
    from .workflows.train import RUN_FILES, ResumeMismatch, TrainSettings, check_resume, train

    if args.data is None and args.pairs is None:
        raise UserError("give --data (images) or --pairs (a CSV of pairs)")
    if args.atlas and args.pairs:
        raise UserError("--atlas and --pairs are different pairings; give one of them")
    if args.seg_weight > 0 and args.segs is None and args.pairs is None:
        raise UserError("--seg-weight > 0 needs --segs (label maps for the training images)")
    if args.bidir and args.int_steps == 0:
        raise UserError("--bidir needs a diffeomorphic model: give --int-steps (e.g. 7)")
    _check_hyper_args(args)
    check_env()
    _device_or_error(args.device)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; give a folder for the run")
    _check_distinct({f"--out (its {name})": out / name for name in RUN_FILES},
                    {flag: getattr(args, flag[2:].replace("-", "_")) for flag in
                     ("--data", "--segs", "--atlas", "--atlas-seg", "--pairs")})
    if not args.resume and (out / "state.pt").exists():
        raise UserError(f"--out '{out}' already holds a run; pass --resume to continue it or choose another folder")
    settings = TrainSettings(
        model=args.model, loss=args.loss, weight=args.weight, int_steps=args.int_steps, int_downsize=args.int_downsize,
        bidir=args.bidir, seg_weight=args.seg_weight, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, lr_schedule=args.lr_schedule, seed=args.seed, device=args.device,
        val_every=args.val_every, checkpoint_every=args.checkpoint_every, enc=args.enc, dec=args.dec,
        deterministic=args.deterministic, amp=not args.no_amp, threads=args.threads, max_minutes=args.max_minutes,
        normalise=_normalise_arg(args.normalise), hyper=args.hyper, hyper_range=args.hyper_range,
    )
    if args.resume:
        try:
            check_resume(out, settings)
        except ResumeMismatch as err:
            raise _resume_refusal(out, err.changes) from None
    data = build_training_data(
        args.data, key=args.npz_key, segs=args.segs, seg_key=args.seg_key, atlas=args.atlas,
        atlas_seg=args.atlas_seg, pairs_csv=args.pairs, val_fraction=args.val_fraction,
        val_pairs=args.val_pairs, seed=args.seed, augment=args.augment, normalise=_normalise_arg(args.normalise),
    )
    record = split_record(data, val_fraction=args.val_fraction, val_pairs=args.val_pairs, augment=args.augment)
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone writes and reports
    if args.resume:
        saved = _read_split(out)
        changes = split_changes(saved, record) if saved is not None else {}
        if changes:
            raise _resume_refusal(out, changes)
    if is_main and not (args.resume and (out / "split.json").exists()):  # a run's split is never rewritten
        _write_split(out, record)
    try:
        result = train(settings, data.train, data.val, out, resume=args.resume, progress=not args.no_progress,
                       n_labels=data.n_labels)
    except ResumeMismatch as err:
        raise _resume_refusal(out, err.changes) from None
    if is_main:
        try:
            from . import viz

            viz.plot_training_curves(out / "metrics.csv", out / "training_curves.png")
        except Exception as err:  # a figure never fails a finished run (matplotlib, MPLBACKEND, ...)
            print(f"morphreg train: note: no training-curve figure ({str(err).splitlines()[0][:160]})",
                  file=sys.stderr)
        best = ""
        if result.best_val_dice == result.best_val_dice:  # not NaN
            best = f", best validation Dice {result.best_val_dice:.4f}"
        print(f"trained {result.step} steps{best}; model: {out / 'model.pt'}")
    return 0


def _read_split(out: Path) -> dict[str, Any] | None:
    import json

    path = out / "split.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise UserError(f"cannot resume '{out}': '{path}' is damaged ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(saved, dict):
        raise UserError(f"cannot resume '{out}': '{path}' is not a split record")
    return saved


def _write_split(out: Path, record: dict[str, Any]) -> None:
    import json

    from . import io

    io.save_text(json.dumps(record, indent=1), out / "split.json")


def _device_or_error(name: str) -> Any:
    from .workflows.train import resolve_device

    try:
        return resolve_device(name)
    except ValueError as err:
        raise UserError(f"--device {name}: {err}") from None


def _check_distinct(outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Refuse two outputs on one path, and an output on an input's path, before any work."""
    from . import io

    named = [(flag, value) for flag, value in outputs.items() if value]
    for i, (flag, value) in enumerate(named):
        for other, other_value in named[:i]:
            if io.same_path(value, other_value):
                raise UserError(f"{other} and {flag} are the same file '{value}'; each output needs its own path")
        for source, source_value in inputs.items():
            if source_value and io.same_path(value, source_value):
                raise UserError(f"{flag} '{value}' is the {source} input; writing it would destroy the input, "
                                "so give the output another path")


def _check_folder_output(flag: str, folder: Path) -> None:
    """Fail before any work when an output folder can be neither used nor created."""
    for place in (folder, *folder.parents):
        if place.exists():
            if not place.is_dir():
                raise UserError(f"{flag}: cannot create '{folder}': '{place}' is a file, not a folder")
            if not os.access(place, os.W_OK):
                raise UserError(f"{flag}: cannot write in '{folder}': folder '{place}' is not writable")
            return


def _check_outputs(args: argparse.Namespace, *flags: str, kinds: dict[str, str] | None = None) -> None:
    """Fail before any work when an output cannot be written (a parent path is a file, a bad extension, ...).

    ``kinds`` maps a flag to ``"volume"`` or ``"warp"`` (checked by :func:`morphreg.io.check_output_path`);
    other flags only need a writable place.
    """
    from . import io

    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if not value:
            continue
        path = Path(value)
        if path.is_dir():
            raise UserError(f"{flag}: '{path}' is a folder; give a file name such as {path / 'out.nii.gz'}")
        if kinds and flag in kinds:
            try:
                io.check_output_path(path, kinds[flag])
            except ValueError as err:
                raise UserError(f"{flag}: {err}") from None
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise UserError(f"{flag}: cannot write '{path}': '{parent}' is a file, not a folder")
                if not os.access(parent, os.W_OK):
                    raise UserError(f"{flag}: cannot write '{path}': folder '{parent}' is not writable")
                break


def _save_field(args: argparse.Namespace, disp: Any, path: str, affine: Any, header: Any) -> None:
    from . import io

    if args.warp_format == "itk":
        from .io import save_itk_warp

        save_itk_warp(disp, path, affine)
    else:
        io.save_warp(disp, path, affine, units=args.warp_units, header=header)


def _subject_names(*paths: str) -> tuple[str, ...]:
    """Names for titles: file names without extension, or their folders' names when the files share one."""
    from . import io

    names = tuple(io.split_ext(path)[0] or Path(path).name for path in paths)
    if len(set(names)) < len(names):
        names = tuple(Path(path).resolve().parent.name + "/" + name for path, name in zip(paths, names))
    return names


def _label_table(args: argparse.Namespace) -> Any:
    if not args.labels:
        return None
    from .io import read_label_table

    try:
        return read_label_table(args.labels)
    except ValueError as err:
        raise UserError(f"--labels: {err}") from None


def _save_qc(args: argparse.Namespace, pair: Any, moved: Any, disp: Any, moved_seg: Any) -> None:
    import torch

    from .spatial import jacobian_det
    from .viz.qc import plot_qc

    det = jacobian_det(torch.as_tensor(disp)[None].double())[0].numpy()
    plot_qc(args.qc, pair.fixed, pair.moving, moved, det, moved_seg=moved_seg, labels=_label_table(args),
            names=_subject_names(args.moving, args.fixed))


def _save_outputs(args: argparse.Namespace, pair: Any, moved: Any, disp: Any, moved_seg: Any,
                  inverse_disp: Any = None) -> None:
    from . import io

    description = f"morphreg {__version__}: {Path(args.moving).name} registered to {Path(args.fixed).name}"
    io.save_volume(moved, args.moved, description=description)
    if args.warp:
        _save_field(args, disp, args.warp, pair.fixed.affine, pair.fixed.header)
    if args.jacobian:
        import torch

        from .spatial import jacobian_det

        det = jacobian_det(torch.as_tensor(disp)[None].double())[0].float().numpy()
        io.save_volume(io.Volume(det, pair.fixed.affine, pair.fixed.header), args.jacobian,
                       description=f"morphreg {__version__}: Jacobian determinant of {Path(args.moving).name} to "
                                   f"{Path(args.fixed).name}")
    if args.qc:
        _save_qc(args, pair, moved, disp, moved_seg)
    if args.inverse_warp:
        if inverse_disp is None:
            import torch

            from .inverse import invert_disp

            result = invert_disp(torch.as_tensor(disp)[None], iterations=100, tolerance=1e-3)
            inverse_disp = result.inverse_disp[0].numpy()
            print(f"morphreg register: note: --inverse-warp is a fixed-point inverse ({result.iterations} "
                  f"iterations); residual |v + u(x + v)|: max {result.residual_max:.3g}, mean "
                  f"{result.residual_mean:.3g} voxels", file=sys.stderr)
        # the inverse maps moving points back to fixed ones; it lives on the fixed grid too (the moving
        # image was resampled onto it), so it carries the fixed image's geometry
        _save_field(args, inverse_disp, args.inverse_warp, pair.fixed.affine, pair.fixed.header)
    if args.moved_seg:
        io.save_volume(moved_seg, args.moved_seg, description=description)


def cmd_register(args: argparse.Namespace) -> int:
    import torch

    from .workflows.register import load_pair, network_register_fn, register_pair

    if args.pairs:
        from .cli_cohort import cmd_register_cohort

        return cmd_register_cohort(args)
    missing = [flag for flag in ("--moving", "--fixed", "--moved") if getattr(args, flag[2:]) is None]
    if missing:  # a usage error (exit 2), as argparse's own required arguments
        raise _UsageError(f"morphreg register: error: the following arguments are required: {', '.join(missing)} "
                          "(one pair), or give --pairs CSV --out DIR (a cohort)")
    method = args.method or ("network" if args.model else None)
    if method is None:
        raise UserError("give --model (a trained network) or --method affine|rigid|dense|ffd")
    if method != "network" and args.model:
        raise UserError(f"--method {method} registers without a network; drop --model or --method")
    if args.moved_seg and not args.moving_seg:
        raise UserError("--moved-seg needs --moving-seg")
    if (args.affine or args.affine_model) and method != "network":
        raise UserError("--affine/--affine-model prepend alignment to a network: give --model")
    greedy = method == "dense" and (args.loss or "ncc") == "ncc" and args.weight is None
    if (args.preset or args.levels or args.iterations) and not greedy:
        raise UserError("--preset/--levels/--iterations set the greedy dense method: use --method dense "
                        "(without --lambda, with --loss ncc)")
    if args.levels and args.iterations and len(args.iterations) not in (1, args.levels):
        raise UserError(f"--iterations needs 1 or --levels ({args.levels}) values, got {len(args.iterations)}")
    if args.matrix and method not in ("affine", "rigid") and not args.affine:
        raise UserError("--matrix is written by affine alignment: use --method affine|rigid or --affine")
    _label_table(args)  # a bad --labels fails before any work
    _check_outputs(args, "--moved", "--warp", "--moved-seg", "--matrix", "--jacobian", "--inverse-warp", "--qc",
                   kinds={"--moved": "volume", "--moved-seg": "volume", "--warp": "warp", "--jacobian": "volume",
                          "--inverse-warp": "warp"})
    _check_distinct({flag: getattr(args, flag[2:].replace("-", "_")) for flag in
                     ("--moved", "--warp", "--moved-seg", "--matrix", "--jacobian", "--inverse-warp", "--qc")},
                    {flag: getattr(args, flag[2:].replace("-", "_")) for flag in
                     ("--moving", "--fixed", "--moving-seg", "--fixed-seg", "--model", "--affine-model",
                      "--init-matrix", "--init-warp")})
    device = _device_or_error(args.device)
    pair = load_pair(args.moving, args.fixed, args.moving_seg, args.fixed_seg, key=args.npz_key,
                     resample=not args.no_resample)
    if (args.warp_format == "itk" and (args.warp or args.inverse_warp) or args.matrix_format == "itk" and args.matrix) \
            and pair.fixed.ndim == 2 and abs(pair.fixed.affine[2, :2]).max() > 1e-6:
        raise UserError("--warp-format/--matrix-format itk: the 2D --fixed slice's axes leave the world x-y plane "
                        "(e.g. a coronal slice), and ITK/ANTs read 2D images in that plane only; write morphreg "
                        "formats, or register the 3D volumes")
    if pair.resampled:
        print("morphreg register: note: moving and fixed grids differ (shape or affine); the moving image "
              "was resampled onto the fixed grid through the affines", file=sys.stderr)
    from .workflows.classical import classical_register_fn, refine_register_fn

    def network(path: str, flag: str) -> Any:
        model = _load_network(path, device, flag)
        if model.ndim != pair.fixed.ndim:
            raise UserError(f"{flag} is a {model.ndim}D network but the images are {pair.fixed.ndim}D")
        if flag == "--affine-model" and type(model).__name__ != "AffineNet":
            raise UserError(f"--affine-model '{path}' holds a {type(model).__name__} (a deformable network), not an "
                            "affine one; give a run of `morphreg train --model affine`, or pass it as --model")
        plain = flag == "--model" and not (args.affine or args.affine_model or args.optimize)
        return network_register_fn(model, device, full_output=bool(args.inverse_warp) and plain)

    deformable = network(args.model, "--model") if method == "network" else None
    if deformable is not None and (args.weight is not None and not args.optimize or
                                   hasattr(deformable.model, "check_weight")):
        _apply_lambda(deformable.model, args.weight, "(without --optimize)")
    normalise = _normalise_arg(args.normalise, deformable.model if deformable is not None else None)
    learned_affine = network(args.affine_model, "--affine-model") if args.affine_model else None
    register = classical_register_fn(method, args, pair, deformable, learned_affine, device=device)
    if args.init_matrix or args.init_warp:
        register = _with_initial(args, pair, register)
    if args.optimize:
        register = refine_register_fn(register, args)
    result = register_pair(pair, register, normalise=normalise)
    inverse = result.inverse_disp
    if inverse is None and greedy and not (args.init_matrix or args.init_warp or args.optimize):
        greedy_inverse = getattr(register, "inverse_disp", None)  # the greedy method's own inverse
        inverse = greedy_inverse.detach().float().cpu()[0].numpy() if greedy_inverse is not None else None
    _save_outputs(args, pair, result.moved, result.disp, result.moved_seg, inverse)
    if getattr(register, "matrix_world", None) is not None and args.matrix:
        from . import io
        from .io import save_matrix

        original_moving = io.load_volume(args.moving, key=args.npz_key if io.split_ext(args.moving)[1] == ".npz"
                                         else None) if args.matrix_format in ("fsl", "lta") else pair.moving
        try:
            save_matrix(register.matrix_world, args.matrix, args.matrix_format, pair.fixed, original_moving)
        except ValueError as err:
            raise UserError(f"--matrix-format {args.matrix_format}: {err}") from None
    print(f"registered in {result.seconds:.3f} s; moved image: {args.moved}")
    if result.dice is not None:
        before = None
        if pair.moving_seg is not None and pair.fixed_seg is not None:
            from . import io, metrics

            before = metrics.dice(io.to_tensor(pair.moving_seg), io.to_tensor(pair.fixed_seg), result.dice.labels)
        after_mean = float(torch.nanmean(result.dice.per_label))
        before_text = f" (before: {float(torch.nanmean(before.per_label)):.4f})" if before is not None else ""
        print(f"Dice (mean over {result.dice.labels.numel()} labels): {after_mean:.4f}{before_text}")
    return 0


def _with_initial(args: argparse.Namespace, pair: Any, register: Any) -> Any:
    """``register`` started from --init-matrix or --init-warp."""
    import torch

    from . import io
    from .io import load_matrix
    from .io.matrices import detect_matrix_format
    from .workflows.initial import matrix_disp, with_initial

    if args.init_matrix and args.init_warp:
        raise UserError("give --init-matrix or --init-warp, not both")
    if args.init_matrix:
        fmt = detect_matrix_format(args.init_matrix) or args.matrix_format
        moving = io.load_volume(args.moving, key=args.npz_key if io.split_ext(args.moving)[1] == ".npz" else None)
        try:
            matrix = load_matrix(args.init_matrix, fmt, pair.fixed, moving)
            return with_initial(register, matrix_disp(matrix, pair.fixed), matrix)
        except ValueError as err:
            raise UserError(f"--init-matrix: {err}") from None
    field = _read_warp(args.init_warp, "itk" if args.warp_format == "itk" else "auto", flag="--init-warp")
    if not io.same_grid(io.Volume(field.disp[0], field.affine), pair.fixed):
        raise UserError(f"--init-warp '{args.init_warp}' (grid {field.disp.shape[1:]}) is not on the --fixed grid "
                        f"{pair.fixed.shape}; give a field on the fixed image's grid")
    return with_initial(register, torch.from_numpy(field.disp)[None])


def cmd_warp(args: argparse.Namespace) -> int:
    import torch

    from . import io, spatial

    _check_outputs(args, "--moved", kinds={"--moved": "volume"})
    _check_distinct({"--moved": args.moved}, {"--moving": args.moving, "--warp": args.warp})
    warp = _read_warp(args.warp, args.warp_format)
    moving = io.load_volume(args.moving, key=args.npz_key)
    ndim = warp.disp.shape[0]
    if moving.ndim != ndim:
        raise UserError(f"--moving '{args.moving}' is {moving.ndim}D but --warp '{args.warp}' is a {ndim}D field")
    grid = io.Volume(warp.disp[0], warp.affine)
    integer = moving.data.dtype.kind in "iu"
    interp = args.interp or ("nearest" if integer else "linear")
    if not io.same_grid(moving, grid):
        moving = io.resample_to(moving, grid, order=0 if interp == "nearest" else 1)
        print("morphreg warp: note: the moving image is not on the warp's grid; it was resampled onto it "
              "through the affines first", file=sys.stderr)
    image = io.to_tensor(moving)
    if interp == "linear":
        image = image.float()
    moved = spatial.warp(image, torch.from_numpy(warp.disp)[None], mode=interp)
    result = io.from_tensor(moved, grid)
    if interp == "nearest" and integer:
        result.data = result.data.astype(moving.data.dtype)
    io.save_volume(result, args.moved, description=f"morphreg {__version__}: warped by {Path(args.warp).name}")
    print(f"moved image: {args.moved} ({interp} interpolation)")
    return 0


def _read_warp(path: str, fmt: str, flag: str = "--warp") -> Any:
    """The field of ``morphreg warp --warp`` in voxels, read as --warp-format says (auto: as the file says)."""
    from . import io
    from .io import load_itk_warp
    from .io.itk_warp import is_itk_warp

    if fmt == "itk" or (fmt == "auto" and is_itk_warp(path)):
        return load_itk_warp(path)
    try:
        return io.load_warp(path)
    except io.ImageReadError as err:
        if fmt == "auto" and "does not state its units" in str(err):
            raise UserError(f"{flag} '{path}' does not state its units or format; give --warp-format itk for an "
                            "ITK/ANTs field (LPS mm), or rewrite it with morphreg register --warp") from None
        raise


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from . import io
    from .workflows.distributed import check_env, init_from_env
    from .workflows.evaluate import REPORT_FILES, evaluate_pairs, pairs_from_csv, timed
    from .workflows.register import network_register_fn

    check_env()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; give a folder for the report")
    _check_folder_output("--out", out)  # a writable place, checked before any pair is registered
    for name in REPORT_FILES:
        if io.same_path(out / name, args.pairs):
            raise UserError(f"--out '{out}' would overwrite the --pairs input '{args.pairs}' with its own {name}; "
                            "give another --out (or move the pairs list)")
    device = _device_or_error(args.device)
    info = init_from_env(device)  # under torchrun the ranks share the pairs
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    model = _load_network(args.model, device)
    _apply_lambda(model, args.weight, "")
    if args.images:
        from .workflows.evaluate import _load_rows
        from .workflows.subjects import resolve_subject_pairs

        try:
            rows = resolve_subject_pairs(args.pairs, args.images, args.segs)
        except ValueError as err:
            raise UserError(f"--pairs/--images/--segs: {err}") from None
        pairs = _load_rows(args.pairs, rows, _normalise_arg(args.normalise, model), model.ndim)
    elif args.segs:
        raise UserError("--segs names label maps by subject ID: give --images too")
    else:
        pairs = pairs_from_csv(args.pairs, _normalise_arg(args.normalise, model), ndim=model.ndim)
    labels = _label_table(args)
    summary = evaluate_pairs(timed(network_register_fn(model, device)), pairs, args.out, figures=args.figures,
                             with_hd95=not args.no_hd95, progress=not args.no_progress,
                             label_names=labels.names if labels else None)
    if info.is_main:
        from .workflows.report_html import write_html_report

        _print_summary(summary)
        page = write_html_report(args.out, title=f"morphreg evaluate: {_subject_names(args.model)[0]} on "
                                 f"{Path(args.pairs).name}", label_names=labels.names if labels else None)
        print(f"report: {Path(args.out) / 'summary.json'}, {page}")
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"{summary['n_pairs']} pairs")
    for key in ("dice_before", "dice_after", "hd95_before", "hd95_after", "folding_pct", "sdlogj", "seconds"):
        stats = summary.get(key, {})
        if stats.get("n"):
            print(f"  {key:<12} {stats['mean']:.4f} ± {stats['sd']:.4f}")


def cmd_models(args: argparse.Namespace) -> int:
    from . import zoo

    if args.name is None:
        print(zoo.format_table())
        return 0
    if not zoo.is_builtin(args.name):
        raise UserError(f"'{args.name}' is not a built-in model (built-in: {', '.join(zoo.names()) or 'none'})")
    print(zoo.format_card(args.name), end="")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from .cli_segment import cmd_segment as run

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .workflows.demo import run_demo

    run_demo(args)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train,
    "register": cmd_register,
    "warp": cmd_warp,
    "evaluate": cmd_evaluate,
    "models": cmd_models,
    "demo": cmd_demo,
    "segment": cmd_segment,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 1 error, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(str(err), file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help / --version
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"morphreg {args.command}: interrupted", file=sys.stderr)
        return 130
    except _UsageError as err:
        print(str(err), file=sys.stderr)
        return 2
    except (UserError, ValueError, TypeError, FileNotFoundError, OSError, FloatingPointError,
            RuntimeError, MemoryError) as err:
        if getattr(args, "debug", False):
            traceback.print_exc()
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and _OUT_OF_MEMORY.search(message)):
            message = _out_of_memory_line(err)
        print(f"morphreg {args.command}: error: {_flag_names(args.command, message)}", file=sys.stderr)
        return 1


_OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory|DefaultCPUAllocator|Unable to allocate",
                            re.IGNORECASE)

#: Library wording -> the flags of each command (library messages name API parameters).
_FLAG_WORDING = {
    "register": (("pass key= one of", "pass --npz-key one of"),
                 ("lower the regularisation weight or the learning rate", "lower --lambda")),
    "warp": (("pass key= one of", "pass --npz-key one of"),
             ("argument 'key' only applies to .npz files, got key=", "--npz-key only applies to .npz files, got "),
             ("; pass units='voxel' or units='mm'",
              "; morphreg warp reads fields that state them, as `morphreg register --warp` writes")),
    "train": (("pass key= one of", "pass --npz-key (images) or --seg-key (label maps) one of"),),
    "demo": (("pass key= one of", "pass --npz-key (images) or --seg-key (label maps) one of"),),
}


def _flag_names(command: str, message: str) -> str:
    for old, new in _FLAG_WORDING.get(command, ()):
        message = message.replace(old, new)
    return message


def _out_of_memory_line(err: BaseException) -> str:
    from ._limits import budget_note

    return (f"out of memory ({type(err).__name__}): the images or the network need more memory than this "
            f"process may use ({budget_note()}); use smaller or downsampled images, a smaller network, or a "
            "machine with more memory")


if __name__ == "__main__":
    raise SystemExit(main())
