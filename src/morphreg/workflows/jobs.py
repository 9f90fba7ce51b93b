"""One registration job: load a pair -> register -> write its outputs -> one status row.

A cohort, an evaluation, an atlas segmentation and a template iteration are lists of such jobs;
:mod:`morphreg.workflows.runner` runs the list (in this process, on local worker processes or on
a Dask cluster). ``morphreg register`` with one pair calls :func:`register_job` too, so there is
one copy of "load, register, write".

* :class:`PairJob`: a picklable description (input files, :class:`~.outputs.OutputPaths`,
  :class:`~.outputs.OutputFormats`, :class:`~.spec.RegistrationSpec`).
* :func:`register_job`: runs it and raises on a bad input (the one-pair command);
  :func:`run_pair_job`: runs it and never raises, returning a :class:`JobStatus` (``done``,
  ``skipped`` with ``resume`` when every output exists, ``error`` with the message), so a
  row that fails for its own reasons is reported once and never retried by a scheduler.
* :func:`run_network_tasks`: batches of jobs sharing one plain network, pipelined in this
  process: while batch ``i`` goes through the network (one pass per grid shape, the model built
  once), batch ``i + 1`` is read in a background thread and the rows of batch ``i`` are finished
  and written by :data:`WRITER_THREADS` background threads (:mod:`concurrent.futures`; reading,
  gzip, ``fsync`` and most numpy/torch work release the GIL). :func:`run_network_batch` is the
  same for one batch (a Dask worker's task); :func:`run_batch` picks it for a list of jobs that
  share a plain network.

Every row ends in :func:`finish_job` (field checked, moving image and labels warped, Dice,
outputs written), the one-pair command included.

Every output is written atomically (:mod:`morphreg.io`), so a job killed mid-way leaves no
half-written file; rerunning it (after a lost worker, or with ``resume``) writes the same files.
"""

from __future__ import annotations

import csv
import math
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from .files import PairOnGrid, RegisteredPair, finish_registration, load_pair, network_input, run_timed
from .outputs import OutputFormats, OutputPaths, check_itk_plane, write_outputs
from .spec import RegistrationSpec

#: The statuses of a row (``pending``: not finished when the run stopped).
STATUSES = ("done", "skipped", "error", "pending")
#: Columns of a status table (``cohort.csv``).
STATUS_COLUMNS = ("row", "name", "status", "message", "seconds", "dice", "peak_memory_mb", "worker")
_RECOVERABLE = (ValueError, OSError, RuntimeError, FloatingPointError, MemoryError)
#: Background threads finishing and writing the rows of network batches (:func:`run_network_tasks`):
#: each output waits on the disk in ``fsync``, so a few writers keep the disk and the cores busy.
WRITER_THREADS = 4


@dataclass(frozen=True)
class JobStatus:
    """What one job did.

    Attributes:
        row: the job's row number (1 = first data row of a pairs CSV).
        name: its output stem.
        status: one of :data:`STATUSES`.
        message: why it failed or was skipped (one line).
        seconds: wall time of the job in its process (load, register, write).
        dice: mean Dice of the moved labels against the fixed labels, when both are given.
        peak_memory_mb: peak resident memory of the process that ran it, so far (MB).
        worker: where it ran (a Dask worker address, or empty in this process).
        extra: what the job computed beyond its files (an evaluation's scores; not a column).
    """

    row: int
    name: str
    status: str
    message: str = ""
    seconds: float = math.nan
    dice: float = math.nan
    peak_memory_mb: float = math.nan
    worker: str = ""
    extra: Any = field(default=None, compare=False, repr=False)

    def cells(self) -> list[str]:
        """The row of the status table."""
        def text(value: Any) -> str:
            if isinstance(value, float):
                return "" if math.isnan(value) else f"{value:.4g}"
            return str(value)

        return [text(getattr(self, name)) for name in STATUS_COLUMNS]


class Job(Protocol):
    """Anything the runner can run: a row number, a name, outputs, and ``run``."""

    row: int
    name: str

    def finished(self) -> bool: ...

    def run(self, resume: bool = False) -> JobStatus: ...


