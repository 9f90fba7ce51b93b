"""``morphreg train``: flags -> :class:`~morphreg.workflows.train.TrainSettings` and training data ->
:func:`~morphreg.workflows.train.train`, with resume checks and the run's ``split.json``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ._common import (
    DEVICE_CHOICES,
    MAX_INT_STEPS,
    NORMALISE_HELP,
    UserError,
    check_distinct,
    device_or_error,
    fraction,
    int_steps,
    non_negative_float,
    non_negative_int,
    normalise_arg,
    positive_float,
    positive_int,
    value_of,
)

#: TrainSettings fields -> the train flags that set them (messages name flags, not parameters).
SETTING_FLAGS = {"model": "--model", "loss": "--loss", "weight": "--lambda", "int_steps": "--int-steps",
                 "int_downsize": "--int-downsize", "bidir": "--bidir", "seg_weight": "--seg-weight",
                 "batch_size": "--batch-size", "lr": "--lr", "lr_schedule": "--lr-schedule", "seed": "--seed",
                 "enc": "--enc", "dec": "--dec", "normalise": "--normalise", "val_fraction": "--val-fraction",
                 "val_pairs": "--val-pairs", "augment": "--augment",
                 "hyper": "--hyper", "hyper_range": "--hyper-range", "stages": "--stages",
                 "inverse_consistency": "--inverse-consistency", "ic_weight": "--ic-weight",
                 "image_sigma": "--image-sigma"}
DATA_FLAGS = ("--data", "--segs", "--atlas", "--atlas-seg", "--pairs")


def add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    """--data/--npz-key/--segs/--seg-key (also used by ``demo``)."""
    p.add_argument("--data", required=required, help="folder of images, .txt list of paths, glob, or .npz stack")
    p.add_argument("--npz-key", default=None, help="array key of --data when it is an .npz (e.g. slice_norm)")
    p.add_argument("--segs", default=None, help="label maps matching --data (same forms)")
    p.add_argument("--seg-key", default=None, help="array key of --segs when it is an .npz (e.g. seg24)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss", choices=["mse", "ncc"], default="ncc", help="image similarity")
    p.add_argument("--lambda", dest="weight", type=non_negative_float, default=None,
                   help="smoothness weight (default: 0.01 for mse, 1.0 for ncc, as in the paper)")
    p.add_argument("--int-steps", type=int_steps, default=0,
                   help=f"scaling-and-squaring steps, at most {MAX_INT_STEPS} (0: displacement model; "
                        "7: diffeomorphic)")
    p.add_argument("--int-downsize", type=int, choices=[1, 2, 4], default=1,
                   help="integrate the velocity at 1/N resolution")
    p.add_argument("--bidir", action="store_true", help="bidirectional similarity (needs --int-steps > 0)")
    p.add_argument("--seg-weight", type=non_negative_float, default=0.0,
                   help="weight of the Dice loss on warped labels (semi-supervised; needs --segs)")
    p.add_argument("--hyper", action="store_true",
                   help="HyperMorph: one network for a range of --lambda values, drawn per step; --lambda is the "
                        "value validated (choose it at registration with `register --lambda`)")
    p.add_argument("--hyper-range", type=positive_float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="lambda range of --hyper, sampled log-uniformly (default: --lambda / 20 to --lambda * 20)")
    p.add_argument("--stages", type=positive_int, default=None,
                   help="--model cascade: number of recursive networks, 1 to 10 (default 3)")
    p.add_argument("--inverse-consistency", choices=["gradicon"], default=None,
                   help="gradicon: add GradICON's penalty on the Jacobian of phi_AB o phi_BA (each step registers "
                        "both ways); any deformable --model")
    p.add_argument("--ic-weight", type=non_negative_float, default=None,
                   help="weight of --inverse-consistency (default 1.5, uniGradICON's)")
    p.add_argument("--image-sigma", type=positive_float, default=None,
                   help="--model probabilistic: image noise sigma; the similarity is weighted 1/(2 sigma^2) and "
                        "--lambda is the prior's lambda (default 0.02, the paper's for mse)")
    p.add_argument("--enc", type=positive_int, nargs="+", default=[16, 32, 32, 32],
                   help="encoder widths (vxm, cascade stages, probabilistic)")
    p.add_argument("--dec", type=positive_int, nargs="+", default=[32, 32, 32, 32, 32, 16, 16],
                   help="decoder widths")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=positive_int, default=1500, help="optimisation steps")
    p.add_argument("--batch-size", type=positive_int, default=1, help="pairs per step and process")
    p.add_argument("--max-minutes", type=positive_float, default=None,
                   help="stop (validated, checkpointed, resumable) after this much wall time")
    p.add_argument("--max-cpu-minutes", type=positive_float, default=None,
                   help="stop likewise once the process has used this much CPU time (all threads; a budget "
                        "that does not depend on the machine's load)")
    p.add_argument("--lr", type=positive_float, default=1e-3,
                   help="Adam learning rate (docs/results/train_defaults.md: 1e-3 gains most in a short run)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="learning-rate schedule: constant, or cosine decay to zero over --steps")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the weights, the subject split and the pair sampling")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where to train (auto: cuda when available)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--val-fraction", type=fraction, default=0.2, help="subjects held out for validation")
    p.add_argument("--val-pairs", type=positive_int, default=16, help="validation pairs")
    p.add_argument("--val-every", type=positive_int, default=100, help="validate every N steps")
    p.add_argument("--checkpoint-every", type=positive_int, default=100,
                   help="save a resumable checkpoint every N steps")
    p.add_argument("--augment", action="store_true", help="random intensity gamma augmentation")
    p.add_argument("--normalise", choices=["minmax", "percentile", "none"], default=None, help=NORMALISE_HELP)
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-identical reruns)")
    p.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(command: Any) -> None:
    """Add ``train`` (``command(name, help)`` makes a subparser with --debug)."""
    p = command("train", "train a VoxelMorph network on a collection of images")
    p.add_argument("--model", choices=["vxm", "affine", "cascade", "transmorph", "probabilistic"], default="vxm",
                   help="vxm: VxmDense deformable network (default); affine: AffineNet; cascade: recursive cascade "
                        "of --stages VxmDense composed into one field; transmorph: Swin-transformer encoder; "
                        "probabilistic: VoxelMorph-diff (mean and variance of the velocity; needs --int-steps)")
    add_data_args(p, required=False)
    p.add_argument("--atlas", default=None, help="fixed atlas image (atlas-to-subject training)")
    p.add_argument("--atlas-seg", default=None, help="atlas label map (with --segs)")
    p.add_argument("--pairs", default=None, help="CSV moving,fixed[,moving_seg,fixed_seg] of training pairs")
    _add_model_args(p)
    _add_run_args(p)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")


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


def _check_family_args(args: argparse.Namespace) -> None:
    if args.stages is not None and args.model != "cascade":
        raise UserError(f"--stages is the number of networks of --model cascade, not of --model {args.model}")
    if args.stages is not None and args.stages > 10:
        raise UserError(f"--stages must be an integer in [1, 10], got {args.stages}")
    if args.bidir and args.model == "cascade":
        raise UserError("--bidir is not available for --model cascade (its stages compose one way)")
    if args.image_sigma is not None and args.model != "probabilistic":
        raise UserError(f"--image-sigma is the image noise of --model probabilistic, not of --model {args.model}")
    if args.model == "probabilistic" and args.int_steps == 0:
        raise UserError("--model probabilistic is diffeomorphic: give --int-steps (e.g. 7)")
    if args.ic_weight is not None and args.inverse_consistency is None:
        raise UserError("--ic-weight weighs --inverse-consistency; add --inverse-consistency gradicon")
    if args.inverse_consistency and args.model == "affine":
        raise UserError("--inverse-consistency regularises a deformable network, not --model affine")


def _check_flags(args: argparse.Namespace, out: Path) -> None:
    from .._files import RunDir

    if args.data is None and args.pairs is None:
        raise UserError("give --data (images) or --pairs (a CSV of pairs)")
    if args.atlas and args.pairs:
        raise UserError("--atlas and --pairs are different pairings; give one of them")
    if args.seg_weight > 0 and args.segs is None and args.pairs is None:
        raise UserError("--seg-weight > 0 needs --segs (label maps for the training images)")
    if args.bidir and args.int_steps == 0:
        raise UserError("--bidir needs a diffeomorphic model: give --int-steps (e.g. 7)")
    _check_hyper_args(args)
    _check_family_args(args)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; give a folder for the run")
    check_distinct({f"--out (its {name})": path for name, path in RunDir(out).paths().items()},
                   {flag: value_of(args, flag) for flag in DATA_FLAGS})
    if not args.resume and RunDir(out).state.exists():
        raise UserError(f"--out '{out}' already holds a run; pass --resume to continue it or choose another folder")


def _settings(args: argparse.Namespace) -> Any:
    from ..workflows.train import TrainSettings

    return TrainSettings(
        model=args.model, loss=args.loss, weight=args.weight, int_steps=args.int_steps, int_downsize=args.int_downsize,
        bidir=args.bidir, seg_weight=args.seg_weight, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, lr_schedule=args.lr_schedule, seed=args.seed, device=args.device,
        val_every=args.val_every, checkpoint_every=args.checkpoint_every, enc=args.enc, dec=args.dec,
        deterministic=args.deterministic, amp=not args.no_amp, threads=args.threads, max_minutes=args.max_minutes,
        max_cpu_minutes=args.max_cpu_minutes,
        normalise=normalise_arg(args.normalise), hyper=args.hyper, hyper_range=args.hyper_range,
        stages=args.stages, inverse_consistency=args.inverse_consistency, ic_weight=args.ic_weight,
        image_sigma=args.image_sigma,
    )


def _data_and_split(args: argparse.Namespace, out: Path, is_main: bool, settings: Any) -> Any:
    """The training data, checked against ``settings`` (``--enc`` levels, ``--seg-weight`` labels);
    its split is checked against a resumed run's, and written once."""
    from ..workflows.train import check_training_data
    from ..workflows.training_data import build_training_data, read_split, split_changes, split_record, write_split

    data = build_training_data(
        args.data, key=args.npz_key, segs=args.segs, seg_key=args.seg_key, atlas=args.atlas,
        atlas_seg=args.atlas_seg, pairs_csv=args.pairs, val_fraction=args.val_fraction,
        val_pairs=args.val_pairs, seed=args.seed, augment=args.augment, normalise=normalise_arg(args.normalise),
    )
    check_training_data(settings, data.train, data.n_labels, data.label_source)  # before split.json is written
    record = split_record(data, val_fraction=args.val_fraction, val_pairs=args.val_pairs, augment=args.augment)
    saved = None
    if args.resume:
        try:
            saved = read_split(out)
        except ValueError as err:
            raise UserError(f"cannot resume '{out}': {err}") from None
        changes = split_changes(saved, record) if saved is not None else {}
        if changes:
            raise _resume_refusal(out, changes)
    if is_main and saved is None and not (args.resume and (out / "split.json").exists()):
        write_split(out, record)  # a run's split is never rewritten
    return data


