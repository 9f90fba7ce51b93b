"""TransMorph: VoxelMorph with a Swin-transformer encoder (Chen et al., Medical Image Analysis 2022).

A convolutional patch embedding (stride ``patch``) turns the pair into tokens; Swin stages
(Liu et al., ICCV 2021) of windowed multi-head self-attention with a relative position bias,
every other block on windows shifted by half a window (cyclic shift + attention mask), each
stage but the last followed by patch merging (2^ndim neighbours -> 2x the channels at half the
resolution). A convolutional decoder upsamples and concatenates the stage outputs and two
full/half-resolution convolutional skips, as TransMorph's, and the VoxelMorph head predicts the
field. One code path for 2D and 3D: windows are ``window^ndim`` tokens; any input size works
(the pair is padded to a multiple of ``patch * 2**(stages-1)``, each stage's tokens to a
multiple of the window, and cropped back).

Size: the paper's TransMorph (embed 96, depths 2-2-4-2, heads 4-4-8-8, 46M parameters in 3D)
is scaled down for CPU training by default (embed 24, depths 2-2-2, heads 2-4-8, window 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_positive_int
from .layers import ConvBlock, conv_class
from .vxm import VxmDense

#: Attention logit of token pairs that a shifted window joins across the image border.
MASKED = -100.0


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, *S, C)`` tokens, every ``S_k`` a multiple of ``window`` -> ``(B * n_windows, window**ndim, C)``."""
    batch, *shape, channels = x.shape
    ndim = len(shape)
    split = [v for s in shape for v in (s // window, window)]
    x = x.reshape(batch, *split, channels)
    order = [0, *range(1, 2 * ndim, 2), *range(2, 2 * ndim + 1, 2), 2 * ndim + 1]
    return x.permute(order).reshape(-1, window**ndim, channels)


def window_reverse(windows: torch.Tensor, window: int, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * n_windows, window**ndim, C)`` -> ``(B, *shape, C)``."""
    ndim = len(shape)
    counts = [s // window for s in shape]
    channels = windows.shape[-1]
    x = windows.reshape(-1, *counts, *([window] * ndim), channels)
    order = [0, *[v for k in range(ndim) for v in (1 + k, 1 + ndim + k)], 2 * ndim + 1]
    return x.permute(order).reshape(-1, *shape, channels)


def relative_position_index(window: int, ndim: int) -> torch.Tensor:
    """``(N, N)`` index into the ``(2 window - 1)**ndim`` bias table for the ``N = window**ndim`` tokens of a window."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(window)] * ndim, indexing="ij")).flatten(1)  # (ndim, N)
    relative = coords[:, :, None] - coords[:, None, :] + (window - 1)
    index = torch.zeros(relative.shape[1:], dtype=torch.long)
    for k in range(ndim):
        index = index * (2 * window - 1) + relative[k]
    return index


def shift_mask(shape: Sequence[int], window: int, shifts: Sequence[int]) -> torch.Tensor:
    """``(n_windows, N, N)`` additive attention mask of the cyclically shifted windows (0 or :data:`MASKED`)."""
    region = torch.zeros(tuple(shape), dtype=torch.long)
    for axis, (size, shift) in enumerate(zip(shape, shifts)):
        if shift == 0:
            continue
        ids = torch.zeros(size, dtype=torch.long)
        ids[size - window : size - shift] = 1
        ids[size - shift :] = 2
        region = region * 3 + ids.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    windows = window_partition(region[None, ..., None], window)[..., 0]  # (n_windows, N)
    return (windows[:, :, None] != windows[:, None, :]).float() * MASKED


class WindowAttention(nn.Module):
    """Multi-head self-attention within a window, with a learned relative position bias.

    ``forward(x, mask=None)``: ``x`` ``(B * n_windows, N, C)``; ``mask`` ``(n_windows, N, N)`` additive.
    Equals ``softmax(q kᵀ / √d + bias + mask) v`` per head, then a linear projection.
    """

    def __init__(self, ndim: int, dim: int, heads: int, window: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"TransMorph: a stage's width {dim} is not divisible by its {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** ndim, heads))
        if not self.bias_table.is_meta:
            nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("index", relative_position_index(window, ndim), persistent=False)

    def bias(self) -> torch.Tensor:
        """``(heads, N, N)`` relative position bias."""
        return self.bias_table[self.index].permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n_batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(n_batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.bias()[None]
        if mask is not None:
            n_windows = mask.shape[0]
            bias = (bias + mask[:, None].to(bias.dtype)).repeat(n_batch // n_windows, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(n_batch, tokens, dim))


class SwinBlock(nn.Module):
    """LayerNorm -> (shifted) window attention -> residual; LayerNorm -> MLP (4x, GELU) -> residual.

    ``forward(x)``: ``(B, *S, C)`` tokens of any size (padded to the window inside, cropped back).
    """

    def __init__(self, ndim: int, dim: int, heads: int, window: int, shifted: bool) -> None:
        super().__init__()
        self.window, self.shifted = window, shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(ndim, dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = list(x.shape[1:-1])
        w = self.window
        y = self.norm1(x)
        pad = [0, 0]
        for s in reversed(shape):
            pad += [0, (-s) % w]
        y = F.pad(y, pad)
        padded = list(y.shape[1:-1])
        # no shift along an axis that holds one window only (as Swin does for small maps)
        shifts = [w // 2 if self.shifted and s > w else 0 for s in padded]
        axes = list(range(1, 1 + len(shape)))
        if any(shifts):
            y = torch.roll(y, [-s for s in shifts], axes)
        mask = shift_mask(padded, w, shifts).to(y.device) if any(shifts) else None
        y = window_reverse(self.attn(window_partition(y, w), mask), w, padded)
        if any(shifts):
            y = torch.roll(y, shifts, axes)
        x = x + y[(slice(None), *[slice(0, s) for s in shape])]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """``(B, *S, C)`` -> ``(B, *ceil(S/2), 2C)``: concatenate each 2^ndim block of tokens, LayerNorm, linear."""

    def __init__(self, ndim: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2**ndim * dim)
        self.reduce = nn.Linear(2**ndim * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, *shape, channels = x.shape
        ndim = len(shape)
        pad = [0, 0]
        for s in reversed(shape):
            pad += [0, s % 2]
        x = F.pad(x, pad)
        half = [(s + 1) // 2 for s in shape]
        x = x.reshape(batch, *[v for h in half for v in (h, 2)], channels)
        order = [0, *range(1, 2 * ndim, 2), *range(2, 2 * ndim + 1, 2), 2 * ndim + 1]
        x = x.permute(order).reshape(batch, *half, 2**ndim * channels)
        return self.reduce(self.norm(x))


class SwinUNet(nn.Module):
    """TransMorph's network body: Swin encoder, convolutional decoder with skips (see the module).

    Input ``(B, in_channels, *S)`` with ``S`` a multiple of ``patch * 2**(len(depths)-1)``; output
    ``(B, out_channels, *S)`` full-resolution features for the flow head.
    """

    def __init__(self, ndim: int, in_channels: int, embed_dim: int, depths: Sequence[int], heads: Sequence[int],
                 window: int, patch: int, out_channels: int = 16) -> None:
        super().__init__()
        if len(depths) != len(heads):
            raise ValueError(f"TransMorph: 'depths' ({len(depths)}) and 'heads' ({len(heads)}) need one entry "
                             "per stage")
        if patch not in (2, 4):
            raise ValueError(f"TransMorph: 'patch' must be 2 or 4, got {patch!r}")
        self.ndim, self.patch = ndim, patch
        self.embed = conv_class(ndim)(in_channels, embed_dim, patch, stride=patch)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        self.out_norms = nn.ModuleList()
        dims = [embed_dim * 2**i for i in range(len(depths))]
        for i, (depth, n_heads) in enumerate(zip(depths, heads)):
            self.stages.append(nn.Sequential(*[SwinBlock(ndim, dims[i], n_heads, window, shifted=j % 2 == 1)
                                               for j in range(depth)]))
            self.out_norms.append(nn.LayerNorm(dims[i]))
            if i + 1 < len(depths):
                self.merges.append(PatchMerging(ndim, dims[i]))
        # convolutional skips at full and half resolution (TransMorph's "conv skip" on the input pair)
        self.skip_full = ConvBlock(ndim, in_channels, out_channels)
        self.skip_half = ConvBlock(ndim, out_channels, 2 * out_channels, stride=2)
        self.up = nn.ModuleList()
        prev = dims[-1]
        for skip in reversed(dims[:-1]):
            self.up.append(ConvBlock(ndim, prev + skip, skip))
            prev = skip
        skips = [2 * out_channels, out_channels] if patch == 4 else [out_channels]
        if patch == 4:  # 1/4 -> 1/2 -> 1
            self.up.append(ConvBlock(ndim, prev + skips[0], 2 * out_channels))
            prev = 2 * out_channels
        self.up.append(ConvBlock(ndim, prev + out_channels, out_channels))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.skip_full(x)
        half = self.skip_half(full)
        tokens = self.embed_norm(self.embed(x).movedim(1, -1))
        features = []
        for i, stage in enumerate(self.stages):
            tokens = stage(tokens)
            features.append(self.out_norms[i](tokens).movedim(-1, 1))
            if i < len(self.merges):
                tokens = self.merges[i](tokens)
        skips = features[:-1][::-1] + ([half, full] if self.patch == 4 else [full])
        y = features[-1]
        for block, skip in zip(self.up, skips):
            y = F.interpolate(y, size=skip.shape[2:], mode="nearest")
            y = block(torch.cat([y, skip], dim=1))
        return y


class TransMorph(VxmDense):
    """:class:`VxmDense` whose U-Net is TransMorph's Swin-encoder network (:class:`SwinUNet`).

    Args:
        ndim, int_steps, int_downsize, bidir, in_channels: as :class:`VxmDense`.
        embed_dim: width of the first Swin stage (doubled at every patch merging).
        depths, heads: Swin blocks and attention heads of each stage.
        window: window edge in tokens (windows of ``window**ndim`` tokens).
        patch: patch-embedding stride (2 or 4).
    """

    def __init__(
        self,
        ndim: int,
        int_steps: int = 0,
        int_downsize: int = 1,
        bidir: bool = False,
        in_channels: int = 1,
        embed_dim: int = 24,
        depths: Sequence[int] = (2, 2, 2),
        heads: Sequence[int] = (2, 4, 8),
        window: int = 4,
        patch: int = 4,
    ) -> None:
        fn = "TransMorph"
        check_positive_int(fn, "embed_dim", embed_dim)
        check_positive_int(fn, "window", window, minimum=2)
        for name, values in (("depths", depths), ("heads", heads)):
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{fn}: '{name}' must be a non-empty list of integers >= 1, got {list(values)!r}")
        super().__init__(ndim, (1,), (1,), int_steps, int_downsize, bidir, in_channels)
        self._store_config(ndim=ndim, int_steps=int_steps, int_downsize=int_downsize, bidir=bidir,
                           in_channels=in_channels, embed_dim=embed_dim, depths=tuple(depths), heads=tuple(heads),
                           window=window, patch=patch)
        self.unet = SwinUNet(ndim, 2 * in_channels, embed_dim, depths, heads, window, patch)
        self.flow = conv_class(ndim)(self.unet.out_channels, ndim, 3, padding=1)
        if not self.flow.weight.is_meta:
            nn.init.normal_(self.flow.weight, mean=0.0, std=1e-5)
        nn.init.zeros_(self.flow.bias)
        self.unet.to(memory_format=self.memory_format)
        self.flow.to(memory_format=self.memory_format)
        self.multiple = patch * 2 ** (len(depths) - 1)
        self.window = window