class JobResult(NamedTuple):
    """The pair as loaded and what its registration gave (:func:`register_job`)."""

    pair: PairOnGrid
    result: RegisteredPair


def _quiet(line: str) -> None:
    pass


def first_line(err: BaseException) -> str:
    """One line for a failed job: the message's first line, with the type for unexpected errors."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, MemoryError):
        return f"out of memory ({message or 'MemoryError'})"
    if not isinstance(err, _RECOVERABLE) or not message:
        return f"{type(err).__name__}: {message}".rstrip(": ")
    return message


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports kB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass(frozen=True)
class PairJob:
    """Register ``moving`` to ``fixed`` with ``spec`` and write ``outputs``.

    Attributes:
        row, name: the row number and output stem (for the status table).
        moving, fixed, moving_seg, fixed_seg: input files (``None`` for an empty CSV cell: the
            job fails with a message).
        outputs, formats: where and how to write (:func:`morphreg.workflows.outputs.write_outputs`).
        spec: the registration.
        key: the array of ``.npz`` images.
        resample: put a moving image on another grid onto the fixed one (else refuse the pair).
        input_names: how messages name the four inputs (see :func:`~.files.load_pair`).
    """

    row: int
    name: str
    moving: str | None
    fixed: str | None
    outputs: OutputPaths
    spec: RegistrationSpec
    formats: OutputFormats = field(default_factory=OutputFormats)
    moving_seg: str | None = None
    fixed_seg: str | None = None
    key: str | None = None
    resample: bool = True
    input_names: tuple[tuple[str, str], ...] = ()

    def output_files(self) -> list[Path]:
        """The files this job writes (the moved labels only with moving labels)."""
        paths = self.outputs
        names = [paths.moved, paths.warp, paths.matrix, paths.jacobian, paths.inverse_warp, paths.qc]
        if self.moving_seg:
            names.append(paths.moved_seg)
        return [Path(p) for p in names if p]

    def finished(self) -> bool:
        """Every output exists (each was written atomically, so it is complete)."""
        return all(p.exists() for p in self.output_files())

    def remove_leftovers(self) -> None:
        """Delete the hidden temporary files a killed run of this job left (call between runs)."""
        from .._files import leftover_temporaries

        for path in self.output_files():
            for leftover in leftover_temporaries(path):
                leftover.unlink(missing_ok=True)

    def run(self, resume: bool = False) -> JobStatus:
        return run_pair_job(self, resume=resume)


def load_job_pair(job: PairJob) -> PairOnGrid:
    """The job's pair on the fixed grid (``ValueError`` for an empty cell or a bad file)."""
    if not job.moving or not job.fixed:
        raise ValueError("the moving or fixed cell is empty")
    return load_pair(job.moving, job.fixed, job.moving_seg, job.fixed_seg, key=job.key, resample=job.resample,
                     names=dict(job.input_names) or None)


def _check_formats(job: PairJob, pair: PairOnGrid) -> None:
    formats, paths = job.formats, job.outputs
    if formats.warp_format == "itk" and (paths.warp or paths.inverse_warp) or \
            formats.matrix_format == "itk" and paths.matrix:
        check_itk_plane(pair)


def register_job(job: PairJob, *, device: torch.device | None = None,
                 report: Callable[[str], None] | None = None) -> JobResult:
    """Load, register and write one pair; raise on any failure (nothing is written before the
    registration succeeded, and every file is written atomically).

    Args:
        job: the pair and its outputs.
        device: where to register (default: the spec's).
        report: receives notes (a resampled moving image, a fixed-point inverse's residual).
    """
    report = report or _quiet
    pair = load_job_pair(job)
    _check_formats(job, pair)
    if pair.resampled:
        report("note: moving and fixed grids differ (shape or affine); the moving image was resampled onto the "
               "fixed grid through the affines")
    if job.spec.affine is None and job.spec.affine_first(pair):
        report(f"note: 3D grids differ: aligning affinely before --method {job.spec.method} (--no-affine to skip)")
    built = job.spec.build(pair, device, moving_path=job.moving, key=job.key)
    output, seconds = run_timed(built.registration, network_input(pair.moving, built.normalise),
                                network_input(pair.fixed, built.normalise))
    return JobResult(pair, finish_job(job, pair, output, seconds, report=report))


