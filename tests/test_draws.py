"""Candidates drawn through the executor (lamcsp.draws): per-candidate streams, the same
candidates however they are batched, the distance screen where they are drawn."""

from __future__ import annotations

import numpy as np
import pytest
from lamcsp.draws import DrawRequest, DrawTask, draw, draw_task
from lamcsp.generators import GenerationContext, Sampler, get_generator
from lamcsp.parallel import SerialExecutor, WorkerInfo
from lamcsp.stages import screen
from lamcsp.units import candidate_rng

from lamcsp.errors import SetupError

CTX = GenerationContext(composition={"Mg": 1, "Si": 1, "O": 3}, formula_units=[1, 2])


def _same(a, b) -> bool:
    return a.to_dict() == b.to_dict()


def test_random_is_a_sampler_and_the_swarm_is_not():
    assert isinstance(get_generator("random"), Sampler)
    assert not isinstance(get_generator("pso"), Sampler)
    assert not isinstance(get_generator("ga"), Sampler)


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
