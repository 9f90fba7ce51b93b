"""The training loop: Adam over seeded batches, validation, checkpoints, a time budget."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ... import losses
from ..._files import RunDir, atomic_write_text
from ...data import PairDataset
from ...models import SavableModel
from ...models.layers import check_levels
from .. import distributed as dist_utils
from ..device import resolve_device
from .objective import LossParts, check_one_hot_budget, registration_loss, validate
from .run_log import MetricsLog, setup_logger
from .sampling import batch_indices, collate
from .settings import ResumeMismatch, TrainResult, TrainSettings, settings_changes
from .state import build_model, load_state, save_state


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
            f"nothing was saved from this step on (last checkpoint: step {last_saved}); lower `lr` or `weight`"
        )


def _prepare_process(settings: TrainSettings, run_dir: Path) -> tuple[torch.device, dist_utils.DistInfo]:
    """Device, threads, determinism and (under torchrun) the process group; rank 0 makes ``run_dir``."""
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
    return device, info


#: ``settings.model`` values whose network is a U-Net of ``len(settings.enc)`` levels.
_UNET_MODELS = ("vxm", "cascade", "probabilistic")


def check_training_data(settings: TrainSettings, train_set: PairDataset, n_labels: int | None = None,
                        label_source: str | None = None) -> tuple[int, int]:
    """``(ndim, n_labels)`` of the training data, checked against the settings before anything is
    written: the U-Net's levels (``enc``) against the image size, and the Dice loss's labels
    against the memory budget (``label_source`` names the map holding the largest label).

    Raises:
        ValueError: naming `` `enc` `` or `` `seg_weight` `` and what the data allow.
    """
    sample = train_set[0]
    ndim = sample["moving"].dim() - 1
    if settings.model in _UNET_MODELS:
        check_levels("train", len(settings.enc), tuple(sample["moving"].shape[1:]), setting=True)
    if settings.seg_weight > 0:
        if train_set.segs is None:
            raise ValueError("train: seg_weight > 0 needs label maps for the training images (`segs`)")
        if n_labels is None:
            n_labels = int(max(int(s.max()) for s in train_set.segs)) + 1
        check_one_hot_budget(n_labels, settings.batch_size, tuple(sample["moving"].shape[1:]), label_source)
    return ndim, n_labels or 1


def _restore(run: RunDir, settings: TrainSettings, model: SavableModel, optimizer: torch.optim.Optimizer,
             logger: logging.Logger) -> tuple[int, float]:
    """Load ``state.pt`` into ``model`` and ``optimizer``; ``(step, best score)``."""
    if not run.state.exists():
        raise FileNotFoundError(f"train: `resume` given but '{run.state}' does not exist")
    state = load_state(run.state)
    changes = settings_changes(state.get("settings") or {}, settings)
    if changes:
        raise ResumeMismatch(run.root, changes)
    saved = SavableModel.from_checkpoint(state["model"], source=str(run.state))
    if type(saved) is not type(model) or saved.config != model.config:
        raise ValueError(f"train: cannot resume: the saved model config {saved.config} differs from the "
                         f"requested one {model.config}")
    model.load_state_dict(saved.state_dict())
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    logger.info("resumed from %s at step %d", run.state, int(state["step"]))
    return int(state["step"]), float(state["best_val_dice"])


class _Loop:
    """One invocation of the training loop, from ``start`` to ``settings.steps`` or the time budget."""

    def __init__(self, settings: TrainSettings, model: SavableModel, optimizer: torch.optim.Optimizer,
                 train_set: PairDataset, val_set: PairDataset | None, run: RunDir, device: torch.device,
                 info: dist_utils.DistInfo, logger: logging.Logger, n_labels: int, start: int, best: float,
                 resume: bool, progress: bool) -> None:
        self.settings, self.model, self.optimizer = settings, model, optimizer
        self.train_set, self.val_set, self.run_dir = train_set, val_set, run
        self.device, self.info, self.logger, self.n_labels = device, info, logger, n_labels
        self.start, self.best, self.last_saved, self.end = start, best, start, settings.steps
        self.ddp_model: torch.nn.Module = model
        if info.enabled:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        loss_settings = {"window": settings.window} if settings.loss == "ncc" else {}
        self.similarity = losses.similarity_loss(settings.loss, **loss_settings)
        self.log = MetricsLog(run.metrics, start if resume else None, info.is_main)
        self.use_amp = settings.amp and device.type == "cuda"
        self.order_cache: dict[int, torch.Tensor] = {}
        self.bar = tqdm(total=settings.steps, initial=start, disable=not (progress and info.is_main),
                        desc="train", dynamic_ncols=True)
        self.running: list[LossParts] = []
        self.last_loss = float("nan")
        self.budget = math.inf if settings.max_minutes is None else 60.0 * settings.max_minutes
        self.cpu_budget = math.inf if settings.max_cpu_minutes is None else 60.0 * settings.max_cpu_minutes
        self.meta: dict[str, Any] = {"normalise": settings.normalise, "loss": settings.loss, "weight": settings.weight}
        if settings.hyper:
            self.meta["hyper_range"] = settings.hyper_range
        for key in ("inverse_consistency", "ic_weight", "image_sigma"):
            if getattr(settings, key) is not None:
                self.meta[key] = getattr(settings, key)

    def _any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (every rank takes the same decision)."""
        return dist_utils.all_reduce_mean(torch.tensor(float(flag)), self.info).item() > 0

    def _step(self, step: int, lr: float) -> dict[str, torch.Tensor]:
        """One optimisation step; returns its batch."""
        settings = self.settings
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        picks = batch_indices(settings, step, len(self.train_set), self.info, self.order_cache)
        batch = collate(self.train_set, picks, self.device)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            parts = registration_loss(self.ddp_model, batch, settings, self.similarity, self.n_labels,
                                      settings.hyper_weight(step) if settings.hyper else None)
        # before backward(): torch's CPU grid_sample backward crashes the process on NaN coordinates
        if self._any_rank(not bool(torch.isfinite(parts.total.detach()))):  # every rank stops together
            raise FloatingPointError(
                f"train: the loss became {parts.total.item():g} at step {step + 1}: training diverged; nothing "
                f"was saved from this step on (last checkpoint: step {self.last_saved}); lower `lr` or `weight`")
        self.optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        self.optimizer.step()
        self.running.append(LossParts(*(p.detach() for p in parts)))
        return batch

    def _validate(self, done: int, batch: dict[str, torch.Tensor], row: dict[str, Any]) -> None:
        assert self.val_set is not None
        _check_not_diverged(self.model, batch, done, self.last_saved, self.info)
        val_dice, val_loss = validate(self.model, self.val_set, self.similarity, self.device, self.info)
        row.update(val_dice=val_dice, val_loss=val_loss)
        score = val_dice if math.isfinite(val_dice) else -val_loss
        if score > self.best:
            self.best = score
            if self.info.is_main:
                self.model.save(self.run_dir.model, metadata={**self.meta, "step": done, "val_dice": val_dice,
                                                             "val_loss": val_loss})
        self.logger.info("step %d val_dice %.4f val_loss %.4f", done, val_dice, val_loss)

    def _report(self, done: int, lr: float, batch: dict[str, torch.Tensor], is_val: bool, elapsed: float) -> None:
        """Average the steps since the last report over the ranks; log, validate, write the row."""
        mean = [dist_utils.all_reduce_mean(torch.stack([getattr(r, k) for r in self.running]).mean(), self.info).item()
                for k in LossParts._fields]
        self.running.clear()
        self.last_loss = mean[0]
        row: dict[str, Any] = {"step": done, "loss": mean[0], "sim": mean[1], "smooth": mean[2],
                               "seg": mean[3], "lr": lr, "seconds": round(elapsed, 2), "ic": mean[4]}
        self.bar.set_postfix(loss=f"{mean[0]:.4f}", sim=f"{mean[1]:.4f}", smooth=f"{mean[2]:.3g}", seg=f"{mean[3]:.3g}")
        if is_val:
            self._validate(done, batch, row)
        self.logger.info("step %d loss %.5f sim %.5f smooth %.5g seg %.5g ic %.5g", done, *mean)
        self.log.write(row)

    def _checkpoint(self, done: int, batch: dict[str, torch.Tensor], validated: bool) -> None:
        if not validated:
            _check_not_diverged(self.model, batch, done, self.last_saved, self.info)
        if self.info.is_main:
            save_state(self.run_dir.state, self.model, self.optimizer, done, self.best, self.settings)
            self.model.save(self.run_dir.last, metadata={**self.meta, "step": done})
        self.last_saved = done

    def run(self) -> TrainResult:
        settings = self.settings
        t0, c0 = time.perf_counter(), time.process_time()
        self.model.train()
        for step in range(self.start, settings.steps):
            lr = settings.lr_at(step)
            batch = self._step(step, lr)
            done = step + 1
            self.bar.update(1)
            over = time.perf_counter() - t0 > self.budget or time.process_time() - c0 > self.cpu_budget
            if self._any_rank(over):  # every rank stops together
                self.end = done
            is_last = done == self.end
            is_val = self.val_set is not None and (done % settings.val_every == 0 or is_last)
            if done % settings.log_every == 0 or is_last or is_val:
                self._report(done, lr, batch, is_val, time.perf_counter() - t0)
            if done % settings.checkpoint_every == 0 or is_last:
                self._checkpoint(done, batch, is_val)
            if is_last:
                self.logger.info("ran steps %d-%d in %.1f CPU s, %.1f s wall", self.start + 1, done,
                                 time.process_time() - c0, time.perf_counter() - t0)
                if self.end < settings.steps:
                    self.logger.info("stopped at step %d: max_minutes=%s / max_cpu_minutes=%s reached (%.1f CPU s)",
                                     done, settings.max_minutes, settings.max_cpu_minutes, time.process_time() - c0)
                break
        return self._finish()

    def _finish(self) -> TrainResult:
        self.bar.close()
        self.log.close()
        if self.info.is_main and (self.val_set is None or not self.run_dir.model.exists()):
            self.model.save(self.run_dir.model, metadata={**self.meta, "step": self.end})
        dist_utils.barrier(self.info)
        labelled = self.val_set is not None and self.val_set.segs is not None
        return TrainResult(self.run_dir.root, max(self.start, self.end), self.best if labelled else float("nan"),
                           self.last_loss)


