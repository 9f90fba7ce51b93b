"""Shared by the built-in model scripts: the OASIS 2D held-out pairs and one scoring loop.

The 64 test subjects and 128 test pairs are those of the study (``oasis_study/oasis2d_test_pairs.csv``,
made by ``oasis_study/prepare_oasis2d.py``): subjects never used in training nor in choosing a recipe.
Dice is computed as ``morphreg evaluate`` does (labels present in the moving or fixed map, the
moved map warped with nearest neighbours), folding = % voxels with det J <= 0.
"""

from __future__ import annotations

import csv
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import TEST_PAIRS_CSV, oasis2d_npz
from morphreg import metrics, spatial
from morphreg.data import normalise_intensity

#: ANTs SyNCC on the same 128 pairs (docs/results/study.md, section 1).
SYNCC_SEG24 = 0.737


def test_pairs() -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
    """The stack (``slice_norm``, ``seg24``, ``seg4``) and the 128 test pairs as index pairs."""
    stack = np.load(oasis2d_npz())
    names = [str(s) for s in stack["subjects"]]
    index = {name: i for i, name in enumerate(names)}
    with open(TEST_PAIRS_CSV, newline="") as handle:
        pairs = [(index[r["moving"]], index[r["fixed"]]) for r in csv.DictReader(handle)]
    return {k: stack[k] for k in ("slice_norm", "seg24", "seg4")}, pairs


def invert_in_brain(image: np.ndarray) -> np.ndarray:
    """Contrast inversion inside the brain (voxels > 0): ``max - x`` there, background kept at 0."""
    out = image.astype(np.float32).copy()
    brain = out > 0
    out[brain] = out[brain].max() - out[brain] + out[brain].min()
    return out


def tensor(image: np.ndarray, normalise: str | None = "percentile") -> torch.Tensor:
    data = normalise_intensity(image, normalise) if normalise else image.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(data))[None, None]


def score_pairs(
    register: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    stack: dict[str, np.ndarray],
    pairs: list[tuple[int, int]],
    *,
    moving_image: Callable[[np.ndarray], np.ndarray] = lambda x: x,
    normalise: str | None = "percentile",
) -> dict[str, list[float]]:
    """Register every pair (``register(moving, fixed) -> disp`` on normalised tensors) and score it."""
    rows: dict[str, list[float]] = {k: [] for k in ("seg24", "seg4", "seg24_before", "seg4_before", "folding")}
    for m, f in pairs:
        disp = register(tensor(moving_image(stack["slice_norm"][m]), normalise),
                        tensor(stack["slice_norm"][f], normalise)).detach().float()
        rows["folding"].append(float(metrics.folding_fraction(disp)[0]))
        for key in ("seg24", "seg4"):
            ms = torch.from_numpy(stack[key][m].astype(np.int64))[None, None]
            fs = torch.from_numpy(stack[key][f].astype(np.int64))[None, None]
            before = metrics.dice(ms, fs)
            after = metrics.dice(spatial.warp(ms, disp, mode="nearest"), fs, before.labels)
            rows[f"{key}_before"].append(float(before.mean[0]))
            rows[key].append(float(after.mean[0]))
    return rows


def network(
    model: torch.nn.Module, weight: float | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    model.eval()

    def run(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(moving, fixed).disp if weight is None else model(moving, fixed, weight=weight).disp

    return run


def mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"
