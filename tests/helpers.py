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


def run_search(generator, relaxer, context, n_per_generation, n_generations, rng, target=None, tol=1e-3):
    """A minimal generation loop (propose -> relax -> fold back) for generator tests.

    Returns ``(relaxations until the first structure within tol eV/atom of target, or None;
    best enthalpy per atom found; relaxations spent)``.
    """
    from lamcsp.generators.base import Candidate, Evaluated

    spent, hit, best = 0, None, float("inf")
    for g in range(n_generations):
        context.generation = g
        cands = generator.propose(n_per_generation, rng, context)
        results = relaxer.relax([c.to_atoms() for c in cands], pressure_gpa=context.pressure_gpa)
        for c, r in zip(cands, results):
            spent += 1
            ok = not r.failed and np.isfinite(r.enthalpy_per_atom)
            relaxed = Candidate.from_atoms(r.atoms)
            context.population.append(Evaluated(c, relaxed, r.enthalpy_per_atom if ok else float("inf"), ok))
            if ok:
                best = min(best, r.enthalpy_per_atom)
                if hit is None and target is not None and r.enthalpy_per_atom < target + tol:
                    hit = spent
        if hit is not None:
            break
    return hit, best, spent
