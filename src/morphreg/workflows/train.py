"""Unsupervised (and semi-supervised) training of a registration network.

``L = L_sim(f, m ∘ φ) + λ L_smooth(u) [+ γ L_dice(s_f, s_m ∘ φ)]``, Adam, a fixed number of
steps. HyperMorph training (``hyper=True``) draws λ per step, log-uniformly over ``hyper_range``,
gives it to a :class:`~morphreg.models.HyperVxmDense` and minimises ``L / (1 + λ)`` (the same
optimum for each λ as ``L``; the division keeps the loss's scale within one range whatever λ is
drawn, as the paper's ``(1 - λ) L_sim + λ L_smooth``). A run directory holds::

    RUN_DIR/settings.json   the TrainSettings (JSON; never evaluated)
    RUN_DIR/state.pt        resumable state: model, optimiser, step, RNG, best score
    RUN_DIR/model.pt        the best model by validation Dice (or the last, without labels)
    RUN_DIR/last.pt         the model after the last completed step
    RUN_DIR/metrics.csv     one row per logged step (loss parts, lr, validation)
    RUN_DIR/train.log       text log
    RUN_DIR/tensorboard/    the same metrics for TensorBoard (only when tensorboard is installed)

Every file is written atomically. The order of the samples depends only on the seed and the
step, so ``resume`` continues exactly, and under ``torchrun`` each rank takes its share of the
same global batch (DistributedDataParallel averages the gradients; rank 0 alone writes files).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import _limits, losses, metrics, spatial
from .._files import atomic_write, atomic_write_text
from ..data import PairDataset
from ..models import AffineNet, HyperVxmDense, SavableModel, VxmDense
from ..models.checkpoint import CheckpointError, atomic_torch_save, check_model_size, safe_torch_load
from . import distributed as dist_utils

STATE_FORMAT = "morphreg-train-state-v1"
DEFAULT_LAMBDA = {"mse": 0.01, "ncc": 1.0, "gncc": 1.0, "mi": 1.0}
MODEL_TYPES = ("vxm", "affine")
#: HyperMorph's default λ range: the loss's usual λ divided and multiplied by this.
HYPER_SPAN = 20.0
METRIC_COLUMNS = ("step", "loss", "sim", "smooth", "seg", "lr", "val_dice", "val_loss", "seconds")
#: The files a run writes in its folder.
RUN_FILES = ("settings.json", "state.pt", "model.pt", "last.pt", "metrics.csv", "train.log", "split.json",
             "training_curves.png")
#: Settings that may change when a run is resumed: how long and where it runs, how often it
#: reports. Every other setting defines the optimisation and must stay as the run began.
RESUMABLE_CHANGES = ("steps", "max_minutes", "device", "threads", "val_every", "checkpoint_every", "log_every",
                     "deterministic", "amp")


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
    wall time has passed in this invocation. ``normalise`` records the intensity normalisation
    applied to the training images (saved with the model, so registration applies the same).
    ``hyper`` trains a HyperMorph network for λ in ``hyper_range`` (default ``weight / 20`` to
    ``weight * 20``; ``weight`` is then the λ of validation). ``sim_weight`` weighs the image
    similarity (0: labels only, as SynthMorph trains on synthesised label maps).
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
    normalise: str | None = "percentile"
    hyper: bool = False
    hyper_range: list[float] | None = None
    sim_weight: float = 1.0

    def __post_init__(self) -> None:
        fn = "TrainSettings"
        if self.model not in MODEL_TYPES:
            raise ValueError(f"{fn}: 'model' must be one of {list(MODEL_TYPES)}, got {self.model!r}")
        if self.loss not in DEFAULT_LAMBDA:
            raise ValueError(f"{fn}: 'loss' must be one of {list(DEFAULT_LAMBDA)}, got {self.loss!r}")
        if self.weight is None:
            self.weight = DEFAULT_LAMBDA[self.loss]
        for name in ("steps", "batch_size", "val_every", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{fn}: '{name}' must be an integer >= 1, got {value!r}")
        for name in ("weight", "seg_weight", "sim_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{fn}: '{name}' must be a finite number >= 0, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"{fn}: 'lr' must be > 0, got {self.lr!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"{fn}: 'lr_schedule' must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"{fn}: 'device' must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{fn}: 'device' is cuda but no CUDA device is available")
        self.enc = [int(v) for v in self.enc]
        self.dec = [int(v) for v in self.dec]
        if self.hyper:
            if self.model != "vxm":
                raise ValueError(f"{fn}: 'hyper' conditions the deformable network (model 'vxm'), not {self.model!r}")
            if self.hyper_range is None:  # the loss's usual λ times 1/20 .. 20
                self.hyper_range = [self.weight / HYPER_SPAN, self.weight * HYPER_SPAN]
            self.hyper_range = [float(v) for v in self.hyper_range]
            low, high = (self.hyper_range + [math.nan, math.nan])[:2]
            if len(self.hyper_range) != 2 or not (0 < low < high < math.inf):
                raise ValueError(f"{fn}: 'hyper_range' must be [low, high] with 0 < low < high, got {self.hyper_range}")
            if not low <= self.weight <= high:
                raise ValueError(f"{fn}: 'weight' {self.weight:g} (the validation λ) is outside hyper_range "
                                 f"[{low:g}, {high:g}]")
        elif self.hyper_range is not None:
            raise ValueError(f"{fn}: 'hyper_range' is only used with hyper=True")

    def hyper_weight(self, step: int) -> float:
        """λ of (0-based) ``step`` in HyperMorph training: log-uniform over ``hyper_range``, seeded by step."""
        assert self.hyper_range is not None
        low, high = self.hyper_range
        gen = torch.Generator().manual_seed(self.seed * 1_000_033 + step)
        return float(low * (high / low) ** torch.rand((), generator=gen).item())

    @classmethod
    def from_json(cls, text: str) -> TrainSettings:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

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


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.

    Raises:
        ValueError: ``"cuda"`` on a machine (or a torch build) without CUDA, with one line that
            says so, before anything is loaded onto it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise ValueError(f"CUDA is not available on this machine ({build}, torch {torch.__version__}); "
                         "use device cpu or auto")
    return device


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
        raise FileNotFoundError(f"train: --resume given but '{state_path}' does not exist")
    saved = _load_state(state_path).get("settings")
    if isinstance(saved, dict):
        changes = settings_changes(saved, settings)
        if changes:
            raise ResumeMismatch(run_dir, changes)


def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def _batch_indices(
    settings: TrainSettings, step: int, n: int, info: dist_utils.DistInfo, cache: dict[int, torch.Tensor]
) -> list[tuple[int, int]]:
    """(epoch, dataset index) of this rank's samples for ``step``; depends on nothing else."""
    global_batch = settings.batch_size * info.world_size
    out = []
    for j in range(settings.batch_size):
        position = step * global_batch + info.rank * settings.batch_size + j
        epoch, k = divmod(position, n)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = _epoch_order(settings.seed, epoch, n)
        out.append((epoch, int(cache[epoch][k])))
    return out


