"""Evaluation of a registration method over a list of pairs: overlap, regularity, time.

Outputs in ``out_dir``: ``pairs.csv`` (one row per pair), ``structures.csv`` (one row per pair
and label), ``summary.json`` (means and standard deviations) and figures for the first pairs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import io, metrics, spatial
from .._files import ReportDir, atomic_write, atomic_write_text
from ..data import read_pairs_csv
from . import distributed as dist_utils
from .files import check_finite_field, load_pair, network_input, run_timed
from .jobs import JobStatus, first_line, job_status
from .pipeline import Registration
from .spec import RegistrationSpec

#: The files :func:`evaluate_pairs` writes in its report folder (besides ``figures/``).
REPORT_FILES = ReportDir.FILES
PAIR_COLUMNS = ("pair", "moving", "fixed", "dice_before", "dice_after", "hd95_before", "hd95_after",
                "folding_pct", "sdlogj", "seconds")


@dataclass
class EvalPair:
    """One pair to evaluate: ``(1, 1, *spatial)`` tensors on the same grid."""

    name: str
    moving: torch.Tensor
    fixed: torch.Tensor
    moving_seg: torch.Tensor | None = None
    fixed_seg: torch.Tensor | None = None
    moving_name: str = ""
    fixed_name: str = ""
    spacing: Sequence[float] | None = None


def pairs_from_csv(
    csv_path: str | os.PathLike[str], normalise: str | None, ndim: int | None = None
) -> Iterator[EvalPair]:
    """Read the pairs of a CSV (``moving,fixed[,moving_seg,fixed_seg]``) lazily, on the fixed grids.

    Images are normalised as for the network; labels stay integer; ``spacing`` comes from the
    fixed image's affine (so HD95 is in mm). ``ndim`` (if given) is checked for every pair.
    """
    rows = read_pairs_csv(csv_path)  # checked now, before any output is written
    return load_pair_rows(csv_path, rows, normalise, ndim)


def _row_pair(csv_path: str | os.PathLike[str], i: int, row: Mapping[str, Any], ndim: int | None) -> Any:
    """Row ``i`` (0-based) of a pairs CSV read as a pair on the fixed grid; errors name its line."""
    where = f"`pairs_csv` '{csv_path}' line {i + 2}:"
    names = {k: f"{where} {k}" for k in ("moving", "fixed", "moving_seg", "fixed_seg")}
    pair = load_pair(row["moving"], row["fixed"], row.get("moving_seg"), row.get("fixed_seg"), names=names)
    if ndim is not None and pair.fixed.ndim != ndim:
        raise ValueError(f"pairs file '{csv_path}' line {i + 2}: images are {pair.fixed.ndim}D, expected {ndim}D")
    return pair


def check_pair_rows(csv_path: str | os.PathLike[str], rows: list, ndim: int | None) -> None:
    """Read every pair once before any is registered, so a bad file in any row fails the evaluation
    before it starts (and before anything is written), naming its line.

    Raises:
        ValueError: the first row that cannot be read (unreadable file, label map off its image's
            grid, wrong dimensionality, ...).
    """
    for i, row in enumerate(rows):
        _row_pair(csv_path, i, row, ndim)


def load_pair_rows(csv_path: str | os.PathLike[str], rows: list, normalise: str | None, ndim: int | None
               ) -> Iterator[EvalPair]:
    for i, row in enumerate(rows):
        pair = _row_pair(csv_path, i, row, ndim)
        segs = [None if s is None else io.to_tensor(s) for s in (pair.moving_seg, pair.fixed_seg)]
        yield EvalPair(f"{i:04d}", network_input(pair.moving, normalise), network_input(pair.fixed, normalise),
                       *segs, moving_name=str(row["moving"]), fixed_name=str(row["fixed"]),
                       spacing=tuple(float(v) for v in pair.fixed.spacing))


def _nan_stats(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": math.nan, "sd": math.nan, "median": math.nan, "n": 0}
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "median": float(np.median(arr)), "n": int(arr.size)}


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    atomic_write(path, write)


def score_pair(register: Registration, pair: EvalPair, *, labels: Sequence[int] | None = None,
               label_names: Mapping[int, str] | None = None, spacing: Sequence[float] | None = None,
               with_hd95: bool = True, figure_stem: Path | None = None, viz: Any = None,
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Register one pair and score it: ``(pairs.csv row, structures.csv rows)``; figures at
    ``figure_stem`` (``..._registration.png`` etc.) when given."""
    output, seconds = run_timed(register, pair.moving, pair.fixed)
    disp = output.disp.detach().float().cpu()
    check_finite_field(disp)
    row: dict[str, Any] = {"pair": pair.name, "moving": pair.moving_name, "fixed": pair.fixed_name,
                           "folding_pct": float(metrics.folding_fraction(disp)[0]),
                           "sdlogj": float(metrics.log_jacobian_std(disp)[0]), "seconds": seconds}
    moved = spatial.warp(pair.moving, disp)
    moved_seg = None
    structure_rows: list[dict[str, Any]] = []
    if pair.moving_seg is not None and pair.fixed_seg is not None:
        moved_seg = spatial.warp(pair.moving_seg, disp, mode="nearest")
        before = metrics.dice(pair.moving_seg, pair.fixed_seg, labels)
        after = metrics.dice(moved_seg, pair.fixed_seg, before.labels)
        row["dice_before"] = float(before.mean[0])
        row["dice_after"] = float(after.mean[0])
        if with_hd95:
            for key, seg in (("hd95_before", pair.moving_seg), ("hd95_after", moved_seg)):
                row[key] = float(metrics.hd95(seg, pair.fixed_seg, before.labels, pair.spacing or spacing).mean[0])
        for j, label in enumerate(before.labels.tolist()):
            name = (label_names or {}).get(label, str(label))
            b, a = float(before.per_label[0, j]), float(after.per_label[0, j])
            structure_rows.append({"pair": pair.name, "label": label, "structure": name,
                                   "dice_before": b, "dice_after": a})
    if figure_stem is not None and viz is not None:
        figure_stem.parent.mkdir(parents=True, exist_ok=True)
        as_np = [t[0, 0].numpy() for t in (pair.fixed, pair.moving, moved)]
        segs = {}
        if moved_seg is not None:
            segs = {"fixed_seg": pair.fixed_seg[0, 0].numpy(), "moving_seg": pair.moving_seg[0, 0].numpy(),
                    "moved_seg": moved_seg[0, 0].numpy()}
        viz.plot_registration(*as_np, f"{figure_stem}_registration.png", title=pair.name, **segs)
        viz.plot_overview(*as_np, disp[0].numpy(), f"{figure_stem}_overview.png")
        viz.plot_jacobian(disp[0].numpy(), f"{figure_stem}_jacobian.png")
    return row, structure_rows


