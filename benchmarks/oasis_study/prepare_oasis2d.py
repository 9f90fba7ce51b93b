"""Export the neurite-OASIS 2D stack into NIfTI folders and fixed pair lists, as a user would.

    python -m benchmarks.oasis_study.prepare_oasis2d [--data ../shared/data] [--work benchmarks/work]

Subject-wise split (committed, never changes): the first 300 subjects of ``oasis2d.npz`` (in
``subjects.txt`` order) are for training/validation, the last 64 are test subjects, never seen
in training. Test pairs: each test subject ``i`` registered to ``i+1`` and ``i+2`` (mod 64),
128 pairs, written to ``benchmarks/oasis_study/oasis2d_test_pairs.csv`` (subject names, committed) and to
``WORK/oasis2d/test_pairs.csv`` (file paths, for ``morphreg evaluate``).

Files are NIfTI ``160 x 192 x 1`` with the release's affine, images ``slice_norm``, labels
``seg24`` and ``seg4``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from benchmarks.common import TEST_PAIRS_CSV, WORK, data_dir
from morphreg import io

N_TRAIN = 300
AFFINE = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -0.5], [0, -1, 0, 96], [0, 0, 0, 1]])


def test_pairs(n_test: int) -> list[tuple[int, int]]:
    return [(i, (i + k) % n_test) for k in (1, 2) for i in range(n_test)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=data_dir())
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args()
    stack = np.load(args.data / "oasis2d_neurite" / "oasis2d.npz")
    names = [str(s) for s in stack["subjects"]]
    out = args.work / "oasis2d"
    for part, indices in (("train", range(N_TRAIN)), ("test", range(N_TRAIN, len(names)))):
        for kind, key in (("img", "slice_norm"), ("seg24", "seg24"), ("seg4", "seg4")):
            folder = out / part / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in indices:
                path = folder / f"{names[i]}.nii.gz"
                if not path.exists():
                    io.save_volume(io.Volume(stack[key][i], AFFINE), path)
    test_names = names[N_TRAIN:]
    with open(TEST_PAIRS_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["moving", "fixed"])
        writer.writerows([(test_names[a], test_names[b]) for a, b in test_pairs(len(test_names))])
    for seg in ("seg24", "seg4"):
        with open(out / f"test_pairs_{seg}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["moving", "fixed", "moving_seg", "fixed_seg"])
            for a, b in test_pairs(len(test_names)):
                ma, fb = test_names[a], test_names[b]
                writer.writerow([f"test/img/{ma}.nii.gz", f"test/img/{fb}.nii.gz",
                                 f"test/{seg}/{ma}.nii.gz", f"test/{seg}/{fb}.nii.gz"])
    print(f"wrote {out} ({N_TRAIN} train, {len(test_names)} test subjects, {len(test_pairs(64))} test pairs)")


if __name__ == "__main__":
    main()
