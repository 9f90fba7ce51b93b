"""evaluate's HTML page embeds its figures and tables."""

from __future__ import annotations

import base64
import json

from morphreg.workflows.report_html import write_html_report


def test_html_embeds_figures_and_tables(tmp_path):
    (tmp_path / "figures").mkdir()
    png = b"\x89PNG\r\n\x1a\nfake"
    (tmp_path / "figures" / "pair000_overview.png").write_bytes(png)
    (tmp_path / "summary.json").write_text(json.dumps({
        "method": "morphreg", "n_pairs": 1, "dice_after": {"mean": 0.75, "sd": 0.0, "n": 1},
        "per_structure_dice_after": {"Left-Hippocampus": 0.7}}))
    (tmp_path / "pairs.csv").write_text("pair,moving,fixed,dice_after\n0000,OASIS_0001,OASIS_0002,0.75\n")
    page = write_html_report(tmp_path).read_text(encoding="utf-8")
    assert base64.b64encode(png).decode() in page and "data:image/png;base64," in page
    assert "OASIS_0001" in page and "Left-Hippocampus" in page and "0.7500" in page
    assert "src='figures" not in page  # nothing linked: one file to share
