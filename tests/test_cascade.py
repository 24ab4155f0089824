"""The model cascade (``rescore:``): a Cu search with a Lennard-Jones model, its best structures
re-relaxed with EMT as the rescore model, then checked by an EMT oracle. Both stages' rows are
stored, each stage picks from the one before it, the report's answer is the last stage's, and a
resumed run repeats nothing."""

from __future__ import annotations

import json

import pytest
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from lamcsp.campaign import parse_campaign
from lamcsp.rescore import rescore_id
from lamcsp.search import Search
from lamcsp.store import ResultStore

CAMPAIGN = {
    "name": "cu-cascade",
    "seed": 5,
    "system": {"composition": "Cu", "formula_units": "1-2", "pressures": [0.0]},
    "generators": [{"name": "random", "share": 1.0}],
    "population": 6,
    "generations": 2,
    "stop": {"patience": None},
    # Lennard-Jones copper (Halicioglu and Pound): the fast search model
    "model": {"backend": "lj", "device": "cpu", "options": {"epsilon": 0.409, "sigma": 2.338}},
    "relax": {"fmax": 0.02, "max_steps": 300},
    "rescore": {"model": {"backend": "emt", "device": "cpu"}, "top_k": 3, "window": 0.0},
    "verify": {"enabled": True, "oracle": {"calculator": "emt"}, "top_k": 1, "window": 0.0, "fmax": 0.02},
}


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    run = tmp_path_factory.mktemp("cascade") / "run"
    search = Search(parse_campaign(CAMPAIGN), run, progress=False)
    search.run()
    return run, search


def test_the_rescore_model_re_relaxes_the_search_models_best(cascade):
    run, search = cascade
    store = ResultStore(run)
    oid = rescore_id(search.verification.rescore_potential().model_id)
    rescored = store.rows(role="verify", stage="rescore")
    assert rescored and {r.oracle for r in rescored} == {oid}
    by_unit: dict[int, list] = {}
    for r in store.rows(role="search", unique=True):
        if not r.status.startswith("failed"):
            by_unit.setdefault(int(r.unit), []).append(r)
    expect = {r.id for rows in by_unit.values()
              for r in sorted(rows, key=lambda r: (r.enthalpy_per_atom, r.id))[:3]}
    assert {int(r.of) for r in rescored} == expect  # the search model's top 3 of every unit
    # a rescore row is an EMT relaxation of the search row's structure (ASE FIRE + FrechetCellFilter)
    row = min(rescored, key=lambda r: r.enthalpy_per_atom)
    atoms = store.get(int(row.of)).toatoms()
    atoms.calc = EMT()
    FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.005, steps=2000)
    assert row.enthalpy_per_atom == pytest.approx(atoms.get_potential_energy() / len(atoms), abs=2e-3)
    assert row.model_h == pytest.approx(store.get(int(row.of)).enthalpy_per_atom)


def test_the_oracle_picks_from_the_rescore_ranking_and_the_answer_is_the_last_stages(cascade):
    run, search = cascade
    store = ResultStore(run)
    rescored = store.rows(role="verify", stage="rescore")
    verified = [r for r in store.rows(role="verify") if r.get("stage") != "rescore"]
    per_unit: dict[int, list] = {}
    for r in rescored:
        per_unit.setdefault(int(r.unit), []).append(r)
    # the oracle's top_k 1 per unit: the rescore model's lowest, not the search model's
    want = {min(rs, key=lambda r: (r.enthalpy_per_atom, int(r.of))).of for rs in per_unit.values()}
    assert {r.of for r in verified} == want
    summary = json.loads((run / "report" / "summary.json").read_text())
    cascade_doc = summary["cascade"]
    assert [s["stage"] for s in cascade_doc["stages"]] == ["search", "rescore", "oracle"]
    answers = cascade_doc["answers"]["0"]
    assert answers["Cu"]["stage"] == "oracle"
    lowest = min(verified, key=lambda r: r.enthalpy_per_atom)
    assert answers["Cu"]["of"] == int(lowest.of)
    html = (run / "report" / "report.html").read_text()
    assert "Model cascade" in html and "rescore model" in html


def test_a_resumed_cascade_repeats_nothing(cascade):
    run, _ = cascade
    before = sorted((r.key, round(r.enthalpy_per_atom, 9)) for r in ResultStore(run).rows())
    Search(parse_campaign(CAMPAIGN), run, resume=True, progress=False).run()
    after = sorted((r.key, round(r.enthalpy_per_atom, 9)) for r in ResultStore(run).rows())
    assert after == before and len(before) > 0
