"""The campaign loop: units, budgets, an end-to-end search with an analytic potential, kill -9
and --resume, and the quickstart with CHGNet."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import ase.db
import numpy as np
import pytest
import yaml
from helpers import EPS_AR, SIG_AR
from pymatgen.core import Composition

from lamcsp.campaign import parse_campaign
from lamcsp.errors import SetupError
from lamcsp.search import Search, generator_counts, search_units, variable_compositions

ROOT = Path(__file__).resolve().parents[1]

AR_CAMPAIGN = {
    "name": "ar-lj",
    "seed": 7,
    "system": {"composition": "Ar", "formula_units": "1-4", "pressures": [0.0]},
    "generators": [{"name": "random", "share": 0.5}, {"name": "pso", "share": 0.5}],
    "population": 8,
    "generations": 4,
    "stop": {"patience": None},
    "model": {"backend": "lj", "device": "cpu", "options": {"epsilon": EPS_AR, "sigma": SIG_AR}},
    "relax": {"fmax": 0.01, "max_steps": 300},
}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _lamcsp(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    out = subprocess.run([sys.executable, "-m", "lamcsp", *args], capture_output=True, text=True, env=full)
    if check and out.returncode != 0:
        raise AssertionError(f"lamcsp {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def _state(run: Path) -> tuple[dict, dict]:
    """Rows by key (row ids replaced by keys) and the checkpoint, for comparing two runs."""
    db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
    rows = list(db.select())
    id2key = {r.id: r.key for r in rows}
    out = {}
    for r in rows:
        h = r.enthalpy_per_atom
        out[r.key] = (None if not math.isfinite(h) else round(h, 9), r.role, r.unique,
                      id2key.get(r.duplicate_of), r.spacegroup, r.status, r.generation, r.formula,
                      tuple(np.round(r.toatoms().cell.lengths(), 6)))
    ckpt = json.loads((run / "checkpoint.json").read_text())["state"]
    for u in ckpt["units"]:
        u["stored_rows"] = [id2key[i] for i in u["stored_rows"]]
    return out, ckpt


# ----------------------------------------------------------------------------------- units


def test_variable_compositions_cover_the_ranges_with_end_members():
    comps = variable_compositions({"Mg": (1, 2), "O": (1, 2)}, max_atoms=4)
    found = {tuple(sorted(c.items())): fus for c, fus in comps}
    # cells with 1-2 Mg and 1-2 O: MgO (x1, x2), MgO2, Mg2O; plus the pure end members
    assert found[(("Mg", 1), ("O", 1))] == (1, 2)
    assert found[(("Mg", 1), ("O", 2))] == (1,)
    assert found[(("Mg", 2), ("O", 1))] == (1,)
    assert found[(("Mg", 1),)] == (1, 2, 3, 4)
    assert found[(("O", 1),)] == (1, 2, 3, 4)
    assert len(found) == 5
    # a reference file replaces the end-member search of that element
    with_ref = variable_compositions({"Mg": (1, 2), "O": (1, 2)}, max_atoms=4, references=["O"])
    assert (("O", 1),) not in {tuple(sorted(c.items())) for c, _ in with_ref}
    # a range that includes zero gives the end member from the ranges themselves
    zero = dict((tuple(sorted(c.items())), f) for c, f in variable_compositions({"A": (0, 3), "B": (0, 1)}, 3))
    assert zero[(("A", 1),)] == (1, 2, 3) and zero[(("B", 1),)] == (1,)


def test_units_are_compositions_times_pressures_and_budget_split():
    c = parse_campaign({"system": {"variable": {"Mg": [0, 1], "O": [0, 1]}, "max_atoms": 2,
                                   "pressures": [0, 50]}, "model": {"backend": "lj"}})
    units = search_units(c)
    assert len(units) == 6  # Mg, O, MgO at two pressures
    assert [u.pressure_gpa for u in units] == [0.0] * 3 + [50.0] * 3
    assert [u.index for u in units] == list(range(6))
    assert generator_counts([0.4, 0.6], 12) == [5, 7]
    assert generator_counts([1 / 3] * 3, 10) == [4, 3, 3]
    assert sum(generator_counts([0.2, 0.3, 0.5], 7)) == 7


# ----------------------------------------------------------------------------------- end to end


def _fcc_enthalpy() -> float:
    from ase.build import bulk
    from lamcsp.relax import Relaxer

    from lamcsp.potentials.pair import LennardJones

    lj = LennardJones(epsilon=EPS_AR, sigma=SIG_AR)
    res = Relaxer(lj, fmax=1e-4, max_steps=2000).relax([bulk("Ar", "fcc", 5.3)])[0]
    return res.enthalpy_per_atom


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ar")
    camp = _write(tmp / "ar.yaml", AR_CAMPAIGN)
    out = _lamcsp("search", str(camp), "-o", str(tmp / "run"))
    return tmp / "run", camp, out


def test_search_finds_close_packed_lj_argon_and_stores_everything(ar_run):
    run, _, out = ar_run
    assert "generation 4/4" in out.stderr  # live progress
    db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
    rows = list(db.select(role="search"))
    assert len(rows) == 4 * 8  # every relaxation stored, once
    assert len({r.key for r in rows}) == len(rows)
    unique = [r for r in rows if r.unique]
    assert unique and all(r.duplicate_of == 0 for r in unique)
    ids = {r.id for r in unique}
    assert all(r.duplicate_of in ids for r in rows if not r.unique and not r.status.startswith("failed"))
    best = min(unique, key=lambda r: r.enthalpy_per_atom)
    # the LJ ground state is close packed: 12 neighbours at the nearest distance
    atoms = best.toatoms().repeat(3)
    d = atoms.get_all_distances(mic=True)[0][1:]
    assert np.sum(d < d.min() * 1.05) == 12
    assert best.enthalpy_per_atom == pytest.approx(_fcc_enthalpy(), abs=2e-4)
    # the report came with the search
    summary = json.loads((run / "report" / "summary.json").read_text())
    top = summary["pressures"][0]["compositions"]["Ar"][0]
    assert top["db_id"] == best.id
    assert (run / "report" / "report.html").exists()


def test_existing_run_is_kept_and_resume_needs_the_same_campaign(ar_run, tmp_path):
    run, camp, _ = ar_run
    before = _state(run)
    again = _lamcsp("search", str(camp), "-o", str(run), check=False)
    assert again.returncode == 2 and "output" in again.stderr and "--resume" in again.stderr
    changed = _write(tmp_path / "changed.yaml", {**AR_CAMPAIGN, "population": 9})
    bad = _lamcsp("search", str(changed), "-o", str(run), "--resume", check=False)
    assert bad.returncode == 2 and "population" in bad.stderr
    assert _state(run) == before  # nothing lost, nothing added
    # resuming a finished run adds nothing
    _lamcsp("search", str(camp), "-o", str(run), "--resume")
    assert _state(run) == before


@pytest.mark.parametrize("faults", [["relaxed:13"], ["store-write:20"], ["dedupe-write:3"],
                                    ["checkpoint-write:2"], ["relaxed:5", "relaxed:9"]])
def test_kill_9_then_resume_equals_an_uninterrupted_run(ar_run, tmp_path, faults):
    ref, camp, _ = ar_run
    run = tmp_path / "run"
    args = ["search", str(camp), "-o", str(run)]
    for i, f in enumerate(faults):
        killed = _lamcsp(*args, *(["--resume"] if i else []), env={"LAMCSP_FAULT": f}, check=False)
        assert killed.returncode == -9, killed.stderr  # SIGKILL at the fault point
    _lamcsp(*args, "--resume")
    assert _state(run) == _state(ref)


def test_a_kill_loses_no_result_that_arrived(ar_run, tmp_path):
    """Results are journaled as they arrive (lamcsp.inflight): killed at the 13th relaxation of
    generation 1, the 12 before it are in the journal, and --resume reads them back instead of
    relaxing them again: their rows keep the time they arrived, before the kill."""
    import time

    from ase.db.core import T2000, YEAR

    ref, camp, _ = ar_run
    run = tmp_path / "run"
    args = ["search", str(camp), "-o", str(run)]
    killed = _lamcsp(*args, env={"LAMCSP_FAULT": "relaxed:13"}, check=False)  # generation 0 holds 8
    assert killed.returncode == -9, killed.stderr
    kill = time.time()
    journal = [json.loads(line) for line in (run / "generation-1.journal").read_text().splitlines()]
    assert len(journal) == 4 and {r["generation"] for r in journal} == {1}
    db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
    assert db.count(role="search") == 8  # generation 0 written, with its flags; 1 still in flight
    _lamcsp(*args, "--resume")
    assert not list(run.glob("generation-*.journal"))
    db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
    before = {r.key for r in db.select(role="search") if r.ctime * YEAR + T2000 < kill}
    assert {r["key"] for r in journal} <= before and len(before) == 12
    assert _state(run) == _state(ref)


def test_each_row_is_written_once_with_its_dedupe_flags(tmp_path, monkeypatch):
    """A generation's rows go to the store with their dedupe flags: no row of a generation is
    updated afterwards; only a representative of an earlier generation that a lower copy
    replaces gets new flags."""
    from lamcsp.store import ResultStore, result_ok

    updated: list[tuple[int, int]] = []  # (generation of the row, generation being written)
    written_gen: dict[int, int] = {}
    real_update, real_add_many = ResultStore.update, ResultStore.add_many

    def add_many(self, items):
        ids = real_add_many(self, items)
        written_gen.update((rid, it["generation"]) for rid, it in zip(ids, items))
        return ids

    def update(self, row_id, **kv):
        updated.append((written_gen[int(row_id)], max(written_gen.values())))
        return real_update(self, row_id, **kv)

    monkeypatch.setattr(ResultStore, "add_many", add_many)
    monkeypatch.setattr(ResultStore, "update", update)
    camp = parse_campaign({**AR_CAMPAIGN, "generations": 5, "population": 10})
    s = Search(camp, tmp_path / "run", progress=False)
    s.run(report=False)
    rows = s.store.rows(role="search")
    assert len(rows) == 50 and all(r.deduped for r in rows)
    assert all(old < now for old, now in updated), updated
    # the flags are the dedupe's: each unique row is a stored representative, each duplicate
    # points at a row of the same formula with an enthalpy no lower
    by_id = {r.id: r for r in rows}
    assert {r.id for r in rows if r.unique} == set(s.unit_states[0].stored_rows)
    for r in rows:
        if result_ok(r) and not r.unique:
            rep = by_id[r.duplicate_of]
            assert rep.unique and rep.enthalpy_per_atom <= r.enthalpy_per_atom + 1e-9


def test_multi_pressure_search_scans_polymorphs(tmp_path):
    data = {**AR_CAMPAIGN, "name": "ar-p", "generations": 2, "population": 6,
            "system": {"composition": "Ar", "formula_units": "1-2", "pressures": [0.0, 2.0]},
            "report": {"scan_points": 3, "scan_top": 2}}
    camp = _write(tmp_path / "p.yaml", data)
    _lamcsp("search", str(camp), "-o", str(tmp_path / "run"))
    db = ase.db.connect(str(tmp_path / "run" / "results.db"), use_lock_file=False)
    search = list(db.select(role="search"))
    assert {round(r.pressure_gpa, 6) for r in search} == {0.0, 2.0}
    scans = list(db.select(role="scan"))
    assert scans and {round(r.pressure_gpa, 6) for r in scans} == {0.0, 1.0, 2.0}
    for r in scans:  # each scan row re-relaxes a stored unique polymorph
        assert db.get(id=r.polymorph).unique
    # enthalpy rises with pressure for every polymorph (dH/dp = V > 0)
    by_poly: dict[int, list] = {}
    for r in scans:
        by_poly.setdefault(r.polymorph, []).append((r.pressure_gpa, r.enthalpy_per_atom))
    for curve in by_poly.values():
        hs = [h for _, h in sorted(curve)]
        assert all(b > a for a, b in zip(hs, hs[1:]))


def test_variable_composition_search_has_formation_enthalpies(tmp_path):
    """A binary LJ mixture whose unlike pairs bind twice as strongly: compounds lie below the
    line between the elements, the end members sit on the hull at zero."""
    data = {**AR_CAMPAIGN, "name": "arkr", "generations": 2, "population": 6,
            "system": {"variable": {"Ar": [0, 2], "Kr": [0, 2]}, "max_atoms": 4},
            "model": {"backend": "lj", "device": "cpu",
                      "options": {"epsilon": {"Ar-Ar": 0.0104, "Kr-Kr": 0.014, "Ar-Kr": 0.025},
                                  "sigma": {"Ar": 3.4, "Kr": 3.65}}}}
    camp = _write(tmp_path / "v.yaml", data)
    _lamcsp("search", str(camp), "-o", str(tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "report" / "summary.json").read_text())
    p0 = summary["pressures"][0]
    assert p0["hull_kind"] == "phase_diagram"
    arkr = Composition("ArKr").reduced_formula  # pymatgen's element order
    assert {"Ar", "Kr", arkr} <= set(p0["compositions"])
    ends = [h for h in p0["hull"] if h["reduced_formula"] in ("Ar", "Kr")]
    assert len(ends) == 2 and all(abs(h["formation_enthalpy_per_atom"]) < 1e-9 for h in ends)
    best_arkr = p0["compositions"][arkr][0]
    assert best_arkr["formation_enthalpy_per_atom"] < -0.005  # strongly bound compound
    for entries in p0["compositions"].values():
        assert all(e["e_above_hull"] >= -1e-9 for e in entries)


def test_bad_campaign_inputs_name_the_field(tmp_path):
    missing_ref = {**AR_CAMPAIGN, "system": {"composition": "Ar", "references": {"Ar": "nope.cif"}}}
    with pytest.raises(SetupError) as e:
        parse_campaign(missing_ref, base_dir=str(tmp_path))
    assert e.value.field == "system.references.Ar"
    alien = {**AR_CAMPAIGN, "system": {"composition": "Ar", "references": {"Kr": "x.cif"}}}
    with pytest.raises(SetupError) as e:
        parse_campaign(alien, base_dir=str(tmp_path))
    assert e.value.field == "system.references.Kr"
    opts = {**AR_CAMPAIGN, "model": {"backend": "lj", "options": [1, 2]}}
    with pytest.raises(SetupError) as e:
        parse_campaign(opts)
    assert e.value.field == "model.options"
    with pytest.raises(SetupError) as e:  # unknown options are refused with the campaign, before any work
        parse_campaign({**AR_CAMPAIGN, "model": {"backend": "lj", "options": {"bogus": 1}}})
    assert e.value.field == "model.options.bogus" and "epsilon" in e.value.message
    cli = _lamcsp("search", str(_write(tmp_path / "bad.yaml", {**AR_CAMPAIGN, "population": 0})),
                  "-o", str(tmp_path / "bad"), check=False)
    assert cli.returncode == 2 and "population" in cli.stderr and "Traceback" not in cli.stderr
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------------- quickstart


@pytest.mark.slow
def test_quickstart_with_chgnet_finds_diamond_silicon(tmp_path):
    from ase.build import bulk
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    run = tmp_path / "qs"
    _lamcsp("search", str(ROOT / "campaigns" / "quickstart.yaml"), "-o", str(run),
            env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    summary = json.loads((run / "report" / "summary.json").read_text())
    best = summary["pressures"][0]["compositions"]["Si"][0]
    db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
    found = AseAtomsAdaptor.get_structure(db.get(id=best["db_id"]).toatoms())
    diamond = AseAtomsAdaptor.get_structure(bulk("Si", "diamond", 5.43))
    assert StructureMatcher().fit(found, diamond), f"lowest structure is space group {best['spacegroup']}"
    # the default cascade: SevenNet-0 re-relaxed the best, and its answer is diamond too
    answer = summary["cascade"]["answers"]["0"]["Si"]
    assert answer["stage"] == "rescore" and "sevennet" in answer["by"]
    rescored = AseAtomsAdaptor.get_structure(db.get(id=answer["verify_id"]).toatoms())
    assert StructureMatcher().fit(rescored, diamond), f"the rescore's answer is space group {answer['spacegroup']}"


def test_reference_files_replace_end_member_search_and_hull_matches_pymatgen(tmp_path):
    """Kr comes from a structure file (relaxed at every pressure), Ar is searched; the hull in
    summary.json equals pymatgen's PhaseDiagram built here straight from the database."""
    from ase.build import bulk
    from ase.io import write
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

    write(tmp_path / "kr.cif", bulk("Kr", "fcc", 5.7))
    data = {**AR_CAMPAIGN, "name": "arkr-ref", "generations": 2, "population": 5,
            "system": {"variable": {"Ar": [1, 2], "Kr": [1, 2]}, "max_atoms": 3,
                       "pressures": [0.0, 1.0], "references": {"Kr": "kr.cif"}},
            "model": {"backend": "lj", "device": "cpu",
                      "options": {"epsilon": {"Ar-Ar": 0.0104, "Kr-Kr": 0.014, "Ar-Kr": 0.025},
                                  "sigma": {"Ar": 3.4, "Kr": 3.65}}},
            "report": {"scan_points": 2}}
    camp = _write(tmp_path / "r.yaml", data)
    _lamcsp("search", str(camp), "-o", str(tmp_path / "run"))
    db = ase.db.connect(str(tmp_path / "run" / "results.db"), use_lock_file=False)
    refs = list(db.select(role="reference"))
    assert sorted(round(r.pressure_gpa, 6) for r in refs) == [0.0, 1.0]
    assert all(r.formula == "Kr" for r in refs)
    assert not [r for r in db.select(role="search") if r.formula.startswith("Kr") and "Ar" not in r.formula]
    summary = json.loads((tmp_path / "run" / "report" / "summary.json").read_text())
    for block in summary["pressures"]:
        p = block["pressure_gpa"]
        rows = [r for r in db.select() if abs(r.pressure_gpa - p) < 1e-6 and r.role in ("search", "reference")
                and r.unique and not r.status.startswith("failed")]
        pd = PhaseDiagram([PDEntry(Composition(r.formula), r.enthalpy, attribute=r.id) for r in rows])
        assert block["hull_kind"] == "phase_diagram"
        assert sorted(h["db_id"] for h in block["hull"]) == sorted(e.attribute for e in pd.stable_entries)
        by_id = {e.attribute: e for e in pd.all_entries}
        for entries in block["compositions"].values():
            for e in entries:
                assert e["e_above_hull"] == pytest.approx(pd.get_e_above_hull(by_id[e["db_id"]]), abs=1e-9)