def _collate(dataset: PairDataset, picks: list[tuple[int, int]], device: torch.device) -> dict[str, torch.Tensor]:
    items = []
    for epoch, index in picks:
        dataset.set_epoch(epoch)
        items.append(dataset[index])
    keys = [k for k in items[0] if torch.is_tensor(items[0][k])]
    return {k: torch.stack([it[k] for it in items]).to(device) for k in keys}


def _one_hot(seg: torch.Tensor, n_labels: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, *spatial)`` integer labels -> ``(B, n_labels, *spatial)`` float one-hot."""
    return F.one_hot(seg[:, 0].long(), n_labels).movedim(-1, 1).to(dtype)


class LossParts(NamedTuple):
    total: torch.Tensor
    sim: torch.Tensor
    smooth: torch.Tensor
    seg: torch.Tensor


def registration_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    settings: TrainSettings,
    similarity: torch.nn.Module,
    n_labels: int,
    hyper_weight: float | None = None,
) -> LossParts:
    """The VoxelMorph objective for one batch (bidirectional and semi-supervised as set).

    ``hyper_weight``: λ of this step for a HyperMorph network (given to the network, and the
    loss divided by ``1 + λ``); ``None`` uses ``settings.weight`` on a plain network.
    """
    moving, fixed = batch["moving"], batch["fixed"]
    out = model(moving, fixed) if hyper_weight is None else model(moving, fixed, weight=hyper_weight)
    sim = similarity(out.moved, fixed)
    if settings.bidir and out.moved_fixed is not None:
        sim = 0.5 * (sim + similarity(out.moved_fixed, moving))
    # an affine field is smooth by construction: its gradient penalty would only pull towards identity
    smooth = losses.grad_loss(out.disp) if out.matrix is None else sim.new_zeros(())
    seg = sim.new_zeros(())
    if settings.seg_weight > 0:
        moving_onehot = _one_hot(batch["moving_seg"], n_labels, moving.dtype)
        fixed_onehot = _one_hot(batch["fixed_seg"], n_labels, moving.dtype)
        moved_onehot = spatial.warp(moving_onehot, out.disp)
        seg = losses.dice_loss(moved_onehot[:, 1:], fixed_onehot[:, 1:])
    weight = settings.weight if hyper_weight is None else hyper_weight
    total = settings.sim_weight * sim + weight * smooth + settings.seg_weight * seg
    if hyper_weight is not None:
        total = total / (1.0 + hyper_weight)
    return LossParts(total, sim, smooth, seg)


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    val_set: PairDataset,
    similarity: torch.nn.Module,
    device: torch.device,
    info: dist_utils.DistInfo,
) -> tuple[float, float]:
    """Mean Dice (NaN without labels) and mean similarity loss over the validation pairs."""
    was_training = model.training
    model.eval()
    dices, sims = [], []
    for index in range(info.rank, len(val_set), info.world_size):
        item = val_set[index]
        moving = item["moving"].unsqueeze(0).to(device)
        fixed = item["fixed"].unsqueeze(0).to(device)
        out = model(moving, fixed)
        sims.append(float(similarity(out.moved, fixed)))
        if "moving_seg" in item:
            moved_seg = spatial.warp(item["moving_seg"].unsqueeze(0).to(device), out.disp, mode="nearest")
            fixed_seg = item["fixed_seg"].unsqueeze(0).to(device)
            dices.append(float(metrics.dice(moved_seg, fixed_seg).mean[0]))
    model.train(was_training)
    dices = dist_utils.all_gather_floats(dices, info)
    sims = dist_utils.all_gather_floats(sims, info)
    dice_mean = float(np.nanmean(dices)) if dices else float("nan")
    return dice_mean, float(np.mean(sims)) if sims else float("nan")


def _setup_logger(run_dir: Path, enabled: bool) -> logging.Logger:
    logger = logging.getLogger(f"morphreg.train.{run_dir.resolve()}")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if enabled:
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    else:
        logger.addHandler(logging.NullHandler())
    return logger


class _MetricsLog:
    """Append-only CSV of metrics; on resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        self.tensorboard: Any = None
        if not enabled:
            return
        try:  # TensorBoard too, when it is installed (optional)
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(path.parent / "tensorboard"), purge_step=resume_step)
        except ImportError:
            pass
        rows: list[dict[str, str]] = []
        if resume_step is not None and path.exists():
            try:
                with open(path, newline="", encoding="utf-8") as handle:
                    rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
            except (csv.Error, ValueError, KeyError, TypeError) as err:  # NUL bytes, bad numbers, no header
                raise ValueError(
                    f"train: cannot resume: '{path}' is damaged ({str(err).splitlines()[0][:120]}); "
                    "repair or delete it (the checkpoint state.pt does not need it)"
                ) from None

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, METRIC_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(path, write)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, METRIC_COLUMNS).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, float) and math.isfinite(value):
                    self.tensorboard.add_scalar(key, value, row["step"])
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def build_model(settings: TrainSettings, ndim: int) -> SavableModel:
    """The network a run trains: ``VxmDense`` (default) or ``AffineNet`` (``model="affine"``).

    Its size is checked against the memory budget (:mod:`morphreg._limits`) before any weight
    is allocated.
    """
    if settings.model == "affine":
        cls, config = AffineNet, {"ndim": ndim}
    else:
        cls, config = VxmDense, {"ndim": ndim, "enc": settings.enc, "dec": settings.dec,
                                 "int_steps": settings.int_steps, "int_downsize": settings.int_downsize,
                                 "bidir": settings.bidir}
        if settings.hyper:
            cls = HyperVxmDense
            config.update(weight_range=settings.hyper_range, default_weight=settings.weight)
    check_model_size(cls, config, "train: the requested network")
    return cls(**config)


