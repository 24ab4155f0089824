"""Dedupe: composition, then fingerprint distance, then StructureMatcher on the close pairs only."""

import numpy as np
import pytest
from ase.build import bulk
from lamcsp.generators.base import Candidate
from lamcsp.generators.dedupe import Deduper, Fingerprinted, StoredStructures, composition_key

from lamcsp.errors import SetupError


def _polymorphs():
    out = {
        "diamond": bulk("Si", "diamond", 5.43),
        "beta-tin": bulk("Si", "bct", a=4.8, c=2.65),
        "lonsdaleite": bulk("SiSi", "wurtzite", a=3.84, c=6.27),
        "fcc": bulk("Si", "fcc", 3.85),
        "bcc": bulk("Si", "bcc", 3.08),
        "sc": bulk("Si", "sc", 2.53),
        "rocksalt": bulk("NaCl", "rocksalt", 5.64),
        "CsCl": bulk("NaCl", "cesiumchloride", 3.4),
    }
    for a in out.values():
        a.wrap()
    return out


def _copies(atoms, rng, seed):
    """The structure, two 0.01 Å rattles, a permuted 2x1x1 supercell, a rotated, shifted copy."""
    out = [atoms.copy()]
    for s in (seed, seed + 1):
        b = atoms.copy()
        b.rattle(0.01, seed=s)
        out.append(b)
    sup = atoms * (2, 1, 1)
    out.append(sup[rng.permutation(len(sup))])
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = atoms.copy()
    rot.set_cell(np.asarray(atoms.cell) @ q.T, scale_atoms=True)
    rot.translate([0.3, -0.7, 1.1])
    out.append(rot)
    return out


def _population(seed=0):
    rng = np.random.default_rng(seed)
    items, labels = [], []
    for k, (name, a) in enumerate(_polymorphs().items()):
        for c in _copies(a, rng, 10 * k):
            items.append(c)
            labels.append(name)
    order = rng.permutation(len(items))
    return [items[i] for i in order], [labels[i] for i in order]


@pytest.mark.parametrize("fingerprint", ["bcm", "ov"])
def test_unique_finds_copies_and_keeps_polymorphs(fingerprint):
    items, labels = _population()
    # mix the input kinds: every third item as a Candidate
    items = [Candidate.from_atoms(a) if k % 3 == 0 else a for k, a in enumerate(items)]
    d = Deduper(fingerprint=fingerprint)
    uniq, dup = d.unique(items)
    assert sorted(labels[i] for i in uniq) == sorted(set(labels))
    for k, r in enumerate(dup):
        rep = k if r < 0 else r
        assert dup[rep] == -1 and labels[rep] == labels[k]
    n = len(items)
    # the cheap tests did their job: the matcher saw about one pair per duplicate
    assert d.n_matcher_calls >= n - len(uniq)
    assert d.n_matcher_calls <= 1.5 * n and d.n_matcher_calls < n * n / 20


def test_without_matcher_rattled_copies_are_still_duplicates():
    base = bulk("Si", "diamond", 5.43) * (2, 1, 1)
    items = [base]
    for s in range(4):
        b = base.copy()
        b.rattle(0.01, seed=s)
        items.append(b)
    items.append(bulk("Si", "bct", a=4.8, c=2.65))
    d = Deduper(use_matcher=False)
    uniq, dup = d.unique(items)
    assert list(uniq) == [0, 5] and list(dup) == [-1, 0, 0, 0, 0, -1]
    assert d.n_matcher_calls == 0


def test_composition_first():
    nacl = bulk("NaCl", "rocksalt", 5.64)
    kcl = nacl.copy()
    kcl.numbers[0] = 19  # same structure, other composition
    d = Deduper(sim_threshold=10.0)  # fingerprint lets everything through; composition does not
    uniq, _ = d.unique([nacl, kcl])
    assert list(uniq) == [0, 1] and d.n_matcher_calls == 0
    assert composition_key([11, 17, 11, 17]) == composition_key([17, 11]) == ((11, 1), (17, 1))


