"""Registering a cohort: many pairs from a CSV with one network, in batches, resumable.

Each row ``moving,fixed[,moving_seg,fixed_seg]`` (paths relative to the CSV's folder) gives
``OUT/<name>_moved.nii.gz`` and ``OUT/<name>_warp.nii.gz`` (plus ``_moved_seg`` with labels),
``<name> = <row>_<moving>_to_<fixed>``. The moved image is written last, so its presence marks a
finished row; ``resume`` skips those. A row that cannot be read or registered is reported in
``OUT/cohort.csv`` (status ``error`` and the message) and skipped; the run goes on.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import io, spatial
from .files import PairOnGrid, check_finite_field, load_pair, network_input
from .pipeline import Registration

COLUMNS = ("moving", "fixed", "moving_seg", "fixed_seg")


@dataclass
class CohortRow:
    """One CSV row: its number (1 = first data row), paths and output stem."""

    number: int
    paths: dict[str, Path]
    name: str


@dataclass
class CohortSummary:
    """What a cohort run did."""

    done: int
    skipped: int
    failed: int
    seconds: float


def read_cohort_csv(path: str | Path) -> list[CohortRow]:
    """Rows of a cohort CSV; rows with empty ``moving``/``fixed`` cells are kept (they fail later, reported).

    Raises:
        ValueError: the file is missing, unreadable, or has no ``moving`` and ``fixed`` columns.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            raw = list(reader)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read pairs file '{path}': {str(err).splitlines()[0][:160]}") from None
    if "moving" not in header or "fixed" not in header:
        raise ValueError(f"pairs file '{path}' needs a header with columns moving,fixed[,moving_seg,fixed_seg]; "
                         f"found {header}")
    rows = []
    for number, record in enumerate(raw, 1):
        paths = {key: path.parent / record[key].strip() for key in COLUMNS if (record.get(key) or "").strip()}
        stems = [io.split_ext(paths[k])[0] if k in paths else "missing" for k in ("moving", "fixed")]
        rows.append(CohortRow(number, paths, f"{number:04d}_{stems[0]}_to_{stems[1]}"))
    if not rows:
        raise ValueError(f"pairs file '{path}' has no rows")
    return rows


def output_paths(out: Path, name: str) -> dict[str, Path]:
    return {"moved": out / f"{name}_moved.nii.gz", "warp": out / f"{name}_warp.nii.gz",
            "moved_seg": out / f"{name}_moved_seg.nii.gz"}


def _load(row: CohortRow) -> PairOnGrid:
    if "moving" not in row.paths or "fixed" not in row.paths:
        raise ValueError("the moving or fixed cell is empty")
    names = {k: k for k in COLUMNS}
    return load_pair(row.paths["moving"], row.paths["fixed"], row.paths.get("moving_seg"), row.paths.get("fixed_seg"),
                     names=names)


def _batches(items: list[tuple[CohortRow, PairOnGrid]], size: int) -> Iterator[list[tuple[CohortRow, PairOnGrid]]]:
    """Consecutive runs of pairs of one shape, at most ``size`` each."""
    batch: list[tuple[CohortRow, PairOnGrid]] = []
    for item in items:
        if batch and (len(batch) == size or item[1].fixed.shape != batch[0][1].fixed.shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def register_cohort(
    rows: list[CohortRow],
    out: str | Path,
    register: Registration,
    *,
    normalise: str | None,
    batch_size: int = 8,
    resume: bool = False,
    warp_units: str = "voxel",
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> CohortSummary:
    """Register every row with ``register`` (``(B, 1, *s), (B, 1, *s) -> RegistrationOutput``) and write its outputs.

    Args:
        rows: from :func:`read_cohort_csv`.
        out: output folder (created).
        register: a batched registration (a network).
        normalise: intensity normalisation of the network inputs.
        batch_size: pairs per forward pass (pairs of one grid shape are batched together).
        resume: skip rows whose moved image exists already.
        warp_units: units of the written fields (``voxel`` or ``mm``).
        progress: show a progress bar with the number of rows as its total.
        report: where one line per failed row goes.

    Returns:
        :class:`CohortSummary`; ``out/cohort.csv`` lists every row's status.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    status: dict[int, tuple[str, str]] = {}
    start = time.perf_counter()
    todo = []
    for row in rows:
        if resume and output_paths(out, row.name)["moved"].exists():
            status[row.number] = ("skipped", "finished in an earlier run")
        else:
            todo.append(row)
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), disable=not progress, unit="pair", desc="register")

    def fail(row: CohortRow, err: BaseException) -> None:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        status[row.number] = ("error", message)
        report(f"row {row.number} ({row.name}): {message}; skipped")
        bar.update(1)

    chunk = max(batch_size, 1) * 4  # read a few batches ahead, not the whole cohort
    for first in range(0, len(todo), chunk):
        loaded = []
        for row in todo[first:first + chunk]:
            try:
                loaded.append((row, _load(row)))
            except (ValueError, OSError, MemoryError) as err:
                fail(row, err)
        for batch in _batches(loaded, batch_size):
            try:
                moving = torch.cat([network_input(p.moving, normalise) for _, p in batch])
                fixed = torch.cat([network_input(p.fixed, normalise) for _, p in batch])
                disp = register(moving, fixed).disp.detach().float().cpu()
                check_finite_field(disp)
            except (ValueError, RuntimeError, FloatingPointError) as err:
                for row, _ in batch:
                    fail(row, err)
                continue
            for index, (row, pair) in enumerate(batch):
                try:
                    _write(out, row, pair, disp[index:index + 1], warp_units)
                    status[row.number] = ("done", "")
                except (ValueError, OSError, RuntimeError) as err:
                    fail(row, err)
                    continue
                bar.update(1)
    bar.close()
    lines = [["row", "name", "status", "message"]] + [[str(r.number), r.name, *status.get(r.number, ("error", ""))]
                                                       for r in rows]
    io.save_text("\n".join(_csv_line(line) for line in lines) + "\n", out / "cohort.csv")
    counts = [sum(1 for s, _ in status.values() if s == kind) for kind in ("done", "skipped", "error")]
    return CohortSummary(*counts, time.perf_counter() - start)


def _csv_line(cells: list[str]) -> str:
    return ",".join('"' + c.replace('"', '""') + '"' if ("," in c or '"' in c) else c for c in cells)


def _write(out: Path, row: CohortRow, pair: PairOnGrid, disp: torch.Tensor, warp_units: str) -> None:
    paths = output_paths(out, row.name)
    io.save_warp(disp[0], paths["warp"], pair.fixed.affine, units=warp_units, header=pair.fixed.header)
    if pair.moving_seg is not None:
        moved_seg = io.from_tensor(spatial.warp(io.to_tensor(pair.moving_seg), disp, mode="nearest"), pair.fixed)
        moved_seg.data = moved_seg.data.astype(pair.moving_seg.data.dtype)
        io.save_volume(moved_seg, paths["moved_seg"])
    moved = spatial.warp(io.to_tensor(pair.moving).float(), disp)
    io.save_volume(io.from_tensor(moved, pair.fixed), paths["moved"])  # last: marks the row as finished
