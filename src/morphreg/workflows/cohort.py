"""Registering a cohort: many pairs from a CSV with any method, on the runner, resumable.

Each row ``moving,fixed[,moving_seg,fixed_seg][,name]`` (paths relative to the CSV's folder)
gives ``OUT/<name>_moved.nii.gz`` and ``OUT/<name>_warp.nii.gz`` (plus ``_moved_seg.nii.gz``
with moving labels, ``_matrix.txt`` for affine alignment), ``<name>`` = the ``name`` cell, or
``<row>_<moving>_to_<fixed>``; ``extension=".nii"`` writes the images uncompressed (no gzip:
larger files, faster to write and read). Each row is one :class:`~morphreg.workflows.jobs.PairJob`; the
rows run on :mod:`morphreg.workflows.runner` (networks: a batch of rows per network pass).
``resume`` skips rows whose outputs all exist. A row that cannot be read or registered is
reported once, listed in ``OUT/cohort.csv`` (status ``error`` and the message), and the run goes
on; ``cohort.csv`` is written even when the run is interrupted (unfinished rows: ``pending``).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .. import io
from .jobs import JobStatus, PairJob, estimated_memory, write_status_table
from .outputs import OutputFormats, OutputPaths
from .runner import Runner, open_engine
from .spec import RegistrationSpec

COLUMNS = ("moving", "fixed", "moving_seg", "fixed_seg")
MATRIX_SUFFIX = {"ras": ".txt", "itk": ".tfm", "fsl": ".mat", "lta": ".lta"}
#: Extensions of a cohort's images and fields: gzip-compressed NIfTI (the default) or plain NIfTI.
OUTPUT_EXTENSIONS = (".nii.gz", ".nii")


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
        ValueError: the file is missing, unreadable, has no ``moving`` and ``fixed`` columns, or
            two rows give their outputs the same name.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot read pairs file '{path}': {str(err).splitlines()[0][:160]}") from None
    if "moving" not in header or "fixed" not in header:
        raise ValueError(f"pairs file '{path}' needs a header with columns moving,fixed[,moving_seg,fixed_seg][,name]; "
                         f"found {header[:8]}")
    rows = []
    seen: dict[str, int] = {}
    for number, record in enumerate(raw, 1):
        paths = {key: path.parent / record[key].strip() for key in COLUMNS if (record.get(key) or "").strip()}
        stems = [io.split_ext(paths[k])[0] if k in paths else "missing" for k in ("moving", "fixed")]
        name = (record.get("name") or "").strip() or f"{number:04d}_{stems[0]}_to_{stems[1]}"
        if "/" in name or name in (".", ".."):
            raise ValueError(f"pairs file '{path}' line {number + 1}: name {name!r} must be a file name stem "
                             "without '/'")
        if name in seen:
            raise ValueError(f"pairs file '{path}' lines {seen[name] + 1} and {number + 1} both name their outputs "
                             f"{name!r}; each row needs its own name")
        seen[name] = number
        rows.append(CohortRow(number, paths, name))
    if not rows:
        raise ValueError(f"pairs file '{path}' has no rows")
    return rows


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
    inputs = {p.resolve(): (row.number, key) for row in rows for key, p in row.paths.items()}
    jobs = []
    names = tuple((k, k) for k in COLUMNS)
    for row in rows:
        paths = output_paths(out, row.name, matrix_format=formats.matrix_format if matrix else None,
                             extension=extension)
        if "moving_seg" not in row.paths:
            paths = replace(paths, moved_seg=None)
        for target in (paths.moved, paths.warp, paths.moved_seg, paths.matrix):
            if target is not None and Path(target).resolve() in inputs:
                line, key = inputs[Path(target).resolve()]
                raise ValueError(f"row {row.number}'s output '{target}' is the {key} input of row {line}; writing it "
                                 "would destroy the input, so give `out` another folder")
        cells = {k: str(v) for k, v in row.paths.items()}
        jobs.append(PairJob(row.number, row.name, cells.get("moving"), cells.get("fixed"), paths, spec,
                            replace(formats, names=None), cells.get("moving_seg"), cells.get("fixed_seg"),
                            input_names=names))
    return jobs


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
        resume: skip rows whose outputs all exist.
        report: one line per failed row.
        say: the runner's plan (one line).

    Returns:
        :class:`CohortSummary`; ``out/cohort.csv`` lists every row's status (``pending`` for the
        rows an interruption left unfinished).
    """
    out = Path(out)
    runner = runner or Runner()
    per_task = batch_size if jobs and jobs[0].spec.batchable else 1
    statuses: dict[int, JobStatus] = {}
    start = time.perf_counter()
    tasks = max(1, -(-sum(1 for j in jobs if not (resume and j.finished())) // per_task))
    memory = estimated_memory(jobs[0], per_task) if jobs else 0
    with open_engine(runner, tasks=tasks, memory_per_task=memory, batched=bool(jobs) and jobs[0].spec.batchable,
                     report=report, say=say) as engine:
        out.mkdir(parents=True, exist_ok=True)
        try:
            engine.run_jobs(jobs, batch_size=per_task, resume=resume,
                            on_status=lambda status: statuses.__setitem__(status.row, status))
        finally:
            write_status_table(out / "cohort.csv", jobs, statuses)
    counts = [sum(1 for s in statuses.values() if s.status == kind) for kind in ("done", "skipped", "error")]
    return CohortSummary(*counts, time.perf_counter() - start)