def evaluate_pairs(
    register: Registration,
    pairs: Iterable[EvalPair],
    out_dir: str | os.PathLike[str],
    *,
    labels: Sequence[int] | None = None,
    label_names: Mapping[int, str] | None = None,
    spacing: Sequence[float] | None = None,
    figures: int = 4,
    with_hd95: bool = True,
    method: str = "morphreg",
    progress: bool = True,
) -> dict[str, Any]:
    """Register every pair with ``register`` and score it; write the reports.

    Args:
        register: ``(moving, fixed) -> RegistrationOutput`` for ``(1, 1, *spatial)`` tensors (timed per
            call, synchronising CUDA).
        pairs: the pairs (labels optional; Dice/HD95 need both).
        out_dir: report folder (created).
        labels: label values to score (default: all non-zero labels of each pair).
        label_names: names for ``structures.csv`` and the box plot.
        spacing: voxel size for HD95 (mm) when a pair does not give its own; default 1.
        figures: how many pairs get figures.
        with_hd95: HD95 is the slowest metric; switch it off for quick runs.
        method: name used in the summary.

    Returns:
        The summary dictionary also written to ``summary.json``. Under ``torchrun`` (an
        initialised process group) the ranks register every ``world_size``-th pair each, the
        rows are gathered, and rank 0 alone writes the reports.
    """
    viz = _viz_or_none(figures)
    out = Path(out_dir)  # created with the first thing written: a pair refused up front leaves nothing behind
    info = dist_utils.current()
    pair_rows: list[dict[str, Any]] = []
    structure_rows: list[dict[str, Any]] = []
    for index, pair in enumerate(tqdm(pairs, desc="evaluate", disable=not (progress and info.is_main))):
        if index % info.world_size != info.rank:  # under torchrun, ranks take turns
            continue
        stem = out / "figures" / f"pair{index:03d}" if index < figures else None
        row, structures = score_pair(register, pair, labels=labels, label_names=label_names, spacing=spacing,
                                     with_hd95=with_hd95, figure_stem=stem, viz=viz)
        pair_rows.append(row)
        structure_rows += structures
    pair_rows = dist_utils.all_gather_objects(pair_rows, info)
    structure_rows = dist_utils.all_gather_objects(structure_rows, info)
    summary, per_structure = summarise(pair_rows, structure_rows, method)
    if info.is_main:
        write_reports(out, pair_rows, structure_rows, summary, per_structure, viz)
    return summary


