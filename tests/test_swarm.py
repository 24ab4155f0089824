"""CALYPSO particle swarm: plain-data state, Lamarckian update, inertia schedule, and the
swarm against pure symmetric random search on an analytic landscape."""

import json

import numpy as np
import pytest
import torch
from helpers import run_search
from lamcsp.generators import get_generator
from lamcsp.generators.base import Candidate, Evaluated, GenerationContext
from lamcsp.generators.swarm import ParticleSwarm, project_to_template
from lamcsp.generators.symmetric import from_vector, to_vector
from lamcsp.relax import Relaxer

from lamcsp.potentials import LennardJones

# A binary Lennard-Jones "A B2" system in eV-scale units (Ar/Ne-sized, ε×100), so that
# fmax and enthalpy tolerances are meaningful.
EPS = {(18, 18): 1.04, (10, 10): 0.31, (10, 18): 0.60}
SIG = {(18, 18): 3.40, (10, 10): 2.75, (10, 18): 3.05}


@pytest.fixture(scope="module")
def relaxer():
    torch.set_num_threads(1)
    return Relaxer(LennardJones(epsilon=EPS, sigma=SIG, cutoff=7.5), fmax=0.01, max_steps=400)


def _context():
    return GenerationContext(composition={"Ar": 1, "Ne": 2}, formula_units=[3])


def test_registered_and_plain_data_state(relaxer):
    assert isinstance(get_generator("pso"), ParticleSwarm)
    *_, us = run_search("pso", {}, relaxer, _context(), 6, 3, 3)
    pso = us.generators[0][2]
    state = json.loads(json.dumps(pso.state_dict()))  # plain data through JSON
    twin = ParticleSwarm()
    twin.load_state_dict(state)
    a = pso.propose(6, np.random.default_rng(9), us.context)
    b = twin.propose(6, np.random.default_rng(9), us.context)
    assert [c.to_dict() for c in a] == [c.to_dict() for c in b]


def test_output_valid_and_reproducible(relaxer):
    """Every swarm candidate has the composition and passes the distance screen; the same
    seed gives the same candidates generation after generation."""
    from lamcsp.generators.genetic import min_distance_matrix, passes_screen

    runs = []
    for _ in range(2):
        *_, us = run_search("pso", {}, relaxer, _context(), 8, 4, 11)
        runs.append(us.context.population)
    assert [e.candidate.to_dict() for e in runs[0]] == [e.candidate.to_dict() for e in runs[1]]
    ops = set()
    for e in runs[0]:
        c = e.candidate
        assert sorted(c.numbers.tolist()) == [10] * 6 + [18] * 3
        assert passes_screen(c.frac, c.lattice, min_distance_matrix(c.numbers, _context()))
        ops.add(c.origin.get("operator"))
    assert ops & {"pso", "pso-migrate", "pso-clone"}  # the swarm really moved particles


def test_inertia_falls_linearly():
    pso = ParticleSwarm(w_max=0.9, w_min=0.4, max_generations=11)
    ws = []
    for g in range(11):
        pso.generation = g
        ws.append(pso.inertia())
    assert ws[0] == pytest.approx(0.9) and ws[-1] == pytest.approx(0.4)
    assert np.allclose(np.diff(ws), -0.05)


def test_lamarckian_relaxed_structure_becomes_position(relaxer):
    ctx = _context()
    pso = ParticleSwarm()
    cands = pso.propose(4, np.random.default_rng(5), ctx)
    res = relaxer.relax([c.to_atoms() for c in cands])
    evs = [Evaluated(c, Candidate.from_atoms(r.atoms), r.enthalpy_per_atom, not r.failed)
           for c, r in zip(cands, res)]
    pso.observe(evs)
    for c, ev in zip(cands, evs):
        p = next(q for q in pso.particles if q.pid == c.origin["particle"])
        proj = project_to_template(c, ev.relaxed)
        if proj is None or not ev.ok:
            continue
        assert np.allclose(p.x, to_vector(proj))
        assert p.best_h == pytest.approx(ev.enthalpy_per_atom)
        # the projected structure is the relaxed one (symmetry kept by the relaxation)
        d = from_vector(c, p.x).frac - ev.relaxed.frac
        assert np.abs(d - np.round(d)).max() < 0.05


