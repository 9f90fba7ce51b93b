"""Registering a cohort: many pairs from a CSV with any method, on the runner, resumable.

Each row ``moving,fixed[,moving_seg,fixed_seg][,name]`` (paths relative to the CSV's folder)
gives ``OUT/<name>_moved.nii.gz`` and ``OUT/<name>_warp.nii.gz`` (plus ``_moved_seg.nii.gz``
with moving labels, ``_matrix.txt`` for affine alignment), ``<name>`` = the ``name`` cell, or
``<row>_<moving>_to_<fixed>``; ``extension=".nii"`` writes the images uncompressed (no gzip:
larger files, faster to write and read). Each row is one :class:`~morphreg.workflows.jobs.PairJob`; the
rows run on :mod:`morphreg.workflows.runner` (networks: a batch of rows per network pass).
The run's settings go to ``OUT/cohort.json`` first; ``resume`` continues a run with the same
settings (``OUT`` must be new or empty otherwise) and skips rows whose outputs all exist. A row
that cannot be read or registered is reported once, listed in ``OUT/cohort.csv`` (status
``error`` and the message), and the run goes on; ``cohort.csv`` lists every row from the start
(``pending`` until the row finishes), so an interrupted or killed run shows what is left.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .. import io
from ..data.pairs_csv import read_csv_text
from .jobs import JobStatus, PairJob, estimated_memory, write_status_table
from .outputs import OutputFormats, OutputPaths
from .run_folder import as_json, check_run_folder, write_settings
from .runner import Runner, open_engine
from .spec import RegistrationSpec

COLUMNS = ("moving", "fixed", "moving_seg", "fixed_seg")
#: The settings of a cohort run in its folder (checked by ``resume``).
SETTINGS = "cohort.json"
#: The longest file name most file systems take (bytes).
NAME_MAX = 255
MATRIX_SUFFIX = {"ras": ".txt", "itk": ".tfm", "fsl": ".mat", "lta": ".lta"}
#: Extensions of a cohort's images and fields: gzip-compressed NIfTI (the default) or plain NIfTI.
OUTPUT_EXTENSIONS = (".nii.gz", ".nii")


@dataclass
class CohortRow:
    """One CSV row: its number (1 = first data row), its cells' paths (strings, relative ones joined to
    the CSV's folder) by column, and its output stem."""

    number: int
    paths: dict[str, str]
    name: str


@dataclass
class CohortSummary:
    """What a cohort run did."""

    done: int
    skipped: int
    failed: int
    seconds: float


def read_cohort_csv(path: str | Path) -> list[CohortRow]:
    """Rows of a cohort CSV, checked as a whole before any row runs.

    A row whose files are missing is kept (it fails when it runs, reported, and the other rows
    go on), but a CSV none of whose rows names an existing moving and fixed image is refused:
    its paths are relative to another folder, or it is not a cohort. The checks take strings,
    not :class:`pathlib.Path` objects, so that a CSV of 10^5 rows is read in about a second.

    Raises:
        ValueError: the file is missing, not UTF-8 text, holds a NUL byte, has no ``moving``
            and ``fixed`` columns or no rows; a row's name is not a file name stem or makes an
            output name longer than the file system allows; two rows give their outputs the same
            name; no row's moving and fixed images exist.
    """
    path = Path(path)
    text = read_csv_text(path)
    try:
        reader = csv.DictReader(text.splitlines())
        header = [h.strip() for h in (reader.fieldnames or [])]
        raw = list(reader)
    except csv.Error as err:
        raise ValueError(f"pairs file '{path}' is not a readable CSV: {str(err).splitlines()[0][:160]}") from None
    if "moving" not in header or "fixed" not in header:
        raise ValueError(f"pairs file '{path}' needs a header with columns moving,fixed[,moving_seg,fixed_seg][,name]; "
                         f"found {header[:8]}")
    folder = str(path.parent)
    rows = []
    seen: dict[str, int] = {}
    for number, record in enumerate(raw, 1):
        record = {(k or "").strip(): (v or "").strip() for k, v in record.items() if k is not None}
        cells = {key: record[key] if record[key].startswith("/") else f"{folder}/{record[key]}" for key in COLUMNS
                 if record.get(key)}
        stems = [io.split_ext(cells[k])[0] if k in cells else "missing" for k in ("moving", "fixed")]
        name = record.get("name") or f"{number:04d}_{stems[0]}_to_{stems[1]}"
        _check_name(path, number, name)
        if name in seen:
            raise ValueError(f"pairs file '{path}' lines {seen[name] + 1} and {number + 1} both name their outputs "
                             f"{name!r}; each row needs its own name")
        seen[name] = number
        rows.append(CohortRow(number, cells, name))
    if not rows:
        raise ValueError(f"pairs file '{path}' has no rows")
    _check_some_row_runs(path, rows)
    return rows