def summarise(pair_rows: list[dict[str, Any]], structure_rows: list[dict[str, Any]], method: str
              ) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
    """The summary of scored pairs (means, SDs, medians), and the Dice values per structure
    before and after (for the box plot)."""
    per_structure: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    for srow in structure_rows:
        if math.isfinite(srow["dice_after"]):
            per_structure["after"].setdefault(srow["structure"], []).append(srow["dice_after"])
            per_structure["before"].setdefault(srow["structure"], []).append(srow["dice_before"])
    summary: dict[str, Any] = {"method": method, "n_pairs": len(pair_rows), "failed": []}
    for key in PAIR_COLUMNS[3:]:
        summary[key] = _nan_stats([r.get(key, math.nan) for r in pair_rows])
    summary["per_structure_dice_after"] = {k: _nan_stats(v)["mean"] for k, v in per_structure["after"].items()}
    return summary, per_structure


def write_reports(out: Path, pair_rows: list[dict[str, Any]], structure_rows: list[dict[str, Any]],
                  summary: dict[str, Any], per_structure: dict[str, dict[str, list[float]]], viz: Any) -> None:
    """``pairs.csv``, ``structures.csv``, ``summary.json`` and the Dice box plot in ``out``."""
    pair_rows = sorted(pair_rows, key=lambda r: r["pair"])
    structure_rows = sorted(structure_rows, key=lambda r: (r["pair"], r["label"]))
    (out / "figures").mkdir(parents=True, exist_ok=True)
    _write_csv(out / "pairs.csv", PAIR_COLUMNS, pair_rows)
    _write_csv(out / "structures.csv", ("pair", "label", "structure", "dice_before", "dice_after"), structure_rows)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    if structure_rows and viz is not None:
        viz.plot_dice_boxplot({"before": per_structure["before"], "after": per_structure["after"]},
                              out / "figures" / "dice_per_structure.png",
                              title=f"{summary['method']}: Dice per structure")


def _viz_or_none(figures: int) -> Any:
    """:mod:`morphreg.viz`, or ``None`` when matplotlib cannot load and no pair figure is asked for.

    viz draws on Agg canvases only, but importing matplotlib fails for a bad ``MPLBACKEND``;
    that must not refuse an evaluation that draws no figure (the box plot is then skipped).
    """
    try:
        from .. import viz
    except Exception as err:  # matplotlib raises ValueError, ImportError, ... at import
        if figures > 0:
            raise ValueError(
                f"cannot draw figures: matplotlib does not load ({str(err).splitlines()[0][:160]}); "
                "fix MPLBACKEND or ask for no figures (`figures` 0)"
            ) from None
        return None
    return viz