@pytest.mark.slow
def test_swarm_reaches_ground_state_faster_than_random(relaxer):
    """Averaged over fixed seeds, PSO (60 % swarm, 40 % random) hits the ground state in
    fewer relaxations than pure symmetric random search with the same per-generation size.
    The ground state is the lowest enthalpy any run found (so neither method is told it)."""
    seeds, per_gen, gens = range(5), 12, 15
    runs: dict[str, list[tuple[list[float], int]]] = {"random": [], "pso": []}
    for name in runs:
        for seed in seeds:
            ctx = _context()
            # both on conventional cells, the setting this comparison was measured in; with
            # primitive cells (the default since the CSP benchmark) random draws this ground
            # state directly and finds it in 4 of 5 runs against the swarm's 3: the swarm's edge
            # on small cells is an open question of the benchmark (issue 5), not settled here
            options = ({"cell": "conventional"} if name == "random"
                       else {"random_options": {"cell": "conventional"}})
            *_, us = run_search(name, options, relaxer, ctx, per_gen, gens, seed)
            runs[name].append([e.enthalpy_per_atom if e.ok else np.inf for e in us.context.population])
    ground = min(min(h) for hs in runs.values() for h in hs)
    budget = per_gen * gens

    def first_hit(hs):
        hits = [k + 1 for k, h in enumerate(hs) if h < ground + 1e-3]
        return hits[0] if hits else budget + per_gen  # a miss costs more than the budget

    mean = {name: float(np.mean([first_hit(h) for h in hs])) for name, hs in runs.items()}
    found = {name: sum(first_hit(h) <= budget for h in hs) for name, hs in runs.items()}
    # the swarm reaches it in more runs, and sooner on average (a miss counts as more than the
    # budget). Not a ratio: with 5 runs one hit moves the mean by a sixth of the budget, and
    # symmetric random draws found this ground state in none of the 5 runs with either the
    # generator's own draws (pso: 2 runs) or the search's per-candidate streams (pso: 1 run)
    assert found["pso"] > found["random"], (mean, found)
    assert mean["pso"] < mean["random"], (mean, found)


@pytest.mark.parametrize("reseed", [False, True])
def test_move_into_a_held_basin_reseeds_the_particle(relaxer, reseed):
    """``reseed_duplicates``: a particle whose move relaxes back into its own best leaves the
    swarm at the next generation, and its move goes to a new random structure; without the
    option it stays and counts one wasted move."""
    ctx = _context()
    pso = ParticleSwarm(reseed_duplicates=reseed, swarm_size=100)
    rng = np.random.default_rng(3)
    cands = pso.propose(8, rng, ctx)
    res = relaxer.relax([c.to_atoms() for c in cands])
    ctx.population = [Evaluated(c, Candidate.from_atoms(r.atoms), r.enthalpy_per_atom, not r.failed)
                      for c, r in zip(cands, res)]
    pso.observe(ctx.population)
    ranked = sorted((q for q in pso.particles if q.best_x is not None), key=lambda q: q.best_h)
    # not the best (which always stays), and a best no better particle holds (else it is
    # re-seeded as a duplicate whatever the option)
    p = next(q for i, q in enumerate(ranked) if i > 0 and not any(pso._same(q, b) for b in ranked[:i]))
    back = from_vector(pso._candidate_of(p.template), p.best_x)
    move = pso._tag(Candidate.from_dict(back.to_dict()), p.pid)  # p's move, relaxed back to its best
    ctx.population = ctx.population + [Evaluated(move, back, p.best_h + 0.01)]
    out = pso.propose(8, rng, ctx)
    assert (p.pid in [q.pid for q in pso.particles]) is not reseed
    assert p.stagnant == (pso.stagnation if reseed else 1)
    assert len(out) == 8
    if reseed:  # nothing of p's is proposed: its move went to a new random structure
        assert all(c.origin["particle"] != p.pid for c in out)


@pytest.mark.parametrize("migration", ["leader", "redraw"])
def test_migration_starts_at_the_leader_or_anywhere_in_its_template(relaxer, migration):
    """A particle whose leader has another template migrates into it: ``leader`` starts it at
    the leader's best, ``redraw`` draws it afresh in that template with no personal best."""
    ctx = _context()
    pso = ParticleSwarm(mode="global", migration=migration, swarm_size=100)
    rng = np.random.default_rng(7)
    cands = pso.propose(8, rng, ctx)
    res = relaxer.relax([c.to_atoms() for c in cands])
    pso.observe([Evaluated(c, Candidate.from_atoms(r.atoms), r.enthalpy_per_atom, not r.failed)
                 for c, r in zip(cands, res)])
    pso.pending.clear()
    ranked = sorted((q for q in pso.particles if q.best_x is not None), key=lambda q: q.best_h)
    leader = ranked[0]
    p = next(q for q in ranked[1:] if q.template["spacegroup"] != leader.template["spacegroup"])
    c = pso._move(p, rng, ctx)
    assert c is not None and c.spacegroup == leader.template["spacegroup"]
    assert p.template["wyckoffs"] == leader.template["wyckoffs"]
    if migration == "leader":
        assert c.origin["operator"] == "pso-migrate"
        assert np.allclose(p.best_x, leader.best_x)
    else:
        assert c.origin["operator"] == "pso-redraw" and p.best_x is None
        n_lat = pso._n_lattice(leader.template)
        assert np.allclose(p.x[:n_lat], leader.best_x[:n_lat], rtol=0.3)
        d = p.x[n_lat:] - leader.best_x[n_lat:]
        assert d.size == 0 or np.abs(d - np.round(d)).max() > 0.05  # not the leader's coordinates
    with pytest.raises(Exception, match="migration"):
        ParticleSwarm(migration="nearest")
