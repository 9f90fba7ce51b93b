"""Saving and loading models: one file holding ``{format, model, config, state_dict, metadata}``.

Files are read with ``torch.load(..., weights_only=True)`` (no code is ever executed from a
checkpoint) and written atomically (temporary file in the same folder, then ``os.replace``),
so an interrupted save never leaves a broken file behind.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from .. import _limits
from .._files import atomic_write

FORMAT = "morphreg-checkpoint-v1"
_REGISTRY: dict[str, type[SavableModel]] = {}

T = TypeVar("T", bound="SavableModel")


class CheckpointError(ValueError):
    """A file is not a loadable morphreg checkpoint (message says why)."""


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`morphreg._files.atomic_write` (a reader never sees half a checkpoint)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


#: torch.save stores its zip members uncompressed: declared sizes far above the file's own size
#: (a decompression bomb) are refused.
_MAX_ZIP_RATIO = 50


def _check_zip_sizes(path: Path) -> None:
    """Refuse a zip checkpoint whose members declare more bytes than the budget, or a bomb."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip (legacy format) or a broken one: torch.load reports it
    budget = _limits.model_budget()
    size = path.stat().st_size
    if declared > budget:
        raise CheckpointError(
            f"checkpoint '{path}' declares {_limits.format_bytes(declared)} of data, more than the "
            f"{_limits.format_bytes(budget)} a model may take (1/{_limits.MODEL_SHARE} of the {_limits.budget_note()})"
        )
    if declared > _MAX_ZIP_RATIO * size and declared > 2**24:
        raise CheckpointError(
            f"checkpoint '{path}' declares {_limits.format_bytes(declared)} of data in a "
            f"{_limits.format_bytes(size)} file (compressed {declared / size:.0f}:1); PyTorch never compresses "
            "checkpoints, so this is a decompression bomb or a corrupt file"
        )


