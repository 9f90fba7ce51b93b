"""``morphreg segment``: atlas label propagation (parser and command; the work is in workflows.segment)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any, common: Any) -> None:
    """Add ``segment`` to the subcommands (``common(name, help)`` makes a subparser with --debug)."""
    p = common("segment", "label images by registering one or more atlases to each (majority voting)")
    p.add_argument("--atlas", action="append", required=True,
                   help="atlas image (repeat with one --atlas-seg each for multi-atlas majority voting)")
    p.add_argument("--atlas-seg", action="append", required=True, help="the atlas' label map (same order as --atlas)")
    p.add_argument("--images", required=True, help="folder of images to label (every NIfTI/MGZ/NPZ/... file in it)")
    p.add_argument("--out", required=True, help="folder for the label maps (<image name>_seg.nii.gz)")
    p.add_argument("--model", default=None, help="run directory or checkpoint of a trained network")
    p.add_argument("--method", choices=["affine", "rigid", "dense", "ffd"], default=None,
                   help="registration without a network (when --model is not given)")
    p.add_argument("--loss", choices=["mse", "ncc", "mi"], default=None, help="similarity for --method")
    p.add_argument("--lambda", dest="weight", type=float, default=None, help="smoothness weight for --method")
    p.add_argument("--normalise", choices=["minmax", "percentile", "none"], default=None,
                   help="intensity normalisation (default: the network's, else percentile)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the registration runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from . import io
    from .cli import UserError, _check_folder_output, _device_or_error, _load_network, _normalise_arg
    from .workflows.classical import classical_register_fn
    from .workflows.register import network_register_fn
    from .workflows.segment import propagate_labels

    if len(args.atlas) != len(args.atlas_seg):
        raise UserError(f"give one --atlas-seg per --atlas (got {len(args.atlas)} --atlas and "
                        f"{len(args.atlas_seg)} --atlas-seg)")
    if bool(args.model) == bool(args.method):
        raise UserError("give --model (a trained network) or --method affine|rigid|dense|ffd")
    folder = Path(args.images)
    if not folder.is_dir():
        raise UserError(f"--images '{folder}' is not a folder")
    from .io.sitk import is_sitk_path

    images = sorted(p for p in folder.iterdir() if p.is_file() and (io.split_ext(p)[1] or is_sitk_path(p)))
    if not images:
        raise UserError(f"--images '{folder}' holds no image files (.nii, .nii.gz, .mgz, .npz, ...)")
    out = Path(args.out)
    _check_folder_output("--out", out)
    device = _device_or_error(args.device)
    network = None
    if args.model:
        model = _load_network(args.model, device)
        network = network_register_fn(model, device)
        normalise = _normalise_arg(args.normalise, model)
    else:
        normalise = _normalise_arg(args.normalise)
    options = argparse.Namespace(loss=args.loss, weight=args.weight, affine=False)

    def make_register(pair: Any) -> Any:
        method = "network" if network is not None else args.method
        return classical_register_fn(method, options, pair, network, device=device)

    atlases = list(zip(args.atlas, args.atlas_seg))
    failed = 0
    for image in tqdm(images, disable=args.no_progress, unit="image", desc="segment"):
        target = out / f"{io.split_ext(image)[0]}_seg.nii.gz"
        try:
            labels = propagate_labels(image, atlases, make_register, normalise=normalise)
        except (ValueError, OSError, RuntimeError, FloatingPointError) as err:
            failed += 1
            print(f"morphreg segment: {image.name}: {str(err).strip().splitlines()[0]}; skipped", file=sys.stderr)
            continue
        io.save_volume(labels, target, description=f"morphreg segment: {len(atlases)} atlas(es)")
    print(f"{len(images) - failed} label maps in {out} ({len(atlases)} atlas(es)); {failed} failed")
    return 0 if failed == 0 else 1