def _inputs_by_generation(run: Path) -> list[tuple[int, object, object]]:
    from lamcsp.generators.base import Candidate
    from pymatgen.io.ase import AseAtomsAdaptor

    db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
    out = []
    for r in sorted(db.select(role="search"), key=lambda r: (r.generation, r.candidate)):
        start = Candidate.from_dict(r.data["candidate"]).to_structure()
        out.append((r.generation, start, AseAtomsAdaptor.get_structure(r.toatoms())))
    return out


def test_similarity_screen_before_relaxation(tmp_path):
    """dedupe.before_relax (default): no structure is relaxed whose start duplicates the start
    or the relaxed result of an earlier relaxation; the same run without the screen relaxes
    such duplicates (2-3 atom argon cells, where random draws repeat)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    strict = StructureMatcher(ltol=0.05, stol=0.05, angle_tol=1.0)  # near-identical only
    raw = {**AR_CAMPAIGN, "system": {"composition": "Ar", "formula_units": "2-3"},
           "generators": [{"name": "random", "share": 1.0}], "population": 10, "generations": 3}
    runs = {}
    for screen in (True, False):
        campaign = parse_campaign({**raw, "dedupe": {"before_relax": screen}})
        search = Search(campaign, tmp_path / f"screen-{screen}", progress=False)
        state = search.run(report=False)
        rows = _inputs_by_generation(tmp_path / f"screen-{screen}")
        repeats = 0
        for k, (g, start, _) in enumerate(rows):
            earlier = [s for _, s, _ in rows[:k]] + [r for gg, _, r in rows[:k] if gg < g]
            repeats += any(strict.fit(start, e) for e in earlier)
        runs[screen] = (repeats, state["units"][0]["screened"], len(rows))
    (rep_on, screened_on, n_on), (rep_off, screened_off, n_off) = runs[True], runs[False]
    assert rep_on == 0 and screened_on > 0
    assert rep_off > 0 and screened_off == 0
    assert n_on == n_off == 30  # the screen replaces what it drops


def test_energy_prescreen_relaxes_the_lowest_starts_of_an_oversampling_generator(tmp_path):
    """The random generator's ``oversample``: of the candidates it draws (``oversample`` x its
    share, after the distance screen), the search relaxes those whose starts have the lowest
    enthalpy per atom, as many as the population holds, and counts the others as prescreened.
    Checked by drawing the same candidates again and evaluating every start with the model."""
    from lamcsp.relax import Relaxer
    from pymatgen.io.ase import AseAtomsAdaptor

    from lamcsp.draws import proposals
    from lamcsp.stages import screen

    raw = {**AR_CAMPAIGN, "system": {"composition": "Ar", "formula_units": "2-4"},
           "generators": [{"name": "random", "share": 1.0, "options": {"oversample": 3}}],
           "population": 6, "generations": 2, "dedupe": {"before_relax": False}}
    search = Search(parse_campaign(raw), tmp_path / "pre", progress=False)
    state = search.run(report=False)
    rows = _inputs_by_generation(tmp_path / "pre")
    assert len(rows) == 12
    us = search.unit_states[0]
    gen = us.generators[0][2]
    relaxer = Relaxer(search.potential, max_steps=0, progress=False)
    prescreened = 0
    for g in range(2):
        drawn = proposals(gen, 18, 7, (0, 0, g), us.context)
        drawn = [c for c, ok in zip(drawn, screen(drawn, us.context)) if ok]
        h = np.array([r.enthalpy_per_atom for r in relaxer.relax([c.to_atoms() for c in drawn])])
        relaxed_starts = [s for gg, s, _ in rows if gg == g]
        got = np.sort([r.enthalpy_per_atom
                       for r in relaxer.relax([AseAtomsAdaptor.get_atoms(s) for s in relaxed_starts])])
        np.testing.assert_allclose(got, np.sort(h)[:6], rtol=0, atol=1e-8)
        assert np.sort(h)[6] > got[-1] + 1e-6  # a real choice: higher starts were left out
        prescreened += len(drawn) - 6
    assert state["units"][0]["prescreened"] == prescreened > 0


def test_the_funnel_relaxes_the_lowest_quenched_candidates_on_from_their_quench(tmp_path):
    """``relax.quench_steps`` (the funnel): every oversampled candidate gets that many optimizer
    steps in one batch; the lowest enthalpies after the quench are relaxed, each on from the
    quenched geometry (the start the row records), and every row of the generation records the
    prescreen's model calls (steps + 1 per candidate). Checked by drawing the same candidates
    again and quenching them with the model."""
    from lamcsp.generators.base import Candidate
    from lamcsp.relax import Relaxer

    from lamcsp.draws import proposals
    from lamcsp.stages import screen

    raw = {**AR_CAMPAIGN, "system": {"composition": "Ar", "formula_units": "2-4"},
           "generators": [{"name": "random", "share": 1.0, "options": {"oversample": 3}}],
           "population": 6, "generations": 2, "dedupe": {"before_relax": False}, "relax": {"quench_steps": 4}}
    search = Search(parse_campaign(raw), tmp_path / "funnel", progress=False)
    search.run(report=False)
    db = ase.db.connect(str(tmp_path / "funnel" / "results.db"), use_lock_file=False)
    us = search.unit_states[0]
    gen = us.generators[0][2]
    quencher = Relaxer(search.potential, max_steps=4, progress=False)
    for g in range(2):
        drawn = proposals(gen, 18, 7, (0, 0, g), us.context)
        drawn = [c for c, ok in zip(drawn, screen(drawn, us.context)) if ok]
        quenched = quencher.relax([c.to_atoms() for c in drawn])
        h = np.array([r.enthalpy_per_atom for r in quenched])
        lowest = np.argsort(h, kind="stable")[:6]
        assert h[lowest[-1]] + 1e-6 < np.sort(h)[6]  # a real choice
        rows = list(db.select(role="search", generation=g))
        assert len(rows) == 6
        assert {r.prescreen_calls for r in rows} == {sum(r.steps + 1 for r in quenched)}
        assert any(quenched[i].steps == 4 for i in lowest)  # the quench moved them
        for r in rows:  # each relaxation started where the quench left its candidate
            start = Candidate.from_dict(r.data["candidate"])
            h0 = start.origin["start_enthalpy"]
            i = min(lowest, key=lambda i: abs(quenched[i].enthalpy_per_atom - h0))
            assert abs(quenched[i].enthalpy_per_atom - h0) < 1e-8
            assert start.origin.get("quench_steps", 0) == quenched[i].steps
            np.testing.assert_allclose(start.lattice, quenched[i].atoms.cell.array, atol=1e-8)
            np.testing.assert_allclose(start.to_atoms().get_volume(), quenched[i].atoms.get_volume(), rtol=1e-10)


def test_the_funnel_does_not_relax_a_quenched_candidate_that_repeats_a_known_structure(tmp_path):
    """With the similarity screen on (``dedupe.before_relax``), the funnel screens again after
    its quench: no relaxation starts from a quenched structure that duplicates (the search's
    own rule, checked here with a fresh deduper) a structure relaxed or started in an earlier
    generation, or a lower quenched candidate of its own generation. In 2-4 atom argon cells
    most quenches fall into the basins of fcc and hcp, so the screen has much to drop."""
    from lamcsp.generators.base import Candidate
    from lamcsp.generators.dedupe import Deduper

    raw = {**AR_CAMPAIGN, "system": {"composition": "Ar", "formula_units": "2-4"},
           "generators": [{"name": "random", "share": 0.5, "options": {"oversample": 3}},
                          {"name": "pso", "share": 0.5, "options": {"oversample": 3}}],
           "population": 6, "generations": 4, "relax": {"quench_steps": 5}}
    search = Search(parse_campaign(raw), tmp_path / "funnel", progress=False)
    search.run(report=False)
    us = search.unit_states[0]
    db = ase.db.connect(str(tmp_path / "funnel" / "results.db"), use_lock_file=False)
    deduper = Deduper()  # the campaign's dedupe settings are the defaults
    seen = deduper.new_store()
    n_quenched = 0
    for g in range(4):
        rows = sorted(db.select(role="search", generation=g), key=lambda r: r.candidate)
        starts = [Candidate.from_dict(r.data["candidate"]) for r in rows]
        quenched = [c for c in starts if c.origin.get("quench_steps")]
        n_quenched += len(quenched)
        lowest_first = sorted(quenched, key=lambda c: c.origin["start_enthalpy"])
        entries = deduper.describe(search.similarity.at_unit_volume(us, lowest_first))
        _, dup = deduper.unique(entries)
        assert all(d < 0 for d in dup), f"generation {g}: two quenched starts are one structure"
        assert all(k < 0 for k in deduper.against(entries, seen)), f"generation {g}: a known structure"
        seen.extend(deduper.describe(search.similarity.at_unit_volume(us, starts + [r.toatoms() for r in rows])))
    assert n_quenched >= 12  # the screen was put to work
    assert us.screened > 0


def test_the_swarm_waits_only_for_the_proposals_that_are_relaxed(tmp_path):
    """Swarm proposals the search does not relax (in 1-4 atom argon cells the similarity screen
    drops many: draws and moves repeat relaxed structures) are discarded by the swarm: after the
    run it waits only for proposals of the last generation that were relaxed, so its particles
    keep moving instead of waiting for results that never come."""
    search = Search(parse_campaign({**AR_CAMPAIGN, "generations": 6}), tmp_path / "pso", progress=False)
    state = search.run(report=False)
    pso = search.unit_states[0].generators[1][2]
    db = ase.db.connect(str(tmp_path / "pso" / "results.db"), use_lock_file=False)
    rows = [r for r in db.select(role="search", generator="pso")]
    relaxed = {(r.generation, r.data["candidate"]["origin"]["pso_proposal"]) for r in rows}
    last = max(g for g, _ in relaxed)
    assert state["units"][0]["screened"] > 0 and pso.next_proposal > len(rows)  # some were dropped
    assert set(pso.pending) <= {p for g, p in relaxed if g == last}
    waiting = set(pso.pending.values())
    assert any(p.pid not in waiting and p.best_x is not None for p in pso.particles)  # free to move


def test_energy_prescreen_ranks_the_swarms_new_particles_with_the_random_draws(tmp_path):
    """Swarm and random both with ``oversample`` 3: in the first generation (all new random
    structures) the search relaxes the lowest-enthalpy starts of both generators' draws
    together; later the swarm's moved particles are relaxed unranked, the new particles left
    out leave the swarm, and the swarm keeps the size of its share."""
    from lamcsp.generators import get_generator
    from lamcsp.relax import Relaxer
    from pymatgen.io.ase import AseAtomsAdaptor

    from lamcsp.draws import proposals
    from lamcsp.stages import screen

    raw = {**AR_CAMPAIGN, "system": {"composition": "Ar", "formula_units": "2-4"},
           "generators": [{"name": "random", "share": 0.5, "options": {"oversample": 3}},
                          {"name": "pso", "share": 0.5, "options": {"oversample": 3}}],
           "population": 8, "generations": 4, "dedupe": {"before_relax": False}}
    search = Search(parse_campaign(raw), tmp_path / "pre", progress=False)
    state = search.run(report=False)
    rows = _inputs_by_generation(tmp_path / "pre")
    assert [g for g, _, _ in rows] == [g for g in range(4) for _ in range(8)]
    us = search.unit_states[0]
    drawn = []
    for gi, name in enumerate(("random", "pso")):  # generation 0 drawn again by fresh generators
        gen = get_generator(name, oversample=3)
        drawn += proposals(gen, 12, 7, (0, gi, 0), dataclasses.replace(us.context, population=[]))
    drawn = [c for c, ok in zip(drawn, screen(drawn, us.context)) if ok]
    relaxer = Relaxer(search.potential, max_steps=0, progress=False)
    h = np.array([r.enthalpy_per_atom for r in relaxer.relax([c.to_atoms() for c in drawn])])
    got = np.sort([r.enthalpy_per_atom for r in relaxer.relax(
        [AseAtomsAdaptor.get_atoms(s) for g, s, _ in rows if g == 0])])
    np.testing.assert_allclose(got, np.sort(h)[:8], rtol=0, atol=1e-8)
    assert np.sort(h)[8] > got[-1] + 1e-6 and state["units"][0]["prescreened"] > 0

    pso = us.generators[1][2]
    db = ase.db.connect(str(tmp_path / "pre" / "results.db"), use_lock_file=False)
    origins = [(r.generation, r.data["candidate"]["origin"]) for r in db.select(role="search", generator="pso")]
    moved = [o for g, o in origins if o.get("operator") in ("pso", "pso-migrate")]
    assert moved and all(o["prescreen"] is False for o in moved)
    assert pso.swarm_size == 4 and len(pso.particles) <= 4 + len(pso.pending)
    assert set(pso.pending) <= {o["pso_proposal"] for g, o in origins if g == 3}


def test_a_prescreened_generation_is_relaxed_lowest_start_first(tmp_path):
    """Where the prescreen evaluated the starts, the generation is relaxed in order of start
    enthalpy, lowest first (the swarm's moved particles, relaxed unranked, take their place by
    their start too), and a budget that ends within a generation keeps the lowest starts of
    all that were drawn. Start enthalpies are evaluated again here from the stored starts."""
    from lamcsp.generators.base import Candidate
    from lamcsp.relax import Relaxer

    from lamcsp.draws import proposals
    from lamcsp.stages import screen

    raw = {**AR_CAMPAIGN, "system": {"composition": "Ar", "formula_units": "2-4"},
           "generators": [{"name": "random", "share": 0.5, "options": {"oversample": 3}},
                          {"name": "pso", "share": 0.5, "options": {"oversample": 3}}],
           "population": 8, "generations": 4, "dedupe": {"before_relax": False}}
    search = Search(parse_campaign(raw), tmp_path / "order", progress=False)
    search.run(report=False)
    relaxer = Relaxer(search.potential, max_steps=0, progress=False)
    db = ase.db.connect(str(tmp_path / "order" / "results.db"), use_lock_file=False)
    rows = list(db.select(role="search"))
    moved, reordered = 0, False
    for g in range(4):
        gen = sorted((r for r in rows if r.generation == g), key=lambda r: r.order)
        assert [r.order for r in gen] == list(range(8))
        cands = [Candidate.from_dict(r.data["candidate"]) for r in gen]
        h = [r.enthalpy_per_atom for r in relaxer.relax([c.to_atoms() for c in cands])]
        assert all(a <= b + 1e-9 for a, b in zip(h, h[1:])), (g, h)
        np.testing.assert_allclose([c.origin["start_enthalpy"] for c in cands], h, rtol=0, atol=1e-8)
        reordered |= sorted(r.candidate for r in gen) != [r.candidate for r in gen]
        moved += sum(c.origin.get("prescreen") is False for c in cands)
    assert moved > 0 and reordered  # moved particles took part; not the drawn order

    # a budget of 9: the second generation relaxes 1 structure, the lowest start of its draws
    raw = {**raw, "generators": [{"name": "random", "share": 1.0, "options": {"oversample": 3}}],
           "generations": None, "max_relaxations": 9}
    search = Search(parse_campaign(raw), tmp_path / "budget", progress=False)
    search.run(report=False)
    us = search.unit_states[0]
    drawn = proposals(us.generators[0][2], 24, 7, (0, 0, 1), us.context)
    drawn = [c for c, ok in zip(drawn, screen(drawn, us.context)) if ok]
    h = [r.enthalpy_per_atom for r in relaxer.relax([c.to_atoms() for c in drawn])]
    db = ase.db.connect(str(tmp_path / "budget" / "results.db"), use_lock_file=False)
    (last,) = [r for r in db.select(role="search") if r.generation == 1]
    start = Candidate.from_dict(last.data["candidate"]).to_atoms()
    assert relaxer.relax([start])[0].enthalpy_per_atom == pytest.approx(min(h), abs=1e-8)
    assert sorted(h)[1] > min(h) + 1e-6


def test_every_proposed_candidate_is_told_once_with_what_became_of_it(tmp_path, monkeypatch):
    """The generator protocol's ``tell``: a random generator that oversamples (so some lose the
    prescreen), under the similarity screen (so some are duplicates) and a budget that ends
    within a generation (so some are cut), hears once about every candidate it proposed; its
    ``ok``/``failed`` outcomes are its stored rows, with their relaxed enthalpies, and its
    ``prescreened`` and ``budget`` counts are the search's."""
    from lamcsp.generators import base
    from lamcsp.generators.symmetric import SymmetricRandom

    heard: list[tuple[int, str, float]] = []
    proposed: list[int] = []

    class Recorder(SymmetricRandom):
        name = "recorder"

        def propose(self, n, rng, context):
            got = super().propose(n, rng, context)
            for c in got:
                c.origin["serial"] = len(proposed)
                proposed.append(context.generation)
            return got

        def tell(self, outcomes):
            heard.extend((o.candidate.origin["serial"], o.status, o.enthalpy_per_atom) for o in outcomes)

    monkeypatch.setitem(base._REGISTRY, "recorder", Recorder)
    raw = {**AR_CAMPAIGN, "system": {"composition": "Ar", "formula_units": "2-4"},
           "generators": [{"name": "recorder", "share": 1.0, "options": {"oversample": 3}}],
           "population": 6, "generations": 5, "max_relaxations": 27}
    search = Search(parse_campaign(raw), tmp_path / "told", progress=False)
    state = search.run(report=False)
    serials = [s for s, _, _ in heard]
    assert sorted(serials) == list(range(len(proposed)))  # every one, once
    status = {s: st for s, st, _ in heard}
    db = ase.db.connect(str(tmp_path / "told" / "results.db"), use_lock_file=False)
    rows = {r.data["candidate"]["origin"]["serial"]: r for r in db.select(role="search")}
    relaxed = {s for s, st in status.items() if st in ("ok", "failed")}
    assert relaxed == set(rows) and len(rows) == 27
    for s, st, h in heard:
        if st == "ok":
            assert h == pytest.approx(rows[s].enthalpy_per_atom, abs=1e-12)
    counts = {k: sum(1 for st in status.values() if st == k) for k in base.OUTCOMES}
    assert counts["prescreened"] == state["units"][0]["prescreened"] > 0
    assert counts["budget"] > 0
    # the top-up's own random draws are screened too, so the unit counts at least the recorder's
    assert 0 < counts["duplicate"] <= state["units"][0]["screened"]
