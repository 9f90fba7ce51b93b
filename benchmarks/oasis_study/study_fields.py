"""Record the fields of a first scoring pass and replay them in a second (study helpers).

The study scores each registration against two label sets (seg24 and seg4 in 2D, seg35 and
seg4 in 3D); registering once and replaying the fields keeps the two passes identical and
halves the work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


class FieldRecorder:
    """Wraps a timed register function (``last_seconds``), keeping every field and its time."""

    def __init__(self, register: Callable[[Any, Any], torch.Tensor]) -> None:
        self.register = register
        self.disps: list[torch.Tensor] = []
        self.seconds: list[float] = []
        self.last_seconds = math.nan

    def __call__(self, moving: Any, fixed: Any) -> Any:
        output = self.register(moving, fixed)  # a RegistrationOutput
        self.last_seconds = self.register.last_seconds  # type: ignore[attr-defined]
        self.disps.append(output.disp.detach().float().cpu())
        self.seconds.append(self.last_seconds)
        return output


class FieldReplay:
    """A register function returning the recorded fields (and their times) in order."""

    def __init__(self, recorder: FieldRecorder) -> None:
        self.disps, self.seconds, self.i = recorder.disps, recorder.seconds, 0
        self.last_seconds = math.nan

    def __call__(self, moving: Any, fixed: Any) -> Any:
        from morphreg.workflows.pipeline import as_output

        disp = self.disps[self.i]
        self.last_seconds = self.seconds[self.i]
        self.i += 1
        return as_output(disp)