def finish_job(job: PairJob, pair: PairOnGrid, output: Any, seconds: float, *,
               report: Callable[[str], None] = _quiet) -> RegisteredPair:
    """The end of every job: :func:`~.files.finish_registration` of the registration's ``output``
    for ``pair`` (batch size 1: field checked, moving image and labels warped, Dice), then
    :func:`~.outputs.write_outputs` of ``job.outputs`` (each file atomically).

    Args:
        seconds: wall time of the registration (a share of a batched pass).

    Raises:
        FloatingPointError, ValueError, OSError: nothing was written for the failing output
            and the ones after it.
    """
    result = finish_registration(pair, output, seconds)
    write_outputs(pair, result, job.outputs, job.formats, moving_path=str(job.moving), fixed_path=str(job.fixed),
                  key=job.key, report=report)
    return result


def _mean_dice(result: RegisteredPair) -> float:
    return float(torch.nanmean(result.dice.per_label)) if result.dice is not None else math.nan


def _worker_name() -> str:
    if "distributed" not in sys.modules:
        return ""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except ValueError:  # not in a worker
        return ""


def job_status(job: Any, status: str, start: float, message: str = "", dice: float = math.nan) -> JobStatus:
    """The status of ``job`` (anything with ``row`` and ``name``) started at ``start`` (``perf_counter``)."""
    return JobStatus(job.row, job.name, status, message, time.perf_counter() - start, dice, peak_memory_mb(),
                     _worker_name())


def run_pair_job(job: PairJob, *, resume: bool = False) -> JobStatus:
    """Run ``job``; never raises for the job's own failures (the status says ``error`` and why).

    With ``resume``, a job whose outputs all exist is ``skipped``.
    """
    start = time.perf_counter()
    if resume and job.finished():
        return job_status(job, "skipped", start, "finished in an earlier run")
    try:
        result = register_job(job).result
    except Exception as err:  # noqa: BLE001 - any failure of this row is this row's status, never a retry
        return job_status(job, "error", start, first_line(err))
    return job_status(job, "done", start, dice=_mean_dice(result))


class _Loaded(NamedTuple):
    """A row read for a network batch: its job, its pair, the seconds reading took, and its
    network inputs (``(1, 1, *spatial)`` moving and fixed, normalised) once they are made."""

    job: PairJob
    pair: PairOnGrid
    seconds: float
    inputs: tuple[torch.Tensor, torch.Tensor] | None = None


def _network_key(job: PairJob, pair: PairOnGrid) -> tuple[RegistrationSpec, int]:
    return job.spec, pair.fixed.ndim


def _with_inputs(item: _Loaded, normalise: str | None) -> _Loaded:
    """``item`` with its network inputs (``ValueError`` for an image the normalisation refuses)."""
    start = time.perf_counter()
    inputs = network_input(item.pair.moving, normalise), network_input(item.pair.fixed, normalise)
    return item._replace(seconds=item.seconds + time.perf_counter() - start, inputs=inputs)


def _load_rows(jobs: Sequence[PairJob], resume: bool,
               normalisations: dict[Any, str | None]) -> tuple[list[JobStatus], list[_Loaded]]:
    """Read every row of a batch: the statuses of the rows that end here (``skipped`` with
    ``resume``, ``error`` for a bad input), and the pairs read, with their network inputs when
    ``normalisations`` (keyed by :func:`_network_key`) knows the network's normalisation."""
    statuses: list[JobStatus] = []
    loaded: list[_Loaded] = []
    for job in jobs:
        start = time.perf_counter()
        if resume and job.finished():
            statuses.append(job_status(job, "skipped", start, "finished in an earlier run"))
            continue
        try:
            pair = load_job_pair(job)
            _check_formats(job, pair)
            item = _Loaded(job, pair, time.perf_counter() - start)
            key = _network_key(job, pair)
            loaded.append(_with_inputs(item, normalisations[key]) if key in normalisations else item)
        except Exception as err:  # noqa: BLE001 - this row's status
            statuses.append(job_status(job, "error", start, first_line(err)))
    return statuses, loaded


