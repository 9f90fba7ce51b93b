"""The benchmarks are a package run as modules: every module imports, none edits ``sys.path``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts)
        for path in BENCH.rglob("*.py")
        if "work" not in path.relative_to(BENCH).parts and path.name != "__init__.py"
    )


def test_no_benchmark_edits_sys_path():
    offenders = [str(p.relative_to(REPO)) for p in BENCH.rglob("*.py")
                 if "work" not in p.relative_to(BENCH).parts and "sys.path." in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_every_benchmark_module_imports():
    """One child process (run from the repository root, as the scripts are) imports them all."""
    modules = _modules()
    assert "benchmarks.speed.bench_speed" in modules and "benchmarks.robustness.bad_input_table" in modules
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code, *modules], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
