"""The public API surface: names users rely on must not disappear by accident."""

from __future__ import annotations

import importlib
import importlib.resources

import pytest

PUBLIC = {
    "morphreg": ["VxmDense", "RegistrationOutput", "load_model", "spatial", "losses", "metrics"],
    "morphreg.spatial": ["identity_grid", "warp", "compose", "integrate", "resize", "affine_to_disp", "jacobian",
                         "jacobian_det", "ALIGN_CORNERS"],
    "morphreg.losses": ["mse_loss", "ncc_loss", "global_ncc_loss", "mi_loss", "dice_loss", "grad_loss",
                        "bending_loss", "MSELoss", "NCCLoss", "GradLoss", "BendingLoss", "DiceLoss", "MILoss"],
    "morphreg.metrics": ["dice", "hd95", "folding_fraction", "log_jacobian_std", "LabelScores"],
    "morphreg.models": ["VxmDense", "AffineNet", "UNet", "SpatialTransformer", "VecInt", "load_model",
                        "CheckpointError"],
    "morphreg.io": ["Volume", "load_volume", "save_volume", "save_warp", "load_warp", "resample_to",
                    "ImageReadError"],
    "morphreg.data": ["PairDataset", "load_collection", "split_subjects", "synthetic_shapes", "read_pairs_csv"],
    "morphreg.optimize": ["register_affine", "register_dense", "register_ffd", "refine_network_prediction",
                          "fit_tps", "tre"],
    "morphreg.viz": ["plot_registration", "plot_grid", "plot_flow", "plot_jacobian", "plot_training_curves",
                     "flow_to_rgb"],
    "morphreg.cli": ["main"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_exist(module):
    mod = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"


def test_typed_package():
    import morphreg

    assert (importlib.resources.files(morphreg) / "py.typed").is_file()
