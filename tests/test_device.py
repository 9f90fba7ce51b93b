"""The core, the networks, the greedy method and the command line on the run's ``--device``.

``python -m pytest tests/test_device.py --device cuda`` on a GPU machine (``benchmarks/gpu/run.sh``
does); on the CPU (the default) the same tests run against themselves. Each result made on the
device is compared with the CPU's, and has to stay on the device it was given.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from morphreg import VxmDense, losses, spatial
from morphreg.cli import main
from morphreg.data import synthetic_shapes
from morphreg.optimize import register_greedy

TINY = ["--enc", "4", "4", "4", "4", "--dec", "4", "4", "4", "4", "4", "4"]


def _smooth(shape, generator, channels=1):
    noise = torch.rand(1, channels, *[max(2, s // 4) for s in shape], generator=generator)
    return F.interpolate(noise, size=list(shape), mode="bilinear" if len(shape) == 2 else "trilinear")


@pytest.mark.parametrize("ndim", [2, 3])
def test_integer_shift_is_exact_on_the_device(ndim, device):
    image = torch.arange(float(8**ndim)).view(1, 1, *[8] * ndim).to(device)
    disp = torch.zeros(1, ndim, *[8] * ndim, device=device)
    disp[:, 0] = 1.0
    moved = spatial.warp(image, disp)
    assert moved.device.type == device.type
    torch.testing.assert_close(moved[:, :, :-1].cpu(), image[:, :, 1:].cpu(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_core_functions_agree_with_the_cpu(ndim, device):
    g = torch.Generator().manual_seed(1)
    shape = [12] * ndim
    a, b = _smooth(shape, g), _smooth(shape, g)
    v = 2.0 * (_smooth(shape, g, ndim) - 0.5)
    on_cpu = (spatial.warp(a, v), spatial.compose(v, v), spatial.integrate(v, 5), losses.ncc_loss(a, b))
    on_device = (spatial.warp(a.to(device), v.to(device)), spatial.compose(v.to(device), v.to(device)),
                 spatial.integrate(v.to(device), 5), losses.ncc_loss(a.to(device), b.to(device)))
    for cpu, dev in zip(on_cpu, on_device):
        assert dev.device.type == device.type
        torch.testing.assert_close(dev.cpu(), cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_network_forward_backward_and_bf16_on_the_device(ndim, device):
    g = torch.Generator().manual_seed(2)
    shape = [16] * ndim
    moving, fixed = _smooth(shape, g), _smooth(shape, g)
    model = VxmDense(ndim, enc=(4, 4, 4, 4), dec=(4, 4, 4, 4, 4, 4, 4), int_steps=3)
    with torch.no_grad():
        model.flow.weight.normal_(0, 0.1, generator=g)  # a field far from zero, so the comparison means something
        expected = model(moving, fixed).disp
    model = model.to(device)
    out = model(moving.to(device), fixed.to(device))
    assert out.disp.device.type == device.type
    torch.testing.assert_close(out.disp.detach().cpu(), expected, rtol=1e-3, atol=1e-4)
    loss = losses.ncc_loss(out.moved, fixed.to(device)) + losses.grad_loss(out.disp)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        half = model(moving.to(device), fixed.to(device))
    assert torch.isfinite(half.disp).all()
    model.set_precision("bf16")
    with torch.inference_mode():
        assert model(moving.to(device), fixed.to(device)).disp.dtype == torch.float32


def test_greedy_registration_agrees_with_the_cpu(device):
    g = torch.Generator().manual_seed(3)
    fixed = _smooth((24, 24, 24), g)
    moving = spatial.warp(fixed, 1.5 * (_smooth((24, 24, 24), g, 3) - 0.5))
    cpu = register_greedy(moving, fixed, levels=2, iterations=(5, 3))
    dev = register_greedy(moving.to(device), fixed.to(device), levels=2, iterations=(5, 3))
    assert dev.disp.device.type == device.type and dev.inverse_disp.device.type == device.type
    torch.testing.assert_close(dev.disp.cpu(), cpu.disp, rtol=1e-3, atol=1e-3)
    assert dev.loss_history[-1] < dev.loss_history[0]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("volumes")
    images, labels = synthetic_shapes(6, (20, 24, 16), n_labels=4, seed=4)
    (root / "img").mkdir()
    (root / "seg").mkdir()
    for i in range(6):
        nib.save(nib.Nifti1Image(images[i], np.diag([1.2, 1.0, 1.0, 1.0])), root / "img" / f"s{i}.nii.gz")
        nib.save(nib.Nifti1Image(labels[i].astype(np.uint8), np.diag([1.2, 1.0, 1.0, 1.0])),
                 root / "seg" / f"s{i}.nii.gz")
    return root


@pytest.mark.parametrize("method", [["--method", "dense", "--levels", "2", "--iterations", "4", "2"],
                                    ["--method", "affine"]])
def test_register_command_on_the_device(method, volumes, device, tmp_path):
    argv = ["register", *method, "--moving", str(volumes / "img" / "s0.nii.gz"),
            "--fixed", str(volumes / "img" / "s1.nii.gz"), "--moving-seg", str(volumes / "seg" / "s0.nii.gz"),
            "--moved", str(tmp_path / "moved.nii.gz"), "--moved-seg", str(tmp_path / "seg.nii.gz"),
            "--warp", str(tmp_path / "warp.nii.gz"), "--device", device.type, "--quiet"]
    if method[1] == "affine":
        argv += ["--matrix", str(tmp_path / "affine.txt")]
    assert main(argv) == 0
    assert nib.load(tmp_path / "warp.nii.gz").shape[:3] == (20, 24, 16)
    assert nib.load(tmp_path / "seg.nii.gz").get_fdata().max() > 0


def test_train_then_register_with_the_network_on_the_device(volumes, device, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(volumes / "img"), "--steps", "2", "--val-every", "2", "--val-pairs", "1",
                 "--device", device.type, "--no-progress", "--out", str(run), *TINY]) == 0
    assert (run / "model.pt").exists()
    assert main(["register", "--model", str(run), "--moving", str(volumes / "img" / "s0.nii.gz"),
                 "--fixed", str(volumes / "img" / "s1.nii.gz"), "--moved", str(tmp_path / "moved.nii.gz"),
                 "--device", device.type, "--quiet"]) == 0