def _config_value_error(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the constructor hint (``int``, ``float``, ``bool``, ``Sequence[int]``,
    ``Sequence[float]``), or ``None`` when it fits (or the hint is of another kind)."""
    import math
    import typing
    from collections.abc import Sequence

    def number(v: Any, kind: type) -> bool:
        if isinstance(v, bool):
            return False
        return isinstance(v, int) if kind is int else isinstance(v, (int, float)) and math.isfinite(v)

    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint in (int, float):
        if not number(value, hint):
            return "must be an integer" if hint is int else "must be a finite number"
        return None if value >= 0 else "must not be negative"
    if typing.get_origin(hint) is Sequence and typing.get_args(hint) in ((int,), (float,)):
        kind = typing.get_args(hint)[0]
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return f"must be a list of {'integers' if kind is int else 'numbers'}"
        if not all(number(v, kind) for v in value):
            return f"must hold {'integers' if kind is int else 'finite numbers'} only"
        if kind is int and not all(v > 0 for v in value):
            return "must hold positive integers (channel counts, depths)"
    return None


def check_config_types(model_cls: type[SavableModel], config: dict[str, Any], source: str) -> None:
    """Refuse a config value whose type does not fit the constructor's type hint, naming the key.

    Raises:
        CheckpointError: ``"<source> has an invalid <Model> config: 'enc' must be a list of
            integers, got '16,32'"``.
    """
    import typing

    try:
        hints = typing.get_type_hints(model_cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable hints: the constructor checks what it can
        return
    for key, value in config.items():
        why = _config_value_error(value, hints[key]) if key in hints and key != "return" else None
        if why:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise CheckpointError(f"{source} has an invalid {model_cls.__name__} config: '{key}' {why}, got {shown}")


def check_model_size(model_cls: type[SavableModel], config: dict[str, Any], source: str) -> SavableModel:
    """The model of ``config`` on the meta device: shapes without memory, checked against the budget.

    Raises:
        CheckpointError: an invalid config, or weights larger than the model budget
            (:func:`morphreg._limits.model_budget`). The message starts with ``source``.
    """
    name = model_cls.__name__
    check_config_types(model_cls, config, source)
    try:
        with torch.device("meta"):
            skeleton = model_cls(**config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source} has an invalid {name} config: {err}") from None
    except RuntimeError as err:
        raise CheckpointError(f"{source} has an unusable {name} config: {str(err).splitlines()[0][:160]}") from None
    nbytes = sum(t.numel() * t.element_size() for t in skeleton.state_dict().values())
    budget = _limits.model_budget()
    if nbytes > budget:
        raise CheckpointError(
            f"{source}: its {name} config ({_config_text(config)}) needs {_limits.format_bytes(nbytes)} of "
            f"weights, more than the {_limits.format_bytes(budget)} a model may take "
            f"(1/{_limits.MODEL_SHARE} of the {_limits.budget_note()})"
        )
    return skeleton


def _config_text(config: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v}" for k, v in config.items())
    return text if len(text) <= 120 else text[:117] + "..."


def check_weights(state_dict: Any, skeleton: nn.Module, name: str, source: str) -> None:
    """Compare a state dict with the architecture's shapes, and refuse non-finite weights.

    Runs before any real tensor of the architecture is allocated.
    """
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{source}: its 'state_dict' is not a dictionary of tensors")
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        detail = f"missing key '{missing[0]}'" if missing else f"unexpected key '{unexpected[0]}'"
        raise CheckpointError(f"{source}: weights do not match the {name} architecture in its config ({detail})")
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise CheckpointError(
                f"{source}: weights do not match the {name} architecture in its config (size mismatch for "
                f"{key}: the checkpoint holds shape {tuple(state_dict[key].shape)}, the config needs {shape})"
            )
    for key, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{source} holds non-finite weights ({bad} NaN or infinite value(s) in '{key}'); "
                "the network cannot register anything (the training that wrote it diverged)"
            )


def safe_torch_load(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist or is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty")
    _check_zip_sizes(path)
    try:
        with warnings.catch_warnings():
            # torch warns (UserWarning, on stderr) about a pickle protocol its weights-only reader may
            # not support; the load succeeds or fails below with one message, so the warning is noise
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        code_lines = [line for line in lines if "GLOBAL" in line]
        if code_lines:  # the file names a Python callable to import: refuse, never run it
            detail = code_lines[0].split(" was not an allowed")[0].split(" whose module")[0]
            raise CheckpointError(
                f"checkpoint '{path}' was refused: it references code ({detail[:160]}); "
                "morphreg only loads tensors and plain data and never runs code from a file"
            ) from None
        detail = next((line for line in lines[1:] if "Weights" not in line and "http" not in line), "")
        raise CheckpointError(
            f"checkpoint '{path}' is not a readable PyTorch weights file (corrupt, or a pickle "
            f"with objects that morphreg never loads{': ' + detail[:120] if detail else ''})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint '{path}' is not a readable PyTorch file (truncated or corrupt?): "
            f"{first[:160]}"
        ) from None


class SavableModel(nn.Module):
    """Base of morphreg models: the constructor arguments are the config saved with the weights.

    Subclasses call ``self._store_config(...)`` with their (JSON-compatible) constructor
    arguments and are registered by class name, so :meth:`load` rebuilds the architecture.
    ``metadata`` (plain data: training step, validation Dice, the intensity normalisation the
    network was trained with) is saved alongside and restored on loading.
    """

    config: dict[str, Any]
    metadata: dict[str, Any]
    registry_name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.registry_name = cls.__name__
        _REGISTRY[cls.__name__] = cls

    def __init__(self) -> None:
        super().__init__()
        self.metadata = {}

    def _store_config(self, **config: Any) -> None:
        self.config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    def checkpoint(self, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """The dictionary written by :meth:`save` (CPU tensors, plain data only)."""
        return {
            "format": FORMAT,
            "model": self.registry_name,
            "config": dict(self.config),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "metadata": dict(metadata or {}),
        }

    def save(self, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
        """Write config + weights (+ metadata) to ``path`` atomically."""
        atomic_torch_save(self.checkpoint(metadata), path)

    @classmethod
    def from_checkpoint(cls: type[T], ckpt: Any, source: str = "checkpoint") -> T:
        """Rebuild a model from a checkpoint dictionary (see :meth:`checkpoint`)."""
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise CheckpointError(f"{source} is not a morphreg model checkpoint")
        name = ckpt.get("model")
        if name not in _REGISTRY:
            raise CheckpointError(f"{source} holds an unknown model type {name!r}")
        model_cls = _REGISTRY[name]
        if cls is not SavableModel and not issubclass(model_cls, cls):
            raise CheckpointError(f"{source} holds a {name}, not a {cls.__name__}")
        config = ckpt.get("config")
        if not isinstance(config, dict):
            raise CheckpointError(f"{source} has no model config")
        check_weights(ckpt.get("state_dict"), check_model_size(model_cls, config, source), name, source)
        try:
            model = model_cls(**config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{source} has an invalid {name} config: {err}") from None
        metadata = ckpt.get("metadata")
        model.metadata = dict(metadata) if isinstance(metadata, dict) else {}
        try:
            model.load_state_dict(ckpt["state_dict"], strict=True)
        except (RuntimeError, KeyError) as err:
            lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
            first = next((line for line in lines[1:] if "mismatch" in line or "key" in line), lines[0])
            raise CheckpointError(
                f"{source}: weights do not match the {name} architecture in its config ({first[:200]})"
            ) from None
        return model  # type: ignore[return-value]

    @classmethod
    def load(cls: type[T], path: str | os.PathLike[str], map_location: Any = "cpu") -> T:
        """Load a model saved with :meth:`save`; the class is rebuilt from the stored config."""
        ckpt = safe_torch_load(path, map_location=map_location)
        return cls.from_checkpoint(ckpt, source=f"checkpoint '{path}'")


def load_model(path: str | os.PathLike[str], map_location: Any = "cpu") -> SavableModel:
    """Load any morphreg model (VxmDense, AffineNet, ...) from a checkpoint file."""
    return SavableModel.load(path, map_location=map_location)
