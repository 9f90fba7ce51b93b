"""The three libraries' VoxelMorph networks as timing contenders, and the check that they are one network.

morphreg's ``VxmDense``, MONAI's ``VoxelMorph`` and voxelmorph 0.3.4's ``VxmPairwise`` (with the
paper's head), each with its own losses and in either memory layout; :func:`architecture_check`
copies morphreg's weights into the peers and compares the raw fields.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import md_table
from benchmarks.speed.bench_core import as_written, conv_flops, param_count, smooth_pair

ENC = (16, 32, 32, 32)
DEC = (32, 32, 32, 32, 32, 16, 16)
LAMBDA = 1.0  # weight of the grad (diffusion) loss; irrelevant for speed
LR = 1e-4

warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
warnings.filterwarnings("ignore", message=".*non-tuple sequence for multidimensional indexing.*")  # MONAI


# --------------------------------------------------------------------------------------------
# versions
# --------------------------------------------------------------------------------------------


def peer_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("morphreg", "torch", "monai", "voxelmorph", "neurite", "antspyx", "numpy", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# --------------------------------------------------------------------------------------------
# contenders
# --------------------------------------------------------------------------------------------


@dataclass
class Contender:
    """One library's model with its inference call and its training step."""

    name: str
    model: nn.Module
    infer: Callable[[torch.Tensor, torch.Tensor], object]  # under inference_mode by the caller
    field_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # raw network field
    moved_and_disp: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ncc: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # lower is better
    mse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    grad: Callable[[torch.Tensor], torch.Tensor]
    memory_format: torch.memory_format = torch.contiguous_format
    note: str = ""
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)

    def step(self, moving: torch.Tensor, fixed: torch.Tensor, loss: str = "ncc") -> float:
        """forward + similarity + LAMBDA * grad + backward + Adam step; returns the loss value."""
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.optimizer.zero_grad(set_to_none=True)
        moved, disp = self.moved_and_disp(moving, fixed)
        sim = self.ncc if loss == "ncc" else self.mse
        value = sim(moved, fixed) + LAMBDA * self.grad(disp)
        value.backward()
        self.optimizer.step()
        return float(value.detach())


def _channels_last(ndim: int) -> torch.memory_format:
    return torch.channels_last if ndim == 2 else torch.channels_last_3d


LAYOUTS = {"": "default", "cl": "channels-last", "nchw": "contiguous"}


def in_layout(c: Contender, ndim: int, layout: str) -> Contender:
    """The contender with weights and inputs in ``layout`` ('' keeps the library's default)."""
    if not layout:
        return c
    fmt = _channels_last(ndim) if layout == "cl" else torch.contiguous_format
    c.model.to(memory_format=fmt)
    c.memory_format = fmt
    if hasattr(c.model, "memory_format"):  # morphreg's VxmDense converts its input to this format
        c.model.memory_format = fmt
    c.name = c.name.split(" (default")[0] + f", {LAYOUTS[layout]}"
    c.note = (c.note + "; " if c.note else "") + f"weights and inputs in the {LAYOUTS[layout]} memory format"
    return c


