"""Small shared builders for the tests (imported as ``helpers``)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk

EPS_AR, SIG_AR = 0.0104, 3.4


def rattled_fcc(n_rep=(2, 2, 1), a=5.6, rattle=0.1, strain=(1.02, 0.97, 1.0), seed=1) -> Atoms:
    atoms = bulk("Ar", "fcc", a) * n_rep
    atoms.rattle(rattle, seed=seed)
    atoms.set_cell(atoms.cell * np.array(strain), scale_atoms=True)
    return atoms
