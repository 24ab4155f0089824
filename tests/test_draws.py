"""Candidates drawn through the executor (lamcsp.draws): per-candidate streams, the same
candidates however they are batched, the distance screen where they are drawn."""

from __future__ import annotations

import numpy as np
import pytest
from lamcsp.generators import GenerationContext, Sampler, get_generator, is_sampler

from lamcsp.draws import DrawRequest, DrawTask, draw, draw_task
from lamcsp.errors import SetupError
from lamcsp.parallel import SerialExecutor, WorkerInfo
from lamcsp.stages import screen
from lamcsp.units import candidate_rng

CTX = GenerationContext(composition={"Mg": 1, "Si": 1, "O": 3}, formula_units=[1, 2])


def _same(a, b) -> bool:
    return a.to_dict() == b.to_dict()


def test_random_is_a_sampler_and_the_swarm_is_not():
    from lamcsp.generators.symmetric import SymmetricRandom

    assert isinstance(get_generator("random"), Sampler) and is_sampler(get_generator("random"))
    assert not isinstance(get_generator("pso"), Sampler)
    assert not isinstance(get_generator("ga"), Sampler)

    class Tagged(SymmetricRandom):  # changes propose, inherits draw: asked through propose
        def propose(self, n, rng, context):
            return super().propose(n, rng, context)

    class Drawn(Tagged):  # and draws again: a sampler
        def draw(self, rng, context):
            return super().draw(rng, context)

    assert isinstance(Tagged(), Sampler) and not is_sampler(Tagged())
    assert is_sampler(Drawn())


def test_resume_refuses_a_generation_whose_stored_rows_hold_other_candidates(tmp_path):
    """A generation interrupted under a lamcsp that drew candidates differently: the rows under
    its keys hold other structures than the candidates proposed again, and --resume says so
    (exit status 2) instead of taking their results for the new candidates."""
    import json
    import subprocess
    import sys

    import yaml
    from ase.db import connect

    camp = tmp_path / "c.yaml"
    camp.write_text(yaml.safe_dump({
        "name": "ar", "seed": 3, "system": {"composition": "Ar", "formula_units": "2-4"}, "population": 6,
        "generations": 3, "generators": [{"name": "random", "share": 1.0}], "stop": {"patience": None},
        "model": {"backend": "lj", "options": {"epsilon": {"Ar-Ar": 0.0104}, "sigma": {"Ar-Ar": 3.4}}}}))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lamcsp", "search", str(camp), "-o", str(run), "--quiet"]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=600).returncode == 0
    # back to the middle of generation 2, its first row holding another structure
    state = json.loads((run / "checkpoint.json").read_text())
    state["state"].update(generation=2, done=False)
    (run / "checkpoint.json").write_text(json.dumps(state))
    db = connect(str(run / "results.db"), use_lock_file=False)
    row = next(db.select(key="u0-g2-c0"))
    data = dict(row.data)
    data["candidate"] = {**data["candidate"], "lattice": (np.asarray(data["candidate"]["lattice"]) * 1.1).tolist()}
    db.update(row.id, data=data)
    before = (run / "results.db").read_bytes()
    out = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr
    assert "--resume" in out.stderr and "u0-g2-c0" in out.stderr and "Traceback" not in out.stderr
    assert (run / "results.db").read_bytes() == before  # nothing changed


def test_drawn_candidates_are_the_samplers_own_draws_from_their_streams():
    opts = {"group_weights": "mp", "wyckoff_weights": "mp"}
    (d,) = draw([DrawRequest("random", opts, CTX, 5, (0, 1, 3), 8)], SerialExecutor(None))
    gen = get_generator("random", **opts)
    direct = [gen.draw(candidate_rng(5, 0, 1, 3, j), CTX) for j in range(8)]
    assert len(d.candidates) == 8 and all(c is not None for c in d.candidates)
    assert all(_same(a, b) for a, b in zip(d.candidates, direct))
    assert d.keep == [bool(f) for f in screen(direct, CTX)]
    # another stream, other candidates
    (other,) = draw([DrawRequest("random", opts, CTX, 5, (0, 1, 4), 8)], SerialExecutor(None))
    assert not any(_same(a, b) for a, b in zip(d.candidates, other.candidates))


def test_a_candidate_does_not_depend_on_how_many_are_drawn_or_how_they_are_batched():
    ex = SerialExecutor(None)
    (few,) = draw([DrawRequest("random", {}, CTX, 11, (2, 0, 0), 3)], ex)
    (many,) = draw([DrawRequest("random", {}, CTX, 11, (2, 0, 0), 9)], ex)
    assert all(_same(a, b) for a, b in zip(few.candidates, many.candidates[:3]))
    # a worker that runs the items one batch at a time, in another order, draws the same
    task = DrawTask(draw_task("random", {}).spec, WorkerInfo())
    plain = {f: getattr(CTX, f) for f in ("composition", "formula_units", "spacegroups", "pressure_gpa",
                                          "volume_factor", "min_distance", "distance_factor",
                                          "element_volumes")}
    got: dict[int, dict] = {}
    for j in reversed(range(9)):
        task([{"context": plain, "seed": 11, "key": [2, 0, 0, j]}], lambda _, r, j=j: got.__setitem__(j, r))
    assert [got[j]["candidate"] for j in range(9)] == [c.to_dict() for c in many.candidates]


