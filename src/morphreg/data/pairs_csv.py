"""Read a CSV of registration pairs (moving, fixed and optional label maps), paths checked."""

from __future__ import annotations

import csv
import os
from pathlib import Path

PathLike = str | os.PathLike[str]
#: The columns of a pairs CSV (the last two optional).
PAIR_COLUMNS = ("moving", "fixed", "moving_seg", "fixed_seg")
#: The longest CSV line read (csv's own cell limit is 128 KiB, and a path is at most 4096 characters).
_MAX_CSV_CELL = 64 * 1024
_MAX_PATH = 4096


def read_pairs_csv(path: PathLike) -> list[dict[str, Path]]:
    """Read a CSV of registration pairs.

    Args:
        path: CSV with a header row naming columns ``moving,fixed`` and optionally
            ``moving_seg,fixed_seg`` (other columns are ignored). Relative paths are resolved
            against the CSV's folder.

    Returns:
        One dict per row with keys ``"moving"``, ``"fixed"`` (and ``"moving_seg"``,
        ``"fixed_seg"`` when those columns exist), values :class:`pathlib.Path`.

    Raises:
        ValueError: missing or empty file, no header, missing columns, empty cells, no rows,
            or a listed file that does not exist (the message names the CSV and the row).
    """
    fn = "morphreg.data.read_pairs_csv"
    path = Path(path)
    text = read_csv_text(path, fn)
    try:
        return _pairs_rows(fn, path, text)
    except csv.Error as err:
        raise ValueError(f"{fn}: pairs file '{path}' is not a readable CSV: {err}") from None


def read_csv_text(path: PathLike, fn: str = "") -> str:
    """The text of a CSV of file paths, refused with one line when it cannot be one.

    Args:
        path: the CSV.
        fn: the caller, named first in messages (none when empty).

    Raises:
        ValueError: missing or empty file, not UTF-8 (UTF-16 is named), a NUL byte, or a line
            longer than any row of paths (the line is named).
    """
    path = Path(path)
    where = f"{fn}: " if fn else ""
    if not path.is_file():
        raise ValueError(f"{where}pairs file '{path}' does not exist" if not path.exists() else
                         f"{where}pairs file '{path}' is not a regular file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        hint = " (it looks like UTF-16)" if path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ValueError(
            f"{where}pairs file '{path}' is not UTF-8 text{hint}: byte {err.start} cannot be decoded; save it as UTF-8"
        ) from None
    except OSError as err:
        raise ValueError(f"{where}cannot read pairs file '{path}': {err.strerror or err}") from None
    if not text.strip():
        raise ValueError(f"{where}pairs file '{path}' is empty")
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise ValueError(f"{where}pairs file '{path}' line {line} holds a NUL byte; it is not a text CSV")
    longest = max(text.splitlines(), key=len)
    if len(longest) > _MAX_CSV_CELL:
        number = text.splitlines().index(longest) + 1
        raise ValueError(
            f"{where}pairs file '{path}' line {number} is {len(longest)} characters long, more than the "
            f"{_MAX_CSV_CELL} a row of file paths may have"
        )
    return text


def _pairs_rows(fn: str, path: Path, text: str) -> list[dict[str, Path]]:
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("moving", "fixed") if c not in header]
    if missing:
        raise ValueError(
            f"{fn}: pairs file '{path}' must have a header row with columns moving,fixed"
            f"[,moving_seg,fixed_seg]; missing {missing}, found {header}"
        )
    seg_cols = [c for c in ("moving_seg", "fixed_seg") if c in header]
    if len(seg_cols) == 1:
        raise ValueError(
            f"{fn}: pairs file '{path}' has column {seg_cols[0]!r} but not its partner; give "
            "both moving_seg and fixed_seg or neither"
        )
    columns = ["moving", "fixed", *seg_cols]
    rows = []
    for number, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        entry = {}
        for col in columns:
            if not row.get(col):
                raise ValueError(f"{fn}: pairs file '{path}' line {number}: empty '{col}' cell")
            if len(row[col]) > _MAX_PATH:
                raise ValueError(
                    f"{fn}: pairs file '{path}' line {number}: the '{col}' cell is {len(row[col])} characters "
                    f"long, more than any file path ({_MAX_PATH})"
                )
            file = Path(row[col]).expanduser()
            if not file.is_absolute():
                file = path.parent / file
            if not file.exists():
                raise ValueError(
                    f"{fn}: pairs file '{path}' line {number}: {col} file '{file}' does not exist"
                )
            entry[col] = file
        rows.append(entry)
    if not rows:
        raise ValueError(f"{fn}: pairs file '{path}' has a header but no pairs")
    return rows
