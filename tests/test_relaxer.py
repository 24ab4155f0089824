"""In-flight batching, input order, failure detection."""

import dataclasses

import numpy as np
import pytest
import torch
from ase.build import bulk
from lamcsp.relax import Relaxer
from lamcsp.relax.batching import InFlightBatcher

from lamcsp.potentials.base import Potential


def _random_binary_set(n=50, seed=0):
    """n structures of 1..20 atoms: Ar/Ne fcc-based cells, strained and rattled."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        n_atoms = int(rng.integers(1, 21))
        reps = {1: (1, 1, 1)}.get(n_atoms)
        base = bulk("Ar", "fcc", 5.3)
        while len(base) < n_atoms:
            base = base * (2, 1, 1) if len(base) < 4 else base * (1, 2, 1) if len(base) < 8 else base * (1, 1, 2)
        atoms = base[:n_atoms] if reps is None else base
        atoms.numbers[rng.random(len(atoms)) < 0.3] = 10
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.04, 0.04, size=3)), scale_atoms=True)
        if len(atoms) > 1:
            atoms.rattle(0.08, seed=k)
        out.append(atoms)
    return out


def test_batcher_respects_budget_and_order():
    b = InFlightBatcher([5, 5, 12, 3, 30, 2], max_atoms=12)
    assert b.take(0) == [0, 1]
    assert b.take(10) == []
    assert b.take(0) == [2]
    assert b.take(0) == [3]  # 3 + 30 > 12
    assert b.take(0) == [4]  # larger than the budget: runs alone
    assert b.take(0) == [5] and b.done


def test_fifty_structures_small_budget_equal_relaxing_alone(binary_lj):
    structs = _random_binary_set()
    assert sum(len(a) for a in structs) > 100
    relaxer = Relaxer(binary_lj, fmax=0.02, max_steps=300, max_atoms=60)
    batched = relaxer.relax(structs)
    assert len(batched) == len(structs)
    for atoms, res in zip(structs, batched):
        alone = Relaxer(binary_lj, fmax=0.02, max_steps=300).relax([atoms])[0]
        assert (res.atoms.numbers == atoms.numbers).all()  # input order kept
        assert res.status == alone.status and res.steps == alone.steps
        assert res.energy == pytest.approx(alone.energy, abs=1e-9)
        assert np.abs(res.atoms.positions - alone.atoms.positions).max() < 1e-7
    # batching really happened: far fewer model calls than relaxations one by one
    assert relaxer.n_model_calls < 0.5 * sum(r.steps + 1 for r in batched)


class NaNForOne(Potential):
    """Wraps a potential and poisons the energy of systems whose first atom is Ne."""

    name = "nan-for-one"

    def __init__(self, inner):
        super().__init__(inner.device, inner.dtype)
        self.inner = inner

    def forward(self, state):
        out = dict(self.inner(state))
        counts = state.n_atoms_per_system
        first = torch.cumsum(counts, 0) - counts
        poison = state.numbers[first] == 10
        out["energy"] = torch.where(poison, torch.full_like(out["energy"], float("nan")), out["energy"])
        return out


def test_broken_inputs_fail_with_reason_others_converge(binary_lj):
    good = [bulk("Ar", "fcc", 5.3, cubic=True) for _ in range(3)]
    for k, a in enumerate(good):
        a.rattle(0.05, seed=k)
    overlap = bulk("Ar", "fcc", 5.3, cubic=True)
    overlap.positions[1] = overlap.positions[0] + [0.2, 0.1, 0.0]
    nan_one = bulk("Ar", "fcc", 5.3, cubic=True)
    nan_one.numbers[0] = 10
    structs = [good[0], overlap, good[1], nan_one, good[2]]
    res = Relaxer(NaNForOne(binary_lj), fmax=0.02, max_steps=300).relax(structs)
    assert [r.converged for r in res] == [True, False, True, False, True]
    assert res[1].status.startswith("failed: atoms") and "closer than 0.5" in res[1].status
    assert res[3].status == "failed: non-finite energy"
    assert res[1].steps == 0 and res[3].steps == 0


def test_exploding_cell_fails_on_volume(binary_lj):
    # strong negative pressure blows the cell up until the volume check stops it
    a = bulk("Ar", "fcc", 5.3, cubic=True)
    a.rattle(0.02, seed=1)
    res = Relaxer(binary_lj, fmax=0.001, max_steps=3000).relax([a], pressure_gpa=-2.0)[0]
    assert res.status.startswith("failed: volume per atom")


def test_max_steps_reported_not_converged(binary_lj):
    a = bulk("Ar", "fcc", 5.0, cubic=True) * (2, 1, 1)
    a.rattle(0.3, seed=2)
    res = Relaxer(binary_lj, fmax=1e-6, max_steps=7).relax([a])[0]
    assert res.status == "max_steps" and not res.converged and res.steps == 7


def test_results_dataclass_fields(binary_lj):
    a = bulk("Ar", "fcc", 5.3, cubic=True)
    r = Relaxer(binary_lj, fmax=0.05).relax([a], pressure_gpa=1.0)[0]
    d = dataclasses.asdict(r)
    assert {"energy", "enthalpy", "pressure_gpa", "converged", "steps", "status", "fmax"} <= set(d)
    assert r.pressure_gpa == 1.0 and r.fmax < 0.05


def test_trajectory_snapshots_leave_the_relaxation_unchanged(lj):
    """snapshot_every keeps the geometry every k steps (the fine-tune loop's trajectory frames)
    without changing any result; frames survive the plain-data round trip."""
    from lamcsp.relax.relaxer import RelaxResult

    cells = []
    for i in range(5):
        a = bulk("Ar", "fcc", a=5.6).repeat((1 + i % 2, 1, 1))
        a.rattle(0.3, seed=i)
        cells.append(a)
    plain = Relaxer(lj, fmax=0.01, max_steps=200, max_atoms=3).relax(cells)
    snap = Relaxer(lj, fmax=0.01, max_steps=200, max_atoms=3, snapshot_every=4).relax(cells)
    for a, b in zip(plain, snap):
        assert a.steps == b.steps and np.array_equal(a.atoms.positions, b.atoms.positions)
        assert not a.frames and len(b.frames) == max(0, (b.steps - 1) // 4)
        assert all(len(f) == len(b.atoms) for f in b.frames)
    moved = [b for b in snap if len(b.frames) >= 2]
    assert moved and not np.allclose(moved[0].frames[0].positions, moved[0].frames[-1].positions)
    back = RelaxResult.from_dict(moved[0].to_dict())
    assert [f.positions.tolist() for f in back.frames] == [f.positions.tolist() for f in moved[0].frames]


def test_single_points_equal_the_start_of_a_relaxation_and_fail_the_same_way(binary_lj):
    """``Relaxer.evaluate`` (the executor's single points) gives, in any batch size, the energy,
    enthalpy, forces and stress the relaxer reports at step 0, and the same failures."""
    structs = _random_binary_set(n=12, seed=3)
    overlap = bulk("Ar", "fcc", 5.3, cubic=True)
    overlap.positions[1] = overlap.positions[0] + [0.2, 0.1, 0.0]
    nan_one = bulk("Ar", "fcc", 5.3, cubic=True)
    nan_one.numbers[0] = 10
    structs += [overlap, nan_one]
    pressures = np.linspace(-1.0, 5.0, len(structs))
    pot = NaNForOne(binary_lj)
    start = Relaxer(pot, max_steps=0).relax(structs, pressures)
    for budget in (None, 7):
        sp = Relaxer(pot, max_atoms=budget).evaluate(structs, pressures)
        for a, s, r in zip(structs, sp, start):
            assert s.n_atoms == len(a) and s.pressure_gpa == r.pressure_gpa
            assert s.failed == r.failed and s.status.removeprefix("ok") == r.status.removeprefix("max_steps") \
                .removeprefix("converged")
            if not r.failed:
                assert s.enthalpy_per_atom == pytest.approx(r.enthalpy_per_atom, rel=1e-12, abs=1e-12)
                np.testing.assert_allclose(s.forces, r.forces, atol=1e-12)
                np.testing.assert_allclose(s.stress, r.stress, atol=1e-12)
    assert sp[-2].status.startswith("failed: atoms") and sp[-1].status == "failed: non-finite energy"
