"""What every command shares: the error types, argparse types and formatter, output checks, and
the translation of the library's parameter names into flags.

The library names its parameters in backquotes (`` `moving_seg` ``); :func:`flag_names` turns
them into this command line's flags (``--moving-seg``) before a message is printed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .._files import cannot_write_in

NORMALISE_HELP = ("intensity normalisation of each image: percentile (clip to the 0.5/99.5th percentiles, then "
                  "scale to [0, 1]; the default for training), minmax, or none; registration defaults to what the "
                  "network was trained with")
DEVICE_CHOICES = ["auto", "cpu", "cuda"]


def add_precision_flag(parser: argparse.ArgumentParser) -> None:
    """``--precision float32|bf16`` of the commands that run a network."""
    parser.add_argument("--precision", choices=["float32", "bf16"], default="float32",
                        help="network arithmetic: bf16 runs the U-Net in bfloat16 (for GPUs and CPUs with bf16 "
                             "units; integration and warping stay float32)")
MAX_INT_STEPS = 20  # morphreg.spatial.MAX_INT_STEPS (kept here so that --help needs no torch import)


class UserError(Exception):
    """A problem with the user's input, reported as one line (exit code 1)."""


class UsageError(Exception):
    """A usage error, reported as argparse reports them (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so ``main`` can return the exit code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: error: {message}")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------------------
# argparse types


def int_at_least(minimum: int) -> Callable[[str], int]:
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


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def int_steps(text: str) -> int:
    """argparse type of --int-steps: an integer in [0, MAX_INT_STEPS]."""
    value = non_negative_int(text)
    if value > MAX_INT_STEPS:
        raise argparse.ArgumentTypeError(
            f"expected an integer in [0, {MAX_INT_STEPS}], got {text!r} (7 is the usual choice; each step doubles "
            f"the field's reach, and {MAX_INT_STEPS} already covers any image)")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------
# parameter names -> flags

#: Library parameters whose flag is not ``--`` + the name with dashes.
_FLAG_OF = {"weight": "--lambda", "key": "--npz-key", "pairs_csv": "--pairs", "resample": "--no-resample",
            "data": "--data", "atlas": "--atlas"}


def shown(text: str, limit: int = 100) -> str:
    """A user's text quoted for a one-line message: control characters escaped (a newline cannot split
    the line), and a text longer than ``limit`` cut, with its length."""
    if len(text) <= limit:
        return repr(text)
    head = repr(text[:limit])
    return f"{head[:-1]}...{head[-1]} ({len(text)} characters)"


def flag_of(parameter: str) -> str:
    """The flag of a library parameter: ``moving_seg`` -> ``--moving-seg``, ``weight`` -> ``--lambda``."""
    return _FLAG_OF.get(parameter, "--" + parameter.replace("_", "-"))


def flag_names(message: str, overrides: dict[str, str] | None = None) -> str:
    """``message`` with every backquoted parameter name replaced by its flag (``overrides`` first)."""
    table = overrides or {}
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: table.get(m.group(1), flag_of(m.group(1))), message)


def value_of(args: argparse.Namespace, flag: str) -> Any:
    """The parsed value of ``flag`` (``--moving-seg`` -> ``args.moving_seg``; ``--lambda`` -> ``args.weight``)."""
    return getattr(args, "weight" if flag == "--lambda" else flag[2:].replace("-", "_"), None)


# ---------------------------------------------------------------------------------------------
# checks before any work


def check_distinct(outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Refuse two outputs on one path, and an output on an input's path, before any work."""
    from .. import io

    named = [(flag, value) for flag, value in outputs.items() if value]
    for i, (flag, value) in enumerate(named):
        for other, other_value in named[:i]:
            if io.same_path(value, other_value):
                raise UserError(f"{other} and {flag} are the same file '{value}'; each output needs its own path")
        for source, source_value in inputs.items():
            if source_value and io.same_path(value, source_value):
                raise UserError(f"{flag} '{value}' is the {source} input; writing it would destroy the input, "
                                "so give the output another path")


def _check_place(flag: str, target: Path, places: Iterable[Path], file_verb: str, folder_verb: str) -> None:
    """The first existing path of ``places`` must be a writable folder (``target`` is what will be written)."""
    for place in places:
        if place.exists():
            if not place.is_dir():
                raise UserError(f"{flag}: cannot {file_verb} '{target}': '{place}' is a file, not a folder")
            reason = cannot_write_in(place)
            if reason is not None:
                raise UserError(f"{flag}: cannot {folder_verb} '{target}': folder '{place}' is not writable "
                                f"({reason})")
            return


def check_folder_output(flag: str, folder: Path) -> None:
    """Fail before any work when an output folder can be neither used nor created."""
    _check_place(flag, folder, (folder, *folder.parents), "create", "write in")


