"""Peer registration tools for the OASIS study: voxelmorph 0.3.4, MONAI and ANTs, behind one
``register_fn(moving, fixed) -> disp`` interface in morphreg's convention.

morphreg's convention: ``disp`` is ``(1, ndim, *spatial)`` in voxels, component ``k`` along tensor
axis ``2 + k``, pull-back (``moved(x) = moving(x + disp(x))``). Every adapter below is checked by
:func:`check_conventions` (``study_oasis2d.py check``): the peer's own warped output must equal
``morphreg.spatial.warp(moving, adapter_disp)``.

The peers are optional benchmark dependencies (the ``bench`` extra of ``pyproject.toml``), imported only
inside the functions that need them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

RegisterFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# ---------------------------------------------------------------------------------------------
# learned peers: construction


def build_vxm(ndim: int = 2) -> torch.nn.Module:
    """voxelmorph 0.3.4's ``VxmPairwise`` with its own defaults (BasicUNet, features
    (16, 16, 16, 16, 16), ReLU, 5 scaling-and-squaring steps: diffeomorphic)."""
    import voxelmorph as vxm

    return vxm.nn.models.VxmPairwise(ndim=ndim, source_channels=1, target_channels=1)


def build_monai(ndim: int = 2) -> torch.nn.Module:
    """MONAI's ``VoxelMorph`` with the backbone that its documentation says matches the paper
    (``VoxelMorphUNet`` channels (16, 32, 32, 32, 32, 32), UNet output 32, final convs (16, 16),
    LeakyReLU 0.2), displacement variant (``integration_steps=0``) like the paper's VoxelMorph."""
    from monai.networks.nets import VoxelMorph, VoxelMorphUNet

    backbone = VoxelMorphUNet(
        spatial_dims=ndim,
        in_channels=2,
        unet_out_channels=32,
        channels=(16, 32, 32, 32, 32, 32),
        final_conv_channels=(16, 16),
    )
    return VoxelMorph(backbone=backbone, integration_steps=0, half_res=False, spatial_dims=ndim)


def build_vxm_paper(ndim: int = 2) -> torch.nn.Module:
    """voxelmorph 0.3.4's ``VxmPairwise`` with the paper's architecture (Balakrishnan et al. 2019,
    the network morphreg's ``VxmDense`` builds): encoder 16,32,32,32, decoder 32,32,32,32 through
    its ``BasicUNet`` (LeakyReLU 0.2, nearest upsampling), then, in place of the stock head (1x1
    conv to ndim channels, 3^ndim flow conv), neurite's own ``ConvBlock``s 3^ndim 32->16, 16->16
    (LeakyReLU 0.2) and a 3^ndim 16->ndim flow conv (N(0, 1e-5)); non-diffeomorphic
    (``integration_steps=0``), like the paper's VoxelMorph and morphreg's NCC model. Same
    parameters, convolution shapes and order as ``VxmDense``, and the same field with copied
    weights (checked in ``bench_speed.py``)."""
    import neurite as ne
    import voxelmorph as vxm

    enc, dec = (16, 32, 32, 32), (32, 32, 32, 32, 32, 16, 16)
    act = torch.nn.LeakyReLU(0.2, inplace=True)
    model = vxm.nn.models.VxmPairwise(
        ndim,
        source_channels=1,
        target_channels=1,
        nb_features=[list(enc), list(dec[: len(enc)])],
        activations=act,
        integration_steps=0,
        unet_kwargs={"upsample_mode": "nearest"},
    )
    widths = dec[len(enc) :]
    model.model.out_layer = torch.nn.Sequential(
        *[ne.nn.modules.ConvBlock(ndim, cin, cout, activation=act) for cin, cout in zip(widths[:-1], widths[1:])]
    )
    flow = ne.nn.modules.ConvBlock(ndim, widths[-1], ndim)
    torch.nn.init.normal_(flow.conv0.weight, mean=0.0, std=1e-5)
    torch.nn.init.zeros_(flow.conv0.bias)
    model.flow_layer = flow
    return model