def _check_one_hot_budget(n_labels: int, batch: int, spatial_shape: tuple[int, ...]) -> None:
    """The Dice loss one-hot encodes labels 0..n_labels-1: refuse label values it cannot hold."""
    nbytes = 4 * 3 * n_labels * batch * math.prod(spatial_shape)  # moving, fixed and warped one-hots
    budget = _limits.memory_limit() // _limits.MODEL_SHARE
    if nbytes > budget:
        raise ValueError(
            f"train: the largest label value is {n_labels - 1}, so the Dice loss (--seg-weight) needs one-hot "
            f"maps of {n_labels} channels ({_limits.format_bytes(nbytes)} per batch), more than "
            f"{_limits.format_bytes(budget)} (1/{_limits.MODEL_SHARE} of the {_limits.budget_note()}); "
            "relabel the maps to consecutive values 0..K"
        )


@torch.no_grad()
def _check_not_diverged(model: torch.nn.Module, batch: dict[str, torch.Tensor], step: int, last_saved: int,
                        info: dist_utils.DistInfo) -> None:
    """Before anything is saved: the weights, and the field they give for one pair, must be finite.

    A huge step (e.g. ``lr=1e30``) can leave finite but absurd weights whose field overflows; the
    loss of the step that made them was still finite, so the forward pass is what tells.
    """
    problem = next((f"the weights ('{name}')" for name, value in model.named_parameters()
                    if not bool(torch.isfinite(value).all())), None)
    if problem is None and not bool(torch.isfinite(model(batch["moving"][:1], batch["fixed"][:1]).disp).all()):
        problem = "the field the network predicts"
    flag = torch.tensor(0.0 if problem is None else 1.0)
    if dist_utils.all_reduce_mean(flag, info).item() > 0:
        raise FloatingPointError(
            f"train: {problem or 'another rank'} became NaN or infinite by step {step}: training diverged; "
            f"nothing was saved from this step on (last checkpoint: step {last_saved}); lower --lr or --lambda"
        )