def test_energy_tolerance_and_lowest_enthalpy_kept():
    a = bulk("Si", "diamond", 5.43)
    b = a.copy()
    b.rattle(0.01, seed=1)
    uniq, dup = Deduper().unique([a, b], energies=[-5.0, -5.2])
    assert list(uniq) == [0, 1] and list(dup) == [-1, -1]
    uniq, dup = Deduper(energy_tol=None).unique([a, b], energies=[-5.0, -5.2])
    assert list(uniq) == [1] and list(dup) == [1, -1]  # the lower-enthalpy copy is kept
    uniq, dup = Deduper().unique([a, b], energies=[-5.0, -5.005])
    assert list(dup) == [1, -1]


def test_relaxed_copies_beyond_the_fingerprint_threshold_meet_the_matcher_by_enthalpy():
    # two relaxations of one structure often end a few per cent apart in cell shape: rocksalt
    # stretched 8 % along c is still rocksalt to StructureMatcher, but its fingerprint lies beyond
    # the threshold; with enthalpies known, the enthalpy window decides which pairs are matched
    a = bulk("NaCl", "rocksalt", 5.64)
    b = a.copy()
    cell = np.array(b.cell)
    cell[2] *= 1.08
    b.set_cell(cell, scale_atoms=True)
    d = Deduper()
    assert d.fingerprint_distance(*d.describe([a, b])) > d.sim_threshold
    assert list(d.unique([a, b])[1]) == [-1, -1]  # no enthalpies (the screen): fingerprint gate
    assert list(d.unique([a, b], energies=[-3.300, -3.305])[1]) == [1, -1]
    assert list(d.unique([a, b], energies=[-3.30, -3.35])[1]) == [-1, -1]  # beyond energy_tol
    assert list(Deduper(use_matcher=False).unique([a, b], energies=[-3.300, -3.305])[1]) == [-1, -1]
    store = d.new_store()
    store.extend(d.describe([a, bulk("NaCl", "cesiumchloride", 3.4)], energies=[-3.300, -3.302]))
    assert list(d.against([b], store, energies=[-3.305])) == [0]  # the CsCl in the window is no match


def test_against_stored_incrementally():
    poly = _polymorphs()
    d = Deduper()
    store = d.new_store()
    store.extend(d.describe([poly["diamond"], poly["rocksalt"]], energies=[-5.4, -3.3]))
    rng = np.random.default_rng(3)
    new = [_copies(poly["diamond"], rng, 1)[3], poly["beta-tin"], _copies(poly["rocksalt"], rng, 2)[1], poly["fcc"]]
    entries = d.describe(new)
    assert list(d.against(entries, store)) == [0, -1, 1, -1]
    calls = d.n_matcher_calls
    assert calls == 2
    # append the new ones (no fingerprint recomputed), then a rattled beta-tin is found
    for k in np.flatnonzero(d.against(entries, store) < 0):
        store.append(entries[k])
    bt = poly["beta-tin"].copy()
    bt.rattle(0.01, seed=5)
    assert list(d.against([bt, poly["bcc"]], store)) == [2, -1]
    # plain data round trip; a plain list of entries works as well
    back = StoredStructures.from_dict(store.to_dict())
    assert len(back) == 4 and isinstance(back.entries[0], Fingerprinted)
    assert list(d.against([bt], back)) == [2]
    assert list(d.against([bt], back.entries)) == [2]
    # fingerprints made with other settings are refused
    with pytest.raises(SetupError):
        Deduper(fingerprint="ov").against([bt], back)


def test_bad_options():
    with pytest.raises(SetupError):
        Deduper(fingerprint="soap")
    with pytest.raises(SetupError):
        Deduper(sim_threshold=-1)
    with pytest.raises(SetupError):
        Deduper(fingerprint_options={"r_max": 5.0})  # an OV option for BCM
    with pytest.raises(SetupError):
        Deduper().unique([bulk("Si")], energies=[1.0, 2.0])
    with pytest.raises(SetupError):
        Deduper().unique(["not a structure"])


