"""The output folder of a resumable run (a cohort, a template build): new or empty, or the same run again.

A run writes its settings into its folder (``settings_name``, JSON) before any other file. A new
run needs a new or empty folder; ``resume`` needs the folder of a run with the same settings, so
a resumed run never mixes its outputs with those of other settings or of another program. Hidden
files (a killed writer's temporaries) do not count.

Messages name the parameters in backquotes (`` `out` ``, `` `resume` ``); the command line turns
them into flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._files import atomic_write_text


def as_json(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as they read back from the file (tuples become lists), for comparing."""
    return json.loads(json.dumps(settings))


def check_run_folder(root: str | Path, settings_name: str, settings: dict[str, Any], resume: bool, *,
                     what: str, noun: str = "run") -> None:
    """Refuse a folder the run cannot use, before any work.

    Args:
        root: the output folder (it may not exist yet).
        settings_name: the run's settings file in ``root`` (e.g. ``settings.json``).
        settings: this run's settings (:func:`as_json` form); on ``resume`` each top-level key
            must equal the stored one.
        resume: continue the run in ``root``.
        what, noun: how messages name such a run (``"a template build"``, ``"build"``).

    Raises:
        ValueError: ``root`` is a file; it holds files without ``resume``; with ``resume``, it
            holds files but no settings file, a settings file that cannot be read, or other settings.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"`out` '{root}' is a file, not a folder")
    entries = sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []
    if not resume:
        if entries:
            raise ValueError(f"`out` '{root}' already holds files ({', '.join(entries[:3])}"
                             f"{', ...' if len(entries) > 3 else ''}); pass `resume` to continue that {noun}, or "
                             "give a new or empty folder")
        return
    path = root / settings_name
    if not path.is_file():
        if entries:
            raise ValueError(f"`out` '{root}' holds files but no {settings_name} of {what}; cannot resume it")
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(previous, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot resume the {noun} in `out` '{root}': its {settings_name} is damaged "
                         f"({str(err).splitlines()[0][:80]}); give a new folder") from None
    changed = _differences(previous, settings)
    if changed:
        shown = "; ".join(changed[:3]) + ("; ..." if len(changed) > 3 else "")
        raise ValueError(f"cannot resume the {noun} in `out` '{root}': its settings differ from this one's ({shown}); "
                         "give the same inputs and settings, or a new folder")


def _differences(previous: dict[str, Any], settings: dict[str, Any], prefix: str = "") -> list[str]:
    """``key old -> new`` for each setting that differs (nested settings by their dotted key; long
    values such as lists of images by their key alone)."""
    found = []
    for key, value in settings.items():
        old = previous.get(key)
        if old == value:
            continue
        name = prefix + key
        if isinstance(old, dict) and isinstance(value, dict):
            found += _differences(old, value, name + ".")
        elif all(isinstance(v, (str, int, float, bool, type(None))) for v in (old, value)):
            found.append(f"{name} {old!r} -> {value!r}")
        else:
            found.append(name)
    return found


def write_settings(root: str | Path, settings_name: str, settings: dict[str, Any]) -> None:
    """Write the run's settings file (atomically; the folder is created)."""
    atomic_write_text(Path(root) / settings_name, json.dumps(settings, indent=1))
