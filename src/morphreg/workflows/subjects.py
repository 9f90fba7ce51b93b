"""Pairs named by subject IDs (``moving,fixed`` = IDs) resolved to files in image and label folders."""

from __future__ import annotations

import csv
from pathlib import Path

from .. import io
from ..io.sitk import is_sitk_path


def _index(folder: Path) -> dict[str, Path]:
    """Subject ID (file name without extension) -> file, for the images of ``folder``."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem, ext = io.split_ext(path)
        if ext or (path.is_file() and is_sitk_path(path)):
            found.setdefault(stem if ext else path.name.rsplit(".", 1)[0], path)
    return found


def resolve_subject_pairs(csv_path: str | Path, images: str | Path, segs: str | Path | None = None
                          ) -> list[dict[str, Path]]:
    """Rows ``{"moving", "fixed"[, "moving_seg", "fixed_seg"]}`` of files for a CSV of subject IDs.

    Args:
        csv_path: CSV with a header ``moving,fixed`` whose cells are subject IDs (e.g.
            ``OASIS_OAS1_0377_MR1``), as ``benchmarks/oasis2d_test_pairs.csv``.
        images: folder with one image per subject, named ``<ID>.<ext>``.
        segs: optional folder with one label map per subject, named the same way.

    Raises:
        ValueError: a missing folder, column or subject (the message names the line).
    """
    csv_path, images = Path(csv_path), Path(images)
    folders = {"images": images, **({"segs": Path(segs)} if segs is not None else {})}
    for what, folder in folders.items():
        if not folder.is_dir():
            raise ValueError(f"{what} folder '{folder}' does not exist")
    image_index = _index(images)
    seg_index = _index(Path(segs)) if segs is not None else {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            records = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read pairs file '{csv_path}': {str(err).splitlines()[0][:160]}") from None
    if not records or "moving" not in records[0] or "fixed" not in records[0]:
        raise ValueError(f"pairs file '{csv_path}' needs a header moving,fixed and at least one row of subject IDs")
    rows = []
    for line, record in enumerate(records, 2):
        row: dict[str, Path] = {}
        for column in ("moving", "fixed"):
            subject = (record.get(column) or "").strip()
            if subject not in image_index:
                raise ValueError(f"pairs file '{csv_path}' line {line}: no image of subject {subject!r} in '{images}'")
            row[column] = image_index[subject]
            if segs is not None:
                if subject not in seg_index:
                    raise ValueError(f"pairs file '{csv_path}' line {line}: no label map of subject {subject!r} in "
                                     f"'{segs}'")
                row[f"{column}_seg"] = seg_index[subject]
        rows.append(row)
    return rows
