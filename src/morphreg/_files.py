"""Files with one job each: the one atomic write, and the names of the files a run or a report holds.

Every file morphreg writes goes through :func:`atomic_write`: the content is written to a hidden
temporary file next to the target (same extension, so format-by-suffix writers such as nibabel,
matplotlib and SimpleITK pick the right format), flushed to disk with ``fsync``, then renamed over
the target. A reader therefore sees the old file or the complete new one, never half of one, and a
failed write leaves no temporary file behind.
"""

from __future__ import annotations

import glob
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PathLike = str | os.PathLike[str]

#: Extensions of two parts, kept whole on temporary files (``.nii.gz`` stays ``.nii.gz``).
_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz")


def _suffix(path: Path) -> str:
    lower = path.name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[-len(suffix):]
    return path.suffix


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a temporary file next to ``path``, ``fsync`` it, then rename it over ``path``.

    The parent folder is created. The temporary file is hidden (leading dot), has ``path``'s
    extension, is created with the usual umask permissions, and is deleted if anything fails, so
    ``path`` is either its old content or the complete new one. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tmp = path.parent / f".{stem}.{secrets.token_hex(4)}.tmp{suffix}"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def cannot_write_in(folder: PathLike) -> str | None:
    """Why no file can be created in the existing ``folder`` (the OS's reason), or ``None`` when one can.

    Tried for real (a hidden empty file, created and removed at once): permission bits do not stop
    root, while a read-only mount or an immutable folder (``chattr +i``) stops everyone.
    """
    probe = Path(folder) / f".morphreg-write-test.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as err:
        return err.strerror or type(err).__name__
    probe.unlink(missing_ok=True)
    return None


def leftover_temporaries(path: PathLike) -> list[Path]:
    """The temporary files :func:`atomic_write` left next to ``path`` when its process was killed
    mid-write (hidden, never mistaken for ``path``; remove them once no writer can be running)."""
    path = Path(path)
    suffix = _suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return sorted(path.parent.glob(f".{glob.escape(stem)}.????????.tmp{glob.escape(suffix)}"))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


@dataclass(frozen=True)
class RunDir:
    """The files of a training run folder (``morphreg train --out RUN``), named in one place.

    ``RunDir(out).model`` is ``out / "model.pt"``, and so on; :attr:`FILES` lists every name.
    """

    root: Path

    SETTINGS = "settings.json"
    STATE = "state.pt"
    MODEL = "model.pt"
    LAST = "last.pt"
    METRICS = "metrics.csv"
    LOG = "train.log"
    SPLIT = "split.json"
    CURVES = "training_curves.png"
    FILES = (SETTINGS, STATE, MODEL, LAST, METRICS, LOG, SPLIT, CURVES)

    def __init__(self, root: PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def settings(self) -> Path:
        return self.root / self.SETTINGS

    @property
    def state(self) -> Path:
        return self.root / self.STATE

    @property
    def model(self) -> Path:
        return self.root / self.MODEL

    @property
    def last(self) -> Path:
        return self.root / self.LAST

    @property
    def metrics(self) -> Path:
        return self.root / self.METRICS

    @property
    def log(self) -> Path:
        return self.root / self.LOG

    @property
    def split(self) -> Path:
        return self.root / self.SPLIT

    @property
    def curves(self) -> Path:
        return self.root / self.CURVES

    def paths(self) -> dict[str, Path]:
        """Every file of the run, by name."""
        return {name: self.root / name for name in self.FILES}


@dataclass(frozen=True)
class ReportDir:
    """The files of an evaluation report folder (``morphreg evaluate --out REPORT``)."""

    root: Path

    PAIRS = "pairs.csv"
    STRUCTURES = "structures.csv"
    SUMMARY = "summary.json"
    HTML = "report.html"
    FIGURES = "figures"
    FILES = (PAIRS, STRUCTURES, SUMMARY)

    def __init__(self, root: PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def pairs(self) -> Path:
        return self.root / self.PAIRS

    @property
    def structures(self) -> Path:
        return self.root / self.STRUCTURES

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def html(self) -> Path:
        return self.root / self.HTML

    @property
    def figures(self) -> Path:
        return self.root / self.FIGURES
