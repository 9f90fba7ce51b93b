"""``morphreg segment``: atlas label propagation (parser and command; the work is in workflows.segment)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    DEVICE_CHOICES,
    UserError,
    add_runner_args,
    check_folder_output,
    device_or_error,
    load_network,
    non_negative_float,
    normalise_arg,
    note,
    runner_from_args,
)


def add_parser(command: Any) -> None:
    """Add ``segment`` (``command(name, help)`` makes a subparser with --debug)."""
    p = command("segment", "label images by registering one or more atlases to each (majority voting)")
    p.add_argument("--atlas", action="append", required=True,
                   help="atlas image (repeat with one --atlas-seg each for multi-atlas majority voting)")
    p.add_argument("--atlas-seg", action="append", required=True, help="the atlas' label map (same order as --atlas)")
    p.add_argument("--images", required=True, help="folder of images to label (every NIfTI/MGZ/NPZ/... file in it)")
    p.add_argument("--out", required=True, help="folder for the label maps (<image name>_seg.nii.gz)")
    p.add_argument("--model", default=None, help="run directory or checkpoint of a trained network")
    p.add_argument("--method", choices=["affine", "rigid", "dense", "ffd"], default=None,
                   help="registration without a network (when --model is not given)")
    p.add_argument("--loss", choices=["mse", "ncc", "mi"], default=None, help="similarity for --method")
    p.add_argument("--lambda", dest="weight", type=non_negative_float, default=None,
                   help="smoothness weight for --method")
    p.add_argument("--normalise", choices=["minmax", "percentile", "none"], default=None,
                   help="intensity normalisation (default: the network's, else percentile)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="where the registration runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runner_args(p, "images")


def _images(folder: Path) -> list[Path]:
    from .. import io
    from ..io.sitk import is_sitk_path

    if not folder.is_dir():
        raise UserError(f"--images '{folder}' is not a folder")
    images = sorted(p for p in folder.iterdir() if p.is_file() and (io.split_ext(p)[1] or is_sitk_path(p)))
    if not images:
        raise UserError(f"--images '{folder}' holds no image files (.nii, .nii.gz, .mgz, .npz, ...)")
    return images


def _ndim(image: Path) -> int | None:
    """The first image's dimensionality (``None`` if it cannot be read: its own job reports that)."""
    from .. import io

    try:
        return io.load_volume(image).ndim
    except (ValueError, OSError):
        return None


def run(args: argparse.Namespace) -> int:
    """``morphreg segment``: exit 1 when any image failed (the others are still labelled)."""
    from .. import io
    from ..workflows.runner import run_jobs
    from ..workflows.segment import SegmentJob, check_atlases, check_outputs
    from ..workflows.spec import RegistrationSpec

    if len(args.atlas) != len(args.atlas_seg):
        raise UserError(f"give one --atlas-seg per --atlas (got {len(args.atlas)} --atlas and "
                        f"{len(args.atlas_seg)} --atlas-seg)")
    if bool(args.model) == bool(args.method):
        raise UserError("give --model (a trained network) or --method affine|rigid|dense|ffd")
    images = _images(Path(args.images))
    out = Path(args.out)
    check_folder_output("--out", out)
    device = device_or_error(args.device)
    if args.model:
        normalise_arg(args.normalise, load_network(args.model, device))  # a bad --model fails before any work
    runner = runner_from_args(args, "segment", progress=not args.no_progress)
    spec = RegistrationSpec(method=args.method or "network", model=args.model, loss=args.loss, weight=args.weight,
                            normalise=args.normalise, device=args.device)
    atlases = tuple((str(a), str(s)) for a, s in zip(args.atlas, args.atlas_seg))
    outputs = [out / f"{io.split_ext(image)[0] or image.name}_seg.nii.gz" for image in images]
    check_outputs(images, outputs, atlases)
    check_atlases(atlases, spec, _ndim(images[0]), device)  # shared by every image: checked once, now
    jobs = [SegmentJob(i, image.name, str(image), atlases, spec, str(output))
            for i, (image, output) in enumerate(zip(images, outputs), 1)]
    statuses = run_jobs(jobs, runner, report=lambda line: note("segment", line))
    failed = sum(1 for s in statuses if s.status == "error")
    print(f"{len(images) - failed} label maps in {out} ({len(atlases)} atlas(es)); {failed} failed")
    return 0 if failed == 0 else 1
