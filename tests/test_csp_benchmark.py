"""The CSP success benchmark's smoke run (3 two-atom MP-20 targets, CHGNet, a small budget):
what CI runs of ``benchmarks/csp_success.py``. It checks that the known structures are found,
that the records say why a run failed, and that a rerun reads every finished run back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "csp_success.py"
FIELDS = {"target", "method", "seed", "success", "rank", "relaxations", "relaxations_to_match",
          "seconds_to_match", "energy_distance", "reason", "found", "seconds", "n_below_reference"}


def _run(out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(SCRIPT), "--subset", "smoke", "--budget", "48", "--seeds", "1",
           "--methods", "lamcsp,random", "--population", "12", "--out", str(out), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("csp")
    first = _run(out)
    return out, first, json.loads((out / "csp_success.json").read_text())


def test_smoke_run_finds_the_known_structures(smoke):
    out, first, result = smoke
    records = result["records"]
    assert len(records) == 6 and all(FIELDS <= set(r) for r in records)
    assert {r["target"] for r in records} == {"mp-23231", "mp-1183691", "mp-1228901"}
    for r in records:
        assert r["relaxations"] <= 48
        if r["success"]:
            # a hit is a structure among the 5 lowest that matches the relaxed reference
            assert 1 <= r["rank"] <= 5 and 1 <= r["relaxations_to_match"] <= r["relaxations"]
            assert r["reason"] is None and r["found"]
            assert abs(r["energy_distance"]) < 0.05
        else:
            assert r["reason"] in ("model_prefers_other", "found_not_top5", "not_reached")
            if r["reason"] == "model_prefers_other":
                assert r["energy_distance"] < 0 and r["n_below_reference"] >= 5
    hits = [r for r in records if r["method"] == "lamcsp" and r["success"]]
    assert len(hits) >= 2, [(r["target"], r["reason"], r["energy_distance"]) for r in records]
    summary = result["summary"]
    assert summary["lamcsp"]["runs"] == 3 and summary["lamcsp"]["hits"] == len(hits)
    assert (out / "success_vs_relaxations.png").stat().st_size > 1000
    assert "lamcsp" in first.stdout and "vs random" in first.stdout


def test_reference_relaxation_matches_its_input(smoke):
    out, _, _ = smoke
    for ident in ("mp-23231", "mp-1183691", "mp-1228901"):
        ref = json.loads((out / "refs" / f"{ident}.json").read_text())
        assert ref["converged"] and ref["matches_input"]


def test_rerun_reads_every_finished_run_back(smoke):
    out, _, result = smoke
    dbs = sorted(out.glob("runs/*/*/results.db"))
    assert len(dbs) == 6
    before = {p: p.stat().st_mtime_ns for p in dbs}
    again = _run(out)
    assert {p: p.stat().st_mtime_ns for p in dbs} == before  # nothing relaxed or stored again
    second = json.loads((out / "csp_success.json").read_text())
    key = lambda r: (r["target"], r["method"], r["seed"])  # noqa: E731
    assert sorted(map(key, second["records"])) == sorted(map(key, result["records"]))
    for a, b in zip(sorted(result["records"], key=key), sorted(second["records"], key=key)):
        assert a["success"] == b["success"] and a["relaxations_to_match"] == b["relaxations_to_match"]
    assert "[6/6]" in again.stdout  # progress counts runs (target x method x seed)


def _copy_records(out: Path, dest: Path) -> None:
    """The references and run records of benchmark folder ``out`` (no databases) into ``dest``."""
    import shutil

    shutil.copytree(out / "refs", dest / "refs")
    for rec in out.glob("runs/*/*/bench_record.json"):
        to = dest / rec.relative_to(out)
        to.parent.mkdir(parents=True)
        shutil.copy(rec, to)


def test_collect_summarises_the_records_it_finds_and_runs_nothing(smoke, tmp_path):
    out, _, result = smoke
    # a copy holding the records and references only, one run's record removed: what comes back
    # from another machine, or a benchmark cut short
    _copy_records(out, tmp_path)
    gone = tmp_path / "runs" / "mp-23231" / "random-s1" / "bench_record.json"
    gone.unlink()
    res = _run(tmp_path, "--collect")
    assert "1 of 6 runs have no record" in res.stdout
    assert not list(tmp_path.glob("runs/*/*/results.db"))  # nothing was searched
    collected = json.loads((tmp_path / "csp_success.json").read_text())
    key = lambda r: (r["target"], r["method"], r["seed"])  # noqa: E731
    want = {key(r): r for r in result["records"] if key(r) != ("mp-23231", "random", 1)}
    assert {key(r): r["relaxations_to_match"] for r in collected["records"]} == \
        {k: r["relaxations_to_match"] for k, r in want.items()}
    assert collected["summary"]["lamcsp"]["hits"] == result["summary"]["lamcsp"]["hits"]


def test_a_record_made_with_other_generators_is_not_reused(smoke, tmp_path):
    # records keep their campaign's generators: once lamcsp's default changes, its old runs
    # must not be summarised (or skipped) as runs of the new default
    out, _, result = smoke
    _copy_records(out, tmp_path)
    assert all(r["generators"] for r in result["records"])
    _run(tmp_path, "--collect")  # the records as made: accepted
    path = tmp_path / "runs" / "mp-1183691" / "lamcsp-s1" / "bench_record.json"
    rec = json.loads(path.read_text())
    old = [{"name": "random", "share": 1.0, "options": {}}]  # e.g. a default of another time
    path.write_text(json.dumps({**rec, "generators": old}))
    res = _run(tmp_path, "--collect", check=False)
    assert res.returncode != 0 and "other generators" in res.stderr and "mp-1183691" in res.stderr


def test_rescore_judges_finished_runs_again_from_their_databases(smoke):
    out, _, result = smoke
    dbs = sorted(out.glob("runs/*/*/results.db"))
    before = {p: p.stat().st_mtime_ns for p in dbs}
    rec_path = out / "runs" / "mp-1183691" / "lamcsp-s1" / "bench_record.json"
    rec = json.loads(rec_path.read_text())
    rec_path.write_text(json.dumps({**rec, "success": not rec["success"], "rank": 99}))  # a stale verdict
    _run(out, "--collect", "--rescore")
    assert {p: p.stat().st_mtime_ns for p in dbs} == before  # read, not searched again
    again = json.loads((out / "csp_success.json").read_text())
    key = lambda r: (r["target"], r["method"], r["seed"])  # noqa: E731
    old = {key(r): r for r in result["records"]}
    for r in again["records"]:
        assert r["rescored"]
        for f in ("success", "rank", "relaxations_to_match", "n_below_reference", "reason"):
            assert r[f] == old[key(r)][f], (key(r), f)


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("csp_success_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_top5_unique_by_the_benchmarks_own_matcher():
    # CSPBench's "unique": a run's relaxed structures grouped by the symmetrised matcher, whatever
    # the run's own duplicate flags said; copies (a strained rocksalt, a supercell) do not take
    # places in the top 5, and the structures under the reference are counted once each
    import numpy as np
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    bench = _bench_module()
    rs = bulk("NaCl", "rocksalt", 5.64)
    strained = rs.copy()
    cell = np.array(strained.cell)
    cell[2] *= 1.06
    strained.set_cell(cell, scale_atoms=True)
    wz = bulk("NaCl", "wurtzite", a=4.1, c=6.6)

    class Row:
        def __init__(self, i, atoms, h):
            self.id, self.atoms, self.enthalpy_per_atom = i, atoms, h

    rows = [Row(1, rs, -3.30), Row(2, strained, -3.298), Row(3, rs * (2, 1, 1), -3.29),
            Row(4, bulk("NaCl", "cesiumchloride", 3.4), -3.28), Row(5, wz, -3.20), Row(6, rs, -3.10)]
    sym = lambda r: bench.symmetrized(AseAtomsAdaptor.get_structure(r.atoms))  # noqa: E731
    reps, n_below = bench.distinct_lowest(rows, sym, -3.25)
    assert [r.id for r in reps] == [1, 4, 5, 6]  # the last rocksalt lies beyond the energy window
    assert n_below == 2
    reps, _ = bench.distinct_lowest(rows, sym, -3.25, k=2)
    assert [r.id for r in reps] == [1, 4]  # k found and past the reference: the walk stops


def test_stop_at_match_ratios_leave_out_targets_the_model_puts_something_under():
    # with --stop-at-match a "hit" on a target the model does not prefer only says which came
    # first; the per-run ratios and wins/losses against random leave such targets out
    bench = _bench_module()

    def rec(target, method, success, seconds, below=0):
        return {"target": target, "method": method, "seed": 1, "success": success, "rank": 1 if success else None,
                "relaxations": 10, "relaxations_to_match": 5 if success else None,
                "relaxations_through_generation": 5 if success else None,
                "seconds_to_match": seconds if success else None, "model_steps_to_match": None,
                "model_steps": 0, "reason": None if success else "model_prefers_other", "seconds": 9.0,
                "n_below_reference": below}

    records = [rec("a", "lamcsp", True, 2.0), rec("a", "random", True, 4.0),
               rec("b", "lamcsp", False, None, below=3), rec("b", "random", True, 1.0),
               rec("c", "lamcsp", True, 8.0), rec("c", "random", True, 2.0, below=1)]
    assert bench.model_below(records) == ["b", "c"]
    every = bench.summarize(records, ["lamcsp", "random"], 10)["lamcsp"]["per_run_seconds_to_match_vs_random"]
    assert every["runs"] == 2 and every["losses_at_budget"] == 1 and every["worst"] == 4.0
    kept = bench.summarize(records, ["lamcsp", "random"], 10, exclude=bench.model_below(records))
    r = kept["lamcsp"]["per_run_seconds_to_match_vs_random"]
    assert (r["runs"], r["median"], r["losses_at_budget"]) == (1, 0.5, 0)


def test_search_origins_accounts_for_every_relaxation_of_the_smoke_runs(smoke):
    # benchmarks/search_origins.py sorts each relaxation by generator and operator: the counts
    # add up to the runs' relaxations, and each first match is put down to one origin
    out, _, result = smoke
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import search_origins
    finally:
        sys.path.pop(0)
    assert search_origins.main([str(out), "--methods", "lamcsp,random"]) == 0
    got = json.loads((out / "search_origins.json").read_text())
    for method in ("lamcsp", "random"):
        recs = [r for r in result["records"] if r["method"] == method]
        origins = got[method]["origins"]
        assert got[method]["runs"] == len(recs)
        assert sum(o["relaxations"] for o in origins.values()) == sum(r["relaxations"] for r in recs)
        assert sum(o.get("first_match", 0) for o in origins.values()) == \
            sum(1 for r in recs if r["relaxations_to_match"])
    assert set(got["random"]["origins"]) == {"random"}
    assert {"random", "pso/new"} <= set(got["lamcsp"]["origins"])  # the default mix's two sources


def test_a_cascade_run_is_judged_on_its_rescore_rows(tmp_path):
    """``lamcsp_cascade``: the search, then the rescore stage; the record's verdict comes from the
    rescore rows against the target relaxed with the cascade model. With EMT as both models
    (AlAg, EMT's elements) the rescore re-relaxes minima in place, so the cascade's verdict,
    ranking and energy distance equal the search's own (kept under ``search``), and the search's
    lowest unique structures are among the rescored rows."""
    import ase.db

    cmd = [sys.executable, str(SCRIPT), "--subset", "ids:mp-1228901", "--model", "emt", "--budget", "24",
           "--seeds", "1", "--population", "12", "--methods", "lamcsp_cascade", "--cascade-model", "emt",
           "--cascade-top-k", "4", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stdout + res.stderr
    run = tmp_path / "runs" / "mp-1228901" / "lamcsp_cascade-s1"
    rec = json.loads((run / "bench_record.json").read_text())
    assert rec["search"]["success"] and rec["success"] and rec["rank"] == rec["search"]["rank"] == 1
    assert rec["energy_distance"] == pytest.approx(rec["search"]["energy_distance"], abs=1e-3)
    db = ase.db.connect(str(run / "results.db"))
    rescored = [r for r in db.select(role="verify") if r.get("stage") == "rescore"]
    assert rec["cascade_rows"] == len(rescored) >= 4
    lowest = sorted((r for r in db.select(role="search", unique=True)), key=lambda r: r.enthalpy_per_atom)
    assert {r.of for r in rescored} >= {r.id for r in lowest[:4]}
    assert (tmp_path / "refs_emt" / "mp-1228901.json").exists()  # the target relaxed by the cascade model
    summary = json.loads((tmp_path / "csp_success.json").read_text())["summary"]
    pairs = summary["cascade_pairs"]["lamcsp_cascade"]
    assert pairs["search"]["hits"] == pairs["cascade"]["hits"] == 1 and pairs["cascade_rows"] == len(rescored)
    assert 0 <= pairs["rescore_seconds"] < pairs["seconds"] == rec["seconds"]
    # judged again with a replayed pick of the search's lowest alone: one rescored row counts
    res = subprocess.run([*cmd[:-4], "--cascade-top-k", "1", "--replay-window", "0", "--rescore",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stdout + res.stderr
    replay = json.loads((run / "bench_record.json").read_text())["replay"]
    assert replay["cascade_rows"] == 1 and replay["success"] and replay["rank"] == 1
    assert "replay   top-5 hits 1/1" in res.stdout
    # a cascade needs the search's end
    res = subprocess.run([*cmd, "--stop-at-match"], capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and "--stop-at-match" in res.stderr
