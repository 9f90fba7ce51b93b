"""Process-wide OpenMP setting: on a machine already busy, threads sleep at the end of a parallel op.

PyTorch's CPU ops run their threads in OpenMP parallel regions (libgomp). At the end of each
region a thread that is done waits for the others, and by default it waits *actively*: it spins
for a while before sleeping. When the machine has more runnable threads than cores, the thread
it waits for is often descheduled, so the spinning thread burns its time slice (taking a core
from the very thread it waits for), and every parallel op can cost a scheduler time slice.
A network forward of ~50 parallel ops then took 30-640 ms instead of 10-20 ms at 2 threads on a
loaded 2-core machine, where ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once) kept it at 9-24 ms
(``benchmarks/speed/bench_forward_load.py``, ``docs/results/forward_load.md``).

libgomp reads its environment once, when it is loaded (by ``import torch``), so the choice must
be made before that: the command line calls :func:`wait_passively_if_busy` at start.
"""

from __future__ import annotations

import os
import sys

__all__ = ["wait_passively_if_busy"]

ENV_VAR = "OMP_WAIT_POLICY"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def wait_passively_if_busy() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when the 1-minute load average already fills every usable core.

    Left alone: a policy the user set (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``), a process that
    has already imported torch (too late to take effect), and platforms without a load average.
    Child processes (local workers) inherit the setting. Returns whether it was set.
    """
    if ENV_VAR in os.environ or "GOMP_SPINCOUNT" in os.environ or "torch" in sys.modules:
        return False
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - no load average (Windows)
        return False
    if load < _usable_cores():
        return False
    os.environ[ENV_VAR] = "PASSIVE"
    return True
