"""Executors: the serial one, and MPI (mpich wheel, two ranks) for the campaign, a killed or raising
worker, resume, and dynamic load balance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ase.db
import numpy as np
import pytest
import yaml
from ase.build import bulk
from helpers import mpiexec
from lamcsp.relax.relaxer import Relaxer, RelaxResult

from lamcsp.errors import SetupError
from lamcsp.parallel import SerialExecutor, Task, cpu_threads, launcher_size, mpi_world
from lamcsp.potentials.pair import LennardJones

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# ArKr with Lennard-Jones: a two-unit campaign (two pressures), 3 generations of 8
CAMPAIGN = {
    "name": "arkr-lj",
    "seed": 7,
    "system": {"composition": "ArKr", "formula_units": "1-2", "pressures": [0.0, 5.0]},
    "population": 8,
    "generations": 3,
    "stop": {"patience": None},
    "model": {"backend": "lj", "device": "cpu",
              "options": {"epsilon": {"Ar-Ar": 0.0104, "Kr-Kr": 0.014, "Ar-Kr": 0.012},
                          "sigma": {"Ar-Ar": 3.4, "Kr-Kr": 3.6, "Ar-Kr": 3.5}}},
    "relax": {"fmax": 0.01, "max_steps": 300},
    "report": {"scan_points": 2, "scan_top": 1},
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMCSP_FAULT", "PMI_", "OMPI_"))}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
                "PYTHONPATH": os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])})
    env.update(extra)
    return env


def _search(campaign: Path, out: Path, ranks: int, *extra: str, env: dict | None = None):
    cmd = [sys.executable, "-m", "lamcsp", "search", str(campaign), "--output", str(out), "--quiet", *extra]
    if ranks > 1:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or _env(), timeout=600)


def _unique(run: Path) -> list[tuple[str, float, int]]:
    db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
    return sorted((r.key, round(r.enthalpy_per_atom, 7), r.spacegroup) for r in db.select(role="search")
                  if r.unique)


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("serial")
    camp = d / "c.yaml"
    camp.write_text(yaml.safe_dump(CAMPAIGN))
    out = _search(camp, d / "run", 1)
    assert out.returncode == 0, out.stderr
    return camp, d / "run"


# ------------------------------------------------------------------------------ plain parts


def test_relax_result_round_trips_through_plain_data():
    lj = LennardJones(epsilon=0.0104, sigma=3.4)
    res = Relaxer(lj, fmax=0.05, max_steps=50).relax([bulk("Ar", "fcc", 5.4) * (2, 1, 1)], 1.0)[0]
    back = RelaxResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.atoms == res.atoms and back.status == res.status and back.steps == res.steps
    assert back.enthalpy == res.enthalpy and back.pressure_gpa == 1.0
    np.testing.assert_array_equal(back.forces, res.forces)
    np.testing.assert_array_equal(back.stress, res.stress)


def test_serial_executor_maps_any_task_in_order():
    sys.path.insert(0, str(TESTS))
    try:
        ex = SerialExecutor(LennardJones(epsilon=0.0104, sigma=3.4))
        seen: list[int] = []
        out = ex.map(Task("mpi_tasks:Square", {}), [{"x": x} for x in range(5)], lambda i, r: seen.append(i))
    finally:
        sys.path.remove(str(TESTS))
    assert [o["y"] for o in out] == [0, 1, 4, 9, 16] and seen == [0, 1, 2, 3, 4]


def test_without_a_launcher_the_serial_executor_runs(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    assert launcher_size() == 1 and mpi_world() is None


def test_several_ranks_without_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    with pytest.raises(SetupError, match="mpi4py is not installed") as err:
        mpi_world()
    assert err.value.field == "mpi"


def test_cpu_threads_split_the_cores_between_the_ranks_of_a_node(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(3, 2) == 3
    if cores == (os.cpu_count() or cores):
        assert cpu_threads(None, 2) == max(1, cores // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert cpu_threads(None, 2) == 5


# ------------------------------------------------------------------------------ MPI


def test_two_rank_campaign_finds_what_the_serial_run_finds(serial_run, tmp_path):
    camp, serial = serial_run
    out = _search(camp, tmp_path / "mpi", 2)
    assert out.returncode == 0, out.stderr
    assert _unique(tmp_path / "mpi") == _unique(serial)
    assert len(_unique(serial)) >= 10
    # the same layout: database, checkpoint, campaign copy, report
    for name in ("results.db", "checkpoint.json", "report/report.html"):
        assert (tmp_path / "mpi" / name).exists(), name


@pytest.mark.parametrize("prescreen", [True, False], ids=["default-prescreen", "plain"])
def test_killed_worker_names_its_rank_and_structures_and_resume_finishes(serial_run, tmp_path, prescreen):
    # with the default generators rank 1 may die among the starts of the prescreen (single
    # points, labelled with the keys they would be stored under; how many it gets depends on the
    # coordinator's share), before anything is stored; without the prescreen it dies after some
    # relaxations were stored
    camp, serial = serial_run
    if not prescreen:
        plain = {**CAMPAIGN, "generators": [{"name": "random", "share": 0.5}, {"name": "pso", "share": 0.5}]}
        camp = tmp_path / "plain.yaml"
        camp.write_text(yaml.safe_dump(plain))
        serial = tmp_path / "serial"
        assert _search(camp, serial, 1).returncode == 0
    run = tmp_path / "mpi"
    killed = _search(camp, run, 2, env=_env(LAMCSP_FAULT="worker-relaxed:12", LAMCSP_FAULT_RANK="1"))
    assert killed.returncode == 1, killed.stderr
    msg = killed.stderr
    assert "relax worker of rank 1 died (killed by signal 9" in msg, msg
    assert "u0-g" in msg or "u1-g" in msg  # the keys of the structures it held
    assert "--resume" in msg and "Traceback" not in msg
    db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
    stored = {r.key for r in db.select(role="search")}
    assert len(stored) < 48 and (prescreen or len(stored) > 0)
    resumed = _search(camp, run, 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
    keys = [r.key for r in db.select(role="search")]
    assert len(keys) == len(set(keys)) == 48 and stored <= set(keys)  # nothing lost, nothing twice
    assert _unique(run) == _unique(serial)


def _map(tmp_path: Path, spec: dict, batch: int = 0) -> dict:
    out = tmp_path / "map.json"
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(TESTS / "mpi_map.py"), str(out),
                           json.dumps(spec), str(batch)], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def test_a_raising_worker_stops_the_map_naming_rank_and_item(tmp_path):
    res = _map(tmp_path, {"raise_at": 17}, batch=4)
    assert "raised ValueError: cannot square 17" in res["error"]
    assert "x=17" in res["held"] and "x=17" in res["error"]
    assert "Traceback" in res["detail"]


def test_a_slow_worker_does_not_stall_the_others(tmp_path):
    # rank 1 takes 0.25 s per item, rank 0 about 1 ms: with dynamic batches rank 0 takes most
    res = _map(tmp_path, {"slow_rank": 1, "delay": 0.25}, batch=2)
    assert [o["y"] for o in res["out"]] == [x * x for x in range(40)]
    assert sorted(res["seen"]) == list(range(40))
    by_rank = [sum(o["rank"] == r for o in res["out"]) for r in (0, 1)]
    assert by_rank[0] >= 30, by_rank  # a static split would give 20 each
    assert len({o["pid"] for o in res["out"] if o["rank"] == 0}) == 1  # one worker process, kept


def test_oracle_labels_run_on_every_rank_and_equal_the_serial_labels(tmp_path):
    """The fine-tune loop's labelling task through MPIExecutor.map: EMT labels of 8 cells on 2 ranks
    equal EMT computed here."""
    from ase.calculators.emt import EMT
    from lamcsp.relax.relaxer import atoms_from_dict

    out = tmp_path / "labels.json"
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(TESTS / "mpi_label.py"), str(out)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert len(res["labels"]) == 8 and {lab["rank"] for lab in res["labels"]} == {0, 1}
    for lab, d in zip(res["labels"], res["cells"]):
        a = atoms_from_dict(d)
        a.calc = EMT()
        assert lab["ok"] and lab["energy"] == pytest.approx(a.get_potential_energy(), abs=1e-10)
        assert np.allclose(lab["forces"], a.get_forces(), atol=1e-10)


def test_lamcsp_verify_on_two_ranks_verifies_what_the_serial_run_verifies(tmp_path):
    """`mpiexec -n 2 lamcsp verify RUN`: the oracle relaxations run on both ranks' workers, and the
    rows equal those of a serial verification of the same run."""
    camp = {"name": "cu", "seed": 3, "system": {"composition": "Cu", "formula_units": "1-3"}, "population": 6,
            "generations": 2, "stop": {"patience": None}, "model": {"backend": "emt"},
            "relax": {"fmax": 0.05, "max_steps": 200}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(camp))
    assert _search(tmp_path / "c.yaml", tmp_path / "a", 1).returncode == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    args = ["verify", "--oracle", "emt", "--top-k", "4", "--window", "0", "--quiet"]
    serial = subprocess.run([sys.executable, "-m", "lamcsp", args[0], str(tmp_path / "a"), *args[1:]],
                            capture_output=True, text=True, env=_env(), timeout=600)
    assert serial.returncode == 0, serial.stderr
    mpi = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "lamcsp", args[0], str(tmp_path / "b"),
                          *args[1:]], capture_output=True, text=True, env=_env(), timeout=600)
    assert mpi.returncode == 0, mpi.stderr

    def rows(run):
        db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
        return {r.key: (round(r.enthalpy_per_atom, 9), r.of, r.oracle_calls) for r in db.select(role="verify")}

    assert len(rows(tmp_path / "a")) == 4 and rows(tmp_path / "b") == rows(tmp_path / "a")
    db = ase.db.connect(str(tmp_path / "b" / "results.db"), use_lock_file=False)
    assert {r.oracle_rank for r in db.select(role="verify")} == {0, 1}
    assert mpi.stdout == serial.stdout.replace(str(tmp_path / "a"), str(tmp_path / "b"))


def test_energy_prescreen_on_two_ranks_relaxes_what_the_serial_run_relaxes(tmp_path):
    """The prescreen's start enthalpies (``oversample``) go through the MPI executor as a
    task of their own (max_steps 0): two ranks choose and relax the same candidates."""
    raw = {**CAMPAIGN, "generations": 2,
           "generators": [{"name": "random", "share": 1.0, "options": {"oversample": 2}}]}
    camp = tmp_path / "c.yaml"
    camp.write_text(yaml.safe_dump(raw))
    units = {}
    for ranks in (1, 2):
        out = _search(camp, tmp_path / f"r{ranks}", ranks)
        assert out.returncode == 0, out.stderr
        state = json.loads((tmp_path / f"r{ranks}" / "checkpoint.json").read_text())["state"]
        units[ranks] = [(u["relaxed"], u["prescreened"]) for u in state["units"]]
    assert _unique(tmp_path / "r2") == _unique(tmp_path / "r1")
    assert units[2] == units[1] and all(p >= 8 for _, p in units[1])


def test_both_executors_implement_the_whole_protocol():
    from lamcsp.parallel import Executor, MPIExecutor

    assert isinstance(SerialExecutor(None), Executor)
    for name in ("relax", "evaluate", "map", "set_model", "close"):
        assert callable(getattr(MPIExecutor, name))
    assert SerialExecutor(None).workers == 0  # its tasks run in the caller's process
    assert isinstance(MPIExecutor.workers, property)


def test_single_points_on_two_ranks_equal_the_serial_ones_for_any_model(tmp_path):
    """``evaluate`` through MPI with the campaign's model, with another model section (how the
    fine-tune loop's committee members are evaluated) and after ``set_model`` (its model
    switch) equals the serial executor's; and ``relax`` follows ``set_model`` too, also with a
    job behind its relaxations (``then``), whose results come back whole; a campaign
    set's per-campaign views (:class:`lamcsp.mpi.CampaignExecutor`) keep their own models."""
    from lamcsp.relax.relaxer import atoms_from_dict

    sys.path.insert(0, str(TESTS))
    try:
        import mpi_evaluate
    finally:
        sys.path.remove(str(TESTS))
    from lamcsp.campaign import parse_campaign

    out = tmp_path / "sp.json"
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(TESTS / "mpi_evaluate.py"), str(out)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["protocol"]
    cells = [atoms_from_dict(d) for d in res["cells"]]
    model = parse_campaign(mpi_evaluate.CAMPAIGN).model
    other = model.replace(options=mpi_evaluate.OTHER)
    ex = SerialExecutor(LennardJones(epsilon=0.0104, sigma=3.4))
    own = ex.evaluate(cells, res["pressures"])
    member = ex.evaluate(cells, res["pressures"], model=other)
    assert [p.enthalpy_per_atom for p in own] != pytest.approx([p.enthalpy_per_atom for p in member])
    for key, serial in (("own", own), ("member", member), ("after_set_model", member)):
        got = res[key]
        assert [d["enthalpy"] for d in got] == pytest.approx([p.enthalpy for p in serial], rel=1e-12), key
        for d, p in zip(got, serial):
            np.testing.assert_allclose(np.reshape(d["forces"], (-1, 3)), p.forces, atol=1e-12)
    assert res["relaxed"] == pytest.approx([p.enthalpy_per_atom for p in member], rel=1e-12)
    # a job behind the relaxations (relax's ``then``) changes none of them and runs whole
    assert res["relaxed_then"] == pytest.approx(res["relaxed"], rel=1e-12)
    assert [o["y"] for o in res["then"]] == [x * x for x in range(40)]
    ex.set_model(other)
    assert [p.enthalpy for p in ex.evaluate(cells, res["pressures"])] == pytest.approx(
        [p.enthalpy for p in member], rel=1e-12)
    # a campaign set's views of the one executor: each relaxes with its own model, interleaved,
    # and one view's model switch (its fine-tune) leaves the other's alone
    h_own, h_member = [p.enthalpy_per_atom for p in own], [p.enthalpy_per_atom for p in member]
    h_third = [p.enthalpy_per_atom for p in ex.evaluate(cells, res["pressures"],
                                                        model=model.replace(options=mpi_evaluate.THIRD))]
    assert res["views_protocol"] and h_third != pytest.approx(h_member)
    for got, want in zip(res["views"], (h_own, h_member, h_own)):
        assert got == pytest.approx(want, rel=1e-12)
    assert res["views_after"][0] == pytest.approx(h_third, rel=1e-12)
    assert res["views_after"][1] == pytest.approx(h_own, rel=1e-12)
