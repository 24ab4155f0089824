"""Shared fixtures: small crystals and analytic potentials."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

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
