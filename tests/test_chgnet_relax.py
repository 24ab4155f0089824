"""Our FIRE + Fréchet filter with the CHGNet backend reaches the minima that ASE's FIRE +
FrechetCellFilter reaches with CHGNet's own ASE calculator (so the backend and the optimizer
are checked together), at zero and finite pressure."""

import numpy as np
import pytest
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from ase.units import GPa
from lamcsp.relax import Relaxer
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.io.ase import AseAtomsAdaptor


@pytest.fixture(scope="module")
def chgnet_pair():
    from chgnet.model.dynamics import CHGNetCalculator

    from lamcsp.potentials import load_potential

    pot = load_potential("chgnet", device="cpu")
    return pot, CHGNetCalculator(model=pot.model, use_device="cpu")


def _cells():
    si = bulk("Si", "diamond", 5.6)
    si.set_cell(si.cell * np.array([1.0, 1.03, 0.98]), scale_atoms=True)
    si.rattle(0.05, seed=1)
    nacl = bulk("NaCl", "rocksalt", 5.4, cubic=True)
    nacl.rattle(0.05, seed=2)
    mgo = bulk("MgO", "rocksalt", 4.35)
    mgo.rattle(0.03, seed=3)
    return [si, nacl, mgo]


@pytest.mark.parametrize("pressure", [0.0, 10.0])
def test_same_minima_as_ase_fire(chgnet_pair, pressure):
    pot, calc = chgnet_pair
    cells = _cells()
    ours = Relaxer(pot, fmax=0.02, max_steps=400).relax(cells, pressure_gpa=pressure)
    sm = StructureMatcher(ltol=0.05, stol=0.1, angle_tol=2)
    for atoms, res in zip(cells, ours):
        ref = atoms.copy()
        ref.calc = calc
        opt = FIRE(FrechetCellFilter(ref, scalar_pressure=pressure * GPa), logfile=None)
        opt.run(fmax=0.02, steps=400)
        assert res.converged and opt.converged()
        n = len(atoms)
        e_ref = ref.get_potential_energy() / n
        assert res.energy / n == pytest.approx(e_ref, abs=1e-3)
        h_ref = e_ref + pressure * GPa * ref.get_volume() / n
        assert res.enthalpy_per_atom == pytest.approx(h_ref, abs=1e-3)
        assert res.atoms.get_volume() == pytest.approx(ref.get_volume(), rel=5e-3)
        assert sm.fit(AseAtomsAdaptor.get_structure(res.atoms), AseAtomsAdaptor.get_structure(ref))
