"""The test harness itself: the autouse fixture in ``conftest.py`` does what its name says."""

from __future__ import annotations

import torch


def test_every_test_runs_on_one_thread_from_seed_0():
    # fails when the fixture stops setting the thread count (on any machine with > 1 core)
    assert torch.get_num_threads() == 1
    assert torch.initial_seed() == 0
