"""Shared settings of the OASIS study (paths, methods, labels), read by ``study_oasis2d.py``,
``study_oasis3d.py`` and ``report_study.py``. Change a setting here, never in two places."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import common
from benchmarks.common import data_dir  # noqa: F401 - the study's data folder, read as cfg.data_dir()

ROOT = common.REPO
WORK = Path(os.environ.get("STUDY_WORK", common.WORK))
OASIS2D = WORK / "oasis2d"  # written by benchmarks/oasis_study/prepare_oasis2d.py
STUDY = WORK / "study"  # every output of the study (gitignored)
RESULTS = common.RESULTS
ACCEPTANCE_RUNS = common.WORK / "runs"  # benchmarks/oasis_study/run_oasis2d.sh (the 55-minute acceptance models)

SEED = 0
# Intensity normalisation of every method's inputs (and of every model's training images):
# morphreg's default since af474eb (percentile: clip to the 0.5/99.5th percentiles, then [0, 1]).
NORMALISE = "percentile"
VAL_FRACTION = 0.2  # morphreg's subject-wise split of the 300 training subjects (seed 0): 240 train
LR = 1e-3
NCC_WINDOW = 9
SEG_WEIGHT = 1.0  # γ of the semi-supervised model (Dice loss on warped seg24 of training subjects)
LAMBDAS = {"ncc": [0.1, 1.0, 10.0], "mse": [0.001, 0.01, 0.1]}
MAIN_LAMBDA = {"ncc": 1.0, "mse": 0.01}
WARMUP_PAIRS = 2  # dedicated timing phase: registrations before the clock starts
TIME_PAIRS = 16  # dedicated timing phase: the first N test pairs, timed one by one
EXAMPLE_PAIRS = 3  # pairs whose fields are kept for the example figures


def read_label_names(path: Path) -> dict[int, str]:
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and int(parts[0]) > 0:
            names[int(parts[0])] = parts[1]
    return names


@dataclass(frozen=True)
class Method:
    """A 2D method of the study. ``kind``: none | ants | peer | morphreg."""

    name: str
    label: str
    kind: str
    group: str  # "baseline", "classical", "peer", "morphreg", "sweep", "acceptance"
    transform: str = ""  # ANTs type_of_transform
    peer: str = ""  # vxm | monai
    run: str = ""  # training run folder name under STUDY/runs (or an acceptance run path)
    checkpoint: str = "last.pt"
    loss: str = ""
    weight: float | None = None
    extra_train_args: tuple[str, ...] = field(default_factory=tuple)


def lam_name(loss: str, weight: float) -> str:
    return f"morphreg_{loss}_l{weight:g}"


def methods_2d() -> list[Method]:
    out = [
        Method("none", "no registration", "none", "baseline"),
        Method("ants_syn", "ANTs SyN (default, MI)", "ants", "classical", transform="SyN"),
        Method("ants_syncc", "ANTs SyNCC", "ants", "classical", transform="SyNCC"),
        Method(
            "vxm034", "voxelmorph 0.3.4 VxmPairwise", "peer", "peer", peer="vxm", run="peer_vxm", loss="ncc", weight=1.0
        ),
        Method(
            "vxm034_paper",
            "voxelmorph 0.3.4 VxmPairwise, paper architecture",
            "peer",
            "peer",
            peer="vxm_paper",
            run="peer_vxm_paper",
            loss="ncc",
            weight=1.0,
        ),
        Method("monai", "MONAI VoxelMorph", "peer", "peer", peer="monai", run="peer_monai", loss="ncc", weight=1.0),
        Method(
            lam_name("ncc", 1.0),
            "morphreg NCC (λ=1)",
            "morphreg",
            "morphreg",
            run=lam_name("ncc", 1.0),
            loss="ncc",
            weight=1.0,
        ),
        Method(
            lam_name("mse", 0.01),
            "morphreg MSE (λ=0.01)",
            "morphreg",
            "morphreg",
            run=lam_name("mse", 0.01),
            loss="mse",
            weight=0.01,
        ),
        Method(
            "morphreg_diffeo",
            "morphreg diffeomorphic (NCC λ=1)",
            "morphreg",
            "morphreg",
            run="morphreg_diffeo",
            loss="ncc",
            weight=1.0,
            extra_train_args=("--int-steps", "7", "--int-downsize", "2"),
        ),
        Method(
            "morphreg_semisup",
            f"morphreg semi-supervised (NCC λ=1, γ={SEG_WEIGHT:g})",
            "morphreg",
            "morphreg",
            run="morphreg_semisup",
            loss="ncc",
            weight=1.0,
            extra_train_args=("--segs", "TRAIN_SEG24", "--seg-weight", f"{SEG_WEIGHT:g}"),
        ),
    ]
    for loss, values in LAMBDAS.items():
        for value in values:
            if value != MAIN_LAMBDA[loss]:
                out.append(
                    Method(
                        lam_name(loss, value),
                        f"morphreg {loss.upper()} (λ={value:g})",
                        "morphreg",
                        "sweep",
                        run=lam_name(loss, value),
                        loss=loss,
                        weight=value,
                    )
                )
    for run in acceptance_runs():
        out.append(
            Method(
                f"acceptance_{run.name}",
                f"acceptance run `{run.name}`",
                "morphreg",
                "acceptance",
                run=str(run),
                checkpoint="model.pt",
            )
        )
    return out


def acceptance_runs() -> list[Path]:
    """The colleagues' long acceptance models (benchmarks/oasis_study/run_oasis2d.sh and its reruns), if present."""
    if not ACCEPTANCE_RUNS.is_dir():
        return []
    return sorted(p for p in ACCEPTANCE_RUNS.glob("oasis2d_*") if (p / "model.pt").is_file() and finished(p))