def make_morphreg(ndim: int) -> Contender:
    """The shipped ``VxmDense``: its default layout is channels-last (weights and activations)."""
    from morphreg import VxmDense
    from morphreg.losses import grad_loss, mse_loss, ncc_loss

    model = VxmDense(ndim, enc=ENC, dec=DEC)

    def moved_and_disp(m: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(m, f)
        return out.moved, out.disp

    return Contender(
        name="morphreg VxmDense (default: channels-last)",
        model=model,
        infer=lambda m, f: model(m, f),
        field_of=lambda m, f: model.predict_field(m, f),
        moved_and_disp=moved_and_disp,
        ncc=lambda a, b: ncc_loss(a, b, window=9),
        mse=mse_loss,
        grad=lambda d: grad_loss(d, penalty="l2"),
        memory_format=model.memory_format,
    )


def make_monai(ndim: int) -> Contender:
    from monai.losses import DiffusionLoss, LocalNormalizedCrossCorrelationLoss
    from monai.networks.nets import VoxelMorph, VoxelMorphUNet

    # channels come in (down, up) pairs per level: 4 levels = 8 entries; the top up block gives 32
    # channels (unet_out_channels), then final convs 16, 16 and a 3^ndim conv to ndim channels.
    backbone = VoxelMorphUNet(
        spatial_dims=ndim,
        in_channels=2,
        unet_out_channels=DEC[len(ENC)],
        channels=(16, 32, 32, 32, 32, 32, 32, 32),
        final_conv_channels=DEC[len(ENC) + 1 :],
    )
    model = VoxelMorph(backbone=backbone, integration_steps=0, spatial_dims=ndim)
    lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=ndim, kernel_size=9, kernel_type="rectangular")
    diffusion = DiffusionLoss()

    def moved_and_disp(m: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        moved, ddf = model(m, f)
        return moved, ddf

    return Contender(
        name="MONAI VoxelMorph (default: contiguous)",
        model=model,
        infer=lambda m, f: model(m, f),
        field_of=lambda m, f: model.backbone(torch.cat([m, f], dim=1)),
        moved_and_disp=moved_and_disp,
        ncc=lncc,
        mse=F.mse_loss,
        grad=diffusion,
        note="LocalNormalizedCrossCorrelationLoss(kernel 9, rectangular) + DiffusionLoss (central differences)",
    )


def make_voxelmorph(ndim: int) -> Contender:
    import neurite as ne

    from benchmarks.oasis_study.study_peers import build_vxm_paper

    # BasicUNet with [[down], [up]] features gives the paper's encoder and first four decoder convs;
    # VxmPairwise's stock head (1x1 conv to ndim channels, 3^ndim ndim->ndim flow conv) is replaced
    # by voxelmorph's/neurite's own blocks: 3^ndim 32->16, 16->16 (LeakyReLU) and a 3^ndim 16->ndim
    # flow (study_peers.build_vxm_paper, the same network the OASIS study trains).
    model = build_vxm_paper(ndim)
    ncc = ne.nn.modules.NCC(window_size=9)
    mse = ne.nn.modules.MSE()
    spatial_grad = ne.nn.modules.SpatialGradient(penalty="l2")

    def moved_and_disp(m: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        disp, moved = model(m, f, return_warped_source=True)
        return moved, disp

    return Contender(
        name="voxelmorph 0.3.4 VxmPairwise (default: contiguous)",
        model=model,
        infer=lambda m, f: model(m, f, return_warped_source=True),
        field_of=lambda m, f: model.flow_layer(model.model(torch.cat([m, f], dim=1))),
        moved_and_disp=moved_and_disp,
        ncc=lambda a, b: -ncc(a, b).mean(),
        mse=mse,
        grad=spatial_grad,
        note="neurite NCC(9) + SpatialGradient('l2'); head replaced by the paper's (see text)",
    )


def with_bf16_autocast(c: Contender) -> Contender:
    """The network under ``torch.autocast(bfloat16)`` (mixed precision); losses in float32.

    Not the same precision as the float32 contenders: reported as a proposal, next to MONAI under
    the same autocast, so that the gain is not mistaken for a library difference.
    """

    def autocast(x: torch.Tensor) -> torch.autocast:
        return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)

    infer, moved_and_disp = c.infer, c.moved_and_disp

    def infer_bf16(m: torch.Tensor, f: torch.Tensor) -> object:
        with autocast(m):
            return infer(m, f)

    def moved_and_disp_bf16(m: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(m):
            moved, disp = moved_and_disp(m, f)
        return moved.float(), disp.float()

    c.infer, c.moved_and_disp = infer_bf16, moved_and_disp_bf16
    c.name += " bf16 autocast"
    c.note = (c.note + "; " if c.note else "") + "network under torch.autocast(bfloat16)"
    return c


BUILDERS: dict[str, Callable[[int], Contender]] = {
    "morphreg": make_morphreg,  # shipped default: channels-last
    "morphreg-nchw": lambda ndim: in_layout(make_morphreg(ndim), ndim, "nchw"),
    "monai": make_monai,  # MONAI's default: contiguous
    "monai-cl": lambda ndim: in_layout(make_monai(ndim), ndim, "cl"),
    "voxelmorph": make_voxelmorph,  # voxelmorph's default: contiguous
    "voxelmorph-cl": lambda ndim: in_layout(make_voxelmorph(ndim), ndim, "cl"),
    "morphreg-bf16": lambda ndim: with_bf16_autocast(make_morphreg(ndim)),
    "monai-cl-bf16": lambda ndim: with_bf16_autocast(in_layout(make_monai(ndim), ndim, "cl")),
}


def build(key: str, ndim: int, device: torch.device, seed: int = 0) -> Contender:
    torch.manual_seed(seed)
    c = BUILDERS[key](ndim)
    c.model.to(device)
    if c.memory_format != torch.contiguous_format:
        c.model.to(memory_format=c.memory_format)
    return c


# --------------------------------------------------------------------------------------------
# architecture check: same convs, same parameters, same field with copied weights
# --------------------------------------------------------------------------------------------


def conv_sequence(c: Contender, m: torch.Tensor, f: torch.Tensor) -> list[nn.Module]:
    order: list[nn.Module] = []
    handles = [
        mod.register_forward_hook(lambda mod, i, o: order.append(mod))
        for mod in c.model.modules()
        if isinstance(mod, (nn.Conv2d, nn.Conv3d))
    ]
    with torch.inference_mode(), as_written(c.model):  # every conv module runs (the low-res decoder path skips them)
        c.field_of(m, f)
    for h in handles:
        h.remove()
    return order


def architecture_check(keys: Sequence[str], shape: Sequence[int]) -> tuple[str, dict[str, float]]:
    """Copy morphreg's conv weights (in execution order) into the peers; compare the fields."""
    ndim = len(shape)
    moving, fixed = smooth_pair(shape)
    cs = {k: build(k, ndim, torch.device("cpu")) for k in keys}
    ref = cs[keys[0]]
    seqs = {k: conv_sequence(c, moving, fixed) for k, c in cs.items()}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in seqs[keys[0]]:  # a non-trivial flow head, so the fields are not ~0
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2.0 / mod.weight[0].numel()) ** 0.5)
            mod.bias.copy_(0.01 * torch.randn(mod.bias.shape, generator=g))
    rows = []
    diffs = {}
    with torch.inference_mode():
        ref_field = ref.field_of(moving, fixed)
    scale = float(ref_field.abs().max())
    for k, c in cs.items():
        shapes_ok = [tuple(a.weight.shape) for a in seqs[k]] == [tuple(b.weight.shape) for b in seqs[keys[0]]]
        if shapes_ok and k != keys[0]:
            # the decoder convs after a skip concatenation: morphreg and neurite concatenate
            # [upsampled, skip], MONAI's SkipConnection [skip, upsampled]: permute input channels
            after_cat = {len(ENC) + i: DEC[i - 1] for i in range(1, len(ENC) + 1)}
            with torch.no_grad():
                for i, (dst, src) in enumerate(zip(seqs[k], seqs[keys[0]])):
                    w = src.weight
                    if k == "monai" and i in after_cat:
                        up = after_cat[i]
                        w = torch.cat([w[:, up:], w[:, :up]], dim=1)
                    dst.weight.copy_(w)
                    dst.bias.copy_(src.bias)
        with torch.inference_mode():
            fld = c.field_of(moving, fixed)
        diff = float((fld - ref_field).abs().max()) if fld.shape == ref_field.shape else float("nan")
        diffs[k] = diff
        flops, _ = conv_flops(c.model, lambda c=c: c.field_of(moving, fixed))
        rows.append(
            [
                c.name,
                f"{param_count(c.model):,}",
                len(seqs[k]),
                f"{flops / 1e9:.2f}",
                "yes" if shapes_ok else "NO",
                f"{diff:.1e} (field max {scale:.2f})",
            ]
        )
    table = md_table(
        [
            "model",
            "parameters",
            "convs",
            f"conv GFLOP at {'x'.join(map(str, shape))}",
            "same conv shapes, same order",
            "max abs field difference with morphreg's weights",
        ],
        rows,
    )
    return table, diffs