@pytest.mark.parametrize("options", [{}, {"primitive_cell": False}, {"primitive_cell": False, "attempt_supercell": True}])
def test_matches_with_cached_reduced_cells_equals_pymatgens_fit(options):
    """Deduper.matches (each entry's reduced cell computed once, the size check first) answers
    as pymatgen's StructureMatcher.fit on the plain structures does, on every pair of copies
    (rattled, strained by 2-8 %, supercells, rotated) and polymorphs, matching and not."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    rng = np.random.default_rng(3)
    atoms = []
    for k, (name, a) in enumerate(_polymorphs().items()):
        if name in ("diamond", "rocksalt", "beta-tin"):
            atoms += _copies(a, rng, 10 * k)
            for strain in (0.02, 0.08):
                b = a.copy()
                b.set_cell(b.cell.array @ (np.eye(3) + strain * rng.uniform(-1, 1, (3, 3))), scale_atoms=True)
                atoms.append(b)
        else:
            atoms.append(a)
    d = Deduper(matcher_options=options)
    entries = d.describe(atoms)
    ref = StructureMatcher(**{"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0, **options})
    got, want = [], []
    for i in range(len(atoms)):
        for j in range(i + 1, len(atoms)):
            if entries[i].key != entries[j].key:
                continue
            got.append(d.matches(entries[i], entries[j]))
            want.append(bool(ref.fit(AseAtomsAdaptor.get_structure(atoms[i]), AseAtomsAdaptor.get_structure(atoms[j]))))
    assert got == want
    assert 20 < sum(want) < len(want) - 20  # both answers well represented


def relaxed_population():
    """48 relaxed structures (rattled copies of 8 polymorphs, supercells among them) whose
    enthalpies all lie within ``energy_tol`` of each other, so the matcher decides every pair;
    10 stored ones."""
    items, labels = _population(1)
    items = [a.copy() for a in items + items[:8]]
    for k, a in enumerate(items):
        a.rattle(0.005, seed=k)
    rng = np.random.default_rng(0)
    base = {name: rng.normal(-4.0, 0.002) for name in sorted(set(labels))}
    energies = [base[labels[k % len(labels)]] + rng.uniform(0, 0.004) for k in range(len(items))]
    return items[10:], energies[10:], items[:10], energies[:10]


def dedupe_answers(confirm_of=None):
    """``(duplicate_of, stored match, matcher calls)`` of :func:`relaxed_population`, the questions
    answered by ``confirm_of(deduper)`` (``None``: in-process)."""
    items, energies, stored, e_stored = relaxed_population()
    d = Deduper()
    confirm = confirm_of(d) if confirm_of is not None else None
    store = d.new_store()
    store.extend(d.describe(stored, e_stored))
    entries = d.describe(items, energies)
    reps, dup = d.unique(entries, confirm=confirm)
    match = d.against([entries[r] for r in reps], store, confirm=confirm)
    return {"duplicate_of": dup.tolist(), "match": match.tolist(), "calls": d.n_matcher_calls}


def test_matcher_questions_answered_elsewhere_give_the_same_duplicates():
    """The matcher's questions asked in bulk (speculative rounds, as for the workers) and
    answered through an executor's map, from reduced cells sent as arrays: the same
    representatives and stored matches as the in-process pass, which asks only what it needs."""
    from lamcsp.generators.dedupe_pairs import InProcess

    from lamcsp.matching import ExecutorConfirm
    from lamcsp.parallel import SerialExecutor

    want = dedupe_answers()
    assert 3 < sum(d < 0 for d in want["duplicate_of"]) < 30  # duplicates and polymorphs
    assert 0 < sum(m >= 0 for m in want["match"])

    class Speculative(InProcess):
        speculative = True

    spec = dedupe_answers(lambda d: Speculative(d.matches))
    mapped = dedupe_answers(lambda d: ExecutorConfirm(SerialExecutor(None), d, pairs_per_task=16))
    for got in (spec, mapped):
        assert got["duplicate_of"] == want["duplicate_of"] and got["match"] == want["match"]
    assert mapped["calls"] == spec["calls"] >= want["calls"]


def test_matcher_questions_on_two_ranks_give_the_same_duplicates(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import mpiexec

    tests = Path(__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMCSP_FAULT", "PMI_", "OMPI_"))}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
                "PYTHONPATH": os.pathsep.join([str(tests), env.get("PYTHONPATH", "")])})
    out = tmp_path / "dedupe.json"
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(tests / "mpi_dedupe.py"), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got, want = json.loads(out.read_text()), dedupe_answers()
    assert got["duplicate_of"] == want["duplicate_of"] and got["match"] == want["match"]
