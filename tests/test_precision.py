"""`--precision bf16`: the U-Net in bfloat16, integration and warping in float32."""

import numpy as np
import pytest
import torch

from morphreg import zoo
from morphreg.models import VxmDense
from morphreg.workflows.pipeline import NetworkRegistration


def test_bf16_unet_keeps_the_field_close_and_float32():
    torch.manual_seed(0)
    model = VxmDense(2, enc=(8, 8), dec=(8, 8, 8), int_steps=5, int_downsize=2).eval()
    torch.nn.init.normal_(model.flow.weight, std=0.5)
    moving, fixed = torch.rand(1, 1, 32, 40), torch.rand(1, 1, 32, 40)
    with torch.inference_mode():
        reference = model(moving, fixed)
        model.set_precision("bf16")
        low = model(moving, fixed)
    assert low.disp.dtype == torch.float32 and low.moved.dtype == torch.float32
    scale = float(reference.disp.abs().max())
    assert scale > 0.5
    assert float((low.disp - reference.disp).abs().max()) < 0.05 * scale
    assert not torch.equal(low.disp, reference.disp)  # bf16 really ran


def test_bf16_brain2d_registers_an_oasis_pair_like_float32(oasis2d):
    model = zoo.load("brain2d")
    registration = NetworkRegistration(model, torch.device("cpu"), precision="bf16")
    images = oasis2d["slice_norm"]
    moving, fixed = (torch.from_numpy(np.ascontiguousarray(images[i], dtype=np.float32))[None, None] for i in (300, 301))
    low = registration(moving, fixed).disp
    model.set_precision("float32")
    with torch.inference_mode():
        reference = model(moving, fixed).disp
    assert float((low - reference).abs().mean()) < 0.05


def test_precision_is_checked():
    model = VxmDense(2, enc=(8, 8), dec=(8, 8, 8))
    with pytest.raises(ValueError, match="precision"):
        model.set_precision("fp16")
    affine = zoo.load("brain2d")
    with pytest.raises(ValueError, match="needs a deformable network"):
        NetworkRegistration(torch.nn.Linear(2, 2), torch.device("cpu"), precision="bf16")
    assert affine.precision == "float32"


def test_cli_refuses_precision_for_classical_methods(tmp_path, capsys):
    import nibabel as nib

    from morphreg.cli import main

    for name in ("m", "f"):
        nib.save(nib.Nifti1Image(np.random.rand(16, 16, 16).astype(np.float32), np.eye(4)), tmp_path / f"{name}.nii.gz")
    code = main(["register", "--method", "dense", "--moving", str(tmp_path / "m.nii.gz"), "--fixed",
                 str(tmp_path / "f.nii.gz"), "--moved", str(tmp_path / "o.nii.gz"), "--precision", "bf16"])
    assert code == 2 or code == 1
    assert "--precision sets a network's arithmetic" in capsys.readouterr().err


def test_python_api_takes_the_precision(oasis2d):
    import morphreg

    images = oasis2d["slice_norm"]
    low = morphreg.register(images[300], images[301], "brain2d", precision="bf16")
    reference = morphreg.register(images[300], images[301], "brain2d")
    assert 0 < float(np.abs(low.disp - reference.disp).mean()) < 0.05
