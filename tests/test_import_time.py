"""``morphreg --help`` (every command's too) imports no heavy library, and a registration imports
only what it needs: a top-level ``import torch`` (or scipy, matplotlib, ...) in the wrong module
makes these fail. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (top-level scipy comes with nibabel and costs little; scipy.ndimage ~0.3 s)
HEAVY = ("torch", "numpy", "scipy.ndimage", "matplotlib", "SimpleITK", "nitransforms", "nibabel", "dask", "tqdm", "h5py")


def _loaded(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_of_every_command_imports_no_heavy_library():
    code = ("import contextlib, io\nfrom morphreg.cli import COMMANDS, main\n"
            "for argv in [['--help'], ['--version']] + [[c, '--help'] for c in COMMANDS]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        assert main(argv) == 0, argv\n")
    assert _loaded(code) == []


def test_import_morphreg_is_lazy_and_its_names_still_resolve():
    assert _loaded("import morphreg, morphreg.cli") == []
    assert set(_loaded("from morphreg import VxmDense, register, spatial\nassert spatial.warp")) <= \
        {"numpy", "torch", "nibabel", "tqdm"}


def test_a_registration_imports_neither_scipy_nor_plotting_nor_itk_until_asked():
    code = ("import morphreg.workflows.files, morphreg.workflows.outputs, morphreg.workflows.pipeline, "
            "morphreg.zoo, morphreg.cli.register, morphreg.optimize")
    assert set(_loaded(code)) <= {"numpy", "torch", "nibabel", "tqdm"}
