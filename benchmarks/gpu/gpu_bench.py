"""The steps of ``benchmarks/gpu/run.sh``: each appends one JSON row to ``RESULTS`` (a ``.jsonl``);
``report`` turns the rows into the ``gpu.md`` fragment.

    python -m benchmarks.gpu.gpu_bench env       --results R.jsonl --device cuda
    python -m benchmarks.gpu.gpu_bench data      --out DIR --shape 96 112 128 --count 8
    python -m benchmarks.gpu.gpu_bench infer     --results R.jsonl --device cuda --shape 160 192 224
    python -m benchmarks.gpu.gpu_bench train-step --results R.jsonl --device cuda --shape 160 192 224
    python -m benchmarks.gpu.gpu_bench command   --results R.jsonl --name NAME [--fixed-seg S --moved-seg S] -- ARGV
    python -m benchmarks.gpu.gpu_bench report    --results R.jsonl --out gpu.md

Timings synchronise CUDA around every timed call; peak GPU memory is
``torch.cuda.max_memory_allocated`` since the step's own reset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine_facts, module_env, sync


def _append(results: Path, row: dict[str, Any]) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


def _device(name: str) -> Any:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: --device cuda: CUDA is not available")
    return torch.device(name)


def _peak_reset(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _times(fn: Any, device: Any, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def _pair(shape: list[int], device: Any) -> tuple[Any, Any]:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(2, 1, *[max(2, s // 8) for s in shape], generator=g)
    pair = F.interpolate(coarse, size=shape, mode="trilinear" if len(shape) == 3 else "bilinear")
    return pair[:1].to(device), pair[1:].to(device)


def cmd_env(args: argparse.Namespace) -> None:
    import torch

    row: dict[str, Any] = {"step": "env", **machine_facts(), "cuda": torch.cuda.is_available(),
                           "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        row.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    _append(args.results, row)


def cmd_data(args: argparse.Namespace) -> None:
    """``count`` synthetic 3D subjects (``img/``, ``seg/``) for the training steps."""
    import nibabel as nib
    import numpy as np

    from morphreg.data import synthetic_shapes

    images, labels = synthetic_shapes(args.count, tuple(args.shape), n_labels=8, seed=0)
    for sub in ("img", "seg"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        nib.save(nib.Nifti1Image(images[i].astype(np.float32), np.eye(4)), args.out / "img" / f"s{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(labels[i].astype(np.uint8), np.eye(4)), args.out / "seg" / f"s{i:02d}.nii.gz")
    print(f"gpu_bench data: {args.count} subjects {args.shape} in {args.out}")


def cmd_infer(args: argparse.Namespace) -> None:
    """VxmDense forward (the paper's network, 3D), float32 and bf16, inference mode."""
    import torch

    from morphreg import VxmDense

    device = _device(args.device)
    torch.backends.cudnn.benchmark = True
    moving, fixed = _pair(args.shape, device)
    for int_steps in (0, 7):
        model = VxmDense(len(args.shape), int_steps=int_steps).to(device).eval()
        for precision in ("float32", "bf16"):
            model.set_precision(precision)
            _peak_reset(device)

            def run(model: Any = model) -> None:
                with torch.inference_mode():
                    model(moving, fixed)

            times = _times(run, device, args.repeats, args.warmup)
            _append(args.results, {"step": "infer", "shape": args.shape, "int_steps": int_steps,
                                   "precision": precision, "median_ms": 1e3 * statistics.median(times),
                                   "min_ms": 1e3 * min(times), "repeats": args.repeats,
                                   "peak_mib": _peak_mib(device), "device": device.type})


def cmd_train_step(args: argparse.Namespace) -> None:
    """One training step (forward, NCC + lambda grad loss, backward, Adam), float32 and bf16 autocast,
    as the training loop runs it (``workflows/train/loop.py``: bf16 autocast on CUDA)."""
    import torch

    from morphreg import VxmDense, losses

    device = _device(args.device)
    torch.backends.cudnn.benchmark = True
    moving, fixed = _pair(args.shape, device)
    model = VxmDense(len(args.shape)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for amp in (False, True):
        def step(amp: bool = amp) -> None:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(moving, fixed)
                loss = losses.ncc_loss(out.moved, fixed) + losses.grad_loss(out.disp)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not torch.isfinite(loss):
                raise SystemExit(f"gpu_bench train-step: the loss is {float(loss)} (amp={amp})")

        _peak_reset(device)
        times = _times(step, device, args.repeats, args.warmup)
        _append(args.results, {"step": "train_step", "shape": args.shape, "amp_bf16": amp,
                               "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
                               "repeats": args.repeats, "peak_mib": _peak_mib(device), "device": device.type})


def _dice_seg(moved: Path, fixed: Path) -> float:
    import nibabel as nib
    import numpy as np

    a = np.asarray(nib.load(moved).dataobj).astype(np.int64)
    b = np.asarray(nib.load(fixed).dataobj).astype(np.int64)
    scores = []
    for label in np.union1d(np.unique(a), np.unique(b)):
        if label == 0:
            continue
        x, y = a == label, b == label
        scores.append(2.0 * (x & y).sum() / max(1, x.sum() + y.sum()))
    return float(np.mean(scores)) if scores else float("nan")


def cmd_command(args: argparse.Namespace) -> None:
    """Run ``ARGV`` (a ``python -m morphreg ...`` or ``torchrun`` command) as a child process;
    record its wall time (process start included), exit code and, with ``--moved-seg``, its Dice."""
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    start = time.perf_counter()
    before = os.times()
    proc = subprocess.run(argv, env=module_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = os.times()
    sys.stdout.write(proc.stdout[-4000:])
    sys.stderr.write(proc.stderr[-4000:])
    row: dict[str, Any] = {"step": "command", "name": args.name, "rc": proc.returncode, "wall_s": round(wall, 3),
                           "child_cpu_s": round(after.children_user + after.children_system
                                                - before.children_user - before.children_system, 3),
                           "argv": " ".join(argv)}
    if args.moved_seg and proc.returncode == 0:
        row["dice"] = round(_dice_seg(Path(args.moved_seg), Path(args.fixed_seg)), 4)
    _append(args.results, row)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_bench command {args.name}: exit code {proc.returncode}")


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cmd_report(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    env = next((r for r in rows if r["step"] == "env"), {})
    lines = ["## GPU run (`benchmarks/gpu/run.sh`)", "",
             f"Device: {env.get('gpu', 'CPU (no CUDA)')}, {env.get('cuda_devices', 0)} CUDA device(s); "
             f"torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda', '-')}); CPU {env.get('cpu', '?')}; "
             f"load at start {env.get('load average (1/5/15 min) at start', '?')}.", ""]
    steps = [r for r in rows if r["step"] == "step"]
    if steps:
        lines += ["| step | exit code | wall s |", "|---|---|---|"]
        lines += [f"| {r['name']} | {r['rc']} | {r['wall_s']:.1f} |" for r in steps]
        lines.append("")
    commands = [r for r in rows if r["step"] == "command"]
    if commands:
        lines += ["| command | exit code | wall s (process start, reading, writing) | Dice |", "|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['rc']} | {r['wall_s']:.2f} | {_fmt(r.get('dice'), 4)} |" for r in commands]
        lines.append("")
    infer = [r for r in rows if r["step"] == "infer"]
    if infer:
        lines += ["| VxmDense inference | shape | int steps | precision | median ms | min ms | peak MiB |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| forward | {'x'.join(map(str, r['shape']))} | {r['int_steps']} | {r['precision']} | "
                  f"{r['median_ms']:.1f} | {r['min_ms']:.1f} | {_fmt(r['peak_mib'], 0)} |" for r in infer]
        lines.append("")
    train = [r for r in rows if r["step"] == "train_step"]
    if train:
        lines += ["| training step (NCC + grad, Adam) | shape | bf16 autocast | median ms | min ms | peak MiB |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| VxmDense | {'x'.join(map(str, r['shape']))} | {r['amp_bf16']} | {r['median_ms']:.1f} | "
                  f"{r['min_ms']:.1f} | {_fmt(r['peak_mib'], 0)} |" for r in train]
        lines.append("")
    notes = [r for r in rows if r["step"] == "note"]
    lines += [f"- {r['text']}" for r in notes]
    args.out.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    print(args.out.read_text())


def cmd_row(args: argparse.Namespace) -> None:
    """A row written by run.sh itself: ``step`` (a step's exit code and wall) or ``note``."""
    row: dict[str, Any] = {"step": args.kind, "name": args.name}
    if args.kind == "step":
        row.update(rc=int(args.rc), wall_s=float(args.wall))
    else:
        row["text"] = args.name
    _append(args.results, row)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gpu_bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("env", "infer", "train-step", "command", "report", "row"):
        p = sub.add_parser(name)
        p.add_argument("--results", type=Path, required=True)
        if name in ("env", "infer", "train-step"):
            p.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
        if name in ("infer", "train-step"):
            p.add_argument("--shape", type=int, nargs="+", default=[160, 192, 224])
            p.add_argument("--repeats", type=int, default=20)
            p.add_argument("--warmup", type=int, default=3)
        if name == "command":
            p.add_argument("--name", required=True)
            p.add_argument("--moved-seg", default=None)
            p.add_argument("--fixed-seg", default=None)
            p.add_argument("argv", nargs=argparse.REMAINDER)
        if name == "report":
            p.add_argument("--out", type=Path, required=True)
        if name == "row":
            p.add_argument("kind", choices=("step", "note"))
            p.add_argument("name")
            p.add_argument("rc", nargs="?", default="0")
            p.add_argument("wall", nargs="?", default="0")
    p = sub.add_parser("data")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shape", type=int, nargs="+", default=[96, 112, 128])
    p.add_argument("--count", type=int, default=8)
    args = parser.parse_args(argv)
    {"env": cmd_env, "data": cmd_data, "infer": cmd_infer, "train-step": cmd_train_step, "command": cmd_command,
     "report": cmd_report, "row": cmd_row}[args.cmd](args)


if __name__ == "__main__":
    main()