def check_outputs(args: argparse.Namespace, flags: Iterable[str], kinds: dict[str, str] | None = None) -> None:
    """Fail before any work when an output cannot be written (a parent path is a file, a bad extension, ...).

    ``kinds`` maps a flag to ``"volume"`` or ``"warp"`` (checked by :func:`morphreg.io.check_output_path`);
    other flags only need a writable place.
    """
    from .. import io

    for flag in flags:
        value = value_of(args, flag)
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
        _check_place(flag, path, path.parents, "write", "write")


def device_or_error(name: str) -> Any:
    """The torch device of ``--device name``; a clear error when CUDA is missing."""
    from ..workflows.device import resolve_device

    try:
        return resolve_device(name)
    except ValueError as err:
        raise UserError(f"--device {name}: {err}") from None


# ---------------------------------------------------------------------------------------------
# networks, normalisation, labels


def normalise_arg(value: str | None, model: Any = None) -> str | None:
    """The normalisation to apply: the flag, else the network's (legacy checkpoints: minmax)."""
    from ..workflows.spec import network_normalisation

    try:
        return network_normalisation(value, model)
    except ValueError as err:
        raise UserError(flag_names(str(err))) from None


def load_network(path: str, device: Any, flag: str = "--model") -> Any:
    """A network from a run folder, a checkpoint or a built-in name; errors name ``flag``."""
    from ..workflows.spec import load_network as load

    try:
        return load(path, device, flag[2:].replace("-", "_"))
    except ValueError as err:
        raise UserError(flag_names(str(err))) from None


def apply_lambda(model: Any, weight: float | None, flag_context: str) -> None:
    """Set a HyperMorph network's lambda from --lambda; refuse --lambda for a network trained for one."""
    from ..workflows.spec import set_lambda

    try:
        set_lambda(model, weight, flag_context)
    except ValueError as err:
        raise UserError(flag_names(str(err))) from None


def label_table(path: str | None) -> Any:
    """The ``--labels`` table (``None`` without the flag); a bad table fails before any work."""
    if not path:
        return None
    from ..io import read_label_table

    try:
        return read_label_table(path)
    except ValueError as err:
        raise UserError(f"--labels: {err}") from None


def subject_names(*paths: str) -> tuple[str, ...]:
    """Names for titles: file names without extension, or their folders' names when the files share one."""
    from .. import io

    names = tuple(io.split_ext(path)[0] or Path(path).name for path in paths)
    if len(set(names)) < len(names):
        names = tuple(Path(path).resolve().parent.name + "/" + name for path, name in zip(paths, names))
    return names


def note(command: str, line: str) -> None:
    """A note on stderr: ``morphreg COMMAND: LINE``."""
    print(f"morphreg {command}: {flag_names(line)}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# many jobs: where they run (morphreg.workflows.runner)


def add_runner_args(parser: argparse.ArgumentParser, what: str = "rows") -> None:
    """``--workers``, ``--threads``, ``--scheduler``, ``--scheduler-timeout`` of the commands that run many jobs."""
    parser.add_argument("--workers", default="auto",
                        help=f"local worker processes for the {what}: auto (from the cores and the memory free, "
                             "about 2 GB per 3D classical job; what was chosen is printed), or a number (1: this "
                             "process)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads per job (default: the cores shared among the local workers; 1 per job "
                             "on a --scheduler's workers)")
    parser.add_argument("--scheduler", default=None,
                        help=f"send the {what} to this Dask scheduler (tcp://HOST:8786, or a scheduler JSON file); "
                             "default: the environment variable MORPHREG_SCHEDULER, else this machine")
    parser.add_argument("--scheduler-timeout", type=positive_float, default=10.0,
                        help="seconds to wait for the --scheduler to answer")


def runner_from_args(args: argparse.Namespace, desc: str, progress: bool = True) -> Any:
    """The :class:`~morphreg.workflows.runner.Runner` of the runner flags (checked, no connection yet)."""
    from ..workflows.runner import MAX_LOCAL_WORKERS, SCHEDULER_ENV, Runner

    text = str(args.workers).strip().lower()
    workers = None
    if text != "auto":
        try:
            workers = int(text)
        except ValueError:
            workers = 0
        if not 1 <= workers <= MAX_LOCAL_WORKERS:
            raise UserError(f"--workers {args.workers!r}: expected auto or an integer in [1, {MAX_LOCAL_WORKERS}] "
                            "(local worker processes; give --scheduler to use more machines)")
    scheduler = args.scheduler if args.scheduler is not None else os.environ.get(SCHEDULER_ENV)
    if scheduler is not None and not scheduler.strip():
        source = "--scheduler" if args.scheduler is not None else f"environment variable {SCHEDULER_ENV}"
        raise UserError(f"{source} is empty; give a Dask scheduler address such as tcp://HOST:8786")
    if scheduler and workers is not None:
        raise UserError("--workers starts workers on this machine, --scheduler uses a cluster's: give one of them "
                        f"(unset {SCHEDULER_ENV} to run locally)")
    return Runner(workers=workers, threads=args.threads, scheduler=args.scheduler,
                  connect_timeout=args.scheduler_timeout, progress=progress, desc=desc)
