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

from .loop import check_training_data, train
from .objective import LossParts, registration_loss, validate
from .run_log import METRIC_COLUMNS
from .settings import (
    HYPER_SPAN,
    MODEL_TYPES,
    RESUMABLE_CHANGES,
    RUN_FILES,
    ResumeMismatch,
    TrainResult,
    TrainSettings,
    check_resume,
    settings_changes,
)
from .state import STATE_FORMAT, build_model

__all__ = [
    "check_training_data",
    "HYPER_SPAN", "METRIC_COLUMNS", "MODEL_TYPES", "RESUMABLE_CHANGES", "RUN_FILES", "STATE_FORMAT",
    "LossParts", "ResumeMismatch", "TrainResult", "TrainSettings", "build_model", "check_resume", "registration_loss",
    "settings_changes", "train", "validate",
]
