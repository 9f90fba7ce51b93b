"""What a run reports while it trains: ``train.log``, ``metrics.csv`` and (when installed) TensorBoard."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

from ..._files import atomic_write

METRIC_COLUMNS = ("step", "loss", "sim", "smooth", "seg", "ic", "lr", "val_dice", "val_loss", "seconds")


def setup_logger(run_dir: Path, enabled: bool) -> logging.Logger:
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


class MetricsLog:
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