@dataclass(frozen=True)
class EvalJob:
    """Score one pair of a CSV with ``spec`` (one runner job; ``finished`` is never true: an
    evaluation writes one report, not one file per pair)."""

    row: int
    name: str
    moving: str
    fixed: str
    spec: RegistrationSpec
    moving_seg: str | None = None
    fixed_seg: str | None = None
    input_names: tuple[tuple[str, str], ...] = ()
    ndim: int | None = None
    where: str = ""
    labels: tuple[int, ...] | None = None
    label_names: tuple[tuple[int, str], ...] = ()
    with_hd95: bool = True
    figure_stem: str | None = None

    def finished(self) -> bool:
        return False

    def read_pair(self) -> Any:
        """The pair on the fixed grid (:func:`morphreg.workflows.files.load_pair`); errors name the CSV line."""
        try:
            pair = load_pair(self.moving, self.fixed, self.moving_seg, self.fixed_seg,
                             names=dict(self.input_names) or None)
        except ValueError as err:  # a file's own message (io) names the file, not the row
            message = first_line(err)
            raise ValueError(message if f"line {self.row + 1}" in message else f"{self.where} {message}") from None
        if self.ndim is not None and pair.fixed.ndim != self.ndim:
            raise ValueError(f"{self.where} images are {pair.fixed.ndim}D, expected {self.ndim}D")
        return pair

    def run(self, resume: bool = False) -> JobStatus:
        """Never raises for this pair's failures; ``extra`` holds ``(pairs.csv row, structures.csv rows)``."""
        start = time.perf_counter()
        try:
            pair = self.read_pair()
            built = self.spec.build(pair, moving_path=self.moving)
            segs = [None if s is None else io.to_tensor(s) for s in (pair.moving_seg, pair.fixed_seg)]
            scored = EvalPair(self.name, network_input(pair.moving, built.normalise),
                              network_input(pair.fixed, built.normalise), *segs, moving_name=self.moving,
                              fixed_name=self.fixed, spacing=tuple(float(v) for v in pair.fixed.spacing))
            stem = Path(self.figure_stem) if self.figure_stem else None
            row, structures = score_pair(built.registration, scored, labels=self.labels,
                                         label_names=dict(self.label_names), with_hd95=self.with_hd95,
                                         figure_stem=stem, viz=_viz_or_none(1) if stem else None)
        except Exception as err:  # noqa: BLE001 - this pair's status
            return job_status(self, "error", start, first_line(err))
        return replace(job_status(self, "done", start, dice=row.get("dice_after", math.nan)), extra=(row, structures))


def evaluation_jobs(csv_path: str | os.PathLike[str], rows: list[dict[str, Any]], spec: RegistrationSpec,
                    out_dir: str | os.PathLike[str], *, ndim: int | None = None, figures: int = 4,
                    with_hd95: bool = True, label_names: Mapping[int, str] | None = None) -> list[EvalJob]:
    """One :class:`EvalJob` per row of a pairs CSV (rows from :func:`morphreg.data.read_pairs_csv`)."""
    jobs = []
    for i, row in enumerate(rows):
        where = f"`pairs_csv` '{csv_path}' line {i + 2}:"
        names = tuple((k, f"{where} {k}") for k in ("moving", "fixed", "moving_seg", "fixed_seg"))
        cells = {k: (str(row[k]) if row.get(k) is not None else None) for k in ("moving_seg", "fixed_seg")}
        jobs.append(EvalJob(i + 1, f"{i:04d}", str(row["moving"]), str(row["fixed"]), spec, cells["moving_seg"],
                            cells["fixed_seg"], names, ndim, f"pairs file '{csv_path}' line {i + 2}:",
                            label_names=tuple((label_names or {}).items()), with_hd95=with_hd95,
                            figure_stem=str(Path(out_dir) / "figures" / f"pair{i:03d}") if i < figures else None))
    return jobs


def evaluate_jobs(jobs: Sequence[EvalJob], out_dir: str | os.PathLike[str], runner: Any = None, *,
                  method: str = "morphreg", figures: int = 4) -> dict[str, Any]:
    """Run ``jobs`` on ``runner`` (:mod:`morphreg.workflows.runner`) and write the reports, as
    :func:`evaluate_pairs` does.

    Every pair is read once first (:meth:`EvalJob.read_pair`), so an unreadable file in any row
    stops the evaluation before the first registration, with nothing written. A pair that fails
    later (its registration) does not discard the others: the reports cover the pairs that
    finished and the summary's ``failed`` lists the rows that did not (``{row, pair, message}``).

    Returns:
        The summary (also ``summary.json``); ``failed`` is empty when every pair finished.

    Raises:
        ValueError: a row cannot be read (naming its CSV line; nothing is written).
    """
    from .runner import run_jobs

    viz = _viz_or_none(figures)
    for job in jobs:
        job.read_pair()
    statuses = run_jobs(jobs, runner, report=lambda line: None)
    done = [s for s in statuses if s.status == "done"]
    failed = [s for s in statuses if s.status == "error"]
    pair_rows = [s.extra[0] for s in done]
    structure_rows = [r for s in done for r in s.extra[1]]
    summary, per_structure = summarise(pair_rows, structure_rows, method)
    summary["failed"] = [{"row": s.row, "pair": s.name, "message": s.message} for s in failed]
    write_reports(Path(out_dir), pair_rows, structure_rows, summary, per_structure, viz)
    return summary
