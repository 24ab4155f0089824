"""A real PostgreSQL server as the results database (``--db`` / ``LAMCSP_DB_URL``): a campaign
end to end (the same rows as on SQLite, then ``report``, ``export`` and ``status`` read them),
kill -9 and ``--resume``, two campaigns writing into one database at once, and the errors.

The server is Debian's ``postgresql``, started for this module (``tests/pg_server.py``); all
runs share one database, so every comparison with a SQLite run also checks that runs do not
see each other's rows.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pg_server import PASSWORD, Server, fake_results, find_binaries
from test_search import AR_CAMPAIGN, _lamcsp, _write

psycopg2 = pytest.importorskip("psycopg2", reason="the postgresql extra: pip install 'lamcsp[postgresql]'")
pytest.importorskip("ase_db_backends", reason="the postgresql extra: pip install 'lamcsp[postgresql]'")

from lamcsp.cli import main  # noqa: E402
from lamcsp.store import ResultStore, redact_url  # noqa: E402


@pytest.fixture(scope="module")
def pg():
    given = os.environ.get("LAMCSP_TEST_DB_URL")
    if given:
        yield Server(given)
        return
    bins = find_binaries()
    if bins is None:
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql; .ci/run installs it)")
    server = Server.start(bins)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared(pg, tmp_path_factory):
    """One database for every run of the module, and the SQLite reference run of the campaign."""
    tmp = tmp_path_factory.mktemp("pg")
    url = pg.new_database("lamcsp_runs")
    camp = _write(tmp / "ar.yaml", AR_CAMPAIGN)
    _lamcsp("search", str(camp), "-o", str(tmp / "ref"))
    return url, camp, tmp / "ref"


def _state(run: Path) -> tuple[dict, dict]:
    """This run's rows by key (row ids replaced by keys) and its checkpoint's units, read through
    the store wherever the rows are."""
    rows = ResultStore(run).rows()
    id2key = {r.id: r.key for r in rows}
    out = {}
    for r in rows:
        h = r.enthalpy_per_atom
        out[r.key] = (None if not math.isfinite(h) else round(h, 9), r.role, r.unique,
                      id2key.get(r.duplicate_of), r.spacegroup, r.status, r.generation, r.formula)
    units = json.loads((run / "checkpoint.json").read_text())["state"]["units"]
    return out, [[id2key[i] for i in u["stored_rows"]] for u in units]


@pytest.fixture(autouse=True)
def _password(monkeypatch):
    """This process reads the runs back with the password from libpq's PGPASSWORD."""
    monkeypatch.setenv("PGPASSWORD", PASSWORD)


def _env(url: str) -> dict:
    return {"LAMCSP_DB_URL": url}


