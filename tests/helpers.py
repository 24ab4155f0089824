"""Small shared builders for the tests (imported as ``helpers``)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

EPS_AR, SIG_AR = 0.0104, 3.4


def mpiexec() -> str:
    """The ``mpiexec`` beside this Python (the mpich wheel's) or on PATH; skips the test
    without one or without mpi4py."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec (pip install lamcsp[mpi])")
    pytest.importorskip("mpi4py")
    return found


def rattled_fcc(n_rep=(2, 2, 1), a=5.6, rattle=0.1, strain=(1.02, 0.97, 1.0), seed=1) -> Atoms:
    atoms = bulk("Ar", "fcc", a) * n_rep
    atoms.rattle(rattle, seed=seed)
    atoms.set_cell(atoms.cell * np.array(strain), scale_atoms=True)
    return atoms


def run_search(name, options, relaxer, context, n_per_generation, n_generations, seed, target=None, tol=1e-3):
    """Generations of the real stages (lamcsp.stages: propose with its screens and draws, relax
    through a serial executor, tell) for one unit of ``context``'s composition whose only
    generator is ``name`` with ``options``; no store, no dedupe. For generator tests.

    Returns ``(relaxations until the first structure within tol eV/atom of target, or None;
    best enthalpy per atom found; relaxations spent; the unit's state)``: its generator is
    ``state.generators[0][2]``, its relaxed population ``state.context.population`` in the
    order relaxed.
    """
    from lamcsp import stages
    from lamcsp.campaign import parse_campaign
    from lamcsp.parallel import SerialExecutor
    from lamcsp.units import SearchUnit

    campaign = parse_campaign({
        "name": "generator-test", "seed": seed,
        "system": {"composition": dict(context.composition), "formula_units": list(context.formula_units),
                   "pressures": float(context.pressure_gpa)},
        "population": n_per_generation, "generations": n_generations, "stop": {"patience": None},
        "generators": [{"name": name, "share": 1.0, "options": dict(options)}],
        "dedupe": {"before_relax": False}})
    deduper = stages.deduper_for(campaign)
    unit = SearchUnit(0, dict(context.composition), list(context.formula_units), float(context.pressure_gpa), 0)
    us = stages.new_unit_state(unit, campaign, deduper)
    similarity = stages.SimilarityScreen(deduper)
    executor = SerialExecutor(relaxer.potential, fmax=relaxer.fmax, max_steps=relaxer.max_steps, progress=False)
    spent, hit, best = 0, None, float("inf")
    for g in range(n_generations):
        todo = stages.propose([us], g, campaign, seed, spent=spent, executor=executor, similarity=similarity)
        results = executor.relax([c.to_atoms() for _, _, c in todo], [unit.pressure_gpa] * len(todo))
        stages.tell(us, [(k, c) for _, k, c in todo], results, similarity, campaign)
        for r in results:
            spent += 1
            ok = not r.failed and np.isfinite(r.enthalpy_per_atom)
            if ok:
                best = min(best, r.enthalpy_per_atom)
                if hit is None and target is not None and r.enthalpy_per_atom < target + tol:
                    hit = spent
        if hit is not None:
            break
    return hit, best, spent, us
