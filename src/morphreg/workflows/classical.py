"""Registration callables built from :mod:`morphreg.optimize` (and networks) for the CLI.

Each is a ``(moving, fixed) -> disp`` function on ``(1, 1, *spatial)`` tensors (see
:mod:`.register`), so networks, classical methods and their combinations share one path for
writing outputs. Compositions are returned as one displacement: affine first, then the
deformable part (:func:`morphreg.spatial.compose`), so the moving image is interpolated once.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import optimize, spatial
from .register import PairOnGrid, RegisterFn

DEFAULT_LOSS = {"affine": "gncc", "rigid": "gncc", "dense": "ncc", "ffd": "ncc"}
DEFAULT_WEIGHT = {"ncc": 1.0, "mse": 0.01, "mi": 1.0, "gncc": 1.0}


class Registration:
    """A callable registration that may also remember the world matrix of its affine part."""

    def __init__(self, run: RegisterFn) -> None:
        self.run = run
        self.matrix_world: Any = None
        self.inverse_disp: torch.Tensor | None = None

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.run(moving, fixed)


def affine_step(transform: str, loss: str, pair: PairOnGrid, holder: Registration):
    """``(moving, fixed) -> affine disp``; stores the world matrix on ``holder``."""

    def run(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        result = optimize.register_affine(moving, fixed, transform=transform, loss=loss,
                                          moving_affine=pair.fixed.affine, fixed_affine=pair.fixed.affine)
        holder.matrix_world = result.matrix_world[0].detach().cpu().numpy()
        return result.disp

    return run


def greedy_settings(preset: str | None, levels: int | None, iterations: list[int] | None) -> dict[str, Any]:
    """Levels and iterations of :func:`morphreg.optimize.register_greedy` from a preset and overrides.

    ``iterations`` given without ``levels`` sets the number of levels to its length.
    """
    settings = dict(optimize.GREEDY_PRESETS[preset or "fast"])
    if iterations is not None:
        settings["iterations"] = tuple(iterations)
        settings["levels"] = levels or len(iterations)
    elif levels is not None:
        default = list(settings["iterations"])  # type: ignore[arg-type]
        settings["levels"] = levels
        settings["iterations"] = tuple(([default[0]] * levels + default)[-levels:])
    return settings


def tqdm_progress(desc: str, enabled: bool) -> Any:
    """A ``progress(level, n_levels, iteration, n_iterations, loss, elapsed)`` callback drawing a
    tqdm bar per level on stderr (``None`` when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bars: dict[int, Any] = {}

    def progress(level: int, n_levels: int, iteration: int, n_iterations: int, loss: float, elapsed: float) -> None:
        if level not in bars:
            for bar in bars.values():
                bar.close()
            bars[level] = tqdm(total=n_iterations, desc=f"{desc} level {level + 1}/{n_levels}", leave=True)
        bar = bars[level]
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", elapsed=f"{elapsed:.1f}s", refresh=False)
        if iteration + 1 == n_iterations and level + 1 == n_levels:
            bar.close()

    return progress


def greedy_step(args: Any, holder: Registration) -> RegisterFn:
    """``(moving, fixed) -> disp`` by greedy diffeomorphic registration; stores the inverse on ``holder``."""
    settings = greedy_settings(getattr(args, "preset", None), getattr(args, "levels", None),
                               getattr(args, "iterations", None))
    progress = tqdm_progress("dense", not getattr(args, "quiet", False))

    def run(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        result = optimize.register_greedy(moving, fixed, progress=progress, **settings)
        holder.inverse_disp = result.inverse_disp
        return result.disp

    return run


def on_device(run: RegisterFn, device: torch.device | None) -> RegisterFn:
    """``run`` with its inputs moved to ``device`` first (``None``: where they are)."""
    if device is None:
        return run
    return lambda moving, fixed: run(moving.to(device), fixed.to(device))


def classical_register_fn(
    method: str, args: Any, pair: PairOnGrid, network: RegisterFn | None, affine_network: RegisterFn | None = None,
    device: torch.device | None = None,
) -> Registration:
    """The registration for ``method`` (``network``, ``affine``, ``rigid``, ``dense``, ``ffd``).

    ``args`` supplies ``loss`` and ``weight`` (``None``: per-method defaults) and ``affine``
    (prepend optimisation-based affine alignment to a network; ``affine_network`` replaces the
    optimisation with a learned affine model). Optimisation-based methods run on ``device``
    (default: where the inputs are).
    """
    holder = Registration(lambda m, f: m)
    run = _method_run(method, args, pair, network, affine_network, holder)
    holder.run = run if method == "network" else on_device(run, device)
    return holder


def _method_run(method: str, args: Any, pair: PairOnGrid, network: RegisterFn | None,
                affine_network: RegisterFn | None, holder: Registration) -> RegisterFn:
    loss = args.loss or DEFAULT_LOSS.get(method, "ncc")
    weight = DEFAULT_WEIGHT[loss] if args.weight is None else args.weight
    if method in ("affine", "rigid"):
        return affine_step(method, loss, pair, holder)
    if method == "dense" and loss == "ncc" and args.weight is None:
        return greedy_step(args, holder)
    if method == "dense":
        # a stationary velocity field: same Dice as a displacement on OASIS 2D, without folding
        return lambda m, f: optimize.register_dense(m, f, loss=loss, weight=weight, velocity=True).disp
    if method == "ffd":
        return lambda m, f: optimize.register_ffd(m, f, loss=loss, weight=weight).disp
    if network is None:
        raise ValueError(f"unknown registration method {method!r}")
    if not (args.affine or affine_network is not None):
        return network
    first = affine_network or affine_step("affine", "gncc", pair, holder)

    def run(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        affine_disp = first(moving, fixed)
        deformable = network(spatial.warp(moving, affine_disp), fixed)
        return spatial.compose(affine_disp, deformable.to(affine_disp.device))

    return run


def refine_register_fn(register: RegisterFn, args: Any) -> Registration:
    """Instance-specific optimisation: ``args.optimize`` Adam steps on the field of ``register``.

    The starting field is a copy; the network that produced it is never modified.
    """
    loss = args.loss or "ncc"
    weight = DEFAULT_WEIGHT[loss] if args.weight is None else args.weight
    refined = Registration(lambda m, f: m)

    def run(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        start = register(moving, fixed).detach().clone()
        refined.matrix_world = getattr(register, "matrix_world", None)
        moving, fixed = moving.to(start.device), fixed.to(start.device)  # where the first field was made
        with torch.inference_mode(False), torch.enable_grad():
            return optimize.register_dense(moving, fixed, loss=loss, weight=weight, levels=1,
                                           iterations=args.optimize, init_disp=start).disp

    refined.run = run
    return refined
