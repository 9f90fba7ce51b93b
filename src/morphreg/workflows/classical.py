"""Registration functions built from :mod:`morphreg.optimize` for the command line.

Each returns a ``(moving, fixed) -> disp`` callable (see :mod:`.register`), so the network,
the classical methods and their combinations share one code path for writing outputs.
"""

from __future__ import annotations

import argparse
from typing import Any

from .register import PairOnGrid, RegisterFn


def classical_register_fn(
    method: str, args: argparse.Namespace, pair: PairOnGrid, network: RegisterFn | None
) -> RegisterFn:
    """The registration callable for ``method`` (``network`` passes ``network`` through)."""
    if method == "network" and not args.affine:
        assert network is not None
        return network
    raise NotImplementedError(f"--method {method} / --affine are not wired yet")


def refine_register_fn(register: RegisterFn, args: Any) -> RegisterFn:
    raise NotImplementedError("--optimize is not wired yet")
