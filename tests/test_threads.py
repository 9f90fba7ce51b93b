"""The OpenMP wait policy chosen at start (morphreg/_threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = """
import os, sys
os.getloadavg = lambda: ({load}, 0.0, 0.0)
from morphreg._threads import wait_passively_if_busy
applied = wait_passively_if_busy()
print(applied, os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
"""


def _probe(load: float, **env: str) -> list[str]:
    child_env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", _PROBE.format(load=load)], env={**child_env, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.parametrize(("load", "expected"), [(1e6, ["True", "PASSIVE", "False"]), (0.0, ["False", "None", "False"])])
def test_passive_wait_only_when_the_load_fills_the_cores(load, expected):
    assert _probe(load) == expected


def test_a_policy_the_user_set_is_kept():
    assert _probe(1e6, OMP_WAIT_POLICY="ACTIVE") == ["False", "ACTIVE", "False"]
    assert _probe(1e6, GOMP_SPINCOUNT="1000")[:2] == ["False", "None"]


def test_too_late_once_torch_is_imported(monkeypatch):
    import torch  # noqa: F401

    from morphreg import _threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (1e6, 0.0, 0.0))
    assert _threads.wait_passively_if_busy() is False
    assert "OMP_WAIT_POLICY" not in os.environ


def test_the_command_line_chooses_before_running_a_command(monkeypatch):
    import morphreg.cli as cli

    calls = []
    monkeypatch.setattr(cli, "wait_passively_if_busy", lambda: calls.append(True))
    assert cli.main(["models"]) == 0
    assert calls == [True]
