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
import torch

from .. import io
from .files import _check_not_constant, _load_seg, load_image, load_pair, register_pair
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


def check_atlases(atlases: Sequence[tuple[str | Path, str | Path]], spec: RegistrationSpec,
                  image_ndim: int | None = None, device: torch.device | None = None) -> None:
    """Check what every image's job shares, once and before any job: each atlas and its label map
    (readable, not constant, an integer label map on the atlas' grid), one dimensionality, and
    the network's (``image_ndim``: the images', when known).

    Raises:
        ValueError: naming `` `atlas` ``/`` `atlas_seg` ``/`` `model` `` and the file.
    """
    ndims = {}
    for atlas, atlas_seg in atlases:
        volume = load_image(atlas)
        _check_not_constant("`atlas`", atlas, volume)
        _load_seg("`atlas_seg`", atlas_seg, None, volume)
        ndims[str(atlas)] = volume.ndim
    if len(set(ndims.values())) > 1:
        raise ValueError(f"the `atlas` images mix 2D and 3D ({', '.join(f'{a}: {n}D' for a, n in ndims.items())})")
    ndim = next(iter(ndims.values()))
    if image_ndim is not None and ndim != image_ndim:
        raise ValueError(f"`atlas` '{next(iter(ndims))}' is {ndim}D but the `images` are {image_ndim}D")
    if spec.method == "network":
        spec.network(ndim, device if device is not None else torch.device("cpu"))


def check_outputs(images: Sequence[Path], outputs: Sequence[Path],
                  atlases: Sequence[tuple[str | Path, str | Path]]) -> None:
    """Refuse two images that give one label map, and a label map written over an input.

    Raises:
        ValueError: naming both images, or the output and the input it would destroy.
    """
    seen: dict[str, Path] = {}
    for image, output in zip(images, outputs):
        if output.name in seen:
            raise ValueError(f"`images` '{seen[output.name]}' and '{image}' both give the label map '{output.name}' "
                             "(the name without extension); rename one")
        seen[output.name] = image
    inputs = [*images, *(Path(p) for pair in atlases for p in pair)]
    for output in outputs:
        for source in inputs:
            if io.same_path(output, source):
                raise ValueError(f"the label map '{output}' would overwrite the input '{source}'; give `out` another "
                                 "folder")


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
