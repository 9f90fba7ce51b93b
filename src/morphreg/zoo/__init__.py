"""Built-in models: trained weights that ship inside the package, each with its card.

Every built-in model is two package files, ``NAME.pt`` (a morphreg checkpoint: config, weights
and the intensity normalisation it was trained with) and ``NAME.json`` (its card: the images it
expects, the data and command it was trained with, its held-out accuracy as measured by
``benchmarks/zoo_cards.py`` from these very weights, the terms of its training data and what to
cite). They are read through :mod:`importlib.resources` and loaded with
``torch.load(weights_only=True)``: nothing is downloaded, ever.
"""

from __future__ import annotations

import json
import textwrap
from importlib import resources
from typing import Any

import torch

from ..models.checkpoint import CheckpointError, SavableModel, safe_torch_load

__all__ = ["card", "format_card", "format_table", "is_builtin", "load", "names"]


def _files() -> Any:
    return resources.files(__name__)


def names() -> list[str]:
    """Names of the built-in models (those with both a card and weights), sorted."""
    found = {entry.name[:-5] for entry in _files().iterdir() if entry.name.endswith(".json")}
    return sorted(name for name in found if _files().joinpath(f"{name}.pt").is_file())


def is_builtin(name: str) -> bool:
    """Whether ``name`` is a built-in model name."""
    return isinstance(name, str) and name in names()


def _check_name(name: str) -> None:
    if not is_builtin(name):
        available = ", ".join(names()) or "none"
        raise ValueError(f"{name!r} is not a built-in model (built-in models: {available})")


def card(name: str) -> dict[str, Any]:
    """The card of built-in model ``name`` (a dict; see ``format_card``), with ``size_bytes`` added."""
    _check_name(name)
    data = json.loads(_files().joinpath(f"{name}.json").read_text(encoding="utf-8"))
    data["size_bytes"] = _size(name)
    return data


def _size(name: str) -> int:
    with resources.as_file(_files().joinpath(f"{name}.pt")) as path:
        return path.stat().st_size


def load(name: str, map_location: Any = "cpu") -> SavableModel:
    """The network of built-in model ``name`` (weights read with ``weights_only=True``).

    Raises:
        ValueError: ``name`` is not built in (the message lists the built-in names).
        CheckpointError: the packaged file is damaged.
    """
    _check_name(name)
    with resources.as_file(_files().joinpath(f"{name}.pt")) as path:
        ckpt = safe_torch_load(path, map_location=map_location)
    model = SavableModel.from_checkpoint(ckpt, source=f"built-in model {name!r}")
    if not isinstance(model, torch.nn.Module):  # pragma: no cover - from_checkpoint returns modules
        raise CheckpointError(f"built-in model {name!r} is not a network")
    model.metadata["builtin"] = name
    return model


def _size_text(nbytes: int) -> str:
    return f"{nbytes / 1024:.0f} kB" if nbytes < 1024**2 else f"{nbytes / 1024**2:.1f} MB"


def _accuracy_text(info: dict[str, Any]) -> str:
    held = info.get("held_out") or {}
    if not held:
        return "not measured"
    return held.get("summary", "")


def format_table() -> str:
    """The ``morphreg models`` listing: one line per built-in model."""
    rows = [("name", "ndim", "expects", "trained on", "held-out accuracy", "size")]
    for name in names():
        info = card(name)
        rows.append((name, f"{info['ndim']}D", info["expects_short"], info["training_data_short"],
                     _accuracy_text(info), _size_text(info["size_bytes"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    hint = "`morphreg models NAME` shows a model's card; `morphreg register --model NAME ...` uses it."
    return "\n".join(lines) + "\n\n" + hint


def format_card(name: str) -> str:
    """The full card of built-in model ``name`` as text (what ``morphreg models NAME`` prints)."""
    info = card(name)
    lines = [f"{name}: {info['title']}", ""]
    for key, label in (("expects", "Expects"), ("architecture", "Network"), ("training_data", "Training data"),
                       ("training", "Training"), ("training_time", "Training time"),
                       ("training_command", "Training command"),
                       ("usage", "Use")):
        if info.get(key):
            lines += [f"{label}:", *[f"  {line}" for line in _lines(info[key])], ""]
    held = info.get("held_out") or {}
    if held:
        lines.append("Held-out accuracy (benchmarks/zoo_cards.py, from the shipped weights):")
        lines += [f"  {line}" for line in _lines(held.get("details", held.get("summary", "")))]
        lines.append("")
    size = info["size_bytes"]
    lines.append(f"Size: {_size_text(size)} ({size} bytes), sha256 {info.get('sha256', '?')}")
    lines.append("")
    for key, label in (("limitations", "Limitations"), ("terms", "Terms"), ("citation", "Cite")):
        if info.get(key):
            lines += [f"{label}:", *[f"  {line}" for line in _lines(info[key])], ""]
    return "\n".join(lines).rstrip() + "\n"


def _lines(value: Any) -> list[str]:
    lines = [str(v) for v in value] if isinstance(value, list) else str(value).splitlines()
    return [part for line in lines for part in (textwrap.wrap(line, 104, subsequent_indent="  ") or [""])]
