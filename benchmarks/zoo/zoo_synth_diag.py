"""Why SynthMorph training stayed at identity, and the recipe of ``synth2d``: short runs at 96 x 112.

    python -m benchmarks.zoo.zoo_synth_diag [--max-std 8] [--lam 0.3] [--lr 1e-3] [--steps 4000] [--p-shared 0]

A bare loop over :func:`morphreg.workflows.train.objective.registration_loss` (Dice of the warped
labels 1..15 + λ gradient penalty, no image similarity; the diffeomorphic VxmDense of ``synth2d``;
Adam at a constant learning rate; one thread), on pairs drawn by
:func:`morphreg.data.synthetic.label_pair` and :func:`~morphreg.data.synthetic.synth_image`. Every
200 steps it prints the mean training Dice loss and the Dice (nearest-neighbour warp, labels 1..15)
on 32 validation pairs with independent contrasts, and their folding.

``--p-shared`` draws that fraction of training pairs with one contrast for both images (the same
intensity per label), the check that the loss reaches the field: those pairs are learnt within a
few hundred steps, by matching intensities, which lowers the Dice across contrasts below identity.
The numbers and the conclusions are in docs/results/synth2d.md (written by ``zoo_synth``).
"""

from __future__ import annotations

import argparse
import time

import torch

from morphreg import losses, metrics, spatial
from morphreg.data import synthetic
from morphreg.workflows.train import TrainSettings
from morphreg.workflows.train.objective import registration_loss
from morphreg.workflows.train.state import build_model

N_LABELS = 16


def pair(seed: int, index: int, shape: tuple[int, int], max_std: float, p_shared: float) -> dict[str, torch.Tensor]:
    """One batch of one synthesised pair; with probability ``p_shared`` both images share a contrast."""
    gen = torch.Generator().manual_seed(seed * 1000003 + index)
    moving_seg, fixed_seg = synthetic.label_pair(gen, shape, N_LABELS, max_std)
    shared = float(torch.rand((), generator=gen)) < p_shared
    state = gen.get_state()
    moving = synthetic.synth_image(gen, moving_seg, N_LABELS)
    if shared:
        gen.set_state(state)
    fixed = synthetic.synth_image(gen, fixed_seg, N_LABELS)
    return {"moving": moving[None], "fixed": fixed[None], "moving_seg": moving_seg[None], "fixed_seg": fixed_seg[None]}


@torch.no_grad()
def validate(model: torch.nn.Module, val: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
    """Mean Dice and mean folding (%) over the validation pairs."""
    model.eval()
    dice, fold = [], []
    for item in val:
        disp = model(item["moving"], item["fixed"]).disp
        moved = spatial.warp(item["moving_seg"], disp, mode="nearest")
        dice.append(float(metrics.dice(moved, item["fixed_seg"]).mean[0]))
        fold.append(float(metrics.folding_fraction(disp).mean()))
    model.train()
    return sum(dice) / len(dice), sum(fold) / len(fold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--p-shared", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lam", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--max-std", type=float, default=8.0)
    parser.add_argument("--shape", type=int, nargs=2, default=[96, 112])
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = tuple(args.shape)
    val = [pair(999, i, shape, args.max_std, 0.0) for i in range(32)]
    identity = sum(float(metrics.dice(v["moving_seg"], v["fixed_seg"]).mean[0]) for v in val) / len(val)
    settings = TrainSettings(loss="ncc", weight=args.lam, sim_weight=0.0, seg_weight=1.0, int_steps=7, int_downsize=2)
    torch.manual_seed(0)
    model = build_model(settings, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    similarity = losses.similarity_loss("ncc")  # computed by the objective, weighted 0
    print(f"identity val dice {identity:.4f}", flush=True)
    seg_losses: list[float] = []
    start = time.process_time()
    for step in range(args.steps):
        parts = registration_loss(model, pair(0, step, shape, args.max_std, args.p_shared), settings, similarity,
                                  N_LABELS)
        optimizer.zero_grad()
        parts.total.backward()
        optimizer.step()
        seg_losses.append(parts.seg.item())
        if (step + 1) % 200 == 0:
            dice, fold = validate(model, val)
            print(f"{step + 1} train seg {sum(seg_losses[-200:]) / 200:.4f} val dice {dice:.4f} fold% {fold:.3f} "
                  f"cpu {time.process_time() - start:.0f}", flush=True)


if __name__ == "__main__":
    main()
