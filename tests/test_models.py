"""VxmDense: shapes, any input size, flags, checkpoint round trip and refusal of bad files."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch
from scipy import ndimage
from synthetic import smooth_image

from morphreg.models import CheckpointError, RegistrationOutput, VxmDense, load_model

SMALL = {"enc": (8, 8, 8, 8), "dec": (8, 8, 8, 8, 8, 8, 8)}


def _pull_back_oracle(image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
    """``image(x + disp(x))`` by scipy's linear interpolation, edge values outside (as the
    default padding="border"): an implementation of the warp contract independent of morphreg."""
    out = np.empty(image.shape, dtype=np.float64)
    for b in range(image.shape[0]):
        coords = np.indices(image.shape[2:], dtype=np.float64) + disp[b].detach().double().numpy()
        out[b, 0] = ndimage.map_coordinates(image[b, 0].detach().double().numpy(), coords, order=1, mode="nearest")
    return torch.from_numpy(out).to(image.dtype)


def _deforming(model: VxmDense) -> VxmDense:
    """The model with a flow head that predicts displacements of a few voxels (not ~1e-5)."""
    with torch.no_grad():
        model.flow.weight.normal_(0.0, 3.0)
    return model


@pytest.mark.parametrize(
    ("ndim", "shape"), [(2, (37, 45)), (3, (21, 27, 33)), (2, (64, 48))]
)
@pytest.mark.parametrize("int_steps", [0, 7])
def test_any_shape_and_output_contract(ndim, shape, int_steps):
    model = _deforming(VxmDense(ndim, int_steps=int_steps, **SMALL))
    moving, fixed = smooth_image(shape, seed=1).expand(2, 1, *shape).clone(), torch.rand(2, 1, *shape)
    moving[1] = smooth_image(shape, seed=2)[0]
    out = model(moving, fixed)
    assert isinstance(out, RegistrationOutput)
    assert out.moved.shape == moving.shape
    assert out.disp.shape == (2, ndim, *shape)
    assert out.disp.abs().amax(dim=(1, *range(2, ndim + 2))).min() > 0.5  # each field really deforms
    # moved is the moving image pulled back through disp, by an independent interpolation
    torch.testing.assert_close(out.moved, _pull_back_oracle(moving, out.disp), atol=1e-5, rtol=0)
    assert (out.moved - moving).abs().max() > 0.05
    assert (out.velocity is None) == (int_steps == 0)
    assert out.inverse_disp is None and out.moved_fixed is None


def test_paper_defaults_and_flow_init():
    model = VxmDense(2)
    assert model.config["enc"] == [16, 32, 32, 32]
    assert model.config["dec"] == [32, 32, 32, 32, 32, 16, 16]
    assert model.flow.weight.std().item() < 1e-4
    acts = [m for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert acts and all(a.negative_slope == 0.2 for a in acts)
    out = model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    assert out.disp.abs().max().item() < 1e-2  # starts near the identity


def test_bidirectional_diffeomorphic_half_resolution():
    model = _deforming(VxmDense(2, int_steps=5, int_downsize=2, bidir=True, **SMALL))
    moving, fixed = smooth_image((30, 34), seed=3), smooth_image((30, 34), seed=4)
    out = model(moving, fixed)
    assert out.velocity.shape == (1, 2, 16, 24)  # half of the padded 32 x 48 grid
    assert out.inverse_disp.shape == out.disp.shape
    assert out.inverse_disp.abs().max() > 1.0
    torch.testing.assert_close(out.moved_fixed, _pull_back_oracle(fixed, out.inverse_disp), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.moved, _pull_back_oracle(moving, out.disp), atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter():
    model = VxmDense(3, int_steps=3, **SMALL)
    out = model(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
    (out.moved.mean() + out.disp.pow(2).mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_save_load_round_trip_is_exact(tmp_path):
    model = VxmDense(2, int_steps=7, int_downsize=2, **SMALL)
    torch.nn.init.normal_(model.flow.weight, std=0.1)
    path = tmp_path / "model.pt"
    model.save(path, metadata={"note": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left
    loaded = VxmDense.load(path)
    assert loaded.config == model.config
    x, y = torch.rand(1, 1, 20, 24), torch.rand(1, 1, 20, 24)
    assert torch.equal(loaded(x, y).disp, model(x, y).disp)
    assert isinstance(load_model(path), VxmDense)
    assert torch.load(path, weights_only=True)["metadata"] == {"note": "test"}


def test_load_refuses_pickled_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "x", "payload": Exploit()}, handle, protocol=2)
    with pytest.raises(CheckpointError, match="refused: it references code.*GLOBAL print"):
        VxmDense.load(path)
    torch.save({"format": "x", "payload": Exploit()}, path)  # torch's own container
    with pytest.raises(CheckpointError, match="refused: it references code"):
        VxmDense.load(path)


@pytest.mark.parametrize("protocol", [4, 5])
def test_plain_pickle_with_reduce_is_refused_without_torchs_warning(tmp_path, protocol):
    """A plain pickle (not torch's container) of a newer protocol: torch's weights-only reader warns
    about the protocol on stderr (a second line beside morphreg's); the refusal is the only output."""
    import warnings

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "x", "payload": Exploit()}, handle, protocol=protocol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match=r"evil.pt' is not a readable PyTorch weights file"):
            VxmDense.load(path)
    assert not caught, [str(w.message) for w in caught]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"not a torch file at all", "not a readable"),
    ],
)
def test_load_refuses_corrupt_files(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        VxmDense.load(path)


def test_load_refuses_other_things(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="not a morphreg model"):
        VxmDense.load(plain)
    with pytest.raises(CheckpointError, match="does not exist"):
        VxmDense.load(tmp_path / "missing.pt")
    model = VxmDense(2, **SMALL)
    ckpt = model.checkpoint()
    ckpt["config"]["enc"] = [4, 4, 4, 4]  # weights no longer match the config
    torch.save(ckpt, plain)
    with pytest.raises(CheckpointError, match="do not match"):
        VxmDense.load(plain)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    VxmDense(2, **SMALL).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        VxmDense.load(path)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: VxmDense(4), "'ndim' must be one of"),
        (lambda: VxmDense(2, bidir=True), "bidir=True needs"),
        (lambda: VxmDense(2, int_downsize=3), "'int_downsize'"),
        (lambda: VxmDense(2, **SMALL)(torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8)), "1 channel"),
        (lambda: VxmDense(2, **SMALL)(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)), "2D"),
        (lambda: VxmDense(2, **SMALL)(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9)), "same shape"),
    ],
)
def test_model_errors(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_net_starts_at_identity_and_round_trips(ndim, tmp_path):
    from morphreg.models import AffineNet

    shape = (20, 24) if ndim == 2 else (12, 14, 16)
    model = AffineNet(ndim, features=(4, 8))
    moving, fixed = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    out = model(moving, fixed)
    assert isinstance(out, RegistrationOutput)
    assert torch.equal(out.disp, torch.zeros_like(out.disp))
    assert out.matrix.shape == (2, ndim, ndim + 1)
    # a head bias of +0.1 on the first translation = 10 % of the extent along axis 0
    with torch.no_grad():
        model.head.bias[ndim] = 0.1
    out = model(moving, fixed)
    assert torch.allclose(out.disp[:, 0], torch.full_like(out.disp[:, 0], 0.1 * (shape[0] - 1)), atol=1e-5)
    assert torch.allclose(out.disp[:, 1:], torch.zeros_like(out.disp[:, 1:]), atol=1e-5)
    model.save(tmp_path / "affine.pt")
    loaded = load_model(tmp_path / "affine.pt")
    assert type(loaded) is AffineNet and torch.equal(loaded(moving, fixed).disp, out.disp)
    with pytest.raises(CheckpointError, match="not a VxmDense"):
        VxmDense.load(tmp_path / "affine.pt")


@pytest.mark.parametrize(("key", "value", "why"), [
    ("enc", "16,32,32,32", "'enc' must be a list of integers, got '16,32,32,32'"),
    ("enc", [16, "32"], "'enc' must hold integers only"),
    ("dec", [8.5, 8, 8], "'dec' must hold integers only"),
    ("enc", [-4, 8], "'enc' must hold positive integers"),
    ("int_steps", "7", "'int_steps' must be an integer, got '7'"),
    ("int_steps", -2, "'int_steps' must not be negative"),
    ("bidir", "no", "'bidir' must be true or false"),
])
def test_checkpoint_config_of_the_wrong_type_names_the_key(tmp_path, key, value, why):
    """A config value of the wrong type is refused with the key named, before the model is built."""
    ckpt = VxmDense(2, **SMALL).checkpoint()
    ckpt["config"][key] = value
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=rf"bad.pt' has an invalid VxmDense config: {re.escape(why)}"):
        load_model(tmp_path / "bad.pt")


@pytest.mark.parametrize(("shape", "allowed"), [((12, 10), 4), ((16, 40), 5), ((7, 9, 33), 3)])
def test_a_network_deeper_than_its_input_allows_is_refused(shape, allowed):
    """A U-Net of L levels pads every axis to a multiple of 2**L: more levels than the smallest axis
    allows (2**L > 2 n) is refused by name instead of padding 20 levels to 10^6 voxels per axis."""
    from morphreg.models.layers import max_levels

    assert max_levels(shape) == allowed
    fits = VxmDense(len(shape), enc=[4] * allowed, dec=[4] * allowed)
    x = torch.rand(1, 1, *shape)
    assert fits(x, x).disp.shape == (1, len(shape), *shape)
    deep = VxmDense(len(shape), enc=[4] * (allowed + 1), dec=[4] * (allowed + 1))
    with pytest.raises(ValueError, match=rf"VxmDense: the network has {allowed + 1} levels .* allows at most "
                                         rf"{allowed} .* at least {2 ** allowed} voxels along every axis"):
        deep(x, x)
