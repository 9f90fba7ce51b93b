"""One self-contained HTML page of an evaluation report (figures embedded as base64, tables inline)."""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Mapping
from pathlib import Path

from .. import io

_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
          "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}th{background:#eee}"
          "td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:0.5em 0}")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _number(text: str) -> str:
    try:
        return f"{float(text):.4f}"
    except ValueError:
        return text


def write_html_report(report_dir: str | Path, *, title: str = "morphreg evaluation",
                      label_names: Mapping[int, str] | None = None) -> Path:
    """Write ``report_dir/report.html`` from the files :func:`evaluate_pairs` wrote there.

    Args:
        report_dir: folder holding ``summary.json``, ``pairs.csv``, ``structures.csv`` and
            ``figures/*.png``.
        title: page title.
        label_names: structure names by label value (the per-structure table shows them).

    Returns:
        The path of the page; it embeds every figure, so it can be shared as one file.
    """
    folder = Path(report_dir)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{summary.get('n_pairs', 0)} pairs, method {html.escape(str(summary.get('method', '')))}.</p>"]
    stats = [[key, f"{value['mean']:.4f}", f"{value['sd']:.4f}", str(value.get("n", ""))]
             for key, value in summary.items() if isinstance(value, dict) and "mean" in value]
    parts += ["<h2>Summary</h2>", _table(["metric", "mean", "sd", "n"], stats)]
    failed = summary.get("failed") or []
    if failed:
        parts += [f"<h2>Failed pairs ({len(failed)}, not in the tables)</h2>",
                  _table(["row", "pair", "why"], [[str(f.get("row", "")), str(f.get("pair", "")),
                                                   str(f.get("message", ""))] for f in failed])]
    structures = summary.get("per_structure_dice_after") or {}
    if structures:
        rows = []
        for label, mean in structures.items():
            name = (label_names or {}).get(int(label), "") if str(label).lstrip("-").isdigit() else ""
            rows.append([f"{label} {name}".strip(), f"{mean:.4f}"])
        parts += ["<h2>Dice per structure (after)</h2>", _table(["structure", "mean Dice"], rows)]
    pairs_csv = folder / "pairs.csv"
    if pairs_csv.exists():
        with open(pairs_csv, newline="", encoding="utf-8") as handle:
            reader = list(csv.reader(handle))
        if reader:
            parts += ["<h2>Pairs</h2>", _table(reader[0], [[_number(c) for c in row] for row in reader[1:]])]
    figures = sorted((folder / "figures").glob("*.png")) if (folder / "figures").is_dir() else []
    if figures:
        parts.append("<h2>Figures</h2>")
    for figure in figures:
        data = base64.b64encode(figure.read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(figure.stem)}</h3><img alt='{html.escape(figure.stem)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    path = folder / "report.html"
    io.save_text("\n".join(parts), path)
    return path


def write_template_page(path: str | Path, strip_png: str | Path, log_csv: str | Path, *,
                        title: str = "morphreg template") -> Path:
    """Write the QC page of a template build: the per-iteration log table and the strip, embedded.

    Args:
        path: the page (``T/qc.html``).
        strip_png: the template after each iteration (:func:`morphreg.viz.template.plot_template_iterations`).
        log_csv: ``T/log.csv`` (one row per stage).

    Returns:
        ``path``; one self-contained file.
    """
    with open(log_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    data = base64.b64encode(Path(strip_png).read_bytes()).decode("ascii")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p>Iteration 0 is the affine average; each later one registers every subject to the previous "
             "template. <code>mean_disp_norm</code> is the mean displacement of the subjects to the previous "
             "template (voxels): the bias each update removes; it goes to ~0 as the template settles.</p>",
             _table(rows[0], [[_number(c) for c in row] for row in rows[1:]]) if rows else "",
             f"<img alt='template after each iteration' src='data:image/png;base64,{data}'>",
             "</body></html>"]
    io.save_text("\n".join(parts), path)
    return Path(path)
