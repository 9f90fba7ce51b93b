"""TransMorph: one code path in 2D and 3D, deterministic and batch-consistent, any input size; its
window attention equals the formula it implements, the window helpers invert each other."""

from __future__ import annotations

import math

import pytest
import torch

from morphreg.models import TransMorph, load_model
from morphreg.models.transmorph import (
    MASKED,
    PatchMerging,
    WindowAttention,
    relative_position_index,
    shift_mask,
    window_partition,
    window_reverse,
)

SMALL = {"embed_dim": 8, "depths": (2, 2), "heads": (2, 2), "window": 2}


def _randomise(model: TransMorph) -> TransMorph:
    """Visible outputs: the flow head's weights drawn larger than its near-zero initialisation."""
    with torch.no_grad():
        model.flow.weight.normal_(0.0, 0.1)
    return model.eval()


@pytest.mark.parametrize("shape", [(24, 20), (13, 17), (12, 10, 8), (9, 11, 7)])
def test_equal_output_for_equal_input_any_size_batch_consistent(shape):
    ndim = len(shape)
    torch.manual_seed(0)
    model = _randomise(TransMorph(ndim, int_steps=5, **SMALL))
    moving, fixed = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    with torch.no_grad():
        out = model(moving, fixed)
        again = model(moving, fixed)
        single = model(moving[1:], fixed[1:])
    assert out.disp.shape == (2, ndim, *shape) and out.moved.shape == moving.shape
    assert float(out.disp.abs().max()) > 1e-3
    torch.testing.assert_close(out.disp, again.disp, atol=0, rtol=0)  # deterministic
    torch.testing.assert_close(single.disp, out.disp[1:], atol=1e-5, rtol=1e-4)  # batch-consistent
    # a different pair gives a different field: the output depends on the input
    with torch.no_grad():
        other = model(fixed, moving)
    assert not torch.allclose(other.disp, out.disp)


@pytest.mark.parametrize("shape", [(8, 12), (4, 6, 8)])
def test_window_partition_and_reverse_invert_each_other(shape):
    x = torch.rand(2, *shape, 5)
    windows = window_partition(x, 2)
    assert windows.shape == (2 * math.prod(s // 2 for s in shape), 2 ** len(shape), 5)
    torch.testing.assert_close(window_reverse(windows, 2, shape), x, atol=0, rtol=0)
    # the first window holds the tokens of the first 2^ndim block, in row-major order
    first = x[(0, *[slice(0, 2)] * len(shape))].reshape(-1, 5)
    torch.testing.assert_close(windows[0], first, atol=0, rtol=0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_window_attention_equals_softmax_formula_with_bias_and_mask(ndim):
    torch.manual_seed(1)
    attn = WindowAttention(ndim, dim=8, heads=2, window=2).eval()
    n_windows, tokens = 3, 2**ndim
    x = torch.rand(2 * n_windows, tokens, 8)
    mask = torch.where(torch.rand(n_windows, tokens, tokens) > 0.7, MASKED, 0.0)
    mask.diagonal(dim1=1, dim2=2).zero_()
    with torch.no_grad():
        got = attn(x, mask)
        q, k, v = attn.qkv(x).reshape(2 * n_windows, tokens, 3, 2, 4).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / math.sqrt(4) + attn.bias()[None] + mask.repeat(2, 1, 1)[:, None]
        expected = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2 * n_windows, tokens, 8))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_relative_positions_and_shift_mask():
    index = relative_position_index(2, 2)
    assert index.shape == (4, 4) and int(index.max()) < 9
    assert len(set(index.diagonal().tolist())) == 1  # a token's offset to itself is one entry
    assert index[0, 3] != index[3, 0]  # opposite offsets are different entries
    mask = shift_mask((4, 4), 2, (1, 1))
    assert mask.shape == (4, 4, 4)
    assert float(mask[0].abs().max()) == 0  # the first window does not straddle the wrap-around
    assert float(mask[-1].min()) == MASKED  # the last one joins tokens from the opposite borders


def test_patch_merging_halves_the_grid_and_doubles_the_width():
    merge = PatchMerging(3, 4)
    assert merge(torch.rand(1, 5, 6, 3, 4)).shape == (1, 3, 3, 2, 8)


def test_checkpoint_round_trip(tmp_path):
    model = _randomise(TransMorph(2, **SMALL))
    model.save(tmp_path / "t.pt")
    loaded = load_model(tmp_path / "t.pt").eval()
    assert type(loaded) is TransMorph and loaded.config == model.config
    moving, fixed = torch.rand(1, 1, 16, 12), torch.rand(1, 1, 16, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(moving, fixed).disp, model(moving, fixed).disp)
