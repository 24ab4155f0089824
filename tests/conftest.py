"""Shared fixtures: small crystals and analytic potentials."""

from __future__ import annotations

import os

import pytest
import torch

# pytest-xdist (pyproject's addopts): the cores shared by its workers, at most 2 threads each
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads() // _WORKERS)))


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: a worker per core, at most 4 (each may hold several models in memory)."""
    return max(1, min(4, os.cpu_count() or 1))

from helpers import EPS_AR, SIG_AR  # noqa: E402


@pytest.fixture
def lj():
    from lamcsp.potentials import LennardJones

    return LennardJones(epsilon=EPS_AR, sigma=SIG_AR)


@pytest.fixture
def binary_lj():
    """An A-B Lennard-Jones mixture (Ar-like A, smaller B) with explicit pair parameters."""
    from lamcsp.potentials import LennardJones

    eps = {(18, 18): 0.0104, (10, 10): 0.0031, (10, 18): 0.0060}
    sig = {(18, 18): 3.40, (10, 10): 2.75, (10, 18): 3.05}
    return LennardJones(epsilon=eps, sigma=sig, cutoff=8.5)
