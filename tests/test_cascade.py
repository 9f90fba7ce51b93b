"""CascadeVxm: the stages compose into ONE field that warps like the stages applied one after the other."""

from __future__ import annotations

import pytest
import torch
from synthetic import smooth_image

from morphreg import spatial
from morphreg.models import CascadeVxm, RegistrationOutput, load_model


def _constant_stages(model: CascadeVxm, shifts) -> None:
    """Make stage k predict the constant displacement ``shifts[k]`` (flow head: zero weights, bias = shift)."""
    with torch.no_grad():
        for net, shift in zip(model.nets, shifts):
            net.flow.weight.zero_()
            net.flow.bias.copy_(torch.tensor(shift, dtype=torch.float32))


@pytest.mark.parametrize("shape", [(20, 22), (10, 12, 9)])
def test_constant_stage_fields_compose_to_their_sum(shape):
    ndim = len(shape)
    model = CascadeVxm(ndim, stages=3).eval()
    shifts = [[1.0] + [0.0] * (ndim - 1), [0.0] * (ndim - 1) + [-2.0], [0.5] * ndim]
    _constant_stages(model, shifts)
    moving, fixed = smooth_image(shape, seed=1), smooth_image(shape, seed=2)
    out = model(moving, fixed)
    assert isinstance(out, RegistrationOutput) and out.disp.shape == (1, ndim, *shape)  # one field
    assert len(out.stage_disps) == 3
    expected = torch.tensor(shifts).sum(0).view(1, ndim, *[1] * ndim).expand_as(out.disp)
    torch.testing.assert_close(out.disp, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.moved, spatial.warp(moving, out.disp))


class _FixedField(torch.nn.Module):
    """A stand-in stage that predicts a given field (and records the moving image it was given)."""

    def __init__(self, disp: torch.Tensor) -> None:
        super().__init__()
        self.disp, self.seen = disp, None

    def forward(self, moving, fixed):
        self.seen = moving
        return RegistrationOutput(spatial.warp(moving, self.disp), self.disp, None, None, None)


def test_composed_field_warps_like_the_stages_applied_in_sequence():
    shape = (40, 44)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(0, 2 * torch.pi, s) for s in shape], indexing="ij"))[None]
    u1 = 3.0 * torch.cat([torch.sin(grid[:, 1:2]), torch.cos(grid[:, :1])], dim=1)
    u2 = 2.5 * torch.cat([torch.cos(grid[:, 1:2] + grid[:, :1]), torch.sin(2 * grid[:, :1])], dim=1)
    model = CascadeVxm(2, stages=2, enc=(8, 8), dec=(8, 8, 8))
    model.nets = torch.nn.ModuleList([_FixedField(u1), _FixedField(u2)])
    moving, fixed = smooth_image(shape, seed=3), smooth_image(shape, seed=4)
    out = model(moving, fixed)
    torch.testing.assert_close(out.disp, spatial.compose(u1, u2))
    step1 = spatial.warp(moving, u1)
    torch.testing.assert_close(model.nets[1].seen, step1)  # stage 2 sees moving warped by stage 1
    sequential = spatial.warp(step1, u2)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))

    def error(image):
        return float((image - sequential)[inner].abs().mean())

    # one interpolation instead of two: equal up to interpolation error, far below the images' change and
    # below the error of composing in the wrong order or of adding the fields
    assert error(out.moved) < 0.05 * error(moving)
    assert error(out.moved) < 0.2 * min(error(spatial.warp(moving, spatial.compose(u2, u1))),
                                        error(spatial.warp(moving, u1 + u2)))


def test_cascade_checkpoint_round_trip(tmp_path):
    model = CascadeVxm(2, stages=2, enc=(8, 8), dec=(8, 8, 8), int_steps=5, int_downsize=2)
    model.save(tmp_path / "c.pt", metadata={"step": 3})
    loaded = load_model(tmp_path / "c.pt")
    assert type(loaded) is CascadeVxm and loaded.config == model.config and loaded.metadata["step"] == 3
    moving, fixed = smooth_image((16, 20), seed=5), smooth_image((16, 20), seed=6)
    torch.testing.assert_close(loaded.eval()(moving, fixed).disp, model.eval()(moving, fixed).disp)
    with pytest.raises(ValueError, match="stages"):
        CascadeVxm(2, stages=0)
