"""Shared test fixtures: seeded generators, smooth test images, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MORPHREG_DATA", REPO.parent / "shared" / "data"))
OASIS2D = DATA_DIR / "oasis2d_neurite" / "oasis2d.npz"


def pytest_addoption(parser):
    """``--device cuda`` (or ``MORPHREG_TEST_DEVICE=cuda``): where the device tests
    (``tests/test_device.py``, the ``device`` fixture) put their tensors; default ``cpu``."""
    parser.addoption("--device", default=os.environ.get("MORPHREG_TEST_DEVICE", "cpu"), choices=("cpu", "cuda"),
                     help="device of the tests that take the `device` fixture (default: cpu)")


@pytest.fixture
def device(request) -> torch.device:
    """The ``--device`` of this run; a test asking for ``cuda`` without CUDA is skipped, not failed."""
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda: CUDA is not available")
    return torch.device(name)


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    """Every test runs on one intra-op thread (timings and results do not depend on the machine's
    cores, and parallel test runs do not oversubscribe it) from torch's seed 0."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def oasis2d():
    if not OASIS2D.exists():
        pytest.skip(f"shared data not found at {OASIS2D} (set MORPHREG_DATA)")
    import numpy as np

    return np.load(OASIS2D)
