"""The model cascade (``rescore:``): a Cu search with a Lennard-Jones model, its best structures
re-relaxed with EMT as the rescore model, then checked by an EMT oracle. Both stages' rows are
stored, each stage picks from the one before it, the report's answer is the last stage's, and a
resumed run repeats nothing."""

from __future__ import annotations

import json
import math

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


# ------------------------------------------------------------------------- the default cascade


def test_the_default_cascade_rescores_a_pretrained_chgnet_search_only():
    """No ``rescore.model``: SevenNet-0 rescores a pretrained CHGNet search (the measured
    default), not a model of the user's own, not the fine-tune loop, not where null turns it off."""
    from lamcsp.campaign.schema import DEFAULT_RESCORE_MODEL

    base = {"name": "d", "system": {"composition": "Cu"}, "generations": 1}
    default = parse_campaign(base)
    assert default.rescore_is_default
    assert default.rescore_model.backend == DEFAULT_RESCORE_MODEL["backend"] == "sevennet"
    assert parse_campaign(default.to_dict()) == default  # the copy of a run reads back the same
    assert "the default cascade" in default.summary()
    off = parse_campaign({**base, "rescore": {"model": None}})
    assert off.rescore_model is None and "rescore" not in off.summary()
    own = parse_campaign({**base, "model": {"backend": "lj", "options": {"epsilon": 0.4, "sigma": 2.3}}})
    assert own.rescore_model is None
    named = parse_campaign({**base, "rescore": {"model": {"backend": "emt"}}})
    assert not named.rescore_is_default and named.rescore_model.backend == "emt"
    looped = parse_campaign({**base, "finetune": {"enabled": True, "oracle": "emt"}})
    assert looped.rescore_model is None


def test_the_default_cascade_steps_aside_where_its_model_cannot_go(tmp_path):
    """SevenNet-0 has no polonium: a default campaign on Po searches and reports without the
    rescore stage, and says why; a rescore model the campaign names stops it instead."""
    import io

    from lamcsp.errors import SetupError
    from lamcsp.potentials.registry import load_model

    raw = {"name": "po", "seed": 1, "system": {"composition": "Po", "formula_units": "1-2"},
           "generators": [{"name": "random", "share": 1.0}], "population": 3, "generations": 1,
           "stop": {"patience": None}, "relax": {"fmax": 0.05, "max_steps": 60}}
    campaign = parse_campaign(raw)
    assert campaign.rescore_is_default
    lj = load_model(parse_campaign({**raw, "model": {"backend": "lj", "device": "cpu",
                                                      "options": {"epsilon": 0.2, "sigma": 3.0}}}).model)
    out = io.StringIO()
    Search(campaign, tmp_path / "run", potential=lj, progress=out).run()
    assert "no rescore stage" in out.getvalue() and "Po" in out.getvalue()
    store = ResultStore(tmp_path / "run")
    assert store.rows(role="search") and not store.rows(role="verify")
    named = parse_campaign({**raw, "rescore": {"model": {"backend": "sevennet", "name": "7net-0"}}})
    with pytest.raises(SetupError, match="rescore.model"):
        Search(named, tmp_path / "named", potential=lj, progress=False).run()


def test_resume_compares_the_rescore_stage_not_the_settings_of_an_absent_one(tmp_path):
    """A run without a rescore stage resumes whatever its (unused) rescore settings say, and
    refuses a campaign that adds a rescore model: that would change the run's answer."""
    from lamcsp.errors import SetupError

    raw = {**CAMPAIGN, "generations": 1, "population": 3, "rescore": {"model": None}}
    raw.pop("verify")
    run = tmp_path / "run"
    Search(parse_campaign(raw), run, progress=False).run()
    rows = len(ResultStore(run).rows())
    settings = parse_campaign({**raw, "rescore": {"model": None, "top_k": 3, "window": 0.0}})
    Search(settings, run, resume=True, progress=False).run()
    assert len(ResultStore(run).rows()) == rows
    with pytest.raises(SetupError, match="rescore"):
        Search(parse_campaign({**raw, "rescore": {"model": {"backend": "emt"}}}), run, resume=True,
               progress=False)


def test_lamcsp_verify_on_a_cascade_run_picks_from_the_rescore_ranking(cascade, tmp_path):
    """``lamcsp verify RUN --top-k 2`` on a finished cascade run: the oracle checks the rescore
    model's two lowest of every unit (its own enthalpies), not the search model's. In a copy of
    the run the oracle's rows are dropped and the rescore model is made to put the search
    model's lowest of every unit last, so the two rankings' top 2 differ."""
    import shutil

    import ase.db

    from lamcsp.verify import verify_run

    run = tmp_path / "copy"
    shutil.copytree(cascade[0], run)
    db = ase.db.connect(str(run / "results.db"))
    db.delete([r.id for r in db.select(role="verify") if r.get("stage") != "rescore"])
    lowest = {}
    for r in db.select(role="search", unique=True):
        if not r.status.startswith("failed") and r.enthalpy_per_atom < lowest.get(r.unit, (math.inf,))[0]:
            lowest[r.unit] = (r.enthalpy_per_atom, r.id)
    for r in db.select(role="verify", stage="rescore"):
        if int(r.of) == lowest[r.unit][1]:
            db.update(r.id, enthalpy_per_atom=100.0)
    verify_run(run, oracle="emt", top_k=2, window=0.0)
    store = ResultStore(run)
    per_unit: dict[int, list] = {}
    for r in store.rows(role="verify", stage="rescore"):
        per_unit.setdefault(int(r.unit), []).append(r)
    want = {int(r.of) for rs in per_unit.values()
            for r in sorted(rs, key=lambda r: (r.enthalpy_per_atom, int(r.of)))[:2]}
    checked = {int(r.of) for r in store.rows(role="verify") if r.get("stage") != "rescore"}
    assert checked == want and not {i for _, i in lowest.values()} & checked
