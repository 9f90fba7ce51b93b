"""Train the built-in model ``synth2d`` (SynthMorph): only synthesised images, Dice loss on their labels.

    python -m benchmarks.zoo.zoo_train_synth --out RUN [--steps 4000] [--max-minutes 15] [--seed 0]

The network never sees a real image: every training and validation pair is drawn by
:class:`morphreg.data.SynthPairs` (160 x 192, 16 random labels). Loss: Dice on the warped
labels (labels 1..15) + λ=1 × the gradient penalty on the displacement, no image similarity
(``sim_weight=0``); diffeomorphic (7 scaling-and-squaring steps at 1/2 resolution); Adam
lr 1e-3, cosine schedule; seed 0; one thread. The model kept is the one with the best Dice on
32 synthesised validation pairs (another seed), as `morphreg train` keeps it.
"""

from __future__ import annotations

import argparse

import torch

from morphreg.data import SynthPairs
from morphreg.workflows.train import TrainSettings, train

SHAPE = (160, 192)
N_LABELS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = TrainSettings(loss="ncc", weight=1.0, sim_weight=0.0, seg_weight=1.0, int_steps=7, int_downsize=2,
                             steps=args.steps, lr=1e-3, lr_schedule="cosine", seed=args.seed, threads=1,
                             val_every=500, checkpoint_every=500, max_minutes=args.max_minutes,
                             normalise="percentile")
    train_set = SynthPairs(SHAPE, N_LABELS, length=100_000, seed=args.seed)
    val_set = SynthPairs(SHAPE, N_LABELS, length=32, seed=args.seed + 1000)
    result = train(settings, train_set, val_set, args.out, resume=args.resume, progress=False, n_labels=N_LABELS)
    print(f"trained {result.step} steps, best validation Dice {result.best_val_dice:.4f}; model: {args.out}/model.pt")


if __name__ == "__main__":
    main()
