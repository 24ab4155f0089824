"""Our batched FIRE / L-BFGS through the Fréchet filter against ASE's, same potential."""

import numpy as np
import pytest
import torch
from ase.filters import FrechetCellFilter as AseFrechet
from ase.optimize import FIRE as AseFIRE
from ase.optimize import LBFGS as AseLBFGS
from ase.units import GPa
from helpers import rattled_fcc
from lamcsp.optimizers.filters import FrechetCellFilter, expm_frechet_adjoint
from lamcsp.relax import Relaxer
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.io.ase import AseAtomsAdaptor

from lamcsp.potentials import PotentialCalculator

ASE_OPT = {"fire": AseFIRE, "lbfgs": AseLBFGS}


def _ase_relax(atoms, potential, optimizer, pressure_gpa, fmax, steps, fixed_cell=False):
    a = atoms.copy()
    a.calc = PotentialCalculator(potential)
    target = a if fixed_cell else AseFrechet(a, scalar_pressure=pressure_gpa * GPa)
    opt = ASE_OPT[optimizer](target, logfile=None)
    opt.run(fmax=fmax, steps=steps)
    return a, opt.nsteps


def _same_structure(a, b):
    sm = StructureMatcher(ltol=0.05, stol=0.05, angle_tol=1)
    return sm.fit(AseAtomsAdaptor.get_structure(a), AseAtomsAdaptor.get_structure(b))


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
@pytest.mark.parametrize("pressure", [0.0, 0.3])
def test_same_minimum_as_ase_with_lj(lj, optimizer, pressure):
    structs = [rattled_fcc(seed=s, strain=st) for s, st in [(1, (1.02, 0.97, 1.0)), (2, (0.96, 1.0, 1.05))]]
    ours = Relaxer(lj, optimizer=optimizer, fmax=0.01, max_steps=1000).relax(structs, pressure_gpa=pressure)
    for atoms, res in zip(structs, ours):
        ref, nsteps = _ase_relax(atoms, lj, optimizer, pressure, 0.01, 1000)
        assert res.converged
        # Same algorithm, same float64 potential: the trajectories coincide step for step.
        assert res.steps == nsteps
        assert res.energy / len(atoms) == pytest.approx(ref.get_potential_energy() / len(ref), abs=1e-6)
        assert res.atoms.get_volume() == pytest.approx(ref.get_volume(), rel=1e-5)
        assert _same_structure(res.atoms, ref)


def test_pressure_volume_equals_ase(lj):
    """Under pressure the relaxed volume equals ASE's with the same scalar_pressure."""
    atoms = rattled_fcc(rattle=0.02)
    vols = []
    for p in (0.0, 0.2, 0.5):
        ref, _ = _ase_relax(atoms, lj, "fire", p, 0.002, 2000)
        res = Relaxer(lj, fmax=0.002, max_steps=2000).relax([atoms], pressure_gpa=p)[0]
        assert res.atoms.get_volume() == pytest.approx(ref.get_volume(), rel=1e-4)
        assert res.enthalpy == pytest.approx(res.energy + p * GPa * res.atoms.get_volume(), rel=1e-12)
        vols.append(res.atoms.get_volume())
    assert vols[0] > vols[1] > vols[2]  # compressible: volume falls with pressure


def test_fixed_cell_matches_ase(lj):
    atoms = rattled_fcc(seed=4)
    res = Relaxer(lj, fmax=0.01, max_steps=500, relax_cell=False).relax([atoms])[0]
    ref, nsteps = _ase_relax(atoms, lj, "fire", 0.0, 0.01, 500, fixed_cell=True)
    assert np.allclose(res.atoms.cell, atoms.cell)
    assert res.steps == nsteps
    assert np.abs(res.atoms.positions - ref.positions).max() < 1e-6


def test_cell_forces_equal_ase_filter(lj):
    """The generalised forces of our filter equal AseFrechet.get_forces() away from F = I."""
    atoms = rattled_fcc(seed=5)
    from lamcsp.relax.state import from_structures

    filt = FrechetCellFilter()
    st = filt.init(from_structures([atoms], pressure_gpa=0.7))
    # move the cell coordinates away from zero so the Fréchet derivative matters
    xa, xc = filt.get_x(st)
    xc = xc + torch.tensor([[[0.3, 0.1, -0.05], [0.1, -0.2, 0.08], [-0.05, 0.08, 0.15]]], dtype=xc.dtype)
    st = filt.set_x(st, xa, xc)
    st = filt.apply(st, lj(st))
    a = atoms.copy()
    a.calc = PotentialCalculator(lj)
    ase_f = AseFrechet(a, scalar_pressure=0.7 * GPa)
    # ASE's cell coordinates are c·log(n F) (its parent filter stores n F): ours c·log F plus
    # the constant c·log(n)·I, which shifts no force
    n = len(atoms)
    ase_f.set_positions(np.concatenate([xa.numpy(), xc[0].numpy() + n * np.log(n) * np.eye(3)]))
    ref = ase_f.get_forces()
    assert np.abs(st.atom_gforce.numpy() - ref[:-3]).max() < 1e-10
    assert np.abs(st.cell_gforce[0].numpy() - ref[-3:]).max() < 1e-10


def test_expm_frechet_adjoint_matches_scipy():
    from scipy.linalg import expm_frechet

    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3, 3)) * 0.3
    g = rng.normal(size=(4, 3, 3))
    ours = expm_frechet_adjoint(torch.tensor(a), torch.tensor(g)).numpy()
    for k in range(4):
        ref = np.zeros((3, 3))
        for m in range(3):
            for n in range(3):
                e = np.zeros((3, 3))
                e[m, n] = 1
                ref[m, n] = np.sum(expm_frechet(a[k], e, compute_expm=False) * g[k])
        assert np.allclose(ours[k], ref, atol=1e-12)
