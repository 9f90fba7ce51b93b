"""The measurements behind ``morphreg.models.dispatch``: layout, convolution implementation, decoder path.

Run by ``bench_forward_load`` in a child process per oneDNN instruction set (``ONEDNN_MAX_CPU_ISA``
unset, then ``AVX2``: the same CPU without AVX-512), one thread, CPU only, float32, batch 1,
``torch.inference_mode`` unless a row says forward+backward. Each comparison is timed round-robin
(order reversed every round); cells are medians of process CPU time per call.

    python -m benchmarks.speed.dispatch_choices [--rounds 7]     # prints the JSON rows
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks import common

#: whole-network inputs of the layout rows
LAYOUT_SHAPES = [(64, 64), (160, 192), (256, 256), (32, 32, 32), (64, 64, 64), (96, 112, 128)]
#: (channels, spatial) of the convolution-implementation rows: 32 -> 32 channels, 3^n, padding 1
CONV_CASES = [(32, (10, 12)), (32, (14, 16)), (32, (20, 24)), (32, (6, 7, 8)), (32, (12, 14, 16)),
              (16, (32, 32, 32))]
#: low-resolution shapes of the decoder-path rows (32 low-resolution + 32 skip channels -> 32)
DECODER_LOWS = [(5, 6), (10, 12), (15, 18), (20, 24), (40, 48), (3, 4, 4), (6, 7, 8), (12, 14, 16)]


def _compare(calls: dict[str, Callable[[], object]], rounds: int, per_call: int) -> dict[str, float]:
    """Median process CPU seconds per call of each contender (each run ``per_call`` times per timing)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for r in range(rounds):
        for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            times[name].append(common.timed_both(calls[name])[1] / per_call)
    return {name: statistics.median(t) for name, t in times.items()}


def _repeat(fn: Callable[[], object], n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            fn()
    return run


def _layout_case(shape: tuple[int, ...], rounds: int) -> dict[str, float]:
    from morphreg import VxmDense

    torch.manual_seed(0)
    models = {"channels-last": VxmDense(len(shape)).eval(), "contiguous": VxmDense(len(shape)).eval()}
    models["contiguous"].load_state_dict(models["channels-last"].state_dict())
    models["contiguous"].to(memory_format=torch.contiguous_format)
    models["contiguous"].memory_format = torch.contiguous_format
    m, f = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    n = max(1, int(2e5 / m.numel()))
    with torch.inference_mode():
        return _compare({k: _repeat(lambda model=model: model(m, f), n) for k, model in models.items()}, rounds, n)


def layout_rows(rounds: int) -> list[dict]:
    return [{"input": "x".join(map(str, shape)),
             **_layout_case(shape, rounds if len(shape) == 2 or shape[0] < 96 else max(3, rounds // 2))}
            for shape in LAYOUT_SHAPES]


def _conv_case(channels: int, spatial: tuple[int, ...], rounds: int, grad: bool) -> dict[str, float]:
    ndim = len(spatial)
    fmt = torch.channels_last if ndim == 2 else torch.channels_last_3d
    torch.manual_seed(0)
    x = torch.randn(1, channels, *spatial).contiguous(memory_format=fmt).requires_grad_(grad)
    w = torch.randn(32, channels, *[3] * ndim).contiguous(memory_format=fmt).requires_grad_(grad)
    b = torch.randn(32).requires_grad_(grad)
    conv = getattr(F, f"conv{ndim}d")
    n = max(1, int(3e6 / (channels * 32 * x[0, 0].numel())))
    ones = [1] * ndim

    def call(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        return _repeat((lambda: fn().sum().backward()) if grad else fn, n)

    calls = {"PyTorch's choice": call(lambda: conv(x, w, b, padding=1)),
             "oneDNN": call(lambda: torch.mkldnn_convolution(x, w, b, ones, ones, ones, 1))}
    with torch.inference_mode() if not grad else contextlib.nullcontext():
        return _compare(calls, rounds, n)


def conv_rows(rounds: int) -> list[dict]:
    rows = []
    for channels, spatial in CONV_CASES:
        row = {"input": f"{channels} ch @ {'x'.join(map(str, spatial))}"}
        for mode, grad in (("forward", False), ("forward+backward", True)):
            row.update({f"{k}, {mode}": v for k, v in _conv_case(channels, spatial, rounds, grad).items()})
        rows.append(row)
    return rows


def _decoder_case(low_shape: tuple[int, ...], rounds: int) -> tuple[int, dict[str, float]]:
    from morphreg.models.dispatch import channels_last, conv_class
    from morphreg.models.upsample_conv import conv_upsampled

    ndim = len(low_shape)
    fmt = channels_last(ndim)
    torch.manual_seed(0)
    conv = conv_class(ndim)(64, 32, 3, padding=1).to(memory_format=fmt)
    low = torch.randn(1, 32, *low_shape).contiguous(memory_format=fmt)
    skip = torch.randn(1, 32, *[2 * s for s in low_shape]).contiguous(memory_format=fmt)
    n = max(1, int(2e5 / (low.numel() * 2**ndim)))

    def upsample_first() -> torch.Tensor:
        return conv(torch.cat([F.interpolate(low, scale_factor=2.0, mode="nearest"), skip], 1))

    calls = {"upsample first": _repeat(upsample_first, n),
             "at low resolution": _repeat(lambda: conv_upsampled(conv, low, skip), n)}
    with torch.inference_mode():
        return skip.numel(), _compare(calls, rounds, n)


def decoder_rows(rounds: int) -> list[dict]:
    rows = []
    for low_shape in DECODER_LOWS:
        skip_numel, t = _decoder_case(low_shape, rounds)
        rows.append({"input": f"low {'x'.join(map(str, low_shape))}, skip {skip_numel} elements", **t})
    return rows


def measure(rounds: int) -> dict[str, list[dict]]:
    torch.set_num_threads(1)
    return {"layout": layout_rows(rounds), "conv": conv_rows(rounds), "decoder": decoder_rows(rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(json.dumps(measure(args.rounds)))


if __name__ == "__main__":
    main()
