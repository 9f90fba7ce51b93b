"""``morphreg models [NAME]``: the built-in models, or one model's card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import UserError, shown


def add_parser(command: Any) -> None:
    """Add ``models`` (``command(name, help)`` makes a subparser with --debug)."""
    p = command("models", "list the built-in models, or show one model's card")
    p.add_argument("name", nargs="?", default=None, help="a built-in model: show its full card")


def _exists(name: str) -> bool:
    try:
        return bool(name) and Path(name).exists()
    except (OSError, ValueError):  # a name too long for a path, a NUL byte
        return False


def run(args: argparse.Namespace) -> int:
    """``morphreg models``."""
    from .. import zoo

    if args.name is None:
        print(zoo.format_table())
        return 0
    if not zoo.is_builtin(args.name):
        what = "a file or folder, not a built-in model name" if _exists(args.name) else "not a built-in model"
        raise UserError(f"{shown(args.name)} is {what} (built-in: {', '.join(zoo.names()) or 'none'})")
    print(zoo.format_card(args.name), end="")
    return 0