def test_a_campaign_on_postgresql_stores_what_sqlite_stores_and_reports_from_it(shared, tmp_path, monkeypatch,
                                                                                   capsys):
    url, camp, ref = shared
    run = tmp_path / "run"
    _lamcsp("search", str(camp), "-o", str(run), env=_env(url))
    assert not (run / "results.db").exists()
    record = (run / "database.json").read_text()
    assert PASSWORD not in record and json.loads(record)["url"] == redact_url(url)
    assert _state(run) == _state(ref)  # same seed, same rows; nothing of the other runs in the database
    assert all(r.run == json.loads(record)["run"] for r in ResultStore(run).rows())

    # report, export and status find the database through RUN/database.json; the password comes
    # from libpq's PGPASSWORD here (LAMCSP_DB_URL unset); in this process, to save three starts
    monkeypatch.delenv("LAMCSP_DB_URL", raising=False)
    assert main(["report", str(run), "-o", str(tmp_path / "rep")]) == 0
    ours = json.loads((tmp_path / "rep" / "summary.json").read_text())["pressures"][0]["compositions"]["Ar"]
    theirs = json.loads((ref / "report" / "summary.json").read_text())["pressures"][0]["compositions"]["Ar"]
    assert [c["enthalpy_per_atom"] for c in ours] == pytest.approx([c["enthalpy_per_atom"] for c in theirs])
    assert main(["export", str(run), "--top", "2", "--format", "cif", "-o", str(tmp_path / "cif")]) == 0
    assert len(list((tmp_path / "cif").glob("*.cif"))) == 2
    capsys.readouterr()
    assert main(["status", str(run), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["rows"] == {"search": 4 * 8} and status["database"] == redact_url(url)
    # lamcsp verify writes its rows there too (an LJ oracle: one single point per unit)
    oracle = "{calculator: lj, options: {sigma: 3.405, epsilon: 0.0104, rc: 10.0}}"
    assert main(["verify", str(run), "--oracle", oracle, "--top-k", "1", "--window", "0",
                 "--mode", "single_point", "--quiet"]) == 0
    verified = ResultStore(run).rows(role="verify")
    units = {r.unit for r in ResultStore(run).rows(role="search")}
    assert len(verified) == len(units) and not (ref / "database.json").exists()
    assert ResultStore(ref).count(role="verify") == 0  # the SQLite run saw none of it

    # resuming with another database is refused, and changes nothing
    other = url.rsplit("/", 1)[0] + "/postgres"
    bad = _lamcsp("search", str(camp), "-o", str(run), "--resume", "--db", other, check=False)
    assert bad.returncode == 2 and "keeps its results in" in bad.stderr
    assert "visible to other users" in bad.stderr  # the password given on the command line
    assert PASSWORD not in bad.stderr
    # a SQLite run resumes from its results.db even where LAMCSP_DB_URL is set
    _lamcsp("search", str(camp), "-o", str(ref), "--resume", env=_env(url))
    assert not (ref / "database.json").exists()


def test_unreachable_or_refused_database_stops_before_the_run_exists(shared, tmp_path):
    url, camp, _ = shared
    wrong = url.replace(PASSWORD, "not-the-password")
    out = _lamcsp("search", str(camp), "-o", str(tmp_path / "run"), env=_env(wrong), check=False)
    assert out.returncode == 2 and "cannot open the results database" in out.stderr
    assert "not-the-password" not in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_kill_9_then_resume_on_postgresql_equals_an_uninterrupted_run(shared, tmp_path):
    """Killed inside a transaction of several rows (the other kill points are the same code as on
    SQLite: tests/test_search.py)."""
    url, camp, ref = shared
    fault = "store-write:20"
    args = ["search", str(camp), "-o", str(tmp_path / "run")]
    killed = _lamcsp(*args, env={**_env(url), "LAMCSP_FAULT": fault}, check=False)
    assert killed.returncode == -9, killed.stderr
    _lamcsp(*args, "--resume", env=_env(url))
    assert _state(tmp_path / "run") == _state(ref)


def test_two_campaigns_write_into_one_database_at_once_without_mixing_rows(shared, tmp_path):
    url, camp, ref = shared
    other = _write(tmp_path / "b.yaml", {**AR_CAMPAIGN, "name": "ar-b", "seed": 11, "population": 6})
    procs = [subprocess.Popen([sys.executable, "-m", "lamcsp", "search", str(c), "-o", str(tmp_path / n)],
                              env={**os.environ, "OMP_NUM_THREADS": "1", "LAMCSP_DB_URL": url},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c, n in ((camp, "a"), (other, "b"))]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert _state(tmp_path / "a") == _state(ref)
    b = ResultStore(tmp_path / "b").rows()
    assert len(b) == 4 * 6 and len({r.key for r in b}) == len(b)
    assert {r.run for r in b} == {json.loads((tmp_path / "b" / "database.json").read_text())["run"]}


_WRITER = """
import sys
sys.path.insert(0, sys.argv[4])
from pg_server import fake_results
from lamcsp.store import ResultStore
store = ResultStore(sys.argv[1], url=sys.argv[3], fresh=True)
for g in range(30):
    store.add_many(fake_results(sys.argv[2], g))
"""


def test_an_error_inside_a_transaction_rolls_every_row_back(pg, tmp_path):
    url = pg.new_database("lamcsp_rollback")
    store = ResultStore(tmp_path / "run", url=url, fresh=True)
    with pytest.raises(RuntimeError, match="inside"):
        with store.transaction():
            store.add_many(fake_results("Cu", 0))
            raise RuntimeError("inside")
    assert store.count() == 0
    store.add_many(fake_results("Cu", 1))
    assert store.count() == 5


def test_concurrent_writers_keep_every_rows_key_values_with_its_own_structure(pg, tmp_path):
    """ASE's PostgreSQL backend took a new row's id from the sequence's last value, which another
    session may have drawn: key values landed on the other writer's row, or the write failed on a
    foreign key. Two processes write 150 rows each at once; every row must keep its own."""
    url = pg.new_database("lamcsp_writers")
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / s), s, url, str(Path(__file__).parent)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in ("Cu", "Au")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for s in ("Cu", "Au"):
        rows = ResultStore(tmp_path / s).rows()
        assert len(rows) == 150 and len({r.key for r in rows}) == 150
        assert all(r.generator == s and set(r.symbols) == {s} for r in rows)