#: The longest output suffix of a row, and what the atomic writer adds to a name (``.NAME.1a2b3c4d.tmp``).
_LONGEST_SUFFIX = "_moved_seg.nii.gz"
_TEMPORARY_EXTRA = len("..12345678.tmp")


def _check_name(path: Path, number: int, name: str) -> None:
    if "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"pairs file '{path}' line {number + 1}: name {name!r} must be a file name stem "
                         "without '/'")
    longest = len((name + _LONGEST_SUFFIX).encode("utf-8")) + _TEMPORARY_EXTRA
    if longest > NAME_MAX:
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise ValueError(f"pairs file '{path}' line {number + 1}: name {shown!r} ({len(name)} characters) makes "
                         f"output names longer than the {NAME_MAX} bytes a file name may have; give the rows "
                         "shorter names (a name column)")


def _check_some_row_runs(path: Path, rows: list[CohortRow]) -> None:
    """Refuse a CSV none of whose rows can run (stops at the first row that can)."""
    for row in rows:
        if all(key in row.paths and os.path.exists(row.paths[key]) for key in ("moving", "fixed")):
            return  # (a folder may be a DICOM series)
    first = rows[0]
    key = next((k for k in ("moving", "fixed") if k not in first.paths or not os.path.exists(first.paths[k])),
               "moving")
    problem = "is empty" if key not in first.paths else f"'{first.paths[key]}' does not exist"
    raise ValueError(f"pairs file '{path}': none of its {len(rows)} row(s) names an existing moving and fixed "
                     f"image (line 2: {key} {problem}); paths are relative to the CSV's folder")


def _check_extension(extension: str) -> None:
    if extension not in OUTPUT_EXTENSIONS:
        raise ValueError(f"`extension` must be one of {', '.join(OUTPUT_EXTENSIONS)}, got {extension!r}")


def output_paths(out: Path, name: str, *, matrix_format: str | None = None, extension: str = ".nii.gz") -> OutputPaths:
    """The files of row ``name`` in ``out`` (a matrix when ``matrix_format`` is given; images and
    fields ending in ``extension``, one of :data:`OUTPUT_EXTENSIONS`)."""
    _check_extension(extension)
    matrix = out / f"{name}_matrix{MATRIX_SUFFIX[matrix_format]}" if matrix_format else None
    return OutputPaths(out / f"{name}_moved{extension}", out / f"{name}_warp{extension}",
                       out / f"{name}_moved_seg{extension}", matrix)


def cohort_jobs(rows: list[CohortRow], out: str | Path, spec: RegistrationSpec,
                formats: OutputFormats | None = None, *, matrix: bool = False,
                extension: str = ".nii.gz") -> list[PairJob]:
    """One :class:`PairJob` per row, writing into ``out`` (``matrix``: also the affine matrix;
    ``extension``: ``.nii.gz`` or ``.nii`` images and fields, see :func:`output_paths`).

    Raises:
        ValueError: a row's output is one of the rows' inputs; an unknown ``extension``.
    """
    _check_extension(extension)
    out = Path(out)
    formats = formats or OutputFormats()
    real = _real_paths()
    inputs = {real(p): (row.number, key) for row in rows for key, p in row.paths.items()}
    jobs = []
    names = tuple((k, k) for k in COLUMNS)
    for row in rows:
        paths = output_paths(out, row.name, matrix_format=formats.matrix_format if matrix else None,
                             extension=extension)
        if "moving_seg" not in row.paths:
            paths = replace(paths, moved_seg=None)
        for target in (paths.moved, paths.warp, paths.moved_seg, paths.matrix):
            if target is not None and real(target) in inputs:
                line, key = inputs[real(target)]
                raise ValueError(f"row {row.number}'s output '{target}' is the {key} input of row {line}; writing it "
                                 "would destroy the input, so give `out` another folder")
        cells = {k: str(v) for k, v in row.paths.items()}
        jobs.append(PairJob(row.number, row.name, cells.get("moving"), cells.get("fixed"), paths, spec,
                            replace(formats, names=None), cells.get("moving_seg"), cells.get("fixed_seg"),
                            input_names=names))
    return jobs