def _by_shape(items: list[_Loaded]) -> list[list[_Loaded]]:
    groups: dict[tuple[int, ...], list[_Loaded]] = {}
    for item in items:
        groups.setdefault(tuple(item.pair.fixed.shape), []).append(item)
    return list(groups.values())


def _one_of(output: Any, index: int) -> Any:
    """Pair ``index`` of a batched :class:`~morphreg.models.RegistrationOutput` (batch size 1)."""
    return output._replace(**{name: value[index:index + 1] for name, value in output._asdict().items()
                              if isinstance(value, torch.Tensor)})


def _finish_row(item: _Loaded, output: Any, seconds: float, share: float) -> JobStatus:
    """:func:`finish_job` of one row of a batched pass (a writer thread), as a status; ``share``:
    its part of the pass's wall time, counted in the row's seconds with its reading."""
    start = time.perf_counter() - share - item.seconds
    try:
        result = finish_job(item.job, item.pair, output, seconds)
    except Exception as err:  # noqa: BLE001 - this row's status
        return job_status(item.job, "error", start, first_line(err))
    return job_status(item.job, "done", start, dice=_mean_dice(result))


def _prepare(loaded: list[_Loaded], built: dict[Any, Any], emit: Callable[[JobStatus], None]) -> list[_Loaded]:
    """The rows with their network inputs; the first batch of each network builds it (into
    ``built``) and makes its inputs here. A row that fails gets its status through ``emit``."""
    ready = []
    for item in loaded:
        start = time.perf_counter()
        try:
            key = _network_key(item.job, item.pair)
            if key not in built:
                built[key] = item.job.spec.build(item.pair)
            ready.append(item if item.inputs is not None else _with_inputs(item, built[key].normalise))
        except Exception as err:  # noqa: BLE001 - this row's status (a bad network: every row's)
            emit(job_status(item.job, "error", start - item.seconds, first_line(err)))
    return ready


def _network_pass(group: list[_Loaded], built: dict[Any, Any], writer: ThreadPoolExecutor,
                  emit: Callable[[JobStatus], None]) -> list[Future[JobStatus]]:
    """One forward pass over ``group`` (one grid shape), its rows handed to ``writer``; a failed
    pass is every row's status."""
    start = time.perf_counter()
    try:
        registration = built[_network_key(group[0].job, group[0].pair)].registration
        output, seconds = run_timed(registration, torch.cat([item.inputs[0] for item in group]),
                                    torch.cat([item.inputs[1] for item in group]))
    except Exception as err:  # noqa: BLE001 - the whole group's status
        for item in group:
            emit(job_status(item.job, "error", start - item.seconds, first_line(err)))
        return []
    share = (time.perf_counter() - start) / len(group)
    return [writer.submit(_finish_row, item, _one_of(output, k), seconds / len(group), share)
            for k, item in enumerate(group)]


