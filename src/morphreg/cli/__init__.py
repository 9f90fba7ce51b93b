"""The ``morphreg`` command line: one module per command, each parsing its flags and calling one
typed workflow function. ``main(argv) -> exit code``.

Every expected failure (bad file, bad flag value, mismatched images, foreign checkpoint) ends
with exit code 1 and one line ``morphreg <command>: error: ...`` on stderr, with the library's
parameter names translated into flags; argparse usage errors exit with 2. ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from .. import __version__
from .._allocator import reuse_freed_memory
from .._threads import wait_passively_if_busy
from . import demo, evaluate, models, register, segment, template, train, warp
from ._common import DefaultsFormatter, Parser, UsageError, UserError, flag_names

__all__ = ["COMMANDS", "UserError", "build_parser", "main"]

#: command name -> its module (``add_parser(command)`` and ``run(args) -> exit code``).
COMMANDS = {"train": train, "register": register, "warp": warp, "evaluate": evaluate, "segment": segment,
            "template": template, "models": models, "demo": demo}


def build_parser() -> argparse.ArgumentParser:
    """The whole parser: ``morphreg COMMAND [flags]``."""
    parser = Parser(prog="morphreg", description="Deformable registration of medical images (VoxelMorph and beyond).")
    parser.add_argument("--version", action="version", version=f"morphreg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsFormatter)
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        return p

    for module in COMMANDS.values():
        module.add_parser(command)
    return parser


_OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory|DefaultCPUAllocator|Unable to allocate",
                            re.IGNORECASE)

#: Library wording that is not a backquoted parameter -> the flags of each command.
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


def _message(command: str, err: BaseException) -> str:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and _OUT_OF_MEMORY.search(message)):
        return _out_of_memory_line(err)
    for old, new in _FLAG_WORDING.get(command, ()):
        message = message.replace(old, new)
    return flag_names(message)


def _out_of_memory_line(err: BaseException) -> str:
    from .._limits import budget_note

    return (f"out of memory ({type(err).__name__}): the images or the network need more memory than this "
            f"process may use ({budget_note()}); use smaller or downsampled images, a smaller network, or a "
            "machine with more memory")


def shutdown_process_group(succeeded: bool) -> None:
    """Tear down a torchrun process group, if this command made one (torch is not imported otherwise)."""
    if "torch.distributed" in sys.modules:
        from ..workflows.distributed import shutdown

        shutdown(succeeded)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 1 error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(str(err), file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help / --version
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    run: Callable[[argparse.Namespace], int] = COMMANDS[args.command].run
    reuse_freed_memory()
    wait_passively_if_busy()  # before torch is imported (libgomp reads its environment once)
    code = 1
    try:
        code = run(args)
        return code
    except KeyboardInterrupt:
        print(f"morphreg {args.command}: interrupted", file=sys.stderr)
        return 130
    except UsageError as err:
        print(str(err), file=sys.stderr)
        return 2
    except (UserError, ValueError, TypeError, FileNotFoundError, OSError, FloatingPointError,
            RuntimeError, MemoryError) as err:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"morphreg {args.command}: error: {_message(args.command, err)}", file=sys.stderr)
        return 1
    finally:
        shutdown_process_group(succeeded=code == 0)


if __name__ == "__main__":
    raise SystemExit(main())
