"""Reading and writing the files of a 3D registration: ISA-L gzip against the standard library's, and
uncompressed ``.nii``. Writes docs/results/io.md.

The files: the OASIS 160x192x224 float32 image (``aligned_norm``) and the 83 MB float32 warp field
of one pair (``(160, 192, 224, 1, 3)``, written by :func:`morphreg.io.save_warp`). Each is written
and read with morphreg's own :func:`save_volume`/:func:`load_volume` and :func:`save_warp`/
:func:`load_warp` (atomic writes, every check), with the gzip back end switched between ISA-L
(``isal.igzip``, the default where installed) and the standard library's :mod:`gzip` (the fallback,
at the same level 1 nibabel uses), and as ``.nii``. "nibabel" rows are the path before this change:
``nib.save``/``nib.load`` (stdlib gzip level 1) and, for reading, the separate CRC check morphreg did
before nibabel decompressed the file a second time. Rounds are interleaved; the median wall time
and its CPU time are reported.

    python -m benchmarks.speed.bench_io [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks.common import RESULTS, load_average, median, oasis3d_dir, timed_both, write_text
from morphreg import io
from morphreg._files import atomic_write
from morphreg.io import gzip_files

REPORT = RESULTS / "io.md"


def _with_backend(backend: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``gzip_files.gzip_module`` returning ISA-L (``"isal"``) or the standard library."""

    def run() -> object:
        original = gzip_files.gzip_module
        if backend == "gzip":
            gzip_files.gzip_module = lambda: gzip
        try:
            return fn()
        finally:
            gzip_files.gzip_module = original

    return run


def _nibabel_read(path: Path) -> np.ndarray:
    """Before: the full CRC pass (stdlib gzip), then nibabel decompressing the file again."""
    with gzip.open(path, "rb") as handle:
        while handle.read(4 * 2**20):
            pass
    return np.asanyarray(nib.load(str(path)).dataobj)


def contenders(tmp: Path) -> dict[str, tuple[str, str, str, Callable[[], object]]]:
    """name -> (file, operation, back end, call)."""
    image = io.load_volume(oasis3d_dir() / "OASIS_OAS1_0001_MR1" / "aligned_norm.nii.gz")
    rng = np.random.default_rng(0)  # a smooth field plus float noise compresses like a registration's warp
    disp = np.repeat(np.cumsum(rng.normal(0, 0.05, size=(1, *image.shape)), axis=1), 3, axis=0).astype(np.float32)
    disp += rng.normal(0, 1e-3, size=disp.shape).astype(np.float32)
    out: dict[str, tuple[str, str, str, Callable[[], object]]] = {}
    for backend in ("isal", "gzip"):
        for kind in ("image", "warp"):
            path = tmp / f"{kind}_{backend}.nii.gz"
            if kind == "image":
                def write(p: Path = path) -> None:
                    io.save_volume(image, p)

                def read(p: Path = path) -> object:
                    return io.load_volume(p)
            else:
                def write(p: Path = path) -> None:
                    io.save_warp(disp, p, image.affine)

                def read(p: Path = path) -> object:
                    return io.load_warp(p)
            label = f".nii.gz, {backend}"
            out[f"{kind} write .nii.gz {backend}"] = (kind, "write", label, _with_backend(backend, write))
            out[f"{kind} read .nii.gz {backend}"] = (kind, "read", label, _with_backend(backend, read))
    for kind in ("image", "warp"):
        path = tmp / f"{kind}.nii"
        if kind == "image":
            out["image write .nii"] = (kind, "write", ".nii", lambda p=path: io.save_volume(image, p))
            out["image read .nii"] = (kind, "read", ".nii", lambda p=path: io.load_volume(p))
        else:
            out["warp write .nii"] = (kind, "write", ".nii", lambda p=path: io.save_warp(disp, p, image.affine))
            out["warp read .nii"] = (kind, "read", ".nii", lambda p=path: io.load_warp(p))
        before = tmp / f"{kind}_nibabel.nii.gz"
        data = image.data if kind == "image" else np.moveaxis(disp, 0, -1)[:, :, :, None, :]
        nib_image = nib.Nifti1Image(data, image.affine)
        out[f"{kind} write nibabel"] = (kind, "write", ".nii.gz, nib.save (before)",
                                        lambda p=before, i=nib_image: atomic_write(p, lambda t: nib.save(i, str(t))))
        out[f"{kind} read nibabel"] = (kind, "read", ".nii.gz, CRC pass + nib.load (before)",
                                       lambda p=before: _nibabel_read(p))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    load_start = load_average()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as folder:
        tmp = Path(folder)
        calls = contenders(tmp)
        names = [n for n in calls if calls[n][1] == "write"] + [n for n in calls if calls[n][1] == "read"]
        times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for r in range(args.repeats + 1):  # round 0 is the warm-up (and writes the files the reads need)
            writes, reads = [n for n in names if calls[n][1] == "write"], [n for n in names if calls[n][1] == "read"]
            for name in writes + reads if r % 2 == 0 else writes[::-1] + reads[::-1]:
                wall, cpu = timed_both(calls[name][3])
                if r:
                    times[name].append((wall, cpu))
                    print(f"    [{r}] {name}: {wall:.3f} s", file=sys.stderr, flush=True)
        sizes = {name: _size(tmp, name) for name in names}
    rows = []
    for name in names:
        kind, op, backend, _ = calls[name]
        walls = [w for w, _ in times[name]]
        cpus = [c for _, c in times[name]]
        rows.append((kind, op, backend, median(walls), median(cpus), sizes[name]))
    write_report(args, rows, load_start)
    return 0


