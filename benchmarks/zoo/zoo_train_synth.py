"""Train the built-in model ``synth2d`` (SynthMorph): only synthesised images, Dice loss on their labels.

    python -m benchmarks.zoo.zoo_train_synth --out RUN [--steps 60000] [--max-minutes 55] [--seed 0]

The network never sees a real image: every training and validation pair is drawn by
:class:`morphreg.data.SynthPairs` (16 random labels, two random warps of velocity standard deviation
up to ``--max-std`` voxels). Loss: Dice on the warped labels (labels 1..15) + λ ``--weight`` × the
gradient penalty on the displacement, no image similarity (``sim_weight=0``); diffeomorphic
(7 scaling-and-squaring steps at 1/2 resolution); Adam lr 1e-3, cosine schedule; seed 0; one
thread. The model kept is the one with the best Dice on 32 synthesised validation pairs (another
seed), as `morphreg train` keeps it.

Training runs on ``--shape`` 96 x 112 pairs, for 160 x 192 use: the synthesiser's coarse grids are
fractions of the shape, so its structures, warps and bias fields have about the same size in voxels
at both shapes and a 96 x 112 pair is like a crop of a 160 x 192 one, while a step costs about a
fifth (the network is fully convolutional and registers 160 x 192 images as it is). The recipe
(shape, ``--max-std 8``, ``--weight 0.3``) and why: docs/results/synth2d.md.
"""

from __future__ import annotations

import argparse

import torch

from morphreg.data import SynthPairs
from morphreg.workflows.train import TrainSettings, train

N_LABELS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=60000)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=2, default=[96, 112])
    parser.add_argument("--max-std", type=float, default=8.0)
    parser.add_argument("--weight", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-every", type=int, default=1000)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = TrainSettings(loss="ncc", weight=args.weight, sim_weight=0.0, seg_weight=1.0, int_steps=7,
                             int_downsize=2, steps=args.steps, lr=args.lr, lr_schedule="cosine", seed=args.seed,
                             threads=1, val_every=args.val_every, checkpoint_every=args.val_every,
                             log_every=100, max_minutes=args.max_minutes, normalise="percentile")
    shape = tuple(args.shape)
    train_set = SynthPairs(shape, N_LABELS, length=1_000_000, seed=args.seed, max_std=args.max_std)
    val_set = SynthPairs(shape, N_LABELS, length=32, seed=args.seed + 1000, max_std=args.max_std)
    result = train(settings, train_set, val_set, args.out, resume=args.resume, progress=False, n_labels=N_LABELS)
    print(f"trained {result.step} steps, best validation Dice {result.best_val_dice:.4f}; model: {args.out}/model.pt")


if __name__ == "__main__":
    main()
