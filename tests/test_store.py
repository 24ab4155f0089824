"""The store: ASE database rows, idempotent keys, crash safety under kill -9, checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import ase.db
import numpy as np
import pytest
from ase.build import bulk
from lamcsp.relax.relaxer import RelaxResult

from lamcsp.errors import SetupError
from lamcsp.store import (
    ResultStore,
    read_checkpoint,
    rng_from_state,
    rng_state,
    write_checkpoint,
)

KEY_VALUES = {
    "key", "pressure_gpa", "enthalpy", "enthalpy_per_atom", "spacegroup", "generation",
    "generator", "converged", "status", "steps", "final_fmax", "unique", "duplicate_of", "model_id",
}

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def make_result(energy: float = -1.5, pressure: float = 10.0) -> RelaxResult:
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    n = len(atoms)
    return RelaxResult(
        atoms=atoms, energy=energy, enthalpy=energy + 0.2, pressure_gpa=pressure,
        converged=True, steps=42, status="converged", fmax=0.01,
        forces=np.full((n, 3), 0.001), stress=np.diag([0.01, 0.01, 0.01]),
    )


def add(store: ResultStore, key: str, **kw) -> int:
    args = dict(generation=3, generator="random", model_id="lj-ar", spacegroup=225,
                unique=True, duplicate_of=None)
    args.update(kw)
    return store.add(make_result(), key=key, **args)


def test_rows_have_all_key_values(tmp_path):
    store = ResultStore(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ASE warnings about key names
        rid = add(store, "g3-c0", extra={"swarm_particle": np.int64(4)})
    rid2 = add(store, "g3-c1", unique=False, duplicate_of=rid)
    assert store.count() == 2
    assert store.keys() == {"g3-c0", "g3-c1"}

    db = ase.db.connect(tmp_path / "results.db")
    row = db.get(id=rid)
    assert KEY_VALUES <= set(row.key_value_pairs)
    assert row.formula == "Ar4"
    assert row.energy == pytest.approx(-1.5)
    assert row.enthalpy_per_atom == pytest.approx((-1.5 + 0.2) / 4)
    assert row.pressure_gpa == 10.0 and row.spacegroup == 225 and row.generation == 3
    assert row.generator == "random" and row.model_id == "lj-ar" and row.key == "g3-c0"
    assert row.converged is True and row.unique is True and row.duplicate_of == 0
    assert row.status == "converged" and row.steps == 42 and row.swarm_particle == 4
    np.testing.assert_allclose(row.forces, 0.001)
    np.testing.assert_allclose(row.stress[:3], 0.01)
    assert np.allclose(row.toatoms().cell, bulk("Ar", "fcc", a=5.26, cubic=True).cell)
    dup = db.get(id=rid2)
    assert dup.unique is False and dup.duplicate_of == rid
    assert [r.id for r in store.rows(unique=True)] == [rid]
    assert store.count(formula="Ar4", generation=3) == 2

    rid3 = add(store, "g4-c0")
    store.mark_duplicate(rid3, rid)
    row3 = db.get(id=rid3)
    assert row3.unique is False and row3.duplicate_of == rid and row3.key == "g4-c0"


def test_ase_db_command_line_lists_rows(tmp_path):
    store = ResultStore(tmp_path)
    for i in range(3):
        add(store, f"g0-c{i}")
    out = subprocess.run(
        [sys.executable, "-m", "ase", "db", str(tmp_path / "results.db"), "-c", "id,formula,key,generation"],
        capture_output=True, text=True, env=ENV, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Ar4" in out.stdout
    for i in range(3):
        assert f"g0-c{i}" in out.stdout
    assert "Rows: 3" in out.stdout


def test_same_key_is_stored_once(tmp_path):
    store = ResultStore(tmp_path)
    a = add(store, "g1-c7")
    b = add(store, "g1-c7", generation=99)
    assert a == b
    assert store.count() == 1
    assert ResultStore(tmp_path).row_id("g1-c7") == a  # reopened store sees it
    assert ResultStore(tmp_path).rows()[0].generation == 3


def test_rows_equal_what_ase_writes_from_a_single_point_calculator(tmp_path):
    """The store builds its rows directly (no calculator state check): every column equals the
    row ASE writes from the same atoms with a single-point calculator."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    r = make_result()
    r.atoms.rattle(0.05, seed=3)
    r.atoms.set_tags([1, 0, 2, 0])
    ours = ResultStore(tmp_path / "a")
    ours.add(r, key="g0-c0", generation=0, generator="random", model_id="m", spacegroup=1,
             unique=True, duplicate_of=None)
    ref = ase.db.connect(str(tmp_path / "b.db"))
    atoms = r.atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=r.energy, forces=r.forces,
                                       stress=full_3x3_to_voigt_6_stress(r.stress))
    ref.write(atoms)
    a, b = ours.rows()[0], ref.get(id=1)
    for name in ("numbers", "positions", "cell", "pbc", "tags", "energy", "forces", "stress", "calculator",
                 "calculator_parameters", "natoms", "formula", "volume", "fmax", "smax"):
        assert np.array_equal(np.asarray(a.get(name)), np.asarray(b.get(name))), name
    back = a.toatoms()
    assert back.calc.name == b.toatoms().calc.name
    assert back.get_potential_energy() == r.energy
    assert np.array_equal(back.get_forces(), r.forces)


