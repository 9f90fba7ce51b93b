"""The OASIS study's outputs as read back for the report: one :class:`Result` per method, and the
formatting of its numbers (mean ± sd, seconds, % folding, Markdown tables)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import md_table
from benchmarks.oasis_study import study_config as cfg

MAIN = ["morphreg_ncc_l1", "morphreg_mse_l0.01", "morphreg_diffeo", "morphreg_semisup"]
SYN = ["ants_syn", "ants_syncc"]
PEERS = ["vxm034", "vxm034_paper", "monai"]


# ---------------------------------------------------------------------------------------------
# reading


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def to_float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


class Result:
    """The evaluation of one 2D (or 3D) method."""

    def __init__(self, folder: Path, segs: tuple[str, str]) -> None:
        self.folder = folder
        self.info = read_json(folder / "method.json") or {}
        self.timing = read_json(folder / "timing.json") or {}
        self.summary = {s: read_json(folder / s / "summary.json") for s in segs}
        self.pairs = {s: read_csv(folder / s / "pairs.csv") for s in segs}
        self.structures = {s: read_csv(folder / s / "structures.csv") for s in segs}

    @property
    def ok(self) -> bool:
        return all(v is not None for v in self.summary.values()) and bool(self.info)

    def stat(self, seg: str, key: str) -> dict[str, float]:
        return (self.summary.get(seg) or {}).get(key, {"mean": math.nan, "sd": math.nan, "n": 0})

    def per_pair(self, seg: str, key: str) -> np.ndarray:
        return np.array([to_float(r.get(key)) for r in self.pairs.get(seg, [])])


def load_results(study: Path) -> tuple[dict[str, Result], dict[str, Result]]:
    r2 = {m.name: Result(study / "eval" / m.name, ("seg24", "seg4")) for m in cfg.methods_2d()}
    r3 = {m.name: Result(study / "oasis3d" / m.name, ("seg35", "seg4")) for m in cfg.methods_3d()}
    return ({k: v for k, v in r2.items() if v.ok}, {k: v for k, v in r3.items() if v.ok})


# ---------------------------------------------------------------------------------------------
# formatting


def pm(stat: dict[str, float], digits: int = 3) -> str:
    if not stat or not stat.get("n"):
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def fmt_seconds(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2e}"


def fmt_pct(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    return f"{value:.1e}" if value < 1e-3 else (f"{value:.4f}" if value < 0.01 else f"{value:.3f}")


def training_text(r: Result) -> str:
    train = r.info.get("train") or {}
    if not train:
        return "–"
    steps = train.get("steps")
    seconds = to_float(str(train.get("seconds")))
    text = f"{steps} steps"
    if math.isfinite(seconds):
        text += f", {seconds / 60:.1f} min"
    if r.info.get("group") == "acceptance":
        if train.get("checkpoint_step"):
            text += f", best-validation checkpoint of step {train['checkpoint_step']}"
        text += f"; {r.info.get('normalise')} inputs"
    return text


def seconds(r: Result) -> float:
    """Seconds per pair from the dedicated timing phase (NaN if it is missing)."""
    return float(r.timing.get("mean", math.nan))


def table(header: list[str], rows: list[list[str]]) -> str:
    return md_table(header, rows)


def paired(results: dict[str, Result], a: str, b: str, seg: str = "seg24") -> tuple[float, float, int]:
    """Mean paired difference of Dice (a - b) over pairs both scored, and the Wilcoxon p-value."""
    from scipy.stats import wilcoxon

    da = {r["pair"]: to_float(r["dice_after"]) for r in results[a].pairs[seg]}
    db = {r["pair"]: to_float(r["dice_after"]) for r in results[b].pairs[seg]}
    keys = [k for k in da if k in db and math.isfinite(da[k]) and math.isfinite(db[k])]
    diff = np.array([da[k] - db[k] for k in keys])
    if diff.size == 0:
        return math.nan, math.nan, 0
    p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return float(diff.mean()), p, int(diff.size)