def _size(tmp: Path, name: str) -> float:
    kind = name.split()[0]
    if ".nii.gz" in name:
        path = tmp / f"{kind}_{name.split()[-1]}.nii.gz"
    elif "nibabel" in name:
        path = tmp / f"{kind}_nibabel.nii.gz"
    else:
        path = tmp / f"{kind}.nii"
    return path.stat().st_size / 1e6


def write_report(args: argparse.Namespace, rows: list[tuple], load_start: str) -> None:
    lines = ["# Reading and writing 3D registration files: ISA-L gzip, standard gzip, uncompressed", "",
             f"Generated by `python -m benchmarks.speed.bench_io {' '.join(sys.argv[1:])}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.threads} torch threads, "
             f"{args.repeats} interleaved rounds after a warm-up (median wall time, and the CPU time of the "
             f"same calls). Load average (1/5/15 min) {load_start} at the start and {load_average()} at the end "
             "on 2 shared cores: compare within one table.", "",
             "Files: `image` = OASIS OAS1_0001 `aligned_norm` (160x192x224 float32, 27.5 MB raw); `warp` = a "
             "160x192x224x1x3 float32 displacement field (82.6 MB raw, smooth plus float noise: it compresses "
             "about as badly as a real warp). morphreg rows go through `save_volume`/`load_volume` and "
             "`save_warp`/`load_warp` (atomic write with fsync, all checks); `before` rows are the path "
             "this change replaced (also written atomically).", "",
             "| file | operation | format, gzip | wall s | CPU s | MB on disk | wall vs before |",
             "|---|---|---|---|---|---|---|"]
    before = {(r[0], r[1]): r[3] for r in rows if "before" in r[2]}
    for kind, op, backend, wall, cpu, size in sorted(rows, key=lambda r: (r[0], r[1] != "write", r[3])):
        ratio = before[(kind, op)] / wall
        lines.append(f"| {kind} | {op} | {backend} | {wall:.3f} | {cpu:.3f} | {size:.1f} | {ratio:.1f}x |")
    lines += ["", "`.nii.gz` files written with ISA-L are standard gzip streams (level 1; the tests read them "
              "with Python's `gzip` and nibabel). Without the `isal` package morphreg falls back to the standard "
              "library (`.nii.gz, gzip` rows). A `.nii` output name writes the file uncompressed.", ""]
    write_text(args.report, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