def _real_paths() -> Callable[[str | Path], str]:
    """``path -> its real path``, resolving each folder once (a cohort's files share few folders)."""
    folders: dict[str, str] = {}

    def real(path: str | Path) -> str:
        folder, name = os.path.split(os.fspath(path))
        if folder not in folders:
            folders[folder] = os.path.realpath(folder or ".")
        return os.path.join(folders[folder], name)

    return real


def cohort_settings(spec: RegistrationSpec, formats: OutputFormats, matrix: bool) -> dict[str, Any]:
    """What a resumed cohort must share with the run it continues: the registration and the output formats."""
    registration = asdict(spec)
    for where in ("device", "progress"):  # where and how visibly it runs does not change the result
        registration.pop(where)
    for kind in ("matrix", "warp"):  # how an initial transform is read matters only with one
        if registration[f"init_{kind}"] is None:
            registration.pop(f"init_{kind}_format")
    return as_json({"registration": registration,
                    "outputs": {"warp_format": formats.warp_format, "warp_units": formats.warp_units,
                                "matrix": formats.matrix_format if matrix else None}})


def check_cohort_folder(out: str | Path, settings: dict[str, Any], resume: bool) -> None:
    """``out`` is new or empty, or (``resume``) the folder of a cohort run with these settings.

    Raises:
        ValueError: see :func:`~.run_folder.check_run_folder`.
    """
    check_run_folder(out, SETTINGS, settings, resume, what="a cohort run (register --pairs)")


def register_cohort(
    jobs: list[PairJob],
    out: str | Path,
    runner: Runner | None = None,
    *,
    batch_size: int = 8,
    resume: bool = False,
    report: Callable[[str], None] = print,
    say: Callable[[str], None] = print,
) -> CohortSummary:
    """Run every job on ``runner`` and write ``out/cohort.csv`` (one status row per job).

    Args:
        jobs: from :func:`cohort_jobs`.
        out: output folder (created once the runner is up: a scheduler that cannot be reached
            leaves nothing behind).
        runner: where the rows run (default: chosen from this machine's cores and memory).
        batch_size: rows per task for a plain network (one forward pass); other methods run one
            row per task.
        resume: continue the run in ``out`` (its ``cohort.json`` must hold the same settings):
            skip rows whose outputs all exist. Without it ``out`` must be new or empty.
        report: one line per failed row.
        say: the runner's plan (one line).

    Returns:
        :class:`CohortSummary`; ``out/cohort.csv`` lists every row's status (``pending`` for the
        rows an interruption left unfinished).

    Raises:
        ValueError: ``out`` cannot hold this run (:func:`~.run_folder.check_run_folder`).
    """
    out = Path(out)
    settings = cohort_settings(jobs[0].spec, jobs[0].formats, jobs[0].outputs.matrix is not None) if jobs else {}
    check_cohort_folder(out, settings, resume)
    runner = runner or Runner()
    per_task = batch_size if jobs and jobs[0].spec.batchable else 1
    statuses: dict[int, JobStatus] = {}
    start = time.perf_counter()
    tasks = max(1, -(-sum(1 for j in jobs if not (resume and j.finished())) // per_task))
    memory = estimated_memory(jobs[0], per_task) if jobs else 0
    with open_engine(runner, tasks=tasks, memory_per_task=memory, batched=bool(jobs) and jobs[0].spec.batchable,
                     report=report, say=say) as engine:
        write_settings(out, SETTINGS, settings)  # first: a run killed from now on can be resumed
        write_status_table(out / "cohort.csv", jobs, {})  # every row pending, until the run says more
        try:
            engine.run_jobs(jobs, batch_size=per_task, resume=resume,
                            on_status=lambda status: statuses.__setitem__(status.row, status))
        finally:
            write_status_table(out / "cohort.csv", jobs, statuses)
    counts = [sum(1 for s in statuses.values() if s.status == kind) for kind in ("done", "skipped", "error")]
    return CohortSummary(*counts, time.perf_counter() - start)
