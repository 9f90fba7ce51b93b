"""Running a list of independent jobs: in this process, on local worker processes, or on a Dask
cluster, with one progress bar.

The API is small::

    runner = Runner(workers=None, scheduler=None)        # options (picklable, no connection)
    with open_engine(runner, tasks=len(jobs), memory_per_task=...) as engine:
        statuses = engine.run_jobs(jobs, batch_size=8, resume=True, on_status=...)
        results = engine.map(function, items)            # any picklable function, e.g. a template step
    statuses = run_jobs(jobs, runner)                    # the two in one call

* **In process** when one worker is enough (one task, or the memory allows one).
* **Local worker processes** (``workers`` > 1): a ``dask.distributed.LocalCluster`` of
  single-threaded worker processes (each job uses ``threads`` torch threads), sized by the cores
  and the memory budget (:func:`plan_local`); what was chosen is reported.
* **A Dask scheduler** (``scheduler``, or the environment variable :data:`SCHEDULER_ENV`):
  the tasks go to its workers (a SLURM/PBS cluster through dask-jobqueue, or ``dask worker``
  processes started by hand). No connection is attempted for the other modes, and Dask is
  imported only when one of the two distributed modes starts.

Faults: a worker lost mid-task has its task rerun elsewhere by Dask, at most
``allowed_failures`` times (then its rows are reported as failed); the jobs never raise for
their own failures (:func:`morphreg.workflows.jobs.run_pair_job`), so a bad row is reported
once and never retried. Networks run a batch of rows per task (one forward pass); in this
process the batches are pipelined (:func:`morphreg.workflows.jobs.run_network_tasks`).
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from .._limits import format_bytes, memory_limit
from .jobs import JobStatus, estimated_memory, first_line, network_batch, run_batch, run_network_tasks

#: Environment variable naming the Dask scheduler when ``Runner.scheduler`` is not given.
SCHEDULER_ENV = "MORPHREG_SCHEDULER"
#: Most local worker processes (beyond this, use a scheduler on several machines).
MAX_LOCAL_WORKERS = 1024
#: Failed rows reported one line each; the rest are only counted (a CSV of 10^5 bad rows is not 10^5 lines).
MAX_REPORTED_FAILURES = 20
#: Tasks estimated below this many bytes (2D images) run in this process unless workers are asked for.
AUTO_MIN_TASK_BYTES = 10**9


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@dataclass(frozen=True)
class Runner:
    """How to run a list of jobs.

    Attributes:
        workers: local worker processes (``None``: chosen from the cores and the memory budget;
            1: this process).
        threads: torch threads per job (``None``: the cores divided among the local workers;
            1 per job on a scheduler's workers, whose ``--nthreads`` set the parallelism).
        scheduler: a Dask scheduler address (``tcp://host:8786``) or a scheduler file
            (``.json``); ``None``: :data:`SCHEDULER_ENV` if set, else local.
        memory_budget: bytes the local workers may use together (``None``: the available
            memory, within :func:`morphreg._limits.memory_limit`).
        allowed_failures: how many times a task whose worker died is rerun (local clusters;
            a scheduler keeps its own ``distributed.scheduler.allowed-failures``).
        connect_timeout: seconds to wait for the scheduler.
        progress: one progress bar over all rows on stderr.
        desc: the bar's label.
    """

    workers: int | None = None
    threads: int | None = None
    scheduler: str | None = None
    memory_budget: int | None = None
    allowed_failures: int = 2
    connect_timeout: float = 10.0
    progress: bool = True
    desc: str = "register"

    def __post_init__(self) -> None:
        if self.workers is not None and not 1 <= self.workers <= MAX_LOCAL_WORKERS:
            raise ValueError(f"`workers` must be an integer in [1, {MAX_LOCAL_WORKERS}] (local worker processes; "
                             f"use `scheduler` for more machines), got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"`threads` must be an integer >= 1, got {self.threads}")

    def scheduler_address(self) -> str | None:
        """The scheduler to use: the field, else the environment variable, else ``None``."""
        return self.scheduler or os.environ.get(SCHEDULER_ENV) or None


@dataclass(frozen=True)
class Plan:
    """What was chosen: ``mode`` ``process`` | ``local`` | ``cluster``, worker processes, torch
    threads per job, memory per task (bytes), and one line saying why."""

    mode: str
    workers: int
    threads: int
    memory_per_task: int
    reason: str


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int:
    """Bytes free for new work: ``MemAvailable`` of ``/proc/meminfo``, within the memory limit."""
    limit = memory_limit()
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return min(limit, int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return limit


def plan_local(runner: Runner, tasks: int, memory_per_task: int, *, n_cores: int | None = None,
               memory: int | None = None) -> Plan:
    """Worker processes and threads for ``tasks`` tasks of ``memory_per_task`` bytes each.

    ``N = min(workers or cores, memory // memory_per_task, tasks)`` (at least 1) and
    ``threads = runner.threads or max(1, cores // N)``. ``n_cores``/``memory`` replace the
    machine's (tests).
    """
    n_cores = n_cores or cores()
    budget = runner.memory_budget or memory or int(0.9 * available_memory())
    by_memory = max(1, budget // max(memory_per_task, 1))
    wanted = runner.workers or n_cores
    workers = max(1, min(wanted, by_memory, tasks))
    threads = runner.threads or max(1, n_cores // workers)
    why = [f"{n_cores} cores", f"{format_bytes(budget)} memory free, ~{format_bytes(memory_per_task)} per task",
           f"{tasks} task(s)"]
    if runner.workers and workers < runner.workers:
        bound = "memory" if by_memory < min(runner.workers, tasks) else "tasks"
        why.append(f"--workers {runner.workers} lowered to {workers} by the {bound}")
    mode = "process" if workers == 1 else "local"
    where = "in this process" if mode == "process" else f"{workers} worker processes"
    return Plan(mode, workers, threads, memory_per_task,
                f"{where}, {threads} thread(s) each ({'; '.join(why)})")


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _run_task(task: Sequence[Any], threads: int | None, resume: bool) -> list[JobStatus]:
    """What a worker runs: a batch of jobs with ``threads`` torch threads."""
    _set_threads(threads)
    return run_batch(task, resume)


def _run_in_process(tasks: list[list[Any]], threads: int | None, record: Callable[[JobStatus], None]) -> None:
    """Every task here: network batches pipelined (:func:`~.jobs.run_network_tasks`: the next batch
    read and the last one written while one goes through the network), other tasks one by one."""
    _set_threads(threads)
    if tasks and all(network_batch(task) for task in tasks):
        run_network_tasks(tasks, on_status=record)
        return
    for task in tasks:
        for status in run_batch(task, False):
            record(status)


def _call(function: Callable[[Any], Any], item: Any, threads: int | None) -> Any:
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return function(item)


def _quiet_dask() -> None:
    """Dask logs to stderr through ``logging``; keep warnings of lost workers out of the one-line
    error contract (the run reports what matters itself)."""
    for name in ("distributed", "distributed.client", "distributed.core", "distributed.comm", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class Engine:
    """A started runner: this process, a local cluster, or a connection to a scheduler."""

    def __init__(self, runner: Runner, plan: Plan, client: Any = None, report: Callable[[str], None] = _stderr):
        self.runner, self.plan, self.client, self.report = runner, plan, client, report

    def _threads(self) -> int | None:
        if self.plan.mode == "process":
            return self.runner.threads
        return self.plan.threads

    def _submit(self, function: Callable[..., Any], items: Sequence[Any], *args: Any) -> list[Any]:
        token = uuid.uuid4().hex[:8]
        return [self.client.submit(function, item, *args, key=f"morphreg-{self.runner.desc}-{i}-{token}", pure=False)
                for i, item in enumerate(items)]

    def run_jobs(self, jobs: Sequence[Any], *, batch_size: int = 1, resume: bool = False,
                 on_status: Callable[[JobStatus], None] | None = None) -> list[JobStatus]:
        """Run every job; returns their statuses in job order.

        Args:
            jobs: :class:`~morphreg.workflows.jobs.PairJob` or any object with ``row``, ``name``,
                ``finished()`` and ``run(resume) -> JobStatus``.
            batch_size: jobs per task (networks: one forward pass per task); consecutive jobs.
            resume: jobs whose outputs all exist are skipped (here, before any task is sent).
            on_status: called once per job as its status arrives (in this process).
        """
        from tqdm.auto import tqdm

        statuses: dict[int, JobStatus] = {}
        todo = []
        for job in jobs:
            if resume and hasattr(job, "remove_leftovers"):
                job.remove_leftovers()  # a killed earlier run's hidden temporaries (no writer runs now)
            if resume and job.finished():
                statuses[job.row] = JobStatus(job.row, job.name, "skipped", "finished in an earlier run")
            else:
                todo.append(job)
        tasks = [todo[i:i + max(batch_size, 1)] for i in range(0, len(todo), max(batch_size, 1))]
        bar = tqdm(total=len(jobs), initial=len(statuses), disable=not self.runner.progress, unit="pair",
                   desc=self.runner.desc, file=sys.stderr, dynamic_ncols=True)
        failed = 0
        for status in statuses.values():
            if on_status:
                on_status(status)

        def record(status: JobStatus) -> None:
            nonlocal failed
            if status.row in statuses:
                return  # a row counts once
            statuses[status.row] = status
            if status.status == "error":
                failed += 1
                bar.set_postfix(failed=failed, refresh=False)
                bar.clear()
                if failed <= MAX_REPORTED_FAILURES:
                    self.report(f"row {status.row} ({status.name}): {status.message}; skipped")
                if failed == MAX_REPORTED_FAILURES:
                    self.report(f"{MAX_REPORTED_FAILURES} rows failed; further failures are not printed (the status "
                                "table lists every row)")
            bar.update(1)
            if on_status:
                on_status(status)

        try:
            if self.client is None:
                _run_in_process(tasks, self._threads(), record)
            else:
                self._run_distributed(tasks, record)
        finally:
            bar.close()
        return [statuses[job.row] for job in jobs if job.row in statuses]

    def _run_distributed(self, tasks: list[list[Any]], record: Callable[[JobStatus], None]) -> None:
        from distributed import as_completed

        futures = self._submit(_run_task, tasks, self._threads(), False)
        index = {future.key: i for i, future in enumerate(futures)}
        try:
            for future in as_completed(futures, loop=self.client.loop):
                try:
                    results = future.result()
                except Exception as err:  # noqa: BLE001 - KilledWorker after allowed failures, a lost scheduler
                    task = tasks[index[future.key]]
                    message = first_line(err)
                    if type(err).__name__ == "KilledWorker":
                        message = ("its worker died while running it, more often than allowed (killed, or out of "
                                   "memory?)")
                    results = [JobStatus(job.row, job.name, "error", message) for job in task]
                for status in results:
                    record(status)
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()

    def map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[function(item) for item in items]`` on the engine, in order (``function`` and the items
        must pickle). The first exception is raised, after the other tasks are cancelled."""
        from tqdm.auto import tqdm

        items = list(items)
        with tqdm(total=len(items), disable=not self.runner.progress, desc=self.runner.desc,
                  file=sys.stderr) as bar:
            if self.client is None:
                results = []
                for item in items:
                    results.append(_call(function, item, self._threads()))
                    bar.update(1)
                return results
            futures = self._submit(_call, items, function, self._threads())
            try:
                for future in futures:
                    future.add_done_callback(lambda _: bar.update(1))
                return self.client.gather(futures)
            finally:
                for future in futures:
                    if not future.done():
                        future.cancel()


def _connect(address: str, timeout: float) -> Any:
    _quiet_dask()
    from distributed import Client

    source = "`scheduler`" if address != os.environ.get(SCHEDULER_ENV) else f"environment variable {SCHEDULER_ENV}"
    kwargs: dict[str, Any] = {"timeout": f"{timeout}s", "set_as_default": False}
    if address.endswith(".json"):
        kwargs["scheduler_file"] = address
        if not os.path.isfile(address):
            raise ValueError(f"{source} '{address}': no such scheduler file (dask scheduler --scheduler-file "
                             "writes it)")
    else:
        kwargs["address"] = address
    if "address" in kwargs:
        _check_address(source, address)
    try:
        return Client(**kwargs)
    except Exception as err:  # noqa: BLE001 - OSError, TimeoutError, a transport that cannot start, ...
        raise ValueError(f"{source} '{address}': cannot connect to a Dask scheduler within {timeout:g} s "
                         f"({first_line(err)[:200]}); start one with `dask scheduler`, or leave it out to run "
                         "on this machine") from None


def _check_address(source: str, address: str) -> None:
    """Refuse an address Dask cannot parse (no port, an unknown scheme), before trying to connect."""
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls", "ws", "wss"):
            raise ValueError(f"the {scheme}:// transport does not reach a scheduler in another process here")
        parse_host_port(location)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source} '{address}' is not a Dask scheduler address ({first_line(err)[:160]}); give "
                         "tcp://HOST:PORT or the JSON file of `dask scheduler --scheduler-file`") from None


def _local_cluster(runner: Runner, plan: Plan) -> Any:
    _quiet_dask()
    import dask
    from distributed import Client, LocalCluster

    environ = {"OMP_NUM_THREADS": plan.threads, "MKL_NUM_THREADS": plan.threads}
    budget = runner.memory_budget or int(0.9 * available_memory())
    with dask.config.set({"distributed.scheduler.allowed-failures": runner.allowed_failures,
                          "distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=plan.workers, threads_per_worker=1, processes=True,
                               memory_limit=max(budget // plan.workers, plan.memory_per_task),
                               dashboard_address=None, host="127.0.0.1", silence_logs=logging.CRITICAL)
        return Client(cluster, set_as_default=False)


def plan_for(runner: Runner, tasks: int, memory_per_task: int, *, batched: bool = False) -> Plan:
    """The plan of a run (no connection): local, or ``cluster`` when a scheduler is named.

    Without ``runner.workers``, network tasks (``batched``) and small tasks (an estimate under
    :data:`AUTO_MIN_TASK_BYTES`: 2D images) run in this process: a network on one device uses
    its cores best from one process with every thread, and worker processes take seconds to
    start, more than a small job lasts. ``runner.workers`` forces them.
    """
    if not runner.workers and not runner.scheduler_address() and (batched or memory_per_task < AUTO_MIN_TASK_BYTES):
        runner = replace(runner, workers=1)
    if runner.scheduler_address():
        return Plan("cluster", 0, runner.threads or 1, memory_per_task, f"on the Dask scheduler "
                    f"{runner.scheduler_address()}, {runner.threads or 1} thread(s) per job")
    return plan_local(runner, tasks, memory_per_task)


@contextmanager
def open_engine(runner: Runner, *, tasks: int, memory_per_task: int, batched: bool = False,
                report: Callable[[str], None] = _stderr, say: Callable[[str], None] = print) -> Iterator[Engine]:
    """Start what ``runner`` asks for (and stop it after); ``say`` gets the plan in one line,
    ``report`` one line per failed row.

    Raises:
        ValueError: the scheduler cannot be reached (within ``runner.connect_timeout``).
    """
    plan = plan_for(runner, tasks, memory_per_task, batched=batched)
    client = None
    if plan.mode == "cluster":
        client = _connect(str(runner.scheduler_address()), runner.connect_timeout)
        info = client.scheduler_info()
        workers = info.get("workers", {})
        plan = Plan("cluster", len(workers), plan.threads, memory_per_task,
                    f"{plan.reason}: {len(workers)} worker(s), {sum(w.get('nthreads', 1) for w in workers.values())} "
                    "job slot(s) now")
    elif plan.mode == "local":
        client = _local_cluster(runner, plan)
    say(f"running {tasks} task(s) {plan.reason}")
    try:
        yield Engine(runner, plan, client, report)
    finally:
        if client is not None:
            cluster = client.cluster if plan.mode == "local" else None
            client.close()
            if cluster is not None:
                cluster.close()


def run_jobs(jobs: Sequence[Any], runner: Runner | None = None, *, batch_size: int = 1, resume: bool = False,
             report: Callable[[str], None] = _stderr, say: Callable[[str], None] = print) -> list[JobStatus]:
    """Run ``jobs`` with ``runner`` (default: chosen from this machine) and return their statuses."""
    runner = runner or Runner()
    jobs = list(jobs)
    tasks = -(-len(jobs) // max(batch_size, 1))
    memory = estimated_memory(jobs[0], batch_size) if jobs else 0
    batched = bool(jobs) and getattr(getattr(jobs[0], "spec", None), "batchable", False)
    with open_engine(runner, tasks=max(tasks, 1), memory_per_task=memory, batched=batched, report=report,
                     say=say) as engine:
        return engine.run_jobs(jobs, batch_size=batch_size, resume=resume)


def map_items(function: Callable[[Any], Any], items: Sequence[Any], runner: Runner | None = None, *,
              memory_per_item: int = 2_000_000_000, say: Callable[[str], None] = print) -> list[Any]:
    """``[function(item) for item in items]`` on ``runner`` (e.g. one template iteration)."""
    items = list(items)
    with open_engine(runner or Runner(), tasks=max(len(items), 1), memory_per_task=memory_per_item,
                     say=say) as engine:
        return engine.map(function, items)
