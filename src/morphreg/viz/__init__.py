"""Figures for registration results: slices, overlays, deformation grid, flow colour, Jacobian, reports.

One job per module:

* :mod:`.panels` -- figures of one registration (images and differences, grid, flow, Jacobian, overview).
* :mod:`.reports` -- figures from a run's or an evaluation's tables (training curves, Dice box plots).
* :mod:`.qc` -- the quality-control figure in anatomical orientation.
* :mod:`.draw` -- one view on one axes (label contours, warped grid, flow colour, Jacobian).
* :mod:`.views` -- slicing and display orientation, the figure grid of views.
* :mod:`.inputs` -- checking and converting the arrays and tensors given to a figure.
* :mod:`._common` -- house style and the atomic saving of every figure.

Inputs describe **one** image or pair, without batch or channel dimensions, as numpy arrays or
torch tensors (any device; detached and copied to the CPU here):

* images ``(*spatial)``, label maps ``(*spatial)`` of integers,
* displacement fields ``(ndim, *spatial)`` in voxels, component ``k`` along array axis ``k``
  (:mod:`morphreg.spatial`'s convention without the batch dimension).

Display convention (one place: :func:`display_array` and :data:`ORIGIN`): the first in-plane axis
runs left to right, the second from top to bottom, i.e. ``imshow(arr.T, origin="upper")``. This
shows the neurite OASIS slices upright (their axis 1 runs superior to inferior).

Every ``plot_*`` function draws on a private :class:`matplotlib.figure.Figure` (no pyplot state),
writes it atomically (:func:`morphreg._files.atomic_write`) at :data:`DPI` and returns the path.
The format comes from the suffix (PNG if there is none). Importing this package imports
matplotlib: a broken matplotlib (e.g. a bad ``MPLBACKEND``) makes ``from morphreg import viz``
fail, which callers that can do without figures catch.
"""

from ._common import DPI
from .draw import flow_to_rgb
from .panels import plot_flow, plot_grid, plot_jacobian, plot_overview, plot_registration
from .qc import anatomical_views, plot_qc, to_ras
from .reports import TRAINING_QUANTITIES, plot_dice_boxplot, plot_training_curves
from .views import ORIGIN, SliceView, display_array, show_slice, slice_views

__all__ = [
    "DPI",
    "ORIGIN",
    "TRAINING_QUANTITIES",
    "SliceView",
    "anatomical_views",
    "display_array",
    "flow_to_rgb",
    "plot_dice_boxplot",
    "plot_flow",
    "plot_grid",
    "plot_jacobian",
    "plot_overview",
    "plot_qc",
    "plot_registration",
    "plot_training_curves",
    "show_slice",
    "slice_views",
    "to_ras",
]
