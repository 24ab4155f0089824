import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ
from ase.calculators.morse import MorsePotential as AseMorse
from ase.stress import voigt_6_to_full_3x3_stress
from helpers import EPS_AR, SIG_AR, rattled_fcc
from lamcsp.relax.state import from_structures

from lamcsp.potentials import LennardJones, Morse


@pytest.mark.parametrize("ours,theirs", [
    (lambda: LennardJones(epsilon=EPS_AR, sigma=SIG_AR), lambda: AseLJ(epsilon=EPS_AR, sigma=SIG_AR, rc=3 * SIG_AR)),
    (lambda: Morse(epsilon=0.3, rho0=5.0, r0=3.8, cutoff=9.0), lambda: AseMorse(epsilon=0.3, rho0=5.0, r0=3.8, rcut1=9.0 / 3.8, rcut2=(9.0 + 1e-9) / 3.8)),
])
def test_matches_ase_calculator(ours, theirs):
    atoms = rattled_fcc()
    out = ours()(from_structures([atoms]))
    atoms.calc = theirs()
    e_ref = atoms.get_potential_energy()
    # ASE's Morse is not shifted at the cutoff (its smooth cutoff is squeezed to 1e-9 A here)
    if isinstance(atoms.calc, AseLJ):
        assert float(out["energy"][0]) == pytest.approx(e_ref, abs=1e-10)
    assert np.abs(out["forces"][0:].numpy() - atoms.get_forces()).max() < 1e-8
    assert np.abs(out["stress"][0].numpy() - voigt_6_to_full_3x3_stress(atoms.get_stress())).max() < 1e-8


def test_binary_forces_and_stress_are_energy_derivatives(binary_lj):
    atoms = bulk("Ar", "fcc", 5.4, cubic=True)
    atoms.numbers[[1, 3]] = 10
    atoms.rattle(0.15, seed=3)
    st = from_structures([atoms])
    out = binary_lj(st)
    h = 1e-5
    for i, k in [(0, 0), (1, 2), (3, 1)]:
        p, m = atoms.copy(), atoms.copy()
        p.positions[i, k] += h
        m.positions[i, k] -= h
        ep = float(binary_lj(from_structures([p]))["energy"][0])
        em = float(binary_lj(from_structures([m]))["energy"][0])
        assert -(ep - em) / (2 * h) == pytest.approx(float(out["forces"][i, k]), abs=1e-7)
    # stress = (1/V) dE/d(strain), checked on one shear and one normal component
    for a, b in [(0, 0), (0, 1)]:
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h
        es = []
        for sign in (1, -1):
            d = atoms.copy()
            d.set_cell(atoms.cell @ (np.eye(3) + sign * eps), scale_atoms=True)
            es.append(float(binary_lj(from_structures([d]))["energy"][0]))
        deriv = (es[0] - es[1]) / (2 * h) / atoms.get_volume()
        expect = float(out["stress"][0, a, b]) * (1 if a == b else 2)
        assert deriv == pytest.approx(expect, abs=1e-8)


def test_batched_equals_individual(binary_lj):
    structs = []
    for k, rep in enumerate([(1, 1, 1), (2, 1, 1), (2, 2, 1)]):
        a = bulk("Ar", "fcc", 5.5) * rep
        a.numbers[::3] = 10
        a.rattle(0.1, seed=k)
        structs.append(a)
    batch = binary_lj(from_structures(structs))
    start = 0
    for k, a in enumerate(structs):
        one = binary_lj(from_structures([a]))
        assert float(batch["energy"][k]) == pytest.approx(float(one["energy"][0]), abs=1e-12)
        assert torch.allclose(batch["forces"][start : start + len(a)], one["forces"], atol=1e-12)
        assert torch.allclose(batch["stress"][k], one["stress"][0], atol=1e-14)
        start += len(a)
    assert binary_lj.supported_numbers == {10, 18}
