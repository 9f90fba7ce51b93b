"""The settings of a training run (``settings.json``), and which of them may change on resume."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..._files import RunDir
from ...losses import DEFAULT_WEIGHT, LOSSES
from .state import load_state

#: The networks ``model`` names: VxmDense, AffineNet, and the lecture's families (CascadeVxm,
#: TransMorph, ProbVxmDense; docs/results/lecture.md).
MODEL_TYPES = ("vxm", "affine", "cascade", "transmorph", "probabilistic")
#: The inverse-consistency penalties ``inverse_consistency`` takes (GradICON, Tian et al. 2023).
IC_LOSSES = ("gradicon",)
#: GradICON's weight when none is given: uniGradICON's (Tian et al. 2024, with LNCC).
DEFAULT_IC_WEIGHT = 1.5
#: The image noise σ of the probabilistic model's likelihood when none is given (the paper's, for MSE).
DEFAULT_IMAGE_SIGMA = 0.02
#: HyperMorph's default λ range: the loss's usual λ divided and multiplied by this.
HYPER_SPAN = 20.0
#: The files a run writes in its folder.
RUN_FILES = RunDir.FILES
#: Settings that may change when a run is resumed: how long and where it runs, how often it
#: reports. Every other setting defines the optimisation and must stay as the run began.
RESUMABLE_CHANGES = ("steps", "max_minutes", "max_cpu_minutes", "device", "threads", "val_every", "checkpoint_every",
                     "log_every", "deterministic", "amp")


class ResumeMismatch(ValueError):
    """``resume`` was asked with settings that differ from the run's; ``changes`` lists them.

    Attributes:
        changes: ``{setting: (value the run began with, value asked for now)}``.
    """

    def __init__(self, run_dir: Path, changes: dict[str, tuple[Any, Any]]) -> None:
        self.changes = changes
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
        super().__init__(f"train: cannot resume '{run_dir}' with changed settings ({listed}); resume with the "
                         "run's own settings or start a new run")


@dataclass
class TrainSettings:
    """Everything that defines a training run (stored as ``settings.json``).

    ``weight`` is λ, the smoothness weight; ``None`` takes the paper's value for the loss
    (0.01 for MSE, 1 for NCC). ``batch_size`` is per process (global = batch_size × ranks).
    ``max_minutes`` ends training early (validated and checkpointed, resumable) once this much
    wall time has passed in this invocation; ``max_cpu_minutes`` likewise once this process has used this
    much CPU time (all its threads together: the fair budget on a shared machine). ``normalise``
    records the intensity normalisation applied to the training images (saved with the model, so
    registration applies the same).
    ``hyper`` trains a HyperMorph network for λ in ``hyper_range`` (default ``weight / 20`` to
    ``weight * 20``; ``weight`` is then the λ of validation). ``sim_weight`` weighs the image
    similarity (0: labels only, as SynthMorph trains on synthesised label maps).

    The lecture's families: ``model="cascade"`` trains ``stages`` VxmDense networks as one recursive
    cascade; ``"transmorph"`` a Swin-encoder network; ``"probabilistic"`` VoxelMorph-diff (needs
    ``int_steps > 0``), whose loss is ``L_sim / (2 image_sigma²) + KL`` with ``weight`` the prior's λ
    (the KL replaces the smoothness term). ``inverse_consistency="gradicon"`` adds GradICON's
    penalty with weight ``ic_weight`` to any deformable network's loss (each step registers the
    pairs both ways, the similarity and Dice terms then average both directions).
    """

    model: str = "vxm"
    loss: str = "ncc"
    weight: float | None = None
    window: int = 9
    int_steps: int = 0
    int_downsize: int = 1
    bidir: bool = False
    seg_weight: float = 0.0
    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-3
    lr_schedule: str = "constant"
    seed: int = 0
    device: str = "auto"
    val_every: int = 100
    checkpoint_every: int = 100
    log_every: int = 10
    enc: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    dec: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 32, 16, 16])
    deterministic: bool = False
    amp: bool = True
    threads: int | None = None
    max_minutes: float | None = None
    max_cpu_minutes: float | None = None
    normalise: str | None = "percentile"
    hyper: bool = False
    hyper_range: list[float] | None = None
    sim_weight: float = 1.0
    stages: int | None = None
    inverse_consistency: str | None = None
    ic_weight: float | None = None
    image_sigma: float | None = None

    def __post_init__(self) -> None:
        fn = "TrainSettings"
        if self.model not in MODEL_TYPES:
            raise ValueError(f"{fn}: 'model' must be one of {list(MODEL_TYPES)}, got {self.model!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"{fn}: 'loss' must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.weight is None:
            self.weight = DEFAULT_WEIGHT[self.loss]
        self._check_numbers(fn)
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"{fn}: 'lr_schedule' must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"{fn}: 'device' must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{fn}: 'device' is cuda but no CUDA device is available")
        self.enc = [int(v) for v in self.enc]
        self.dec = [int(v) for v in self.dec]
        self._check_hyper(fn)
        self._check_families(fn)

    def _check_families(self, fn: str) -> None:
        if self.model == "cascade":
            self.stages = 3 if self.stages is None else self.stages
            if isinstance(self.stages, bool) or not isinstance(self.stages, int) or not 1 <= self.stages <= 10:
                raise ValueError(f"{fn}: 'stages' must be an integer in [1, 10], got {self.stages!r}")
        elif self.stages is not None:
            raise ValueError(f"{fn}: 'stages' is the number of networks of model 'cascade', not of {self.model!r}")
        if self.bidir and self.model == "cascade":
            raise ValueError(f"{fn}: 'bidir' is not available for model 'cascade' (its stages compose one way)")
        if self.model == "probabilistic":
            if self.int_steps == 0:
                raise ValueError(f"{fn}: model 'probabilistic' is diffeomorphic: 'int_steps' must be > 0 (e.g. 7)")
            self.image_sigma = DEFAULT_IMAGE_SIGMA if self.image_sigma is None else self.image_sigma
            if not (math.isfinite(self.image_sigma) and self.image_sigma > 0):
                raise ValueError(f"{fn}: 'image_sigma' must be a finite number > 0, got {self.image_sigma!r}")
        elif self.image_sigma is not None:
            raise ValueError(f"{fn}: 'image_sigma' is the noise of model 'probabilistic', not of {self.model!r}")
        if self.inverse_consistency is None:
            if self.ic_weight is not None:
                raise ValueError(f"{fn}: 'ic_weight' weighs 'inverse_consistency'; set it (e.g. 'gradicon')")
            return
        if self.inverse_consistency not in IC_LOSSES:
            raise ValueError(f"{fn}: 'inverse_consistency' must be one of {list(IC_LOSSES)}, "
                             f"got {self.inverse_consistency!r}")
        if self.model == "affine":
            raise ValueError(f"{fn}: 'inverse_consistency' regularises a deformable network, not model 'affine'")
        self.ic_weight = DEFAULT_IC_WEIGHT if self.ic_weight is None else self.ic_weight
        if not (math.isfinite(self.ic_weight) and self.ic_weight >= 0):
            raise ValueError(f"{fn}: 'ic_weight' must be a finite number >= 0, got {self.ic_weight!r}")

    def _check_numbers(self, fn: str) -> None:
        for name in ("steps", "batch_size", "val_every", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{fn}: '{name}' must be an integer >= 1, got {value!r}")
        for name in ("weight", "seg_weight", "sim_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{fn}: '{name}' must be a finite number >= 0, got {value!r}")
        for name in ("max_minutes", "max_cpu_minutes"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{fn}: '{name}' must be a finite number > 0 or None, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"{fn}: 'lr' must be > 0, got {self.lr!r}")

    def _check_hyper(self, fn: str) -> None:
        if not self.hyper:
            if self.hyper_range is not None:
                raise ValueError(f"{fn}: 'hyper_range' is only used with hyper=True")
            return
        if self.model != "vxm":
            raise ValueError(f"{fn}: 'hyper' conditions the deformable network (model 'vxm'), not {self.model!r}")
        assert self.weight is not None
        if self.hyper_range is None:  # the loss's usual λ times 1/20 .. 20
            self.hyper_range = [self.weight / HYPER_SPAN, self.weight * HYPER_SPAN]
        self.hyper_range = [float(v) for v in self.hyper_range]
        low, high = (self.hyper_range + [math.nan, math.nan])[:2]
        if len(self.hyper_range) != 2 or not (0 < low < high < math.inf):
            raise ValueError(f"{fn}: 'hyper_range' must be [low, high] with 0 < low < high, got {self.hyper_range}")
        if not low <= self.weight <= high:
            raise ValueError(f"{fn}: 'weight' {self.weight:g} (the validation λ) is outside hyper_range "
                             f"[{low:g}, {high:g}]")

    def hyper_weight(self, step: int) -> float:
        """λ of (0-based) ``step`` in HyperMorph training: log-uniform over ``hyper_range``, seeded by step."""
        assert self.hyper_range is not None
        low, high = self.hyper_range
        gen = torch.Generator().manual_seed(self.seed * 1_000_033 + step)
        return float(low * (high / low) ** torch.rand((), generator=gen).item())

    def lr_at(self, step: int) -> float:
        """Learning rate for (0-based) ``step``."""
        if self.lr_schedule == "constant":
            return self.lr
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * min(step, self.steps) / self.steps))


class TrainResult(NamedTuple):
    """Outcome of :func:`train`."""

    run_dir: Path
    step: int
    best_val_dice: float
    final_loss: float


def settings_changes(saved: dict[str, Any], settings: TrainSettings) -> dict[str, tuple[Any, Any]]:
    """Settings of ``settings`` that differ from a run's ``saved`` ones and may not change on resume."""
    requested = asdict(settings)
    changes = {}
    for key, value in requested.items():
        if key in RESUMABLE_CHANGES or key not in saved:
            continue
        old = saved[key]
        if isinstance(old, (list, tuple)) or isinstance(value, (list, tuple)):
            same = list(old or []) == list(value or [])
        else:
            same = old == value
        if not same:
            changes[key] = (old, value)
    return changes


def check_resume(run_dir: str | os.PathLike[str], settings: TrainSettings) -> None:
    """Refuse to resume ``run_dir`` with settings that differ from those it was started with.

    Raises:
        FileNotFoundError: no ``state.pt``.
        ResumeMismatch: the changed settings, each with its old and new value.
        CheckpointError: an unreadable state.
    """
    run_dir = Path(run_dir)
    state_path = run_dir / "state.pt"
    if not state_path.exists():
        raise FileNotFoundError(f"train: `resume` given but '{state_path}' does not exist")
    saved = load_state(state_path).get("settings")
    if isinstance(saved, dict):
        changes = settings_changes(saved, settings)
        if changes:
            raise ResumeMismatch(run_dir, changes)