def test_a_request_no_structure_can_meet_carries_the_generators_error():
    # one atom of each of four species cannot sit in a cubic group with 1 formula unit
    ctx = GenerationContext(composition={"Mg": 1, "Si": 1, "O": 1, "Na": 1}, formula_units=[1],
                            spacegroups=[221])
    (d,) = draw([DrawRequest("random", {}, ctx, 1, (0, 0, 0), 2)], SerialExecutor(None))
    assert all(c is None for c in d.candidates)
    assert isinstance(d.error, SetupError) and d.error.field == "spacegroups"


@pytest.mark.parametrize("population", [6, 10])
def test_a_campaigns_random_share_is_drawn_per_candidate(tmp_path, population):
    """Through the real stage: the random generator's candidates of a search are the draws of
    their own streams, and a larger population only adds candidates."""
    from lamcsp.campaign import parse_campaign
    from lamcsp.search import Search

    camp = parse_campaign({"name": "mgo", "seed": 3, "system": {"composition": "MgO", "formula_units": [2]},
                           "population": population, "generations": 1,
                           "generators": [{"name": "random", "share": 1.0}],
                           "dedupe": {"before_relax": False},
                           "model": {"backend": "lj", "options": {"epsilon": {"Mg-Mg": 0.01, "O-O": 0.01,
                                                                              "Mg-O": 0.02},
                                                                  "sigma": {"Mg-Mg": 2.8, "O-O": 2.8,
                                                                            "Mg-O": 2.1}}}})
    s = Search(camp, tmp_path / "run", progress=False)
    s.run(report=False)
    rows = sorted(s.store.rows(role="search"), key=lambda r: r.candidate)
    ctx = s.unit_states[0].context
    gen = get_generator("random")
    draws = [gen.draw(candidate_rng(3, 0, 0, 0, j), ctx) for j in range(population)]
    built = [c for c in draws if c is not None]  # a draw that built nothing leaves no candidate
    for r in rows:
        want = built[r.candidate]
        assert np.allclose(np.asarray(r.data["candidate"]["frac"]), want.frac)
        assert np.allclose(np.asarray(r.data["candidate"]["lattice"]), want.lattice)
    assert len(rows) >= population - 2


def test_the_next_generations_random_share_is_drawn_while_this_one_relaxes(tmp_path, monkeypatch):
    """Draw-ahead (lamcsp.draws.draw_ahead): generation g+1's random candidates are drawn by the
    relax call of generation g (its ``then``), propose draws none of them again, and the run
    stores exactly what a run that draws each generation's share in propose stores."""
    import lamcsp.search as search_mod
    from lamcsp.campaign import parse_campaign
    from lamcsp.parallel import SerialExecutor
    from lamcsp.search import Search

    spec = {"name": "arkr", "seed": 5, "system": {"composition": "ArKr", "formula_units": [1, 2]},
            "population": 8, "generations": 3, "stop": {"patience": None},
            "model": {"backend": "lj", "options": {"epsilon": {"Ar-Ar": 0.0104, "Kr-Kr": 0.014, "Ar-Kr": 0.012},
                                                   "sigma": {"Ar-Ar": 3.4, "Kr-Kr": 3.6, "Ar-Kr": 3.5}}},
            "relax": {"fmax": 0.02, "max_steps": 200}}
    where: list[tuple[str, int]] = []  # (where a draw job ran, its items)
    relaxing = [False]
    real_map, real_relax = SerialExecutor.map, SerialExecutor.relax

    def map_(self, task, items, on_result=None, labels=None):
        if task.target == "lamcsp.draws:DrawTask":
            where.append(("relax" if relaxing[0] else "propose", len(items)))
        return real_map(self, task, items, on_result, labels)

    def relax_(self, *a, **kw):
        relaxing[0] = True
        try:
            return real_relax(self, *a, **kw)
        finally:
            relaxing[0] = False

    monkeypatch.setattr(SerialExecutor, "map", map_)
    monkeypatch.setattr(SerialExecutor, "relax", relax_)

    def rows(run):
        s = Search(parse_campaign(spec), tmp_path / run, progress=False)
        s.run(report=False)
        return sorted((r.key, r.generator, round(r.enthalpy_per_atom, 8), bool(r.unique))
                      for r in s.store.rows(role="search"))

    ahead = rows("ahead")
    # the default mix: the random share's draws of generation 0 in propose, of 1 and 2 while
    # the generation before relaxes; the swarm's new particles (context.sample) in propose
    drawn_ahead = [n for w, n in where if w == "relax"]
    assert len(drawn_ahead) == 2 and all(n == 4 * 4 for n in drawn_ahead), where  # half of 8, x4 oversampled
    in_propose = len([w for w, _ in where if w == "propose"])
    where.clear()
    monkeypatch.setattr(search_mod.stages, "draw_ahead", lambda *a, **kw: None)
    plain = rows("plain")
    assert not [w for w, _ in where if w == "relax"]
    assert len([w for w, _ in where if w == "propose"]) == in_propose + 2  # the two drawn ahead before
    assert plain == ahead and len(ahead) == 3 * 8
