"""The CHGNet backend: one batched call equals CHGNet's own per-structure predictions; bad
structures fail alone; the fast graph builder gives CHGNet's edge sets; model loading errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.spacegroup import crystal
from lamcsp.kernels.chgnet_graph import build_graph, build_graph_reference
from lamcsp.relax.state import from_structures
from pymatgen.io.ase import AseAtomsAdaptor

from lamcsp.errors import SetupError

GPA = 160.21766208  # eV/Å³ -> GPa, CHGNet's factor

# CHGNet's own BatchedGraph.from_graphs (the reference path) warns about torch.tensor(volumes)
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


@pytest.fixture(scope="module")
def pot():
    from lamcsp.potentials.chgnet import CHGNetPotential

    return CHGNetPotential("0.3.0", device="cpu")


def _rutile() -> Atoms:
    return crystal(
        ["Ti", "O"],
        basis=[(0, 0, 0), (0.305, 0.305, 0)],
        spacegroup=136,
        cellpar=[4.59, 4.59, 2.96, 90, 90, 90],
    )


def _mixed() -> list[Atoms]:
    """2-, 8-, 4-, 8-, 6- and 16-atom cells, some rattled and strained."""
    si2 = bulk("Si", "diamond", 5.43)
    si8 = bulk("Si", "diamond", 5.43, cubic=True)
    si8.rattle(0.05, seed=3)
    nacl4 = bulk("NaCl", "rocksalt", 5.64, orthorhombic=True)
    nacl8 = bulk("NaCl", "rocksalt", 5.5, cubic=True)
    nacl8.rattle(0.05, seed=4)
    tio2 = _rutile()
    tio2.rattle(0.02, seed=5)
    big = bulk("Si", "diamond", 5.43, cubic=True) * (2, 1, 1)
    strain = np.array([[1.03, 0.02, -0.01], [0.02, 0.98, 0.03], [-0.01, 0.03, 1.01]])
    big.set_cell(big.cell.array @ strain, scale_atoms=True)
    big.rattle(0.1, seed=6)
    big.positions += np.random.default_rng(7).normal(0.0, 4.0, (len(big), 3))  # unwrapped
    return [si2, si8, nacl4, nacl8, tio2, big]


def _reference(pot, atoms_list):
    structs = [AseAtomsAdaptor.get_structure(a) for a in atoms_list]
    return pot.model.predict_structure(structs, task="efs", batch_size=16)


def _assert_matches(out, k, atoms, ref, forces):
    n = len(atoms)
    assert out["errors"][k] is None
    assert out["energy"][k].item() / n == pytest.approx(float(ref["e"]), abs=1e-5)
    # Both CHGNet's float32 forward and ours differ from a float64 evaluation of the same
    # weights by up to ~1e-4 eV/Å on the rattled 16-atom cell, so allow float32 noise that
    # scales with the force.
    np.testing.assert_allclose(forces.numpy(), ref["f"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["stress"][k].numpy() * GPA, ref["s"], atol=1e-3)


def test_mixed_batch_equals_predict_structure(pot):
    atoms_list = _mixed()
    state = from_structures(atoms_list)
    n_calls = pot.n_calls
    out = pot(state)
    assert pot.n_calls == n_calls + 1
    assert out["energy"].shape == (6,) and out["stress"].shape == (6, 3, 3)
    assert out["forces"].shape == (state.n_atoms, 3)
    assert out["energy"].dtype == torch.float64 == out["forces"].dtype
    assert pot.timings["graph"] > 0 and pot.timings["model"] > 0
    ref = _reference(pot, atoms_list)
    forces = torch.split(out["forces"], state.n_atoms_per_system.tolist())
    for k, atoms in enumerate(atoms_list):
        _assert_matches(out, k, atoms, ref[k], forces[k])


def test_stress_sign_matches_chgnet_ase_calculator(pot):
    from ase.stress import full_3x3_to_voigt_6_stress
    from chgnet.model.dynamics import CHGNetCalculator

    atoms = bulk("NaCl", "rocksalt", 5.3, cubic=True)  # compressed: wants to expand
    atoms.rattle(0.02, seed=1)
    out = pot(from_structures([atoms], dtype=torch.float32))
    assert out["stress"].dtype == torch.float32
    ref = atoms.copy()
    ref.calc = CHGNetCalculator(model=pot.model, use_device="cpu")
    ours = full_3x3_to_voigt_6_stress(out["stress"][0].double().numpy())
    np.testing.assert_allclose(ours, ref.get_stress(), atol=1e-5)
    assert ours[:3].mean() < 0  # compressed -> negative stress, positive internal pressure


def test_chgnet_graph_builder_gives_same_results(pot):
    atoms_list = _mixed()[:5]
    state = from_structures(atoms_list)
    fast = pot(state)
    pot.graph_builder = "chgnet"
    try:
        slow = pot(state)
    finally:
        pot.graph_builder = "fast"
    for key, tol in (("energy", 1e-4), ("forces", 1e-4), ("stress", 1e-6)):
        np.testing.assert_allclose(fast[key].numpy(), slow[key].numpy(), atol=tol)


def test_isolated_atom_fails_alone(pot):
    si8 = bulk("Si", "diamond", 5.43, cubic=True)
    si8.rattle(0.05, seed=3)
    lone = Atoms("H", positions=[[1.0, 2.0, 3.0]], cell=np.diag([7.0, 8.0, 9.0]), pbc=True)
    nacl = bulk("NaCl", "rocksalt", 5.64)
    atoms_list = [si8, lone, nacl]
    state = from_structures(atoms_list)
    out = pot(state)
    assert out["errors"][0] is None and out["errors"][2] is None
    assert "isolated" in out["errors"][1] and "6 Å" in out["errors"][1]
    assert torch.isnan(out["energy"][1]) and torch.isnan(out["stress"][1]).all()
    forces = torch.split(out["forces"], state.n_atoms_per_system.tolist())
    assert torch.isnan(forces[1]).all()
    ref = _reference(pot, [si8, nacl])
    _assert_matches(out, 0, si8, ref[0], forces[0])
    _assert_matches(out, 2, nacl, ref[1], forces[2])

    pot.on_isolated_atoms = "ignore"
    try:
        out = pot(state)
    finally:
        pot.on_isolated_atoms = "fail"
    assert out["errors"] == [None, None, None]
    assert torch.isfinite(out["energy"]).all()
    assert torch.split(out["forces"], [8, 1, 2])[1].abs().max() == 0


def test_bad_structures_fail_alone(pot):
    nacl = bulk("NaCl", "rocksalt", 5.64)
    si = bulk("Si", "diamond", 5.43)
    state = from_structures([nacl, nacl.copy(), nacl.copy(), si, nacl.copy()])
    state.numbers[4] = 95  # system 2 gets Am: outside CHGNet's Z 1..94
    state.cell[1] = 0.0  # singular
    state.positions[8, 0] = float("nan")  # system 4
    out = pot(state)
    assert out["errors"][0] is None and out["errors"][3] is None
    assert "singular" in out["errors"][1]
    assert "Z=[95]" in out["errors"][2]
    assert "non-finite" in out["errors"][4]
    assert torch.isfinite(out["energy"][[0, 3]]).all()
    assert torch.isnan(out["energy"][[1, 2, 4]]).all()
    ref = pot(from_structures([nacl, si]))
    assert out["energy"][[0, 3]].tolist() == pytest.approx(ref["energy"].tolist(), abs=1e-5)

    pot.max_bond_neighbors = 3  # diamond Si has 4 neighbours within 3 Å, NaCl 6
    try:
        out = pot(from_structures([si, bulk("Ne", "fcc", 5.0)]))
    finally:
        pot.max_bond_neighbors = 128
    assert "collapsed structure" in out["errors"][0] and out["errors"][1] is None
    assert torch.isfinite(out["energy"][1]) and torch.isnan(out["energy"][0])


def test_metadata(pot):
    assert pot.model_id == "chgnet-0.3.0"
    assert pot.supported_numbers == set(range(1, 95))
    assert pot.bytes_per_atom > 0
    assert not any(p.requires_grad for p in pot.model.parameters())
    assert not pot.model.training


def test_missing_checkpoint_raises_setup_error(tmp_path):
    from lamcsp.potentials.chgnet import CHGNetPotential

    missing = tmp_path / "nope.pth.tar"
    with pytest.raises(SetupError) as info:
        CHGNetPotential(model=str(missing))
    assert info.value.field == "model"
    assert str(missing) in info.value.message and "0.3.0" in info.value.message


def test_checkpoint_file_and_registry(pot, tmp_path, capsys):
    from lamcsp.potentials import load_potential
    from lamcsp.potentials.chgnet import CHGNetPotential

    path = tmp_path / "mine.pt"
    torch.save(pot.model.as_dict(), path)
    from_file = load_potential(f"chgnet:{path}", device="cpu")
    assert isinstance(from_file, CHGNetPotential)
    assert from_file.model_id == "chgnet:mine.pt"
    default = load_potential("chgnet", device="cpu")
    assert default.model_id == "chgnet-0.3.0"
    assert "initialized" not in capsys.readouterr().out  # CHGNet's load prints are silenced
    state = from_structures([bulk("Si", "diamond", 5.43)])
    e = [p(state)["energy"].item() for p in (pot, from_file, default)]
    assert e[1] == pytest.approx(e[0], abs=1e-6) and e[2] == pytest.approx(e[0], abs=1e-6)


# ---- graph builder vs CHGNet's converter -----------------------------------------------------
def _graph_cases() -> list[Atoms]:
    rng = np.random.default_rng(0)
    skewed = bulk("Al", "fcc", 4.05)  # same lattice, very skewed basis, 1 atom
    cell = skewed.cell.array.copy()
    cell[2] += 3 * cell[0] - 2 * cell[1]
    skewed.set_cell(cell)
    tilted = bulk("Si", "diamond", 5.43, cubic=True) * (2, 1, 1)
    tilted.set_cell(tilted.cell.array @ (np.eye(3) + 0.05 * rng.standard_normal((3, 3))), True)
    tilted.rattle(0.1, seed=1)
    tilted.positions += rng.normal(0.0, 3.0, tilted.positions.shape)  # unwrapped
    sc = bulk("Po", "sc", 3.0)  # neighbours exactly at both cutoffs (3 Å and 6 Å)
    return [bulk("Si", "diamond", 5.43), _rutile(), bulk("Cu", "fcc", 3.6) * (2, 1, 1), skewed, tilted, sc]


def _edge_and_angle_sets(center, neighbor, image, bond_graph):
    img = np.rint(np.asarray(image)).astype(int)
    keys = [(int(c), int(n), tuple(i)) for c, n, i in zip(center, neighbor, img, strict=True)]
    angles = {(int(r[0]), keys[r[2]], keys[r[4]]) for r in np.asarray(bond_graph)}
    assert len(set(keys)) == len(keys) and len(angles) == len(bond_graph)
    return set(keys), angles


def test_graph_builders_match_chgnet_converter():
    from chgnet.graph import CrystalGraphConverter

    conv = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3, on_isolated_atoms="ignore")
    cases = _graph_cases()
    counts = np.array([len(a) for a in cases])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    positions = np.concatenate([a.positions for a in cases])
    cells = np.stack([a.cell.array for a in cases])
    batch = {f.__name__: f(positions, cells, counts, 6.0, 3.0) for f in (build_graph, build_graph_reference)}
    for name, g in batch.items():
        # undirected bookkeeping: 2u and 2u + 1 are the two directions of edge u
        np.testing.assert_array_equal(g.center[0::2], g.neighbor[1::2])
        np.testing.assert_array_equal(g.image[0::2], -g.image[1::2])
        np.testing.assert_array_equal(g.undirected2directed, 2 * np.arange(len(g.center) // 2))
        np.testing.assert_array_equal(g.bond_graph[:, 1], g.directed2undirected[g.bond_graph[:, 2]])
        vec = positions[g.neighbor] - positions[g.center]
        vec += np.einsum("ek,ekl->el", g.image, cells[np.repeat(np.arange(len(cases)), counts)][g.center])
        np.testing.assert_allclose(np.linalg.norm(vec, axis=1), g.distance, atol=1e-9, err_msg=name)
    for k, atoms in enumerate(cases):
        cg = conv(AseAtomsAdaptor.get_structure(atoms))
        ag = cg.atom_graph.numpy()
        ref_edges, ref_angles = _edge_and_angle_sets(
            ag[:, 0], ag[:, 1], cg.neighbor_image.numpy(), cg.bond_graph.numpy()
        )
        for name, g in batch.items():
            lo, hi = offsets[k], offsets[k + 1]
            mine = (g.center >= lo) & (g.center < hi)
            idx = np.nonzero(mine)[0]
            local = np.full(len(g.center), -1)
            local[idx] = np.arange(len(idx))
            rows = g.bond_graph[mine[g.bond_graph[:, 2]]]
            rows = np.column_stack(
                [rows[:, 0] - lo, rows[:, 1], local[rows[:, 2]], rows[:, 3], local[rows[:, 4]]]
            )
            edges, angles = _edge_and_angle_sets(g.center[idx] - lo, g.neighbor[idx] - lo, g.image[idx], rows)
            assert edges == ref_edges, (name, atoms.get_chemical_formula())
            assert angles == ref_angles, (name, atoms.get_chemical_formula())
