"""Timing and memory measurements of the speed benchmark: round-robin timings in one process, and the
peak memory of one training step in a fresh process per contender (or on the GPU, in-process)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from benchmarks.common import (
    cpu_time,
    median,
    module_command,
    module_env,
    reset_peak_rss,
    rss_high_water_bytes,
    sync,
    timed_both,
)
from benchmarks.speed.bench_core import conv_flops, matmul_contender, param_count, smooth_pair
from benchmarks.speed.contenders import LR, Contender, build

# --------------------------------------------------------------------------------------------
# in-process timings
# --------------------------------------------------------------------------------------------


def round_robin(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, tuple[list[float], list[float]]]:
    """Like ``benchmarks.common.interleaved`` but recording wall and process CPU time."""
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    out: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            w, c = timed_both(contenders[n], device)
            out[n][0].append(w)
            out[n][1].append(c)
            print(f"    [{r}] {n}: wall {w:.3f} s, cpu {c:.3f} s", file=sys.stderr, flush=True)
    return out


@dataclass
class Timing:
    wall: list[float]
    cpu: list[float]

    @property
    def w(self) -> float:
        return median(self.wall)

    @property
    def c(self) -> float:
        return median(self.cpu)


def inference_bench(
    keys: Sequence[str], shape: Sequence[int], repeats: int, warmup: int, device: torch.device
) -> tuple[dict[str, Timing], dict[str, Contender], float, float]:
    ndim = len(shape)
    moving, fixed = smooth_pair(shape)
    cs = {k: build(k, ndim, device) for k in keys}
    flops, _ = conv_flops(cs[keys[0]].model, lambda: cs[keys[0]].infer(moving.to(device), fixed.to(device)))
    calls: dict[str, Callable[[], object]] = {}
    for k, c in cs.items():
        m, f = c.prepare(moving.to(device)), c.prepare(fixed.to(device))
        c.model.eval()

        def run(c: Contender = c, m: torch.Tensor = m, f: torch.Tensor = f) -> None:
            with torch.inference_mode():
                c.infer(m, f)

        calls[k] = run
    mm, mm_flops = matmul_contender() if device.type == "cpu" else _cuda_matmul(device)
    calls["matmul"] = mm
    res = round_robin(calls, repeats, warmup, device)
    rate = mm_flops / median(res.pop("matmul")[0])
    return {k: Timing(*v) for k, v in res.items()}, cs, flops, rate


def training_bench(
    keys: Sequence[str],
    shape: Sequence[int],
    repeats: int,
    warmup: int,
    device: torch.device,
    losses: Sequence[str] = ("ncc",),
) -> dict[tuple[str, str], Timing]:
    ndim = len(shape)
    moving, fixed = smooth_pair(shape)
    calls: dict[str, Callable[[], object]] = {}
    index = {}
    for k in keys:
        for loss in losses:
            c = build(k, ndim, device)
            c.model.train()
            m, f = c.prepare(moving.to(device)), c.prepare(fixed.to(device))
            name = f"{k}/{loss}"
            index[name] = (k, loss)
            calls[name] = lambda c=c, m=m, f=f, loss=loss: c.step(m, f, loss)
    res = round_robin(calls, repeats, warmup, device)
    return {index[n]: Timing(*v) for n, v in res.items()}


def loss_bench(
    keys: Sequence[str], shape: Sequence[int], repeats: int, device: torch.device
) -> dict[tuple[str, str], Timing]:
    """fwd+bwd of each library's NCC and MSE on a (moved, fixed) pair; grad into 'moved'."""
    ndim = len(shape)
    a, b = smooth_pair(shape)
    a, b = a.to(device), b.to(device)
    calls: dict[str, Callable[[], object]] = {}
    index = {}
    for k in keys:
        c = build(k, ndim, device)
        for loss in ("ncc", "mse"):
            fn = c.ncc if loss == "ncc" else c.mse

            def run(fn: Callable = fn) -> None:
                x = a.detach().clone().requires_grad_(True)
                fn(x, b).backward()

            index[f"{k}/{loss}"] = (k, loss)
            calls[f"{k}/{loss}"] = run
    res = round_robin(calls, repeats, 1, device)
    return {index[n]: Timing(*v) for n, v in res.items()}


def _cuda_matmul(device: torch.device, n: int = 8192, calls: int = 5) -> tuple[Callable[[], None], float]:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)

    def run() -> None:
        for _ in range(calls):
            torch.mm(a, b, out=out)

    return run, 2.0 * n**3 * calls


# --------------------------------------------------------------------------------------------
# peak memory of one training step: one subprocess per contender
# --------------------------------------------------------------------------------------------


def child_main(key: str, shape: Sequence[int], threads: int, loss: str) -> int:
    """Run in a fresh process: one training step; report the RSS high-water increase, time, saved bytes."""
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    ndim = len(shape)
    c = build(key, ndim, device)
    c.model.train()
    moving, fixed = smooth_pair(shape)
    m, f = c.prepare(moving), c.prepare(fixed)
    c.optimizer = torch.optim.Adam(c.model.parameters(), lr=LR)
    del moving, fixed
    gc.collect()
    was_reset = reset_peak_rss()
    base = rss_high_water_bytes()
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            saved[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    c0, w0 = cpu_time(), time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = c.step(m, f, loss)
    wall, cpu = time.perf_counter() - w0, cpu_time() - c0
    peak = rss_high_water_bytes()
    result = {
        "key": key,
        "name": c.name,
        "shape": list(shape),
        "loss": loss,
        "baseline_rss": base,
        "peak_rss": peak,
        "delta": peak - base,
        "hwm_reset": was_reset,
        "saved_bytes": sum(saved.values()),
        "wall": wall,
        "cpu": cpu,
        "value": value,
        "params": param_count(c.model),
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run_child(key: str, shape: Sequence[int], threads: int, loss: str = "ncc") -> dict:
    """One training step of ``key`` in a fresh ``python -m benchmarks.speed.bench_speed --child`` process."""
    cmd = module_command(
        "benchmarks.speed.bench_speed",
        "--child",
        key,
        "--shape",
        *map(str, shape),
        "--threads",
        str(threads),
        "--loss",
        loss,
    )
    print(f"  subprocess: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=module_env())
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out = json.loads(line[len("RESULT ") :])
            print(
                f"    {key}: step wall {out['wall']:.1f} s, cpu {out['cpu']:.1f} s, "
                f"peak +{out['delta'] / 2**30:.2f} GiB",
                file=sys.stderr,
                flush=True,
            )
            return out
    raise RuntimeError(f"child {key} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")


def cuda_memory_step(key: str, shape: Sequence[int], device: torch.device, loss: str = "ncc") -> dict:
    """GPU: peak allocated memory of one training step (after a warm-up step), in-process."""
    ndim = len(shape)
    c = build(key, ndim, device)
    c.model.train()
    moving, fixed = smooth_pair(shape)
    m, f = c.prepare(moving.to(device)), c.prepare(fixed.to(device))
    c.step(m, f, loss)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    sync(device)
    c0, w0 = cpu_time(), time.perf_counter()
    c.step(m, f, loss)
    sync(device)
    wall, cpu = time.perf_counter() - w0, cpu_time() - c0
    peak = torch.cuda.max_memory_allocated(device)
    out = {"key": key, "name": c.name, "delta": peak - base, "wall": wall, "cpu": cpu, "saved_bytes": float("nan")}
    c.model.cpu()
    gc.collect()
    torch.cuda.empty_cache()
    return out
