"""Training data: image collections, intensity normalisation, subject splits, pairing, synthetic data.

One job per module:

* :mod:`.discovery` -- which files form a collection (folder, list, glob, numpy stack) and reading them.
* :mod:`.preprocess` -- intensity normalisation and the one label-map policy (:func:`as_label_map`).
* :mod:`.split` -- the seeded train/validation split of subjects.
* :mod:`.samplers` -- one class per pairing strategy (random, atlas, listed pairs).
* :mod:`.pairs` -- :class:`PairDataset`, the training pairs as tensors.
* :mod:`.pairs_csv` -- a CSV of registration pairs.
* :mod:`.synthetic` -- synthetic subjects (:func:`synthetic_shapes`) and SynthMorph pairs (:class:`SynthPairs`).

Reading files is delegated to :mod:`morphreg.io`; this package never looks at a file format.
Arrays are ``(*spatial)`` (2D ``(X, Y)`` or 3D ``(X, Y, Z)``); dataset items are tensors
``(1, *spatial)`` so that a :class:`torch.utils.data.DataLoader` batches them into
``(B, 1, *spatial)``.

Randomness is explicit: every random choice comes from a seed (a ``numpy`` or ``torch``
generator built from it), never from global state.
"""

from .discovery import load_collection
from .pairs import PairDataset
from .pairs_csv import PAIR_COLUMNS, read_pairs_csv
from .preprocess import MAX_LABEL, NORMALISE_METHODS, as_label_map, normalise_intensity
from .samplers import PAIRINGS, AtlasPairs, ListedPairs, PairSampler, RandomPairs, make_sampler
from .split import Split, split_subjects
from .synthetic import SynthPairs, synthetic_shapes

__all__ = [
    "MAX_LABEL",
    "NORMALISE_METHODS",
    "PAIRINGS",
    "PAIR_COLUMNS",
    "AtlasPairs",
    "ListedPairs",
    "PairDataset",
    "PairSampler",
    "RandomPairs",
    "Split",
    "SynthPairs",
    "as_label_map",
    "load_collection",
    "make_sampler",
    "normalise_intensity",
    "read_pairs_csv",
    "split_subjects",
    "synthetic_shapes",
]