PEERS = {"vxm": build_vxm, "vxm_paper": build_vxm_paper, "monai": build_monai}


@dataclass
class PeerStep:
    """One forward pass of a peer in training: its own warped image and the regularised field."""

    moved: torch.Tensor
    field: torch.Tensor  # what the peer's own recipe regularises (vxm: the velocity; MONAI: the DDF)


def peer_forward(name: str, model: torch.nn.Module, moving: torch.Tensor, fixed: torch.Tensor) -> PeerStep:
    if name.startswith("vxm"):  # vxm_paper: integration_steps=0, so the velocity is the displacement
        velocity, moved = model(moving, fixed, return_warped_source=True, return_field_type="velocity")
        return PeerStep(moved, velocity)
    moved, ddf = model(moving, fixed)
    return PeerStep(moved, ddf)


def peer_disp(name: str, model: torch.nn.Module, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """The peer's displacement in morphreg's convention (verified by :func:`check_conventions`)."""
    if name.startswith("vxm"):
        return model(moving, fixed, return_field_type="displacement")
    return model(moving, fixed)[1]


class PeerLoss:
    """The peer's own similarity and smoothness losses.

    * vxm: ``neurite.nn.modules.NCC(window_size=9)`` (squared local correlation, higher is
      better, so the loss is ``-NCC``) or ``neurite.nn.modules.MSE``, plus
      ``neurite.nn.modules.SpatialGradient('l2')`` (mean squared forward difference, averaged
      over axes: the same formula as ``morphreg.losses.grad_loss``) on the velocity, as
      voxelmorph's training scripts do.
    * MONAI: ``LocalNormalizedCrossCorrelationLoss(kernel_size=9, rectangular)`` or
      ``torch.nn.MSELoss``, plus ``DiffusionLoss`` (central differences, *summed* over axes), so λ
      is divided by ``ndim`` to weigh a smooth field as morphreg's λ does.
    """

    def __init__(self, name: str, loss: str, weight: float, ndim: int) -> None:
        self.name, self.weight = name, weight
        self.float64_retries = 0
        if name.startswith("vxm"):
            import neurite as ne

            self.smooth = ne.nn.modules.SpatialGradient(penalty="l2")
            if loss == "ncc":
                ncc = ne.nn.modules.NCC(window_size=9)

                def neurite_ncc_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                    # neurite asserts every local coefficient lies in [0, 1] (tolerance 1e-5); its
                    # float32 moment formula can break that by rounding. Then the same function is
                    # evaluated in float64 (same math) and the event is counted (train.json).
                    try:
                        return -ncc(a, b).mean()
                    except AssertionError:
                        self.float64_retries += 1
                        return -ncc(a.double(), b.double()).mean().float()

                self.sim = neurite_ncc_loss
            else:
                mse = ne.nn.modules.MSE()
                self.sim = lambda a, b: mse(a, b)
            self.smooth_weight = weight
        else:
            from monai.losses import DiffusionLoss, LocalNormalizedCrossCorrelationLoss

            if loss == "ncc":
                self.sim = LocalNormalizedCrossCorrelationLoss(
                    spatial_dims=ndim, kernel_size=9, kernel_type="rectangular"
                )
            else:
                self.sim = torch.nn.MSELoss()
            self.smooth = DiffusionLoss()
            self.smooth_weight = weight / ndim

    def __call__(self, step: PeerStep, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sim = self.sim(step.moved, fixed)
        smooth = self.smooth(step.field)
        return sim + self.smooth_weight * smooth, sim, smooth


def training_pairs(train_dir: str, val_fraction: float, seed: int, normalise: str | None) -> tuple[Any, Any]:
    """The training set and the sample order morphreg's ``train`` uses (same subjects, same pairs,
    same order): ``build_training_data`` with the same split, then for step ``s`` the epoch
    ``s // n`` permutation seeded by ``seed * 1_000_003 + epoch`` (batch 1, one process)."""
    from morphreg.workflows.training_data import build_training_data

    data = build_training_data(train_dir, val_fraction=val_fraction, seed=seed, normalise=normalise)
    return data, data.train


def sample(dataset: Any, step: int, seed: int, cache: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = len(dataset)
    epoch, k = divmod(step, n)
    if epoch not in cache:
        cache.clear()
        cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    dataset.set_epoch(epoch)
    item = dataset[int(cache[epoch][k])]
    return {k2: v.unsqueeze(0) for k2, v in item.items() if torch.is_tensor(v)}


def train_peer(
    name: str,
    train_dir: str,
    out: Path,
    *,
    steps: int,
    loss: str = "ncc",
    weight: float = 1.0,
    lr: float = 1e-3,
    seed: int = 0,
    val_fraction: float = 0.2,
    normalise: str | None = "percentile",
    log_every: int = 50,
) -> dict[str, Any]:
    """Train a peer exactly as ``morphreg train`` trains VxmDense (same pairs, Adam, lr, steps,
    batch 1), with the peer's own model and losses; writes ``out/model.pt`` (state dict) and
    ``out/metrics.csv``."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    data, dataset = training_pairs(train_dir, val_fraction, seed, normalise)
    ndim = dataset[0]["moving"].dim() - 1
    torch.manual_seed(seed)
    model = PEERS[name](ndim)
    model.train()
    criterion = PeerLoss(name, loss, weight, ndim)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    cache: dict[int, torch.Tensor] = {}
    rows, running = [], []
    t0 = time.perf_counter()
    for step in range(steps):
        batch = sample(dataset, step, seed, cache)
        total, sim, smooth = criterion(peer_forward(name, model, batch["moving"], batch["fixed"]), batch["fixed"])
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if not torch.isfinite(total):
            raise FloatingPointError(f"{name}: loss became {total.item()} at step {step + 1}")
        running.append([float(total), float(sim), float(smooth)])
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean = np.mean(running, axis=0)
            running.clear()
            rows.append(
                {
                    "step": step + 1,
                    "loss": mean[0],
                    "sim": mean[1],
                    "smooth": mean[2],
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
            print(f"{name} step {step + 1} loss {mean[0]:.5f} sim {mean[1]:.5f} smooth {mean[2]:.4g}", flush=True)
    torch.save(model.state_dict(), out / "model.pt")
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["step", "loss", "sim", "smooth", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    info = {
        "peer": name,
        "steps": steps,
        "loss": loss,
        "lambda": weight,
        "lr": lr,
        "seed": seed,
        "normalise": normalise,
        "train_subjects": len(data.train_names),
        "seconds": time.perf_counter() - t0,
        "parameters": sum(p.numel() for p in model.parameters()),
        "ncc_float64_retries": criterion.float64_retries,
    }
    (out / "train.json").write_text(__import__("json").dumps(info, indent=1))
    return info


def load_peer(name: str, path: Path, ndim: int = 2) -> torch.nn.Module:
    model = PEERS[name](ndim)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def peer_register_fn(name: str, model: torch.nn.Module) -> RegisterFn:
    model = model.eval()

    def run(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return peer_disp(name, model, moving, fixed)

    return run


# ---------------------------------------------------------------------------------------------
# ANTs


def ants_threads_one() -> None:
    """ITK reads its thread count from the environment: one thread, like every other method."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"


@dataclass
class AntsResult:
    disp: torch.Tensor  # (1, ndim, *spatial) morphreg convention
    warped: np.ndarray  # ANTs' own warpedmovout
    seconds: float  # the ants.registration call alone


def ants_disp(fixed_img: Any, transforms: list[str], shape: tuple[int, ...], pad: int = 32) -> torch.Tensor:
    """Dense displacement of ANTs' forward transforms, exactly: for each axis ``k``, resample a
    coordinate image (value = physical coordinate ``k``, on a grid padded by ``pad`` voxels so
    that points mapped slightly outside stay exact; spacing 1, identity direction) through
    ``transforms`` onto the fixed grid. Linear interpolation of a linear function is exact, so
    the result is ``T(x)_k``; ``disp_k = T(x)_k - x_k``."""
    import ants

    ndim = len(shape)
    axes = [np.arange(-pad, s + pad, dtype=np.float32) for s in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    index = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    disp = []
    for k in range(ndim):
        coord = ants.from_numpy(np.ascontiguousarray(grids[k]), origin=tuple([-float(pad)] * ndim))
        mapped = ants.apply_transforms(fixed_img, coord, transforms, interpolator="linear").numpy()
        disp.append(mapped - index[k])
    return torch.from_numpy(np.stack(disp).astype(np.float32))[None]


def ants_register(moving: np.ndarray, fixed: np.ndarray, transform: str, seed: int = 0) -> AntsResult:
    """``ants.registration(fixed, moving, type_of_transform=transform)`` on numpy arrays (spacing 1,
    origin 0, identity direction, so physical coordinates are voxel indices), seeded."""
    import ants

    ants.config._random_seed = seed  # passes --random-seed (the affine stage samples randomly)
    fixed_img = ants.from_numpy(np.ascontiguousarray(fixed, dtype=np.float32))
    moving_img = ants.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))
    start = time.perf_counter()
    result = ants.registration(fixed_img, moving_img, type_of_transform=transform)
    seconds = time.perf_counter() - start
    disp = ants_disp(fixed_img, result["fwdtransforms"], fixed.shape)
    warped = result["warpedmovout"].numpy()
    for path in set(result["fwdtransforms"]) | set(result["invtransforms"]):
        if os.path.exists(path) and path.startswith(("/tmp", os.environ.get("TMPDIR", "/tmp"))):
            os.remove(path)
    return AntsResult(disp, warped, seconds)


def inside_mask(disp: torch.Tensor) -> np.ndarray:
    """Voxels whose sample point ``x + disp(x)`` lies inside the image (ANTs returns 0 outside,
    ``grid_sample`` blends with the padding over the last half voxel: only there do they differ)."""
    shape = disp.shape[2:]
    index = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    inside = np.ones(shape, dtype=bool)
    for k, s in enumerate(shape):
        point = index[k] + disp[0, k].numpy()
        inside &= (point >= 0) & (point <= s - 1)
    return inside


class AntsRegisterFn:
    """``register_fn`` for ANTs; ``last_seconds`` is the ``ants.registration`` call alone (the
    dense-field extraction for the evaluation is not counted); ``last_warped_corr`` compares
    morphreg's warp by the extracted field with ANTs' own ``warpedmovout``."""

    def __init__(self, transform: str, seed: int = 0) -> None:
        self.transform, self.seed = transform, seed
        self.last_seconds = math.nan
        self.checks: list[float] = []

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        from morphreg import spatial

        result = ants_register(moving[0, 0].numpy(), fixed[0, 0].numpy(), self.transform, self.seed)
        self.last_seconds = result.seconds
        moved = spatial.warp(moving.float(), result.disp, padding="zeros")[0, 0].numpy()
        inside = inside_mask(result.disp)
        self.checks.append(float(np.corrcoef(moved[inside], result.warped[inside])[0, 1]))
        return result.disp


# ---------------------------------------------------------------------------------------------
# convention checks


def check_conventions(shape: tuple[int, int] = (64, 96), seed: int = 0) -> dict[str, Any]:
    """Synthetic checks that each adapter's ``disp`` warps ``moving`` exactly as the peer does.

    * vxm, MONAI: a random smooth field ``u`` (both components, different along each axis) is
      passed to the peer's own transformer and to ``morphreg.spatial.warp``; the two results
      must agree; then, for an untrained model with a perturbed flow head, the model's own
      warped output must equal ``morphreg.spatial.warp(moving, adapter_disp)``.
    * ANTs: a smooth image shifted by (+3, -2) voxels; the extracted field must be close to
      the shift in the interior, and warping by it must reproduce ANTs' ``warpedmovout``.
    """
    from morphreg import spatial

    gen = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    moving = torch.nn.functional.interpolate(
        torch.rand(1, 1, *[s // 8 for s in shape], generator=gen), size=shape, mode="bilinear", align_corners=True
    )
    field = torch.nn.functional.interpolate(
        4 * torch.randn(1, ndim, *[s // 16 for s in shape], generator=gen),
        size=shape,
        mode="bilinear",
        align_corners=True,
    )
    report: dict[str, Any] = {}
    ours = spatial.warp(moving, field, padding="zeros")

    import voxelmorph as vxm

    theirs = vxm.nn.modules.SpatialTransformer()(moving, field)
    report["field_abs_max"] = float(field.abs().max())
    report["vxm_transformer_max_abs"] = float((theirs - ours).abs().max())
    from monai.networks.blocks import Warp

    theirs = Warp(mode="bilinear", padding_mode="zeros")(moving, field)
    report["monai_warp_max_abs"] = float((theirs - ours).abs().max())
    fixed = torch.roll(moving, shifts=(3, -2), dims=(2, 3))
    for name in ("vxm", "vxm_paper", "monai"):
        torch.manual_seed(seed)
        model = PEERS[name](ndim).eval()
        with torch.no_grad():  # make the untrained network predict a sizeable field (flow head x 1e4)
            head = model.flow_layer.conv0 if name.startswith("vxm") else model.backbone.net[-1].final_conv_out.conv
            head.weight.normal_(0.0, 0.1)
            head.weight.mul_(6.0 / float(peer_disp(name, model, moving, fixed).abs().max()))
        with torch.no_grad():
            if name.startswith("vxm"):
                disp, moved = model(moving, fixed, return_warped_source=True)
            else:
                moved, disp = model(moving, fixed)
            adapter = peer_disp(name, model, moving, fixed)
        report[f"{name}_model_disp_abs_max"] = float(adapter.abs().max())
        moved_ours = spatial.warp(moving, adapter, padding="zeros")
        report[f"{name}_model_warp_max_abs"] = float((moved_ours - moved).abs().max())

    ants_threads_one()
    # a smooth image with a zero border (so that shifting it loses nothing), shifted by whole voxels
    window = np.zeros(shape, dtype=np.float32)
    window[12:-12, 12:-12] = 1.0
    from scipy import ndimage

    big = ndimage.gaussian_filter(window, 3.0) * moving[0, 0].numpy() * 100
    shifted = np.roll(big, shift=(3, -2), axis=(0, 1))
    # fixed = shifted; pull-back: moved(x) = moving(x + u) = shifted(x) = moving(x - (3, -2)) -> u = (-3, +2)
    result = ants_register(big, shifted, "SyN", seed)
    inner = result.disp[(slice(None), slice(None)) + tuple(slice(16, s - 16) for s in shape)]
    report["ants_shift_expected"] = [-3.0, 2.0]
    report["ants_shift_median"] = [float(inner[0, k].median()) for k in range(ndim)]
    moved = spatial.warp(torch.from_numpy(big)[None, None], result.disp, padding="zeros")[0, 0].numpy()
    inside = inside_mask(result.disp)
    report["ants_warp_corr_inside"] = float(np.corrcoef(moved[inside], result.warped[inside])[0, 1])
    report["ants_warp_max_abs_inside_rel"] = float(np.abs(moved - result.warped)[inside].max() / np.abs(big).max())
    return report