def test_add_many_is_one_transaction_and_skips_stored_keys(tmp_path):
    store = ResultStore(tmp_path)
    first = add(store, "g0-c1")
    args = dict(generation=0, generator="random", model_id="m", spacegroup=225, unique=False,
                duplicate_of=None)
    ids = store.add_many([dict(result=make_result(-2.0), key="g0-c0", **args),
                          dict(result=make_result(-3.0), key="g0-c1", **args),  # stored already
                          dict(result=make_result(-4.0), key="g0-c2", **args)])
    assert ids[1] == first and len(set(ids)) == 3 and store.count() == 3
    assert store.rows(key="g0-c1")[0].energy == -1.5  # the stored row, unchanged
    bad = [dict(result=make_result(), key="g1-c0", **args),
           dict(result=make_result(), key="g1-c1", **args, extra={"energy": 1.0})]  # a reserved name
    with pytest.raises(SetupError):
        store.add_many(bad)
    assert store.count() == 3 and store.row_id("g1-c0") is None  # all or nothing


def test_key_lookups_and_updates_use_indexes(tmp_path):
    """ASE indexes key names only: lamcsp's indexes make a key lookup and a row update use an
    index (not a scan of every stored row), and ``ase db`` still reads the file."""
    import sqlite3

    store = ResultStore(tmp_path)
    ids = [store.add(make_result(-1.0 - i), key=f"g0-c{i}", generation=0, generator="random",
                     model_id="m", spacegroup=225, unique=False, duplicate_of=None) for i in range(5)]
    store.update(ids[2], unique=True)
    con = sqlite3.connect(str(tmp_path / "results.db"))
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {name for name, _ in ResultStore.INDEXES} <= names
    plan = " ".join(str(r) for r in con.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM text_key_values WHERE key='key' AND value='g0-c3'"))
    assert "lamcsp_text_key_value" in plan, plan
    plan = " ".join(str(r) for r in con.execute("EXPLAIN QUERY PLAN DELETE FROM number_key_values WHERE id=3"))
    assert "lamcsp_number_id" in plan, plan
    assert store.row_id("g0-c3") == ids[3]
    assert [r.id for r in ase.db.connect(str(tmp_path / "results.db")).select(unique=True)] == [ids[2]]


@pytest.mark.parametrize("bad", ["", "12", "1.5", "True", 7])
def test_numeric_keys_are_rejected(tmp_path, bad):
    with pytest.raises(SetupError, match="key"):
        add(ResultStore(tmp_path), bad)


def test_stale_ase_lock_file_does_not_block_writes(tmp_path):
    # ASE's lock file, left behind when a writer holding it is killed with -9
    (tmp_path / "results.db.lock").write_text("")
    add(ResultStore(tmp_path), "g0-c0")
    assert ResultStore(tmp_path).count() == 1


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from ase.build import bulk
    from lamcsp.relax.relaxer import RelaxResult
    from lamcsp.store import ResultStore

    store = ResultStore(sys.argv[1])
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    print("ready", flush=True)
    for i in range(1000):
        r = RelaxResult(atoms=atoms, energy=-1.0 - i, enthalpy=-0.9 - i, pressure_gpa=5.0,
                        converged=bool(i % 2), steps=i, status="converged", fmax=0.01,
                        forces=np.zeros((4, 3)), stress=np.zeros((3, 3)))
        store.add(r, key=f"k{i}", generation=i // 10, generator="random", model_id="m",
                  spacegroup=225, unique=True, duplicate_of=None)
    print("done", flush=True)
""")


def run_and_kill(script: str, args: list[str], after: float) -> bool:
    """Start ``script``, wait for its "ready" line, SIGKILL it ``after`` s later.

    Returns True when the child was killed before it finished.
    """
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            text=True, env=ENV)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(after)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    return killed


def check_complete(path: Path) -> list[str]:
    db = ase.db.connect(path)
    keys = []
    for row in db.select():
        assert KEY_VALUES <= set(row.key_value_pairs), row.key_value_pairs
        assert row.natoms == 4 and row.forces.shape == (4, 3) and row.energy is not None
        assert row.steps == int(row.key[1:]) and row.energy == -1.0 - row.steps
        keys.append(row.key)
    assert len(keys) == len(set(keys))
    return keys


def test_kill_9_during_writes_loses_nothing_and_resume_stores_none_twice(tmp_path):
    killed = run_and_kill(WRITER, [str(tmp_path)], after=0.5)
    path = tmp_path / "results.db"
    keys = check_complete(path)
    if killed:
        assert len(keys) < 1000
    # (a list: a half-consumed select() would keep a read lock open and block the writer)
    stored_before = {r.key: r.id for r in list(ase.db.connect(path).select())}
    assert set(stored_before) == set(keys)

    # resume: the same writer skips what is stored and completes the rest
    out = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)], capture_output=True,
                         text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    keys = check_complete(path)
    assert len(keys) == 1000 and set(keys) == {f"k{i}" for i in range(1000)}
    store = ResultStore(tmp_path)
    for k, rid in stored_before.items():  # rows stored before the kill are kept as they were
        assert store.row_id(k) == rid


CHECKPOINTER = textwrap.dedent("""
    import sys
    import numpy as np
    from lamcsp.store import write_checkpoint

    path = sys.argv[1]
    rng = np.random.default_rng(0)
    print("ready", flush=True)
    i = 0
    while True:
        swarm = rng.random((200, 3))
        write_checkpoint(path, {"generation": np.int64(i), "swarm": swarm,
                                "checksum": float(swarm.sum()), "pad": "x" * (i % 5000)})
        i += 1
""")


def check_checkpoint(path: Path) -> int:
    state = read_checkpoint(path)
    assert state is not None
    swarm = np.asarray(state["swarm"])
    assert swarm.shape == (200, 3)
    assert swarm.sum() == pytest.approx(state["checksum"], rel=1e-12)
    assert state["pad"] == "x" * (state["generation"] % 5000)
    return state["generation"]


def test_checkpoint_survives_kill_9(tmp_path):
    path = tmp_path / "run" / "checkpoint.json"
    assert read_checkpoint(path) is None
    for after in (0.3, 0.45, 0.6):
        run_and_kill(CHECKPOINTER, [str(path)], after=after)
        assert check_checkpoint(path) >= 0


def test_checkpoint_round_trip_and_errors(tmp_path):
    path = tmp_path / "ckpt.json"
    state = {"generation": np.int32(3), "best": np.arange(4.0), "flags": (np.bool_(True), None),
             "counters": {"relaxed": np.int64(12)}, "big": 2**100}
    write_checkpoint(path, state)
    back = read_checkpoint(path)
    assert back == {"generation": 3, "best": [0.0, 1.0, 2.0, 3.0], "flags": [True, None],
                    "counters": {"relaxed": 12}, "big": 2**100}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.json"]  # no temp file left

    with pytest.raises(TypeError):
        write_checkpoint(path, {"x": object()})
    assert read_checkpoint(path) == back  # a failed write leaves the old checkpoint

    path.write_text('{"format": "lamcsp-checkpoint", "version": 1, "sta')
    with pytest.raises(SetupError, match="ckpt.json"):
        read_checkpoint(path)
    path.write_text('{"format": "lamcsp-checkpoint", "version": 999, "state": {}}')
    with pytest.raises(SetupError, match="version"):
        read_checkpoint(path)


@pytest.mark.parametrize("bit_generator", ["PCG64", "Philox", "SFC64", "MT19937"])
def test_rng_state_round_trip(tmp_path, bit_generator):
    rng = np.random.Generator(getattr(np.random, bit_generator)(1234))
    rng.random(7)
    write_checkpoint(tmp_path / "c.json", {"rng": rng_state(rng)})
    restored = rng_from_state(read_checkpoint(tmp_path / "c.json")["rng"])
    np.testing.assert_array_equal(restored.random(10), rng.random(10))
    np.testing.assert_array_equal(restored.integers(0, 100, 5), rng.integers(0, 100, 5))
    with pytest.raises(SetupError, match="bit generator"):
        rng_from_state({"bit_generator": "Nope"})


def test_generation_journal_keeps_what_arrived_through_a_kill_and_only_its_generation(tmp_path):
    """The journal of the generation in flight (lamcsp.inflight): every result added is read
    back by a new journal (a resumed process), also without a sync; a line cut off by a kill
    and another generation's lines are left out; clear() removes it."""
    from lamcsp.inflight import GenerationJournal

    path = tmp_path / "generation.journal"
    j = GenerationJournal(path, 3, rows=100, seconds=3600.0)  # no sync while it runs
    for i in range(4):
        r = make_result(-1.0 - i)
        j.add(f"u0-g3-c{i}", {"result": r.to_dict(), "item": {"order": i}})
    # no close: a killed process leaves what it flushed
    back = GenerationJournal(path, 3).read()
    assert sorted(back) == [f"u0-g3-c{i}" for i in range(4)]
    assert [back[f"u0-g3-c{i}"]["result"]["enthalpy"] for i in range(4)] == [
        make_result(-1.0 - i).to_dict()["enthalpy"] for i in range(4)]
    with path.open("ab") as fh:  # a kill inside a write, then a stale line of generation 2
        fh.write(b'{"generation": 3, "key": "u0-g3-c9", "rec')
        fh.write(b'\n{"generation": 2, "key": "u0-g2-c0", "record": {}}\n')
    assert sorted(GenerationJournal(path, 3).read()) == [f"u0-g3-c{i}" for i in range(4)]
    assert sorted(GenerationJournal(path, 2).read()) == ["u0-g2-c0"]
    j.clear()
    assert not path.exists() and GenerationJournal(path, 3).read() == {}


def test_write_rows_names_each_duplicates_representative_by_its_new_id(tmp_path):
    """stages.write_rows writes a generation's rows once each, with their flags: a duplicate
    names its representative's row id, also through a chain of placeholders (a representative
    that a lower copy of the same generation replaced), and the units' placeholders become ids."""
    from types import SimpleNamespace

    from lamcsp.stages import Relaxed, pending, write_rows
    from lamcsp.store import row_item

    store = ResultStore(tmp_path)
    results = [make_result(-1.0 - 0.1 * i) for i in range(4)]
    items = {i: row_item(r, f"u0-g0-c{i}", role="search", generation=0, generator="random", unit=0,
                         model_id="m", candidate=i) for i, r in enumerate(results)}
    relaxed = Relaxed(results, [pending(i) for i in range(4)], items)
    flags = lambda dup: {"unique": dup == 0, "duplicate_of": dup, "deduped": True}  # noqa: E731
    # 3 is the representative; 0 was replaced by it; 1 points at 0, 2 at 1: three rounds
    updates = {pending(3): flags(0), pending(0): flags(pending(3)), pending(1): flags(pending(0)),
               pending(2): flags(pending(1))}
    unit = SimpleNamespace(stored_rows=[pending(3)])
    ids = write_rows(store, relaxed, updates, [unit])
    rows = {r.key: r for r in store.rows()}
    assert len(rows) == 4 and relaxed.rows == [ids[pending(i)] for i in range(4)]
    key_of = {r.id: k for k, r in rows.items()}
    assert [key_of.get(rows[f"u0-g0-c{i}"].duplicate_of) for i in range(4)] == [
        "u0-g0-c3", "u0-g0-c0", "u0-g0-c1", None]
    assert [rows[f"u0-g0-c{i}"].unique for i in range(4)] == [False, False, False, True]
    assert all(r.deduped for r in rows.values()) and unit.stored_rows == [rows["u0-g0-c3"].id]
