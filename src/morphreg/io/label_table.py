"""Label tables: structure names and colours by label value, from a FreeSurfer LUT file.

A table is FreeSurfer's LUT format (``ID name R G B A`` per line, ``#`` comments); morphreg ships the
FreeSurfer names of the neurite-OASIS ``seg4``, ``seg24`` and ``seg35`` maps as package data.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import NamedTuple

#: Label tables shipped as package data (FreeSurfer LUT format).
BUILTIN_LABEL_TABLES = ("seg4", "seg24", "seg35")


class LabelTable(NamedTuple):
    """Structure names and colours by label value."""

    names: dict[int, str]
    colours: dict[int, tuple[float, float, float]]


def read_label_table(source: str | Path) -> LabelTable:
    """Read a FreeSurfer-style LUT (``ID name [R G B [A]]`` per line, ``#`` comments).

    Args:
        source: ``seg4``, ``seg24``, ``seg35`` (shipped tables) or a path to a table file.

    Raises:
        ValueError: no such file, or a line that is not ``ID name ...``.
    """
    if str(source) in BUILTIN_LABEL_TABLES:
        text = resources.files("morphreg").joinpath("labels", f"{source}.txt").read_text(encoding="utf-8")
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read label table '{source}' (give {', '.join(BUILTIN_LABEL_TABLES)} or a "
                             f"FreeSurfer LUT file): {str(err).splitlines()[0][:120]}") from None
    names: dict[int, str] = {}
    colours: dict[int, tuple[float, float, float]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            label = int(fields[0])
        except ValueError:
            raise ValueError(f"label table '{source}' line {number}: expected 'ID name [R G B A]', got "
                             f"{line.strip()[:60]!r}") from None
        if len(fields) < 2:
            raise ValueError(f"label table '{source}' line {number}: label {label} has no name")
        names[label] = fields[1]
        if len(fields) >= 5:
            colours[label] = tuple(min(max(float(v) / 255.0, 0.0), 1.0) for v in fields[2:5])  # type: ignore[misc]
    if not names:
        raise ValueError(f"label table '{source}' holds no labels")
    return LabelTable(names, colours)
