"""The MACE backend's checks; they need mace-torch, so ``test_mace.py`` runs this module in the
MACE environment (directly where mace imports, else through a cached venv). Small MACE models are
built and saved by mace-torch itself in this run (``mace_models.py``); the reference is
``mace.calculators.MACECalculator``, structure by structure."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from ase.units import GPa
from lamcsp.relax import Relaxer
from lamcsp.relax.state import from_structures
from mace_models import build_and_save

from lamcsp.errors import SetupError
from lamcsp.potentials.mace import MACEPotential
from lamcsp.potentials.registry import backend_options, load_model, load_potential

#: batched against MACECalculator, per model dtype: the same operations in another edge order and
#: batch layout, so only summation order differs (energy per atom eV, forces eV/Å, stress eV/Å³)
TOL = {torch.float64: (1e-12, 1e-12, 1e-12), torch.float32: (2e-6, 1e-5, 1e-6)}


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return build_and_save(tmp_path_factory.mktemp("mace"))


def calculator(path: Path, **kw):
    from mace.calculators import MACECalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MACECalculator(model_paths=str(path), device="cpu", **kw)


def mixed_batch(seed: int = 3) -> list[Atoms]:
    """Periodic cells of 1 to 24 atoms of Si, O, Mg, Al, Cu: cubic, hexagonal, orthorhombic and a
    triclinic one, rattled and strained."""
    rng = np.random.default_rng(seed)
    symbols = ["Si", "O", "Mg", "Al", "Cu"]
    out = [Atoms("Cu", cell=[[2.5, 0, 0], [0, 2.6, 0], [0, 0, 2.8]], pbc=True)]
    for proto, a, rep in [("fcc", 3.9, (2, 1, 1)), ("hcp", 3.0, (1, 1, 1)), ("fcc", 3.9, (2, 2, 1)),
                          ("diamond", 5.3, (1, 1, 1)), ("hcp", 3.0, (2, 2, 1)), ("fcc", 3.9, (3, 2, 2)),
                          ("diamond", 5.3, (2, 2, 3))]:
        at = bulk("Cu", proto, a=a).repeat(rep) if proto != "hcp" else bulk("Mg", "hcp", a=a).repeat(rep)
        at.set_chemical_symbols(rng.choice(symbols, len(at)).tolist())
        at.set_cell(at.cell.array @ (np.eye(3) + rng.normal(0, 0.03, (3, 3))), scale_atoms=True)
        at.rattle(0.1, seed=int(rng.integers(1000)))
        out.append(at)
    out.append(Atoms(rng.choice(symbols, 7).tolist(), scaled_positions=rng.random((7, 3)),
                     cell=[[4.1, 0, 0], [1.3, 3.9, 0], [-0.8, 1.1, 4.4]], pbc=True))  # triclinic
    return out


def assert_equal_to_calculator(pot: MACEPotential, calc, structures: list[Atoms], dtype: torch.dtype) -> None:
    out = pot(from_structures(structures, dtype=torch.float64))
    tol_e, tol_f, tol_s = TOL[dtype]
    i0 = 0
    for k, atoms in enumerate(structures):
        a = atoms.copy()
        a.calc = calc
        n = len(a)
        assert abs(out["energy"][k].item() - a.get_potential_energy()) / n < tol_e * max(1.0, abs(a.get_potential_energy() / n))
        f = a.get_forces()
        assert np.abs(out["forces"][i0:i0 + n].numpy() - f).max() < tol_f
        assert np.abs(out["stress"][k].numpy() - a.get_stress(voigt=False)).max() < tol_s
        i0 += n
    assert out["errors"] == [None] * len(structures)


@pytest.mark.parametrize("name", ["tiny64", "tiny32"])
def test_batched_equals_mace_calculator_structure_by_structure(models, name):
    structures = mixed_batch()
    sizes = sorted(len(a) for a in structures)
    assert sizes[0] == 1 and sizes[-1] == 24 and len(set(sizes)) >= 6
    calc = calculator(models[name])
    assert sum(sizes) > 48  # chunked on the CPU (48 atoms per model call), and in one call
    for chunk in (None, 1000):
        pot = MACEPotential(models[name], chunk_atoms=chunk)
        assert pot.dtype == (torch.float64 if name == "tiny64" else torch.float32)
        assert_equal_to_calculator(pot, calc, structures, pot.dtype)
    # the comparison is not of zeros (a randomly initialised model has small forces)
    out = pot(from_structures(structures, dtype=torch.float64))
    assert out["forces"].abs().max() > 0.01 and out["stress"].abs().max() > 1e-4


def test_float32_cast_of_a_float64_model_equals_the_calculator_in_float32(models):
    pot = MACEPotential(models["tiny64"], dtype="float32")
    assert pot.dtype == torch.float32 and next(pot.model.parameters()).dtype == torch.float32
    assert_equal_to_calculator(pot, calculator(models["tiny64"], default_dtype="float32"), mixed_batch(),
                               torch.float32)


def test_each_head_of_a_two_head_model_equals_the_calculator_with_that_head(models):
    structures = mixed_batch(seed=4)[:6]
    energies = {}
    for head in ("pbe", "r2scan"):
        pot = load_potential(f"mace:{models['two_heads']}@{head}", device="cpu")
        assert pot.head == head and pot.model_id.endswith(f"@{head}")
        assert_equal_to_calculator(pot, calculator(models["two_heads"], head=head), structures, torch.float64)
        energies[head] = pot(from_structures(structures, dtype=torch.float64))["energy"]
    assert (energies["pbe"] - energies["r2scan"]).abs().min() > 1e-3  # the heads differ


def test_heads_and_files_are_checked_with_one_paragraph_errors(models, tmp_path):
    with pytest.raises(SetupError) as err:
        MACEPotential(models["two_heads"], head="pbe0")
    assert err.value.field == "model.head" and "pbe, r2scan" in str(err.value) and "pbe0" in str(err.value)
    with pytest.raises(SetupError) as err:  # several heads, none called Default
        MACEPotential(models["two_heads"])
    assert err.value.field == "model.head" and "pbe, r2scan" in str(err.value)
    with pytest.raises(SetupError) as err:
        MACEPotential(models["tiny64"], head="pbe")
    assert "Default" in str(err.value)
    with pytest.raises(SetupError) as err:
        load_potential(f"mace:{tmp_path / 'nope.model'}")
    assert err.value.field == "model.path" and "nope.model" in str(err.value)
    with pytest.raises(SetupError) as err:
        load_potential(f"mace:{models['two_heads']}@pbe", head="r2scan")
    assert "two heads" in str(err.value)
    with pytest.raises(SetupError) as err:
        MACEPotential(models["tiny64"], dtype="float16")
    assert err.value.field == "model.options.dtype"
    (tmp_path / "text.model").write_text("not a model")
    with pytest.raises(SetupError) as err:
        MACEPotential(tmp_path / "text.model")
    assert err.value.field == "model.path"


def test_a_pickle_naming_more_than_a_mace_model_is_refused_before_it_runs(tmp_path):
    path = tmp_path / "odd.model"
    torch.save({"call": os.getcwd}, path)  # harmless, but a global outside MACE's packages
    with pytest.raises(SetupError) as err:
        MACEPotential(path)
    assert "getcwd" in str(err.value) and "nothing in it was run" in str(err.value)
    with pytest.raises(SetupError) as err:  # trusted: it loads, and is then not a MACE model
        MACEPotential(path, trusted=True)
    assert "not a MACE energy model" in str(err.value)


def test_loading_a_mace_model_leaves_torch_load_defaults_alone(models):
    # mace's import sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for the process; lamcsp puts it back
    code = ("import os, sys; from lamcsp.potentials.mace import MACEPotential; MACEPotential(sys.argv[1]); "
            "print(os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'))")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    r = subprocess.run([sys.executable, "-c", code, str(models["tiny64"])], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "None"


def test_elements_outside_the_model_fail_their_structure_only(models):
    pot = MACEPotential(models["tiny64"])
    nacl = bulk("NaCl", "rocksalt", a=5.6)
    cu = bulk("Cu", "fcc", a=3.7)
    out = pot(from_structures([nacl, cu], dtype=torch.float64))
    assert "Z=[11, 17]" in out["errors"][0] and out["errors"][1] is None
    assert torch.isnan(out["energy"][0]) and torch.isfinite(out["energy"][1])
    with pytest.raises(SetupError) as err:
        pot.check_numbers([11, 29])
    assert "Na" in str(err.value)


def test_campaign_model_section_and_options(models):
    from lamcsp.campaign import ModelSpec

    assert {"head", "dtype", "trusted"} <= set(backend_options("mace"))
    spec = ModelSpec(**yaml.safe_load(f"{{backend: mace, path: '{models['two_heads']}', head: r2scan, "
                                      "device: cpu, options: {dtype: float32}}"))
    pot = load_model(spec)
    assert (pot.head, pot.dtype) == ("r2scan", torch.float32)


def relax_cells() -> list[Atoms]:
    a = bulk("MgO", "rocksalt", 4.2)
    a.rattle(0.05, seed=1)
    b = bulk("Si", "diamond", 5.4)
    b.rattle(0.05, seed=2)
    c = bulk("Cu", "fcc", 3.6).repeat((2, 1, 1))
    c.set_chemical_symbols(["Cu", "Al"])
    c.rattle(0.05, seed=3)
    return [a, b, c]


@pytest.mark.parametrize("pressure", [0.0, 2.0])
def test_relaxer_reaches_the_minima_of_ase_fire_with_the_mace_calculator(models, pressure):
    cells = relax_cells()
    pot = MACEPotential(models["relax"])
    ours = Relaxer(pot, fmax=0.02, max_steps=300).relax(cells, pressure_gpa=pressure)
    calc = calculator(models["relax"])
    for atoms, res in zip(cells, ours):
        ref = atoms.copy()
        ref.calc = calc
        opt = FIRE(FrechetCellFilter(ref, scalar_pressure=pressure * GPa), logfile=None)
        opt.run(fmax=0.02, steps=300)
        assert res.converged and opt.converged() and res.steps > 10
        n = len(atoms)
        assert res.energy / n == pytest.approx(ref.get_potential_energy() / n, abs=1e-6)
        assert res.atoms.get_volume() == pytest.approx(ref.get_volume(), rel=1e-5)
        assert np.abs(res.atoms.cell.array - atoms.cell.array).max() > 0.05  # the cell did move


def test_lamcsp_relax_command_with_a_mace_model(models, tmp_path):
    ase.io.write(tmp_path / "in.extxyz", relax_cells())
    r = subprocess.run([sys.executable, "-m", "lamcsp", "relax", "in.extxyz", "--model", f"mace:{models['relax']}",
                        "--fmax", "0.02", "-o", "out.extxyz", "--no-progress"], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    frames = ase.io.read(tmp_path / "out.extxyz", ":")
    assert [f.info["status"] for f in frames] == ["converged"] * 3
    assert frames[0].info["model"] == "mace:relax.model"