def run_network_tasks(tasks: Sequence[Sequence[PairJob]], *, resume: bool = False,
                      on_status: Callable[[JobStatus], None] | None = None,
                      writers: int = WRITER_THREADS) -> list[JobStatus]:
    """Batches of jobs sharing one plain network (``spec.batchable``), pipelined in this process.

    While batch ``i`` goes through the network (the pairs of one grid shape in one pass, with
    the torch threads of this thread), batch ``i + 1`` is read in a background thread and the rows
    of batch ``i`` are finished and written (:func:`finish_job`) by ``writers`` background threads;
    the next pass waits until the rows of the batch before are written, so at most two batches
    are held. The network is built once per run (per spec and dimensionality). Results are
    those of :func:`register_job`, row by row; an input the network's normalisation refuses fails
    its row only.

    Args:
        tasks: the batches, in order.
        resume: rows whose outputs all exist are ``skipped``.
        on_status: called in this thread once per row as its status is known (a bad row when
            its batch is read, a written row once its batch's successor has gone through the
            network, or at the end).
        writers: background threads finishing and writing rows.

    Returns:
        every row's status, in the order they were known. Never raises for a row's own failure;
        on an interruption (``KeyboardInterrupt``) the rows being written are finished (every file
        is atomic), the queued ones are dropped (no status: ``pending``) and it re-raises.
    """
    statuses: list[JobStatus] = []

    def emit(status: JobStatus) -> None:
        statuses.append(status)
        if on_status:
            on_status(status)

    built: dict[Any, Any] = {}  # the registration of each (spec, ndim): the network is loaded once per run
    in_flight: list[Future[JobStatus]] = []
    reader = ThreadPoolExecutor(1, thread_name_prefix="morphreg-read")
    writer = ThreadPoolExecutor(max(1, writers), thread_name_prefix="morphreg-write")

    def read(index: int) -> Future[tuple[list[JobStatus], list[_Loaded]]] | None:
        if index >= len(tasks):
            return None
        return reader.submit(_load_rows, tasks[index], resume, {key: b.normalise for key, b in built.items()})

    try:
        upcoming = read(0)
        for index in range(len(tasks)):
            assert upcoming is not None
            ended, loaded = upcoming.result()
            for status in ended:
                emit(status)
            ready = _prepare(loaded, built, emit)
            upcoming = read(index + 1)  # read while this batch goes through the network
            earlier = len(in_flight)  # the rows of the batch before, written during this pass
            for group in _by_shape(ready):
                in_flight += _network_pass(group, built, writer, emit)
            for future in in_flight[:earlier]:
                emit(future.result())
            del in_flight[:earlier]
        while in_flight:
            emit(in_flight.pop(0).result())
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)  # an interruption: the rows being written finish
        for future in in_flight:
            if future.done() and not future.cancelled():
                emit(future.result())
    return statuses


def run_network_batch(jobs: Sequence[PairJob], *, resume: bool = False) -> list[JobStatus]:
    """Jobs sharing one plain network (``spec.batchable``): the pairs of one grid shape go through
    one forward pass, then each is finished and written as :func:`register_job` does (in
    :data:`WRITER_THREADS` background threads; :func:`run_network_tasks` with one batch)."""
    return sorted(run_network_tasks([jobs], resume=resume), key=lambda s: s.row)


def network_batch(jobs: Sequence[Any]) -> bool:
    """Whether ``jobs`` share one plain network (one forward pass for all of them)."""
    return bool(jobs) and all(isinstance(j, PairJob) and j.spec.batchable and j.spec == jobs[0].spec for j in jobs)


def run_batch(jobs: Sequence[Any], resume: bool = False) -> list[JobStatus]:
    """Run a batch of jobs in this process: one network pass when they share a plain network,
    else one job after the other. Never raises for the jobs' own failures."""
    jobs = list(jobs)
    if len(jobs) > 1 and network_batch(jobs):
        return run_network_batch(jobs, resume=resume)
    return [job.run(resume) for job in jobs]


def write_status_table(path: str | Path, jobs: Iterable[Any], statuses: dict[int, JobStatus]) -> None:
    """``path`` (a CSV, written atomically): one row per job in order, ``pending`` for the jobs
    without a status (the run stopped before they finished)."""
    from .._files import atomic_write

    rows = [statuses.get(job.row) or JobStatus(job.row, job.name, "pending", "not finished when the run stopped")
            for job in jobs]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(STATUS_COLUMNS)
            writer.writerows(status.cells() for status in rows)

    atomic_write(Path(path), write)


def estimated_memory(job: Any, batch: int = 1) -> int:
    """Bytes one task of ``batch`` such jobs needs, estimated from the fixed image's header.

    About 300 bytes per voxel for a classical registration (the greedy method on a 160 x 192 x
    224 brain: about 2 GB with the process), 600 per voxel and pair for a network pass, plus
    400 MB for the process (Python, torch).
    """
    voxels = 1_000_000
    path = getattr(job, "fixed", None)
    if path:
        try:
            from ..io.nifti import quiet_load

            voxels = math.prod(quiet_load(path)[0].shape[:3])
        except Exception:  # noqa: BLE001 - not a NIfTI/MGH, or unreadable: the job reports it; guess
            pass
    spec = getattr(job, "spec", None)
    per_voxel = 600 * batch if spec is not None and spec.method == "network" else 300
    return int(400e6 + per_voxel * voxels)
