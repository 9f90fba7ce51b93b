"""``benchmarks/gpu/run.sh --small`` runs every step on the CPU at tiny sizes, so that the script
runs the first time a GPU is lent (it has never met one)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_runs_every_step_in_small_mode(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu" / "run.sh"), "--small"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    out = tmp_path / "out"
    log = (out / "run.log").read_text() if (out / "run.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + log[-4000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    steps = {r["name"]: r["rc"] for r in rows if r["step"] == "step"}
    assert {"env", "tests", "register_dense_1to2_run1", "infer", "train_step", "ddp_gloo_cpu", "train3d",
            "load_checkpoint"} <= set(steps) and set(steps.values()) == {0}, steps
    assert {r["precision"] for r in rows if r["step"] == "infer"} == {"float32", "bf16"}
    assert {r["amp_bf16"] for r in rows if r["step"] == "train_step"} == {False, True}
    assert 0.0 < next(r["dice"] for r in rows if r.get("name", "").startswith("register")) <= 1.0
    assert (out / "train3d_model.pt").stat().st_size > 0
    assert "| VxmDense inference |" in (out / "gpu.md").read_text()
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back from $OUT