def finished(run: Path) -> bool:
    """A run that reached its step count or stopped at its time limit (not one in progress or
    one that was killed)."""
    import csv
    import json

    try:
        steps = int(json.loads((run / "settings.json").read_text())["steps"])
        with open(run / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, ValueError, KeyError):
        return False
    if rows and int(rows[-1]["step"]) >= steps:
        return True
    log = run / "train.log"
    return log.is_file() and "max_minutes" in log.read_text().splitlines()[-1]


def method(name: str) -> Method:
    for m in methods_2d():
        if m.name == name:
            return m
    raise KeyError(f"unknown method {name!r}; known: {[m.name for m in methods_2d()]}")


def run_dir(m: Method) -> Path:
    path = Path(m.run)
    return path if path.is_absolute() else STUDY / "runs" / m.run


# ---------------------------------------------------------------------------------------------
# 3D: the two neurite-OASIS volumes, both directions

SUBJECTS_3D = ("OASIS_OAS1_0001_MR1", "OASIS_OAS1_0002_MR1")
# morphreg.optimize.register_dense settings (instance optimisation, NCC window 9, grad regulariser).
# Coarse to fine: 1/4 and 1/2 resolution are optimised; the full-resolution level gets 0
# iterations (one iteration there costs ~5-8 s on one thread), i.e. the 1/2-resolution field is
# upsampled (vectors rescaled) and evaluated at full resolution.
DENSE3D = {"loss": "ncc", "weight": 1.0, "regulariser": "grad", "levels": 3, "iterations": (200, 100, 0), "lr": 0.1}
DENSE3D_DIFFEO = dict(DENSE3D, velocity=True, int_steps=7)


@dataclass(frozen=True)
class Method3D:
    name: str
    label: str
    kind: str  # none | ants | dense
    transform: str = ""
    options: tuple[tuple[str, object], ...] = ()


def methods_3d() -> list[Method3D]:
    return [
        Method3D("none", "no registration", "none"),
        Method3D("ants_syn", "ANTs SyN (default, MI)", "ants", transform="SyN"),
        Method3D(
            "morphreg_dense", "morphreg register_dense (NCC, displacement)", "dense", options=tuple(DENSE3D.items())
        ),
        Method3D(
            "morphreg_dense_diffeo",
            "morphreg register_dense (NCC, velocity: diffeomorphic)",
            "dense",
            options=tuple(DENSE3D_DIFFEO.items()),
        ),
    ]


def method_3d(name: str) -> Method3D:
    for m in methods_3d():
        if m.name == name:
            return m
    raise KeyError(f"unknown 3D method {name!r}; known: {[m.name for m in methods_3d()]}")
