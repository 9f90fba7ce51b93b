"""What every benchmark script shares: where things are, the machine line, timers, memory, tables.

Scripts are run as modules from the repository root (``python -m benchmarks.speed.bench_core``),
so they import each other and this module as ``benchmarks.common`` with no ``sys.path`` edits.
A script that starts a child process does so with :func:`module_command` (the same module, the
same interpreter, ``src/`` and the repository root on ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "work"  # scratch output of every script (git-ignored)
RESULTS = REPO / "docs" / "results"  # the generated reports
TEST_PAIRS_CSV = BENCH / "oasis_study" / "oasis2d_test_pairs.csv"  # 128 fixed OASIS 2D test pairs (subject names)
PROJECT_DATA = Path("/work/shared/data")  # where the project's machines keep the data


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def data_dir() -> Path:
    """The data folder: ``$MORPHREG_DATA``, else ``../shared/data`` next to the repository."""
    return Path(os.environ.get("MORPHREG_DATA", REPO.parent / "shared" / "data"))


def oasis2d_npz() -> Path:
    """neurite-OASIS 2D (``oasis2d.npz``: ``slice_norm``, ``seg4``, ``seg24``, ``subjects``)."""
    path = data_dir() / "oasis2d_neurite" / "oasis2d.npz"
    if not path.exists():
        path = PROJECT_DATA / "oasis2d_neurite" / "oasis2d.npz"
    return path


def oasis3d_dir() -> Path:
    """neurite-OASIS 3D (``OASIS_OAS1_000{1,2}_MR1/aligned_{norm,seg35,seg4}.nii.gz``)."""
    path = data_dir() / "oasis3d_neurite"
    if not path.exists():
        path = PROJECT_DATA / "oasis3d_neurite"
    return path


# --------------------------------------------------------------------------------------------
# the machine
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """``1 / 5 / 15`` minute load averages, or ``n/a``."""
    try:
        return "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def machine_facts() -> dict[str, str]:
    """Facts that qualify every number: cores, threads, versions, load."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        usable = os.cpu_count() or 0
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in text)
    except OSError:
        pass
    return {
        "cpu": cpu_model(),
        "cpu flags (selected)": flags or "n/a",
        "logical cores (os.cpu_count)": str(os.cpu_count()),
        "usable cores (sched_getaffinity)": str(usable),
        "torch": torch.__version__,
        "torch.get_num_threads()": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "load average (1/5/15 min) at start": load_average(),
    }


def threads_one() -> None:
    """One intra-op and (where still allowed) one inter-op torch thread."""
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def module_command(module: str, *args: str) -> list[str]:
    """``python -m MODULE ARGS`` with this interpreter (run it with :func:`module_env`)."""
    return [sys.executable, "-m", module, *args]


def module_env(**extra: str) -> dict[str, str]:
    """The environment of a child started by :func:`module_command`: ``src/`` and the repository
    root first on ``PYTHONPATH`` (so the child imports this checkout), plus ``extra``."""
    path = [str(REPO / "src"), str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), **extra)


# --------------------------------------------------------------------------------------------
# timers and memory
# --------------------------------------------------------------------------------------------


def sync(device: object = "cpu") -> None:
    """Wait for a GPU (no-op on the CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: object = "cpu") -> float:
    """Wall time of one call of ``fn`` in seconds (synchronising a GPU around it)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


class TimedRegistration:
    """A benchmark's ``(moving, fixed) -> disp`` (or ``-> RegistrationOutput``) as morphreg's
    :data:`~morphreg.workflows.pipeline.Registration`, remembering in ``last_seconds`` the wall time
    of its last call, or the time the wrapped callable reports itself in its own ``last_seconds``
    (e.g. the ``ants.registration`` call alone, without the dense-field extraction for scoring).
    """

    def __init__(self, fn: Callable[..., object]) -> None:
        self.fn = fn
        self.last_seconds = float("nan")

    def __call__(self, moving: object, fixed: object) -> object:
        from morphreg.workflows.pipeline import as_output

        start = time.perf_counter()
        out = self.fn(moving, fixed)
        disp = out.disp if hasattr(out, "disp") else out
        sync(disp.device)  # type: ignore[attr-defined]
        own = getattr(self.fn, "last_seconds", None)
        self.last_seconds = float(own) if own is not None else time.perf_counter() - start
        return out if hasattr(out, "disp") else as_output(disp)  # type: ignore[arg-type]


def cpu_time() -> float:
    """Process CPU time in seconds (all threads)."""
    return time.process_time()


def timed_both(fn: Callable[[], object], device: object = "cpu") -> tuple[float, float]:
    """(wall, process CPU) seconds of one call of ``fn``."""
    sync(device)
    c0, w0 = cpu_time(), time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - w0, cpu_time() - c0


def interleaved(
    contenders: dict[str, Callable[[], object]],
    repeats: int | dict[str, int],
    warmup: int = 1,
    device: object = "cpu",
    log: bool = True,
) -> dict[str, list[float]]:
    """Time each contender ``repeats`` times, round-robin, reversing the order every round.

    ``repeats`` may differ per contender (a slow one takes part in the first rounds only).
    ``warmup`` untimed calls of each contender come first (also round-robin).
    """
    reps = repeats if isinstance(repeats, dict) else {name: repeats for name in contenders}
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(reps.values())):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if len(times[name]) < reps[name]:
                times[name].append(timed(contenders[name], device))
                if log:
                    print(f"    [{r}] {name}: {times[name][-1]:.3f} s", file=sys.stderr, flush=True)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def maxrss_mib() -> float:
    """The process's peak resident set (``ru_maxrss``) in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_high_water_bytes() -> int:
    """The process's resident-set high-water mark, ``VmHWM`` of ``/proc/self/status``.

    This is the per-address-space counter behind ``getrusage(RUSAGE_SELF).ru_maxrss``; we read it
    directly because in a process started by fork+exec ``ru_maxrss`` is also floored by the parent's
    high-water mark (the kernel keeps it in ``signal->maxrss`` across exec), which no reset clears.
    Falls back to ``ru_maxrss`` where ``/proc`` is not available.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark (``ru_maxrss`` / ``VmHWM``) to the current RSS (Linux >= 4.0).

    Without it, a peak reached while importing or building the model would hide a smaller step.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (every cell through ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_s(seconds: float) -> str:
    """``12.3 s`` / ``1.23 s`` / ``12.3 ms``."""
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms"


def spread(values: Sequence[float]) -> str:
    """``min-max`` of the repeats, to show the noise."""
    if len(values) == 1:
        return "1 run"
    return f"{fmt_s(min(values))}-{fmt_s(max(values))} (n={len(values)})"


def write_text(path: Path, text: str) -> Path:
    """Write a report (UTF-8) with morphreg's one atomic write: all of it or the old file, never half."""
    from morphreg._files import atomic_write_text

    return atomic_write_text(path, text)


def write_result(name: str, text: str) -> Path:
    """Write ``docs/results/NAME`` with :func:`write_text` and return its path."""
    return write_text(RESULTS / name, text)