def _save_state(path: Path, model: SavableModel, optimizer: torch.optim.Optimizer, step: int, best: float,
                settings: TrainSettings) -> None:
    atomic_torch_save(
        {
            "format": STATE_FORMAT,
            "model": model.checkpoint(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "best_val_dice": best,
            "torch_rng": torch.get_rng_state(),
            "settings": asdict(settings),
        },
        path,
    )


def _load_state(path: Path) -> dict[str, Any]:
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"'{path}' is not a morphreg training state")
    return state


def train(
    settings: TrainSettings,
    train_set: PairDataset,
    val_set: PairDataset | None,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = True,
    n_labels: int | None = None,
) -> TrainResult:
    """Train a :class:`VxmDense` (or :class:`AffineNet`) on ``train_set``; see the module docstring.

    Args:
        settings: hyper-parameters.
        train_set: training pairs (its length is one epoch).
        val_set: validation pairs (``pairing="pairs"``), or ``None``.
        run_dir: output folder (created).
        resume: continue from ``run_dir/state.pt`` up to ``settings.steps``.
        progress: show a progress bar (rank 0 only).
        n_labels: number of label values (max label + 1) for the Dice loss; default from the data.
    """
    run_dir = Path(run_dir)
    device = resolve_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.deterministic:
        torch.use_deterministic_algorithms(True)
    info = dist_utils.init_from_env(device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier(info)
    logger = _setup_logger(run_dir, info.is_main)

    sample = train_set[0]
    ndim = sample["moving"].dim() - 1
    if settings.seg_weight > 0:
        if train_set.segs is None:
            raise ValueError("train: seg_weight > 0 needs label maps for the training images (--segs)")
        if n_labels is None:
            n_labels = int(max(int(s.max()) for s in train_set.segs)) + 1
        _check_one_hot_budget(n_labels, settings.batch_size, tuple(sample["moving"].shape[1:]))
    n_labels = n_labels or 1

    torch.manual_seed(settings.seed)
    model = build_model(settings, ndim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    start, best = 0, -math.inf
    state_path = run_dir / "state.pt"
    if resume:
        if not state_path.exists():
            raise FileNotFoundError(f"train: --resume given but '{state_path}' does not exist")
        state = _load_state(state_path)
        changes = settings_changes(state.get("settings") or {}, settings)
        if changes:
            raise ResumeMismatch(run_dir, changes)
        saved = SavableModel.from_checkpoint(state["model"], source=str(state_path))
        if type(saved) is not type(model) or saved.config != model.config:
            raise ValueError(
                f"train: cannot resume: the saved model config {saved.config} differs from the "
                f"requested one {model.config}"
            )
        model.load_state_dict(saved.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        start, best = int(state["step"]), float(state["best_val_dice"])
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed from %s at step %d", state_path, start)
    if start >= settings.steps:
        logger.info("nothing to do: already at step %d of %d", start, settings.steps)
    if info.is_main:
        atomic_write_text(run_dir / "settings.json", json.dumps(asdict(settings), indent=2))

    ddp_model: torch.nn.Module = model
    if info.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_settings = {"window": settings.window} if settings.loss == "ncc" else {}
    similarity = losses.similarity_loss(settings.loss, **loss_settings)
    log = _MetricsLog(run_dir / "metrics.csv", start if resume else None, info.is_main)
    use_amp = settings.amp and device.type == "cuda"
    order_cache: dict[int, torch.Tensor] = {}
    bar = tqdm(total=settings.steps, initial=start, disable=not (progress and info.is_main),
               desc="train", dynamic_ncols=True)
    running: list[LossParts] = []
    last_loss = float("nan")
    t0 = time.perf_counter()
    model.train()
    budget = math.inf if settings.max_minutes is None else 60.0 * settings.max_minutes
    meta = {"normalise": settings.normalise, "loss": settings.loss, "weight": settings.weight}
    if settings.hyper:
        meta["hyper_range"] = settings.hyper_range
    end = settings.steps
    last_saved = start
    for step in range(start, settings.steps):
        lr = settings.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = _collate(train_set, _batch_indices(settings, step, len(train_set), info, order_cache), device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            parts = registration_loss(ddp_model, batch, settings, similarity, n_labels,
                                      settings.hyper_weight(step) if settings.hyper else None)
        # before backward(): torch's CPU grid_sample backward crashes the process on NaN coordinates
        diverged = torch.tensor(0.0 if bool(torch.isfinite(parts.total.detach())) else 1.0)
        if dist_utils.all_reduce_mean(diverged, info).item() > 0:  # every rank stops together
            raise FloatingPointError(
                f"train: the loss became {parts.total.item():g} at step {step + 1}: training diverged; nothing "
                f"was saved from this step on (last checkpoint: step {last_saved}); lower --lr or --lambda"
            )
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
        running.append(LossParts(*(p.detach() for p in parts)))
        done = step + 1
        bar.update(1)
        out_of_time = torch.tensor(float(time.perf_counter() - t0 > budget))
        if dist_utils.all_reduce_mean(out_of_time, info).item() > 0:  # every rank stops together
            end = done
        is_last = done == end
        is_log = done % settings.log_every == 0 or is_last
        is_val = val_set is not None and (done % settings.val_every == 0 or is_last)
        is_ckpt = done % settings.checkpoint_every == 0 or is_last
        if is_log or is_val:
            mean = [dist_utils.all_reduce_mean(torch.stack([getattr(r, k) for r in running]).mean(), info).item()
                    for k in LossParts._fields]
            running.clear()
            last_loss = mean[0]
            row: dict[str, Any] = {"step": done, "loss": mean[0], "sim": mean[1], "smooth": mean[2],
                                   "seg": mean[3], "lr": lr, "seconds": round(time.perf_counter() - t0, 2)}
            bar.set_postfix(loss=f"{mean[0]:.4f}", sim=f"{mean[1]:.4f}", smooth=f"{mean[2]:.3g}",
                            seg=f"{mean[3]:.3g}")
            if is_val:
                _check_not_diverged(model, batch, done, last_saved, info)
                val_dice, val_loss = validate(model, val_set, similarity, device, info)
                row.update(val_dice=val_dice, val_loss=val_loss)
                score = val_dice if math.isfinite(val_dice) else -val_loss
                if score > best:
                    best = score
                    if info.is_main:
                        model.save(run_dir / "model.pt", metadata={**meta, "step": done, "val_dice": val_dice,
                                                                  "val_loss": val_loss})
                logger.info("step %d val_dice %.4f val_loss %.4f", done, val_dice, val_loss)
            logger.info("step %d loss %.5f sim %.5f smooth %.5g seg %.5g", done, *mean)
            log.write(row)
        if is_ckpt:
            if not is_val:
                _check_not_diverged(model, batch, done, last_saved, info)
            if info.is_main:
                _save_state(state_path, model, optimizer, done, best, settings)
                model.save(run_dir / "last.pt", metadata={**meta, "step": done})
            last_saved = done
        if is_last:
            if end < settings.steps:
                logger.info("stopped at step %d: max_minutes=%s reached", done, settings.max_minutes)
            break
    bar.close()
    log.close()
    if info.is_main and (val_set is None or not (run_dir / "model.pt").exists()):
        model.save(run_dir / "model.pt", metadata={**meta, "step": end})
    dist_utils.barrier(info)
    best_dice = best if val_set is not None and val_set.segs is not None else float("nan")
    return TrainResult(run_dir, max(start, end), best_dice, last_loss)

