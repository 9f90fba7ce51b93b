"""``morphreg warp``: apply a displacement field to an image or a label map."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import check_distinct, check_outputs, note


def add_parser(command: Any) -> None:
    """Add ``warp`` (``command(name, help)`` makes a subparser with --debug)."""
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


def run(args: argparse.Namespace) -> int:
    """``morphreg warp``."""
    from ..workflows.warps import warp_file

    check_outputs(args, ["--moved"], kinds={"--moved": "volume"})
    check_distinct({"--moved": args.moved}, {"--moving": args.moving, "--warp": args.warp})
    done = warp_file(args.moving, args.warp, args.moved, warp_format=args.warp_format, interp=args.interp,
                     key=args.npz_key)
    if done.resampled:
        note("warp", "note: the moving image is not on the warp's grid; it was resampled onto it through the "
                     "affines first")
    print(f"moved image: {args.moved} ({done.interp} interpolation)")
    return 0
