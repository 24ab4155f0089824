"""``lamcsp status RUN``: a finished LJ campaign's generations, rows and best enthalpies, read
without writing; the run's lock file while a search runs; bad directories exit 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import ase.db
import pytest

from lamcsp.campaign import parse_campaign
from lamcsp.cli import main
from lamcsp.search import Search
from lamcsp.store import RunDir, hold_run, run_holder

CAMPAIGN = {
    "name": "ar-status",
    "seed": 3,
    "system": {"composition": "Ar", "formula_units": "2", "pressures": [0.0, 5.0]},
    "generators": [{"name": "random", "share": 1.0}],
    "population": 2,
    "generations": 2,
    "stop": {"patience": None},
    "model": {"backend": "lj", "device": "cpu", "options": {"epsilon": 0.0104, "sigma": 3.4}},
    "relax": {"fmax": 0.05, "max_steps": 100},
}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("status") / "run"
    seen: list = []

    def during(search: Search) -> bool:  # after a generation the budget does not end: the run is held
        seen.append(run_holder(search.paths))
        return False

    Search(parse_campaign(CAMPAIGN), run, progress=False).run(until=during, report=False)
    return run, seen


def test_status_of_a_finished_run(run_dir, capsys):
    run, _ = run_dir
    before = _snapshot(run)
    assert main(["status", str(run), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert _snapshot(run) == before  # nothing written, nothing added (no lock, no journal)
    db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
    assert st["generation"] == 2 and st["generations"] == 2 and st["done"]
    assert st["rows"]["search"] == db.count(role="search") == 2 * 2 * 2  # units x population x gens
    assert sum(st["rows"].values()) == db.count()
    assert st["holder"] is None and st["finetune"] is None
    assert len(st["best"]) == 2
    for b in st["best"]:
        rows = [r for r in db.select(role="search", pressure_gpa=b["pressure_gpa"])
                if not r.status.startswith("failed") and math.isfinite(r.enthalpy_per_atom)]
        low = min(rows, key=lambda r: r.enthalpy_per_atom)
        assert b["enthalpy_per_atom"] == low.enthalpy_per_atom and b["spacegroup"] == low.spacegroup
        assert b["composition"] == "Ar"

    assert main(["status", str(run)]) == 0
    text = capsys.readouterr().out
    assert "not running" in text and "generations completed: 2 of 2" in text and "search 8" in text
    assert _snapshot(run) == before


def test_a_running_search_holds_the_run_and_lets_go(run_dir):
    run, seen = run_dir
    import os

    assert seen and all(h["alive"] and h["pid"] == os.getpid() for h in seen)
    assert not RunDir(run).lock.exists()  # removed at the end


def test_a_dead_holder_is_not_running(tmp_path, capsys):
    (tmp_path / "checkpoint.json").write_text(json.dumps(
        {"format": "lamcsp-checkpoint", "version": 1, "state": {"generation": 1, "spent": 4}}))
    with hold_run(RunDir(tmp_path)):
        assert run_holder(RunDir(tmp_path))["alive"] is True
        lock = RunDir(tmp_path).lock.read_text()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    RunDir(tmp_path).lock.write_text(lock.replace(str(json.loads(lock)["pid"]), dead))  # as kill -9 leaves it
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not running" in out and f"pid {dead}" in out and "generations completed: 1" in out


def test_not_a_run_directory_exits_2(tmp_path, capsys):
    before = _snapshot(tmp_path)
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "not a run directory" in err and "Traceback" not in err
    assert main(["status", str(tmp_path / "missing")]) == 2
    assert _snapshot(tmp_path) == before and not (tmp_path / "missing").exists()


def test_damaged_database_exits_2(tmp_path, capsys):
    (tmp_path / "results.db").write_bytes(b"SQLite format 3\x00" + b"\x07" * 3000)
    before = _snapshot(tmp_path)
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "results.db") in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before


def test_a_second_search_on_a_held_run_is_refused(run_dir, tmp_path, capsys):
    """``--resume`` while another live search holds the run would store its generations twice."""
    import socket

    import yaml

    run, _ = run_dir
    camp = tmp_path / "c.yaml"
    camp.write_text(yaml.safe_dump(CAMPAIGN), encoding="utf-8")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        RunDir(run).lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(),
                                                "started": "2026-12-07T10:00:00+0000"}))
        before = _snapshot(run)
        assert main(["search", str(camp), "-o", str(run), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"pid {other.pid}" in err and "running search" in err
        assert _snapshot(run) == before
    finally:
        other.kill()
        other.wait()
        RunDir(run).lock.unlink()
