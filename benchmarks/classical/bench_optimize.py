"""Acceptance numbers of morphreg.optimize on real data (OASIS 2D/3D, BrainWeb T1/PD).

What it measures (CPU, ``torch.set_num_threads(--threads)``, default 1):

1. **FFD** on OASIS 2D slices: a known deformation warps subject ``i`` into a "fixed" image;
   :func:`register_ffd` (NCC, spacing 8, 3 levels, bending weight 0.1) recovers it. Three known
   deformations: (a) a random cubic B-spline of control spacing 16 voxels, which the spacing-8
   FFD can represent exactly; (b) Gaussian-smoothed white noise (sigma 6 voxels) and (c) a real
   inter-subject field (``register_dense`` of subject ``i`` to ``i + 1``, velocity, NCC + 1*grad),
   which it cannot. Reported: seg24 Dice of the warped labels against the truth-warped labels
   (before / after), mean field error inside the brain (voxels), the error of the best
   least-squares spacing-8 B-spline fit of the truth (the representation floor), the mean true
   displacement, % folding of the truth and of the result, seconds.
2. **Dense instance optimisation** alone (no network, no affine step) on 20 fixed inter-subject
   pairs ``(moving, fixed) = (i, i + 1)``, ``i = 300..319`` (within the last 64 subjects): NCC
   with ``grad`` regularisation at λ = 1 (VoxelMorph's NCC setting), λ = 4 (low folding), and
   the diffeomorphic variant (velocity, 7 squarings) at λ = 1; mean seg24 Dice before/after,
   % voxels with det J <= 0, seconds per pair.
3. **MI rigid recovery** on the BrainWeb pair: the PD slice is rotated 7° about its centre and
   shifted (5, -3) voxels, then registered (rigid, MI) to the T1 slice; angle and translation
   errors.
4. **Affine recovery**: known random affines (linear part I + U(-0.06, 0.06), shift U(-2, 2)
   voxels, about the centre) on synthetic blob images 64² and 32³ (5 seeds each) and on real
   images (an OASIS 2D slice; an OASIS 3D volume at half resolution, 80x96x112); mean
   displacement error over the grid, in voxels.

Usage::

    python -m benchmarks.classical.bench_optimize            # print the Markdown tables
    python -m benchmarks.classical.bench_optimize --write    # ... and write docs/results/optimize.md
    python -m benchmarks.classical.bench_optimize --quick    # fewer pairs / seeds: a smoke test

Data: ``--data`` or ``$MORPHREG_DATA`` or ``../shared/data`` next to the repository; a section
whose data is missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, md_table, write_text
from benchmarks.common import data_dir as common_data_dir
from morphreg import metrics, spatial
from morphreg.optimize import (
    bspline_disp,
    control_grid_shape,
    register_affine,
    register_dense,
    register_ffd,
)


def data_dir(arg: str | None) -> Path:
    return Path(arg) if arg else common_data_dir()


def mean_dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(metrics.dice(a, b).mean.mean())


def rotation(angles: torch.Tensor, ndim: int) -> torch.Tensor:
    skew = torch.zeros(ndim, ndim, dtype=torch.float64)
    angles = angles.to(torch.float64)
    rows, cols = torch.triu_indices(ndim, ndim, 1)
    skew[cols, rows] = angles
    skew[rows, cols] = -angles
    return torch.linalg.matrix_exp(skew)


def about_centre(linear: torch.Tensor, shift: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    centre = (torch.tensor(shape, dtype=torch.float64) - 1) / 2
    return torch.cat([linear, (centre + shift - linear @ centre)[:, None]], dim=1)


def inverse(matrix: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[0]
    full = torch.cat([matrix, torch.eye(n + 1, dtype=matrix.dtype)[n:]])
    return torch.linalg.inv(full)[:n]


def disp_error(found: torch.Tensor, truth: torch.Tensor, shape: Sequence[int]) -> float:
    a = spatial.affine_to_disp(found.double().reshape(1, *found.shape[-2:]), shape)
    b = spatial.affine_to_disp(truth.double()[None], shape)
    return float((a - b).norm(dim=1).mean())


# --------------------------------------------------------------------------------------------
# 1. FFD on OASIS 2D


FFD_SPACING = 8  # the fitted FFD: final control spacing 8 voxels, 3 levels (32, 16, 8)
FFD_CASES = {
    "bspline16": "a random cubic B-spline of control spacing 16 (exactly representable by the spacing-8 FFD)",
    "smooth": "Gaussian-smoothed white noise, sigma 6 voxels (not a B-spline: not representable)",
    "intersubject": "a real inter-subject field: register_dense(subject i -> i+1), velocity, NCC + 1*grad "
    "(not representable)",
}


def true_field(kind: str, images: np.ndarray, i: int, brain: torch.Tensor) -> torch.Tensor:
    """The known deformation ``(1, 2, H, W)`` (voxels) applied to subject ``i``.

    ``bspline16`` and ``smooth`` are scaled to a mean length of 3 voxels in the brain;
    ``intersubject`` keeps its own size.
    """
    shape = list(images[i].shape)
    gen = torch.Generator().manual_seed(int(i))
    if kind == "bspline16":
        control = torch.randn(1, 2, *control_grid_shape(shape, 16), generator=gen)
        truth = bspline_disp(control, 16, shape)
    elif kind == "smooth":
        from scipy import ndimage

        noise = torch.randn(2, *shape, generator=gen, dtype=torch.float64).numpy()
        smooth = np.stack([ndimage.gaussian_filter(c, 6.0, mode="reflect") for c in noise])
        truth = torch.from_numpy(smooth).float()[None]
    else:
        moving = torch.from_numpy(images[i])[None, None].float()
        fixed = torch.from_numpy(images[i + 1])[None, None].float()
        return register_dense(moving, fixed, loss="ncc", weight=1.0, velocity=True).disp.detach()
    return truth * (3.0 / truth.norm(dim=1)[brain].mean())


def best_bspline_fit(truth: torch.Tensor, spacing: int, iterations: int = 300) -> torch.Tensor:
    """The spacing-``spacing`` cubic B-spline closest to ``truth`` in least squares (L-BFGS on the
    control points): what the fitted FFD could reach at best, whatever its similarity loss."""
    shape = list(truth.shape[2:])
    control = torch.zeros(1, truth.shape[1], *control_grid_shape(shape, spacing), requires_grad=True)
    optimiser = torch.optim.LBFGS([control], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = (bspline_disp(control, spacing, shape) - truth).pow(2).mean()
        loss.backward()
        return loss

    optimiser.step(closure)
    return bspline_disp(control.detach(), spacing, shape)


def bench_ffd(images: np.ndarray, segs: np.ndarray, subjects: Sequence[int], kind: str) -> tuple[str, dict]:
    rows = []
    keys = ("d0", "d1", "err", "floor", "mag", "fold_true", "fold", "sec")
    totals: dict[str, list[float]] = {k: [] for k in keys}
    for i in subjects:
        moving = torch.from_numpy(images[i])[None, None].float()
        labels = torch.from_numpy(segs[i].astype(np.int64))[None, None]
        brain = labels[:, 0] > 0
        truth = true_field(kind, images, i, brain)
        fixed = spatial.warp(moving, truth)
        fixed_labels = spatial.warp(labels, truth, mode="nearest")
        start = time.perf_counter()
        result = register_ffd(moving, fixed, spacing=FFD_SPACING, loss="ncc", weight=0.1, levels=3)
        seconds = time.perf_counter() - start
        mask = fixed_labels[:, 0] > 0
        moved_labels = spatial.warp(labels, result.disp, mode="nearest")
        fit = best_bspline_fit(truth, FFD_SPACING)
        values = {
            "d0": mean_dice(labels, fixed_labels),
            "d1": mean_dice(moved_labels, fixed_labels),
            "err": float((result.disp - truth).norm(dim=1)[mask].mean()),
            "floor": float((fit - truth).norm(dim=1)[mask].mean()),
            "mag": float(truth.norm(dim=1)[mask].mean()),
            "fold_true": float(metrics.folding_fraction(truth)),
            "fold": float(metrics.folding_fraction(result.disp)),
            "sec": seconds,
        }
        for key, value in values.items():
            totals[key].append(value)
        rows.append(
            [
                str(i),
                f"{values['d0']:.3f}",
                f"{values['d1']:.3f}",
                f"{values['err']:.3f}",
                f"{values['floor']:.3f}",
                f"{values['mag']:.2f}",
                f"{values['fold_true']:.3f}",
                f"{values['fold']:.3f}",
                f"{values['sec']:.1f}",
            ]
        )
    mean = {k: float(np.mean(v)) for k, v in totals.items()}
    rows.append(
        [
            "**mean**",
            f"{mean['d0']:.3f}",
            f"**{mean['d1']:.3f}**",
            f"**{mean['err']:.3f}**",
            f"{mean['floor']:.3f}",
            f"{mean['mag']:.2f}",
            f"{mean['fold_true']:.3f}",
            f"{mean['fold']:.3f}",
            f"{mean['sec']:.1f}",
        ]
    )
    header = [
        "subject",
        "seg24 Dice before",
        "Dice after",
        "field error in brain (vox)",
        f"best spacing-{FFD_SPACING} B-spline fit error (vox)",
        "true displacement (vox)",
        "% folding of the truth",
        "% folding found",
        "seconds",
    ]
    return md_table(header, rows), mean


# --------------------------------------------------------------------------------------------
# 2. dense instance optimisation on inter-subject pairs


DENSE_CONFIGS = (
    ("displacement, NCC + 1·grad", {"loss": "ncc", "weight": 1.0}),
    ("displacement, NCC + 4·grad", {"loss": "ncc", "weight": 4.0}),
    ("velocity (7 squarings), NCC + 1·grad", {"loss": "ncc", "weight": 1.0, "velocity": True}),
)


def bench_dense(images: np.ndarray, segs: np.ndarray, first: Sequence[int]) -> tuple[str, dict]:
    rows = []
    summary = {}
    for name, options in DENSE_CONFIGS:
        before, after, folding, seconds = [], [], [], []
        for i in first:
            moving = torch.from_numpy(images[i])[None, None].float()
            fixed = torch.from_numpy(images[i + 1])[None, None].float()
            moving_seg = torch.from_numpy(segs[i].astype(np.int64))[None, None]
            fixed_seg = torch.from_numpy(segs[i + 1].astype(np.int64))[None, None]
            start = time.perf_counter()
            result = register_dense(moving, fixed, **options)
            seconds.append(time.perf_counter() - start)
            before.append(mean_dice(moving_seg, fixed_seg))
            after.append(mean_dice(spatial.warp(moving_seg, result.disp, mode="nearest"), fixed_seg))
            folding.append(float(metrics.folding_fraction(result.disp)))
        summary[name] = (np.mean(before), np.mean(after), np.mean(folding), np.mean(seconds))
        rows.append(
            [
                name,
                f"{np.mean(before):.3f} ± {np.std(before):.3f}",
                f"**{np.mean(after):.3f}** ± {np.std(after):.3f}",
                f"{np.mean(folding):.3f}",
                f"{np.mean(seconds):.2f}",
            ]
        )
    header = ["model", "seg24 Dice before", "Dice after", "% folding (det J <= 0)", "s / pair"]
    return md_table(header, rows), summary


# --------------------------------------------------------------------------------------------
# 3. MI rigid recovery (BrainWeb T1 / PD)


def read_grey(path: Path) -> torch.Tensor:
    import matplotlib.pyplot as plt

    array = plt.imread(path)
    array = array[..., 0] if array.ndim == 3 else array
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


def bench_mi(folder: Path) -> tuple[str, dict]:
    t1 = read_grey(folder / "BrainT1Slice.png")
    pd = read_grey(folder / "BrainProtonDensitySlice.png")
    shape = list(t1.shape[2:])
    angle, shift = 7.0, torch.tensor([5.0, -3.0], dtype=torch.float64)
    truth = about_centre(rotation(torch.tensor([math.radians(angle)]), 2), shift, shape)
    moving = spatial.warp(pd, spatial.affine_to_disp(inverse(truth)[None].float(), shape), padding="zeros")
    centre = (torch.tensor(shape, dtype=torch.float64) - 1) / 2
    rows = []
    out = {}
    for init in ("com", "moments"):
        start = time.perf_counter()
        result = register_affine(moving, t1, transform="rigid", loss="mi", init=init)
        seconds = time.perf_counter() - start
        m = result.matrix_voxel[0].double()
        found_angle = math.degrees(math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1]))
        found_shift = m[:, :2] @ centre + m[:, 2] - centre
        angle_err = abs(found_angle - angle)
        shift_err = float((found_shift - shift).norm())
        out[init] = (angle_err, shift_err, seconds)
        rows.append(
            [
                f"rigid, MI, init={init}",
                f"{found_angle:.3f}",
                f"({found_shift[0]:.2f}, {found_shift[1]:.2f})",
                f"**{angle_err:.3f}**",
                f"**{shift_err:.3f}**",
                f"{disp_error(m, truth, shape):.3f}",
                f"{seconds:.1f}",
            ]
        )
    header = [
        "setting",
        "angle found (true 7°)",
        "shift found (true (5, -3))",
        "angle error (°)",
        "shift error (vox)",
        "mean disp. error (vox)",
        "seconds",
    ]
    return md_table(header, rows), out


# --------------------------------------------------------------------------------------------
# 4. affine recovery


def blobs(shape: Sequence[int], seed: int, count: int = 10) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    extent = torch.tensor(shape, dtype=torch.float64) - 1
    centres = (0.3 + 0.4 * torch.rand(count, ndim, generator=gen, dtype=torch.float64)) * extent
    sigmas = (0.05 + 0.05 * torch.rand(count, ndim, generator=gen, dtype=torch.float64)) * extent
    amps = 0.5 + torch.rand(count, generator=gen, dtype=torch.float64)
    return centres, sigmas, amps


def render(params: tuple[torch.Tensor, ...], points: torch.Tensor) -> torch.Tensor:
    centres, sigmas, amps = params
    out = torch.zeros(points.shape[1:], dtype=torch.float64)
    for c, s, a in zip(centres, sigmas, amps):
        d2 = sum(((points[k] - c[k]) / s[k]) ** 2 for k in range(points.shape[0]))
        out = out + a * torch.exp(-0.5 * d2)
    return out[None, None].float()


def random_affine(shape: Sequence[int], seed: int) -> torch.Tensor:
    ndim = len(shape)
    gen = torch.Generator().manual_seed(1000 + seed)
    linear = torch.eye(ndim, dtype=torch.float64) + 0.06 * (
        2 * torch.rand(ndim, ndim, generator=gen, dtype=torch.float64) - 1
    )
    shift = 2.0 * (2 * torch.rand(ndim, generator=gen, dtype=torch.float64) - 1)
    return about_centre(linear, shift, shape)


def affine_case(label: str, moving: torch.Tensor, fixed: torch.Tensor, truth: torch.Tensor) -> list[float]:
    shape = list(fixed.shape[2:])
    ndim = len(shape)
    identity = torch.cat([torch.eye(ndim), torch.zeros(ndim, 1)], 1)
    start = time.perf_counter()
    result = register_affine(moving, fixed, transform="affine", loss="gncc")
    seconds = time.perf_counter() - start
    return [disp_error(identity, truth, shape), disp_error(result.matrix_voxel[0], truth, shape), seconds]


def bench_affine(seeds: Sequence[int], oasis2d: np.ndarray | None, oasis3d: Path | None) -> tuple[str, dict]:
    rows = []
    out = {}
    for shape in ((64, 64), (32, 32, 32)):
        results = []
        for seed in seeds:
            truth = random_affine(shape, seed)
            params = blobs(shape, seed)
            grid = spatial.identity_grid(shape, dtype=torch.float64)
            ndim = len(shape)
            source = torch.linalg.solve(truth[:, :ndim], grid.reshape(ndim, -1) - truth[:, ndim:]).reshape(grid.shape)
            results.append(affine_case("blobs", render(params, source), render(params, grid), truth))
        arr = np.array(results)
        name = f"synthetic blobs {'x'.join(map(str, shape))} ({len(seeds)} seeds)"
        out[name] = arr
        rows.append(row(name, arr))
    real = []
    if oasis2d is not None:
        real.append(("OASIS 2D slice 300, 160x192", torch.from_numpy(oasis2d)[None, None].float()))
    if oasis3d is not None:
        import nibabel as nib

        volume = np.asarray(nib.load(str(oasis3d)).dataobj, dtype=np.float32)
        image = torch.from_numpy(volume)[None, None]
        image = torch.nn.functional.avg_pool3d(image, 2)
        real.append(("OASIS 3D OAS1_0001, half resolution 80x96x112", image))
    for name, image in real:
        results = []
        for seed in seeds[:2]:
            shape = list(image.shape[2:])
            truth = random_affine(shape, seed)
            moving = spatial.warp(image, spatial.affine_to_disp(inverse(truth)[None].float(), shape))
            results.append(affine_case(name, moving, image, truth))
        arr = np.array(results)
        out[name] = arr
        rows.append(row(f"{name} ({len(results)} seeds)", arr))
    header = [
        "images",
        "mean disp. before (vox)",
        "mean disp. error after (vox)",
        "worst case (vox)",
        "seconds",
    ]
    return md_table(header, rows), out


def row(name: str, arr: np.ndarray) -> list[str]:
    return [
        name,
        f"{arr[:, 0].mean():.2f}",
        f"**{arr[:, 1].mean():.3f}**",
        f"{arr[:, 1].max():.3f}",
        f"{arr[:, 2].mean():.1f}",
    ]


# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/results/optimize.md")
    parser.add_argument("--quick", action="store_true", help="fewer pairs and seeds")
    parser.add_argument("--data", default=None, help="shared data folder")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = data_dir(args.data)
    sections = []
    started = time.perf_counter()

    npz = root / "oasis2d_neurite" / "oasis2d.npz"
    images = segs = None
    if npz.is_file():
        with np.load(npz) as data:
            images, segs = data["slice_norm"], data["seg24"]
    ffd_subjects = [300] if args.quick else [300, 310, 320, 330, 340]
    pairs = range(300, 302) if args.quick else range(300, 320)
    seeds = [0, 1] if args.quick else [0, 1, 2, 3, 4]

    if images is not None:
        intro = (
            "Subject i is warped by a known deformation into a \"fixed\" image; `register_ffd` (NCC, final "
            f"control spacing {FFD_SPACING}, 3 levels, bending weight 0.1) recovers it. *Best spacing-"
            f"{FFD_SPACING} B-spline fit error*: the least-squares B-spline of the same spacing fitted to "
            "the true field itself, i.e. the error no FFD of that spacing can go below (0 when the truth "
            "is representable)."
        )
        for label, kind in (("1a", "bspline16"), ("1b", "smooth"), ("1c", "intersubject")):
            text, _ = bench_ffd(images, segs, ffd_subjects, kind)
            title = f"{label}. FFD recovering a known deformation: {FFD_CASES[kind]} (OASIS 2D, seg24)"
            sections.append((title, (intro + "\n\n" if label == "1a" else "") + text))
        text, _ = bench_dense(images, segs, list(pairs))
        title = (
            f"2. Dense instance optimisation, {len(pairs)} inter-subject pairs "
            f"(subject i -> i+1, i = {pairs[0]}..{pairs[-1]}), OASIS 2D seg24"
        )
        sections.append((title, text))
    else:
        sections.append(("1-2. OASIS 2D", f"skipped: {npz} not found"))

    brainweb = root / "itk_brainweb_t1_pd_2d"
    if (brainweb / "BrainT1Slice.png").is_file():
        text, _ = bench_mi(brainweb)
        sections.append(("3. MI rigid recovery (BrainWeb PD moved by 7°, (5, -3) -> T1)", text))
    else:
        sections.append(("3. MI rigid recovery", f"skipped: {brainweb} not found"))

    vol = root / "oasis3d_neurite" / "OASIS_OAS1_0001_MR1" / "aligned_norm.nii.gz"
    text, _ = bench_affine(
        seeds,
        images[300] if images is not None else None,
        vol if (vol.is_file() and not args.quick) else None,
    )
    sections.append(("4. Affine recovery (known random affine, loss gncc, 3 levels)", text))

    total = time.perf_counter() - started
    command = "python -m benchmarks.classical.bench_optimize " + " ".join(argv if argv is not None else sys.argv[1:])
    facts = (
        f"{datetime.date.today().isoformat()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {platform.machine()}, shared machine "
        f"(times are indicative); total {total:.0f} s. Command: `{command.strip()}`"
    )
    parts = ["# morphreg.optimize: acceptance numbers", "", facts, ""]
    for title, text in sections:
        parts += [f"## {title}", "", text, ""]
    parts += [
        "Notes: Dice is the mean over the seg24 labels present (morphreg.metrics.dice); folding is",
        "the % of voxels with det J <= 0 (central differences). Field errors are in voxels.",
        "",
    ]
    report = "\n".join(parts)
    print(report)
    if args.write:
        target = RESULTS / "optimize.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text(target, report)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