def train(
    settings: TrainSettings,
    train_set: PairDataset,
    val_set: PairDataset | None,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = True,
    n_labels: int | None = None,
    label_source: str | None = None,
) -> TrainResult:
    """Train a :class:`VxmDense` (an :class:`AffineNet`, a lecture family) on ``train_set``; see the package docstring.

    Args:
        settings: hyper-parameters.
        train_set: training pairs (its length is one epoch).
        val_set: validation pairs (``pairing="pairs"``), or ``None``.
        run_dir: output folder (created).
        resume: continue from ``run_dir/state.pt`` up to ``settings.steps``.
        progress: show a progress bar (rank 0 only).
        n_labels: number of label values (max label + 1) for the Dice loss; default from the data.
        label_source: the label map holding the largest value (named when it is refused), e.g.
            :attr:`~morphreg.workflows.training_data.TrainingData.label_source`.
    """
    run = RunDir(run_dir)
    ndim, n_labels = check_training_data(settings, train_set, n_labels, label_source)  # before the run folder
    device, info = _prepare_process(settings, run.root)
    logger = setup_logger(run.root, info.is_main)
    torch.manual_seed(settings.seed)
    model = build_model(settings, ndim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    start, best = _restore(run, settings, model, optimizer, logger) if resume else (0, -math.inf)
    if start >= settings.steps:
        logger.info("nothing to do: already at step %d of %d", start, settings.steps)
    if info.is_main:
        atomic_write_text(run.settings, json.dumps(asdict(settings), indent=2))
    return _Loop(settings, model, optimizer, train_set, val_set, run, device, info, logger, n_labels, start, best,
                 resume, progress).run()
