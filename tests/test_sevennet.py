"""The SevenNet backend: one batched call equals SevenNet's own ASE calculator structure by
structure (7net-0, and 7net-mf-0 with either modal); ``lamcsp relax --model sevennet:7net-0``
reaches the minima of ASE FIRE + FrechetCellFilter with that calculator; bad structures fail
alone; bad names, modals and a missing sevenn are one-paragraph SetupErrors."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.spacegroup import crystal
from lamcsp.relax.state import from_structures

from lamcsp.errors import SetupError

pytest.importorskip("sevenn", reason="the sevennet extra is not installed")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # sevenn: "no TP accelerator"

# Tolerances of the batched model against SevenNet's calculator: both run the same float32
# network on the same edges, in a different order (sums over edges and atoms reassociate), so
# they agree to a few float32 roundings: energy 8 ulp of |E| (float32 eps 1.2e-7; measured <= 1
# ulp), forces 1e-5 eV/Å and stress 1e-6 eV/Å³ (0.16 MPa; measured <= 1e-6 and 3e-8).
E_ULPS, F_TOL, S_TOL = 8 * 1.2e-7, 1e-5, 1e-6


def _mixed() -> list[Atoms]:
    """1-, 2-, 8-, 6-, 4- and 24-atom periodic cells of eight elements: rattled, strained, a
    general triclinic cell, and unwrapped positions."""
    cu = bulk("Cu", "fcc", 3.6)  # 1 atom, rhombohedral primitive cell
    si2 = bulk("Si", "diamond", 5.43)
    si2.rattle(0.05, seed=1)
    nacl = bulk("NaCl", "rocksalt", 5.5, cubic=True)
    nacl.rattle(0.05, seed=2)
    tio2 = crystal(["Ti", "O"], basis=[(0, 0, 0), (0.305, 0.305, 0)], spacegroup=136,
                   cellpar=[4.59, 4.59, 2.96, 90, 90, 90])
    strain = np.array([[1.03, 0.02, -0.01], [0.02, 0.98, 0.03], [-0.01, 0.03, 1.01]])
    tio2.set_cell(tio2.cell.array @ strain, scale_atoms=True)
    tri = Atoms("ZnOMgO", scaled_positions=[[0.1, 0.2, 0.05], [0.4, 0.35, 0.3], [0.6, 0.7, 0.55],
                                            [0.85, 0.9, 0.8]],
                cell=[4.1, 4.6, 5.0, 80, 95, 105], pbc=True)  # triclinic
    big = bulk("Si", "diamond", 5.43, cubic=True) * (3, 1, 1)
    big.rattle(0.1, seed=3)
    big.positions += np.random.default_rng(4).integers(-2, 3, (len(big), 3)) @ big.cell.array  # unwrapped
    return [cu, si2, nacl, tio2, tri, big]


@pytest.fixture(scope="module")
def pot():
    from lamcsp.potentials import load_potential

    return load_potential("sevennet:7net-0", device="cpu")


def _calculator(name: str, modal: str | None = None):
    from sevenn.calculator import SevenNetCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SevenNetCalculator(name, modal=modal, device="cpu")


def _check_against(out, state, structures, calc):
    forces = torch.split(out["forces"], state.n_atoms_per_system.tolist())
    for i, atoms in enumerate(structures):
        ref = atoms.copy()
        ref.calc = calc
        e = ref.get_potential_energy()
        assert float(out["energy"][i]) == pytest.approx(e, abs=max(1e-5, E_ULPS * abs(e)))
        np.testing.assert_allclose(forces[i].numpy(), ref.get_forces(), rtol=0, atol=F_TOL)
        np.testing.assert_allclose(out["stress"][i].numpy(), ref.get_stress(voigt=False), rtol=0, atol=S_TOL)


def test_batch_equals_calculator(pot):
    structures = _mixed()
    state = from_structures(structures)
    out = pot(state)
    assert out["errors"] == [None] * len(structures)
    assert out["energy"].shape == (6,) and out["forces"].shape == (45, 3) and out["stress"].shape == (6, 3, 3)
    assert pot.n_model_calls == 1  # the whole batch in one model call
    _check_against(out, state, structures, _calculator("7net-0"))


def test_multi_fidelity_modal():
    from lamcsp.potentials import load_potential

    structures = _mixed()[1:4]
    state = from_structures(structures)
    energies = {}
    for modal in ("PBE", "R2SCAN"):
        p = load_potential(f"sevennet:7net-mf-0@{modal.lower()}", device="cpu")  # case-insensitive
        assert p.model_id == f"sevennet-7net-mf-0@{modal}"
        out = p(state)
        _check_against(out, state, structures, _calculator("7net-mf-0", modal))
        energies[modal] = out["energy"]
    assert (energies["PBE"] - energies["R2SCAN"]).abs().min() > 1e-2  # the modal changes the energy


def test_bad_structures_fail_alone(pot):
    good = bulk("Si", "diamond", 5.43)
    collapsed = bulk("Si", "diamond", 5.43)
    collapsed.set_cell(collapsed.cell * 0.3, scale_atoms=True)
    unknown = Atoms("Og", cell=np.eye(3) * 4.0, pbc=True)
    out = pot(from_structures([collapsed, good, unknown]))
    assert "collapsed" in out["errors"][0] and "Z=[118]" in out["errors"][2] and out["errors"][1] is None
    assert torch.isnan(out["energy"][[0, 2]]).all() and torch.isfinite(out["energy"][1])
    ref = pot(from_structures([good]))
    assert float(out["energy"][1]) == pytest.approx(float(ref["energy"][0]), abs=1e-5)


def _relax_reference(atoms, calc, fmax, steps):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    ref = atoms.copy()
    ref.calc = calc
    opt = FIRE(FrechetCellFilter(ref), logfile=None)
    opt.run(fmax=fmax, steps=steps)
    assert opt.converged()
    return ref


def test_cli_relax_same_minima_as_ase_fire(tmp_path):
    """`lamcsp relax --model sevennet:7net-0` (the real CLI) against ASE FIRE +
    FrechetCellFilter with SevenNet's calculator, fmax 0.02 eV/Å.

    Tolerances: at fmax 0.02 eV/Å the filter's cell "forces" leave a residual stress of at most
    about fmax / V (0.02 / 20-45 Å³, i.e. 0.07-0.16 GPa); over the bulk moduli of Si and NaCl
    (~90 and ~25 GPa) that is a volume uncertainty of 0.1-0.6 % on either side, hence 1 % on
    the volume; the energy is stationary at the minimum, so that error costs well under
    1 meV/atom (the tolerance on the energy per atom)."""
    from ase.io import read, write

    si = bulk("Si", "diamond", 5.55)
    si.set_cell(si.cell * np.array([1.0, 1.03, 0.98]), scale_atoms=True)
    si.rattle(0.05, seed=1)
    nacl = bulk("NaCl", "rocksalt", 5.4)  # 2 atoms, strained
    nacl.set_cell(nacl.cell.array @ np.array([[1.04, 0.02, 0], [0.02, 0.97, 0], [0, 0, 1.0]]), scale_atoms=True)
    nacl.rattle(0.03, seed=2)
    cells = [si, nacl]
    write(tmp_path / "in.extxyz", cells)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "lamcsp", "relax", str(tmp_path / "in.extxyz"), "-o",
                           str(tmp_path / "out.extxyz"), "--model", "sevennet:7net-0", "--fmax", "0.02",
                           "--device", "cpu", "--no-progress"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    ours = read(tmp_path / "out.extxyz", index=":")
    calc = _calculator("7net-0")
    for atoms, res in zip(cells, ours):
        assert res.info["converged"]
        ref = _relax_reference(atoms, calc, 0.02, 400)
        n = len(atoms)
        assert res.get_potential_energy() / n == pytest.approx(ref.get_potential_energy() / n, abs=1e-3)
        assert res.get_volume() == pytest.approx(ref.get_volume(), rel=1e-2)


def test_bad_name_and_modal_errors(monkeypatch):
    from lamcsp.potentials import load_potential

    with pytest.raises(SetupError) as e:
        load_potential("sevennet:7net-99", device="cpu")
    assert e.value.field == "model.name" and all(n in e.value.message for n in ("7net-0", "7net-mf-0", "7net-l3i5"))
    with pytest.raises(SetupError) as e:
        load_potential("sevennet:7net-mf-0", device="cpu")
    assert e.value.field == "model.modal" and "PBE" in e.value.message and "R2SCAN" in e.value.message
    with pytest.raises(SetupError) as e:
        load_potential("sevennet:7net-mf-0@HSE", device="cpu")
    assert e.value.field == "model.modal" and "no modal 'HSE'" in e.value.message and "PBE" in e.value.message
    with pytest.raises(SetupError) as e:
        load_potential("sevennet:7net-0@PBE", device="cpu")
    assert e.value.field == "model.modal" and "single-fidelity" in e.value.message
    import lamcsp.extras

    monkeypatch.setattr(lamcsp.extras, "installed", lambda module: module != "sevenn")
    with pytest.raises(SetupError) as e:
        load_potential("sevennet", device="cpu")
    assert e.value.field == "model.backend" and "lamcsp[sevennet]" in e.value.message


BASE = {
    "name": "t",
    "system": {"composition": "Si", "formula_units": "1-2", "pressures": 0},
    "generators": [{"name": "random", "share": 1.0}],
    "generations": 1,
    "model": {"backend": "sevennet"},
}


def _campaign(**model):
    from lamcsp.campaign import parse_campaign

    raw = copy.deepcopy(BASE)
    raw["model"].update(model)
    return parse_campaign(raw)


def test_campaign_model_section():
    from lamcsp.potentials.registry import load_model

    c = _campaign(name="7net-mf-0", modal="R2SCAN")
    assert c.model.name == "7net-mf-0" and c.model.modal == "R2SCAN"
    assert load_model(c.model.replace(device="cpu")).model_id == "sevennet-7net-mf-0@R2SCAN"
    for model, field, words in [
        ({"name": "7net-omni"}, "model.name", ["7net-0", "7net-mf-0", "7net-l3i5"]),
        ({"backend": "chgnet", "name": "7net-0"}, "model.name", ["sevennet"]),
        ({"backend": "chgnet", "modal": "PBE"}, "model.modal", ["sevennet"]),
        ({"options": {"modal": "PBE"}}, "model.options.modal", ["max_neighbors", "trusted"]),
    ]:
        with pytest.raises(SetupError) as e:
            _campaign(**model)
        assert e.value.field == field and all(w in e.value.message for w in words), e.value
    with pytest.raises(SetupError) as e:  # the modal is checked against the model when it loads
        load_model(_campaign(name="7net-mf-0").model.replace(device="cpu"))
    assert e.value.field == "model.modal" and "PBE" in e.value.message and "R2SCAN" in e.value.message
