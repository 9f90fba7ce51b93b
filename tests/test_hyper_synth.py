"""HyperMorph training (`train --hyper`) and the SynthMorph pair generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from morphreg import cli, spatial
from morphreg.data import PairDataset, SynthPairs, synthetic_shapes
from morphreg.models import HyperVxmDense, VxmDense, load_model
from morphreg.workflows.train import TrainSettings, train


def test_untrained_hyper_network_is_the_plain_network():
    """FiLM starts at scale 1, shift 0: the same weights give VxmDense's field for every lambda."""
    torch.manual_seed(0)
    hyper = HyperVxmDense(2, int_steps=7, int_downsize=2, weight_range=(0.1, 10))
    plain = VxmDense(2, int_steps=7, int_downsize=2)
    plain.load_state_dict({k: v for k, v in hyper.state_dict().items() if not k.startswith("film")})
    with torch.no_grad():
        hyper.flow.weight.normal_(0, 0.1)
        plain.flow.weight.copy_(hyper.flow.weight)
    moving, fixed = torch.rand(1, 1, 32, 48), torch.rand(1, 1, 32, 48)
    for lam in (0.1, 1.0, 10.0):
        torch.testing.assert_close(hyper(moving, fixed, weight=lam).disp, plain(moving, fixed).disp)
    with pytest.raises(ValueError, match="trained for lambda in"):
        hyper(moving, fixed, weight=20.0)


def test_hyper_training_learns_lambda_dependence(tmp_path):
    """200 steps of `train(hyper=True)`: a larger lambda gives a smoother field than a smaller one."""
    images, _ = synthetic_shapes(12, (32, 32), n_labels=4, seed=0)
    data = PairDataset(images, normalise=None)
    settings = TrainSettings(loss="mse", weight=0.01, hyper=True, hyper_range=[0.001, 1.0], steps=200, lr=3e-3,
                             val_every=200, checkpoint_every=200, threads=1, enc=[8, 8], dec=[8, 8, 8])
    # lambda of a step depends on (seed, step) only: a run rebuilt for --resume (new settings, other
    # global RNG state, steps asked in another order) draws the same values; another seed does not
    first = [settings.hyper_weight(s) for s in range(5)]
    torch.manual_seed(123)
    rebuilt = TrainSettings(loss="mse", weight=0.01, hyper=True, hyper_range=[0.001, 1.0], steps=200)
    assert [rebuilt.hyper_weight(s) for s in reversed(range(5))] == first[::-1]
    assert len(set(first)) == 5  # a new lambda every step
    reseeded = TrainSettings(loss="mse", weight=0.01, hyper=True, hyper_range=[0.001, 1.0], steps=200, seed=1)
    assert all(abs(reseeded.hyper_weight(s) - first[s]) > 1e-9 for s in range(5))
    draws = [settings.hyper_weight(s) for s in range(400)]
    assert 0.001 <= min(draws) and max(draws) <= 1.0 and 0.02 < sorted(draws)[200] < 0.06  # log-uniform median 0.032
    train(settings, data, None, tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run" / "last.pt")
    assert isinstance(model, HyperVxmDense) and model.metadata["hyper_range"] == [0.001, 1.0]
    moving, fixed = (torch.from_numpy(images[i])[None, None] for i in (0, 1))
    with torch.no_grad():
        grads = [float(spatial.jacobian(model(moving, fixed, weight=lam).disp).square().mean()) for lam in (0.001, 1.0)]
    assert grads[1] < grads[0], grads


def test_train_cli_refuses_bad_hyper_flags(tmp_path, capsys):
    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert cli.main([*base, "--hyper-range", "0.1", "1"]) == 1
    assert "--hyper-range is the lambda range of --hyper" in capsys.readouterr().err
    assert cli.main([*base, "--hyper", "--hyper-range", "2", "3"]) == 1
    assert "must lie within --hyper-range 2 3" in capsys.readouterr().err
    assert cli.main([*base, "--hyper", "--model", "affine"]) == 1
    assert "does not apply to --model affine" in capsys.readouterr().err


def test_synth_pairs_are_seeded_and_labelled():
    data = SynthPairs((32, 48), n_labels=6, length=5, seed=3)
    first, again = data[2], data[2]
    torch.testing.assert_close(first["moving"], again["moving"])
    assert first["moving"].shape == (1, 32, 48) and first["moving_seg"].shape == (1, 32, 48)
    assert 0 <= float(first["moving"].min()) and float(first["moving"].max()) <= 1
    assert int(first["moving_seg"].max()) < 6 and first["moving_seg"].dtype == torch.int64
    assert not torch.equal(first["moving_seg"], first["fixed_seg"])  # two different deformations
    data.set_epoch(1)
    assert not torch.equal(data[2]["moving"], first["moving"])
    with pytest.raises(IndexError):
        data[5]


def test_synth_pairs_max_std_sets_how_far_the_labels_move():
    def overlap(max_std):
        data = SynthPairs((48, 56), n_labels=6, length=6, seed=0, max_std=max_std)
        items = [data[i] for i in range(6)]
        return float(np.mean([(item["moving_seg"] == item["fixed_seg"]).float().mean() for item in items]))

    assert overlap(0.0) == 1.0  # no warp: the same label map twice
    assert overlap(2.0) > overlap(8.0) + 0.05
    with pytest.raises(ValueError, match="max_std"):
        SynthPairs((32, 48), max_std=-1)
