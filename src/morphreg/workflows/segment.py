"""Atlas label propagation: register each atlas to an image, warp its labels, vote.

With one atlas the image's labels are the atlas labels pulled through the registration; with
several, each voxel takes the label most atlases give it (majority voting; a tie goes to the
smaller label value).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import io
from .files import load_pair, register_pair
from .jobs import JobStatus, first_line, job_status
from .spec import RegistrationSpec


def majority_vote(label_maps: Sequence[np.ndarray]) -> np.ndarray:
    """Per-voxel most frequent label of ``label_maps`` (each ``(*spatial)``, integer, one shape).

    Ties go to the smallest label value. Returns an array of the first map's dtype.
    """
    fn = "morphreg.workflows.segment.majority_vote"
    if not label_maps:
        raise ValueError(f"{fn}: argument 'label_maps' is empty")
    stack = np.stack([np.asarray(m) for m in label_maps])
    values = np.unique(stack)
    counts = np.stack([(stack == v).sum(axis=0) for v in values])  # (labels, *spatial)
    return values[np.argmax(counts, axis=0)].astype(stack.dtype)  # argmax takes the first (smallest) on ties


def propagate_labels(
    image: str | Path,
    atlases: Sequence[tuple[str | Path, str | Path]],
    spec: RegistrationSpec,
) -> io.Volume:
    """Labels for ``image`` from ``atlases`` (``(atlas image, atlas labels)`` pairs).

    Args:
        image: the image to segment (the fixed image of every registration).
        atlases: one or more atlas images with their label maps.
        spec: the registration of each atlas to ``image``.

    Returns:
        The label map on ``image``'s grid (majority vote over the atlases).
    """
    votes = []
    fixed = None
    for atlas, atlas_seg in atlases:
        pair = load_pair(atlas, image, atlas_seg, names={"moving": "`atlas`", "fixed": "image",
                                                         "moving_seg": "`atlas_seg`", "fixed_seg": "-"})
        built = spec.build(pair, moving_path=atlas)
        result = register_pair(pair, built.registration, normalise=built.normalise)
        votes.append(result.moved_seg.data)
        fixed = pair.fixed
    return io.Volume(majority_vote(votes), fixed.affine, fixed.header)


@dataclass(frozen=True)
class SegmentJob:
    """Label ``image`` from ``atlases`` with ``spec`` and write ``output`` (one runner job)."""

    row: int
    name: str
    image: str
    atlases: tuple[tuple[str, str], ...]
    spec: RegistrationSpec
    output: str

    def finished(self) -> bool:
        return Path(self.output).exists()

    def run(self, resume: bool = False) -> JobStatus:
        """Never raises for this image's own failures (the status says ``error``)."""
        start = time.perf_counter()
        if resume and self.finished():
            return job_status(self, "skipped", start, "finished in an earlier run")
        try:
            labels = propagate_labels(self.image, self.atlases, self.spec)
            io.save_volume(labels, self.output, description=f"morphreg segment: {len(self.atlases)} atlas(es)")
        except Exception as err:  # noqa: BLE001 - this image's status
            return job_status(self, "error", start, first_line(err))
        return job_status(self, "done", start)