def _plot_curves(out: Path) -> None:
    try:
        from .. import viz

        viz.plot_training_curves(out / "metrics.csv", out / "training_curves.png")
    except Exception as err:  # a figure never fails a finished run (matplotlib, MPLBACKEND, ...)
        print(f"morphreg train: note: no training-curve figure ({str(err).splitlines()[0][:160]})", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """``morphreg train``."""
    from ..workflows.distributed import check_env
    from ..workflows.train import ResumeMismatch, check_resume, train

    out = Path(args.out)
    _check_flags(args, out)
    check_env()
    device_or_error(args.device)
    settings = _settings(args)
    try:
        if args.resume:
            check_resume(out, settings)
        is_main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone writes and reports
        data = _data_and_split(args, out, is_main, settings)
        result = train(settings, data.train, data.val, out, resume=args.resume, progress=not args.no_progress,
                       n_labels=data.n_labels, label_source=data.label_source)
    except ResumeMismatch as err:
        raise _resume_refusal(out, err.changes) from None
    if is_main:
        _plot_curves(out)
        best = ""
        if result.best_val_dice == result.best_val_dice:  # not NaN
            best = f", best validation Dice {result.best_val_dice:.4f}"
        print(f"trained {result.step} steps{best}; model: {out / 'model.pt'}")
    return 0
