"""The conclusion of the OASIS study report: sentences filled with the measured numbers."""

from __future__ import annotations

import math

import numpy as np

from benchmarks.oasis_study import study_config as cfg
from benchmarks.oasis_study.study_figures import sweep_points
from benchmarks.oasis_study.study_results import MAIN, SYN, Result, fmt_pct, paired, seconds, to_float

NCC, MSE = "morphreg_ncc_l1", "morphreg_mse_l0.01"  # the main NCC and MSE models of the study


def _dice(results: dict[str, Result], name: str, seg: str = "seg24") -> float:
    return results[name].stat(seg, "dice_after")["mean"] if name in results else math.nan


def _fold(results: dict[str, Result], name: str) -> float:
    return results[name].stat("seg24", "folding_pct")["mean"] if name in results else math.nan


def _trend(values: list[float]) -> str:
    d = np.diff(values)
    if np.all(d < 0):
        return "falls monotonically"
    if np.all(d > 0):
        return "rises monotonically"
    return "is not monotone"


def _losses_and_sweeps(results: dict[str, Result], results3: dict[str, Result], steps: str) -> list[str]:
    """MSE vs NCC at the paper's λ, and the λ sweeps."""
    out: list[str] = []
    ncc, mse = NCC, MSE
    if ncc in results and mse in results:
        diff, p, n = paired(results, ncc, mse)
        better = "NCC" if diff > 0 else "MSE"
        out.append(
            f"* **MSE vs NCC** (paper's λ, {steps} steps): NCC reaches Dice {_dice(results, ncc):.3f} (seg24) / "
            f"{_dice(results, ncc, 'seg4'):.3f} (seg4), MSE "
            f"{_dice(results, mse):.3f} / {_dice(results, mse, 'seg4'):.3f}; "
            f"{better} is ahead by {abs(diff):.3f} seg24 Dice on the same pairs (Wilcoxon p={p:.2g}, n={n}), "
            f"with {_fold(results, ncc):.3f} % vs {_fold(results, mse):.3f} % folding."
        )
    for loss in ("ncc", "mse"):
        pts = sweep_points(results, loss)
        if len(pts) >= 2:
            lam = [p[0] for p in pts]
            dice = [p[1].stat("seg24", "dice_after")["mean"] for p in pts]
            fold = [p[1].stat("seg24", "folding_pct")["mean"] for p in pts]
            best = lam[int(np.argmax(dice))]
            out.append(
                f"* **λ sweep, {loss.upper()}** (λ = {', '.join(f'{v:g}' for v in lam)}): Dice "
                f"{' → '.join(f'{v:.3f}' for v in dice)} ({_trend(dice)}; best at λ={best:g}); folding "
                f"{' → '.join(f'{v:.3f}' for v in fold)} % ({_trend(fold)}). From λ={lam[0]:g} to λ={lam[-1]:g}, "
                f"Dice changes by {dice[-1] - dice[0]:+.3f} and folding by {fold[-1] - fold[0]:+.3f} points."
            )
    return out


def _variants(results: dict[str, Result], results3: dict[str, Result], steps: str) -> list[str]:
    """The diffeomorphic and semi-supervised models against the NCC model."""
    out: list[str] = []
    ncc = NCC
    if "morphreg_diffeo" in results and ncc in results:
        out.append(
            "* **Diffeomorphic** (NCC λ=1, 7 steps at half resolution): "
            f"Dice {_dice(results, 'morphreg_diffeo'):.3f} vs "
            f"{_dice(results, ncc):.3f} for the displacement model, "
            f"folding {fmt_pct(_fold(results, 'morphreg_diffeo'))} % vs "
            f"{fmt_pct(_fold(results, ncc))} %."
        )
    if "morphreg_semisup" in results and ncc in results:
        diff, p, n = paired(results, "morphreg_semisup", ncc)
        d4, _, _ = paired(results, "morphreg_semisup", ncc, "seg4")
        out.append(
            f"* **Semi-supervised** (γ={cfg.SEG_WEIGHT:g}, seg24 of training subjects): {diff:+.3f} seg24 Dice "
            f"(p={p:.2g}) and {d4:+.3f} seg4 Dice relative to the unsupervised NCC model, folding "
            f"{_fold(results, 'morphreg_semisup'):.3f} %."
        )
    return out


def _against_syn(results: dict[str, Result], results3: dict[str, Result], steps: str) -> list[str]:
    """morphreg against ANTs SyN / SyNCC."""
    out: list[str] = []
    ncc = NCC
    for syn in SYN:
        if syn in results and ncc in results:
            diff, p, n = paired(results, ncc, syn)
            best_name = max((n2 for n2 in MAIN if n2 in results), key=lambda n2: _dice(results, n2))
            d_best, p_best, _ = paired(results, best_name, syn)
            r = results[syn]
            ratio = seconds(r) / seconds(results[ncc])
            out.append(
                f"* **vs {r.info['label']}** (Dice {_dice(results, syn):.3f}, {seconds(r):.2f} s/pair, "
                f"folding {fmt_pct(_fold(results, syn))} %): morphreg NCC {diff:+.3f} Dice (p={p:.2g}); the best "
                f"morphreg model ({results[best_name].info['label']}) {d_best:+.3f} (p={p_best:.2g}); "
                f"morphreg NCC is {ratio:,.0f}× faster per pair."
            )
    return out


