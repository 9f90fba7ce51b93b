"""Atlas label propagation: register each atlas to an image, warp its labels, vote.

With one atlas the image's labels are the atlas labels pulled through the registration; with
several, each voxel takes the label most atlases give it (majority voting; a tie goes to the
smaller label value).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .. import io
from .files import PairOnGrid, load_pair, register_pair
from .pipeline import Registration


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
    make_register: Callable[[PairOnGrid], Registration],
    *,
    normalise: str | None,
) -> io.Volume:
    """Labels for ``image`` from ``atlases`` (``(atlas image, atlas labels)`` pairs).

    Args:
        image: the image to segment (the fixed image of every registration).
        atlases: one or more atlas images with their label maps.
        make_register: builds the registration for a loaded pair.
        normalise: intensity normalisation of the registration inputs.

    Returns:
        The label map on ``image``'s grid (majority vote over the atlases).
    """
    votes = []
    fixed = None
    for atlas, atlas_seg in atlases:
        pair = load_pair(atlas, image, atlas_seg, names={"moving": "`atlas`", "fixed": "image",
                                                         "moving_seg": "`atlas_seg`", "fixed_seg": "-"})
        result = register_pair(pair, make_register(pair), normalise=normalise)
        votes.append(result.moved_seg.data)
        fixed = pair.fixed
    return io.Volume(majority_vote(votes), fixed.affine, fixed.header)