def _against_peers(results: dict[str, Result], results3: dict[str, Result], steps: str) -> list[str]:
    """morphreg against MONAI and voxelmorph, and voxelmorph's architecture against its implementation."""
    out: list[str] = []
    ncc = NCC
    for peer in ("monai", "vxm034", "vxm034_paper"):
        if peer in results and ncc in results:
            diff, p, n = paired(results, ncc, peer)
            same = peer == "vxm034_paper"
            out.append(
                f"* **vs {results[peer].info['label']}** (same data, order, steps and NCC loss; "
                + ("the same architecture as VxmDense" if same else "its own architecture")
                + f"): morphreg NCC {diff:+.3f} seg24 Dice (p={p:.2g}); folding "
                f"{fmt_pct(_fold(results, ncc))} % vs {fmt_pct(_fold(results, peer))} %."
            )
    if "vxm034" in results and "vxm034_paper" in results:
        arch, p_arch, _ = paired(results, "vxm034_paper", "vxm034")
        line = (
            f"* **Architecture vs implementation**: within voxelmorph 0.3.4, the paper's architecture scores "
            f"{arch:+.3f} seg24 Dice over its small default (p={p_arch:.2g})"
        )
        if ncc in results:
            impl, p_impl, _ = paired(results, ncc, "vxm034_paper")
            line += (
                f"; with the architecture matched, morphreg NCC differs from voxelmorph by {impl:+.3f} "
                f"(p={p_impl:.2g}): the gap to voxelmorph's default is its architecture, not the implementation"
                if abs(impl) < abs(arch) / 4
                else f"; with the architecture matched, morphreg NCC differs from voxelmorph by {impl:+.3f} "
                f"(p={p_impl:.2g})"
            )
        out.append(line + ".")
    return out


def _baseline_and_training_length(results: dict[str, Result], results3: dict[str, Result], steps: str) -> list[str]:
    """No registration, and the long acceptance models against the study's budget."""
    out: list[str] = []
    ncc, mse = NCC, MSE
    if "none" in results and ncc in results:
        out.append(
            f"* Without registration the pairs overlap at Dice {_dice(results, 'none'):.3f} (seg24) / "
            f"{_dice(results, 'none', 'seg4'):.3f} (seg4)."
        )
    for loss in ("ncc", "mse"):
        main = ncc if loss == "ncc" else mse
        runs = [
            n
            for n, r in results.items()
            if r.info.get("group") == "acceptance" and (r.info.get("train") or {}).get("loss") == loss
        ]
        if runs and main in results:
            acc = max(runs, key=lambda n: (results[n].info.get("train") or {}).get("steps") or 0)
            train = results[acc].info.get("train", {})
            out.append(
                f"* **Training length** ({loss.upper()}): the longest acceptance model, {results[acc].info['label']} "
                f"({train.get('steps')} steps, {to_float(str(train.get('seconds'))) / 60:.0f} min, "
                f"{results[acc].info.get('normalise')} inputs, best-validation checkpoint), reaches Dice "
                f"{_dice(results, acc):.3f} with {fmt_pct(_fold(results, acc))} "
                f"% folding, vs {_dice(results, main):.3f} "
                f"and {fmt_pct(_fold(results, main))} % after the study's {steps} steps."
            )
    return out


def _volumes_3d(results: dict[str, Result], results3: dict[str, Result], steps: str) -> list[str]:
    """The 3D results."""
    out: list[str] = []
    if results3:
        parts = []
        for name in ("none", "ants_syn", "morphreg_dense", "morphreg_dense_diffeo"):
            if name in results3:
                r = results3[name]
                parts.append(
                    f"{r.info['label']} Dice {r.stat('seg35', 'dice_after')['mean']:.3f} (seg35) / "
                    f"{r.stat('seg4', 'dice_after')['mean']:.3f} (seg4), "
                    f"{fmt_pct(r.stat('seg35', 'folding_pct')['mean'])} % "
                    f"folding, {r.stat('seg35', 'seconds')['mean']:.0f} s"
                )
        out.append("* **3D** (mean of both directions): " + "; ".join(parts) + ".")
    return out


def conclusion(results: dict[str, Result], results3: dict[str, Result], steps: str) -> list[str]:
    """The conclusion's bullet points, each filled with the numbers of the tables above."""
    out: list[str] = []
    for part in (_losses_and_sweeps, _variants, _against_syn, _against_peers, _baseline_and_training_length,
                 _volumes_3d):
        out += part(results, results3, steps)
    return out
