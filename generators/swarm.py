"""CALYPSO's particle-swarm optimisation (PSO), global and local, in symmetry-reduced space.

Source of the method: Y. Wang, J. Lv, L. Zhu, Y. Ma, "Crystal structure prediction via
particle-swarm optimization", Phys. Rev. B 82, 094116 (2010), and the CALYPSO paper, Comput.
Phys. Commun. 183, 2063 (2012); PSO itself: J. Kennedy, R. Eberhart, Proc. IEEE ICNN (1995);
the inertia weight: Y. Shi, R. Eberhart, Proc. IEEE CEC (1998).

A particle is a structure in its symmetry-reduced coordinates (STYLE 7): the free lattice
parameters of its crystal system plus the free Wyckoff coordinates of its space group and
Wyckoff assignment (its *template*, :func:`lamcsp.generators.symmetric.to_vector`). Each
generation, for the particles chosen to move,

    v ← ω v + c1 r1 (p_best − x) + c2 r2 (l_best − x),    x ← x + v,

with ``r1, r2 ~ U(0, 1)`` drawn per component, ``c1 = c2 = 2`` (CALYPSO), and ``ω`` falling
linearly from 0.9 to 0.4 over ``max_generations`` (Shi & Eberhart). Coordinate differences
are taken by minimum image (fractional coordinates are periodic), velocities are clamped to
``v_max`` per component class, lattice lengths and angles are kept in physical ranges.

* ``p_best``: the particle's own best relaxed structure (by enthalpy per atom).
* ``l_best``: global PSO: the best ``p_best`` of all particles; local PSO (``mode="local"``,
  CALYPSO's LPSO): the best among the particle's ``n_best`` nearest neighbours by
  fingerprint distance (:mod:`lamcsp.generators.dedupe`). Differences need a common template,
  so a particle whose leader has another template *migrates*: it takes the leader's template
  and best position plus a random velocity of up to ``v_max`` (a tenth of it, relative, on the
  lattice). The swarm thus gathers in the templates of good structures, where the PSO update
  proper applies; this is our reading of PSO in symmetry-reduced coordinates, where CALYPSO
  itself differences Cartesian coordinates. With ``migration="redraw"`` a migrating particle
  instead starts afresh in the leader's template: the leader's lattice within 5 %, its free
  coordinates drawn uniformly, no personal best (a symmetry-constrained random draw in a
  template that holds a good structure; a migration that starts at the leader's best mostly
  relaxes back onto it). Measured in ``benchmarks/csp_success.py`` (method ``lamcsp_redraw``,
  11 of the 7–12-site targets, seed 1): 9 hits where the default has 11, so it stays off.
* Lamarckian: after relaxation, the relaxed structure, projected onto the template, becomes
  the particle's position.
* A leader (``x = p_best = l_best``) would not move; it gets a small Gaussian turbulence
  (Kennedy & Eberhart's "craziness"): ``turbulence`` in fractional units, a tenth of it as a
  relative lattice change.
* Re-seeding: a particle whose best has not improved for ``stagnation`` generations, or whose
  best duplicates a better particle's best (fingerprint distance below ``sim_threshold``), is
  replaced: with probability ``clone_probability`` by a new particle in the template of the
  global best (drawn by the random generator's ``from_vector`` around it), else by a fresh
  symmetric random structure.
* Duplicate moves (``reseed_duplicates``, off by default): a moved particle whose relaxation
  lands on a structure the swarm already holds (its own best or another particle's, by
  fingerprint) is re-seeded at the next generation rather than after ``stagnation`` wasted
  moves, and re-seeded particles simply leave the swarm: the moves they would have made go to
  new random structures, drawn with the swarm's other new particles (so through the search's
  energy prescreen where the swarm oversamples), not to clones or unscreened draws. Measured in
  ``benchmarks/csp_success.py`` (method ``lamcsp_dupreseed``, the 23 targets of 7–12 sites,
  seed 1) it does not pay: 10 hits against the default's 11, and the freed places fill with new
  particles that migrate into their leader's template and relax back onto it (645 migrations
  against 297, 90 % of them duplicates), so it stays off.
* Each generation, ``pso_ratio`` of the candidates come from moving particles, the rest are
  new symmetric random structures that join the swarm (CALYPSO's ``PsoRatio``, default 0.6);
  the swarm keeps its ``swarm_size`` best particles.

The particle, its template and the maps between structures and positions are
:mod:`lamcsp.generators.swarm_space`. All state the swarm carries between generations is plain
data (:meth:`ParticleSwarm.state_dict`
/ :meth:`ParticleSwarm.load_state_dict`): it is checkpointed and sent over MPI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from lamcsp.generators.base import NOT_RELAXED, Candidate, Evaluated, GenerationContext, Outcome, register

# the swarm's space (particles, templates, projection): importable from here as before
from lamcsp.generators.swarm_space import (  # noqa: E402, F401
    Particle,
    clamp_vector,
    n_lattice_params,
    passes_distances,
    project_to_template,
    template_key,
)

from lamcsp.errors import SetupError


@register("pso")
class ParticleSwarm:
    """CALYPSO's particle swarm as a :class:`~lamcsp.generators.base.Generator` (see module doc).

    Over 300 lines (and its module over 500), on purpose: its methods (observe, move, migrate,
    redraw, clone, re-seed, trim) all read and change the one swarm state (particles, pending
    proposals, the generation), and a third of the class is the documented, checked options,
    whose measured outcomes the module doc records; the pure geometry is in
    :mod:`lamcsp.generators.swarm_space`.

    Args:
        pso_ratio: fraction of each generation made by moving particles (after the first).
        mode: ``"global"`` or ``"local"`` (neighbourhoods by fingerprint).
        n_best: neighbourhood size of local PSO.
        swarm_size: particles kept (the best by personal best); default: the first
            generation's size.
        w_max, w_min: inertia schedule bounds; ``max_generations``: its length.
        c1, c2: cognitive and social coefficients.
        v_max: velocity bound, fractional units for coordinates (lattice components use
            ``v_max`` relative to the lattice length scale).
        turbulence: Gaussian kick of a particle that would not move, fractional units.
        stagnation: generations without improvement before a particle is re-seeded.
        sim_threshold: fingerprint distance under which a best duplicates a better one
            (the dedupe default when ``None``).
        clone_probability: chance a re-seeded particle spawns in the global best's template.
        random_options: options of the symmetric random generator it draws new structures from.
        migration: ``"leader"`` (a migrating particle starts at its leader's best) or
            ``"redraw"`` (anywhere in the leader's template, see the module doc).
        reseed_duplicates: re-seed a particle at once when a move relaxes into a structure the
            swarm holds, and fill re-seeded particles' moves with new random structures (see
            the module doc).
        oversample: new random structures drawn per one relaxed (default 1). Above 1 the
            search asks for ``oversample`` × the swarm's share and relaxes, among the new
            structures (with those of other oversampling generators), the ones with the
            lowest enthalpy at the start (:func:`lamcsp.stages.prescreen`); moved
            particles are always relaxed (their origin says ``prescreen: False``), and the
            new particles left out leave the swarm (:meth:`tell`).
    """

    name = "pso"

    def __init__(
        self,
        pso_ratio: float = 0.6,
        mode: str = "local",
        n_best: int = 4,
        swarm_size: int | None = None,
        w_max: float = 0.9,
        w_min: float = 0.4,
        max_generations: int = 30,
        c1: float = 2.0,
        c2: float = 2.0,
        v_max: float = 0.2,
        turbulence: float = 0.1,
        stagnation: int = 4,
        sim_threshold: float | None = None,
        clone_probability: float = 0.5,
        random_options: dict[str, Any] | None = None,
        oversample: int = 1,
        reseed_duplicates: bool = False,
        migration: str = "leader",
    ):
        if not 0.0 <= pso_ratio <= 1.0:
            raise SetupError("pso_ratio", f"must be within [0, 1], got {pso_ratio}")
        if mode not in ("global", "local"):
            raise SetupError("mode", f"unknown PSO mode {mode!r}; use global or local")
        if n_best < 1 or stagnation < 1 or max_generations < 1:
            raise SetupError("pso", "n_best, stagnation and max_generations must be at least 1")
        self.pso_ratio = float(pso_ratio)
        self.mode = mode
        self.n_best = int(n_best)
        self.swarm_size = swarm_size
        self.w_max, self.w_min, self.max_generations = float(w_max), float(w_min), int(max_generations)
        self.c1, self.c2 = float(c1), float(c2)
        self.v_max = float(v_max)
        self.turbulence = float(turbulence)
        self.stagnation = int(stagnation)
        self.sim_threshold = sim_threshold
        self.clone_probability = float(clone_probability)
        self.random_options = dict(random_options or {})
        from lamcsp.generators.symmetric import check_no_oversample, check_oversample

        check_no_oversample(self.random_options, "swarm", own=True)
        self.oversample = check_oversample(oversample)
        if not isinstance(reseed_duplicates, bool):
            raise SetupError("reseed_duplicates", f"must be true or false, got {reseed_duplicates!r}")
        self.reseed_duplicates = reseed_duplicates
        if migration not in ("leader", "redraw"):
            raise SetupError("migration", f"unknown migration {migration!r}; use leader or redraw")
        self.migration = migration
        self.particles: list[Particle] = []
        self.generation = 0
        self.next_pid = 0
        self.next_proposal = 0
        self.pending: dict[int, int] = {}  # proposal id -> particle id
        self.seen: set[int] = set()  # proposal ids already folded in
        self._random = None
        self._deduper = None

    # ---- plain-data state ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "particles": [p.to_dict() for p in self.particles],
            "generation": self.generation,
            "next_pid": self.next_pid,
            "next_proposal": self.next_proposal,
            "pending": {str(k): v for k, v in self.pending.items()},
            "seen": sorted(self.seen),
            "swarm_size": self.swarm_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.particles = [Particle.from_dict(p) for p in state["particles"]]
        self.generation = int(state["generation"])
        self.next_pid = int(state["next_pid"])
        self.next_proposal = int(state["next_proposal"])
        self.pending = {int(k): int(v) for k, v in state["pending"].items()}
        self.seen = set(int(s) for s in state["seen"])
        if state.get("swarm_size") is not None:  # fixed by the first generation when not given
            self.swarm_size = int(state["swarm_size"])

    # ---- helpers -------------------------------------------------------------------------------
    @property
    def random(self):
        if self._random is None:
            from lamcsp.generators.symmetric import SymmetricRandom

            self._random = SymmetricRandom(**self.random_options)
        return self._random

    def inertia(self) -> float:
        frac = min(1.0, self.generation / max(1, self.max_generations - 1))
        return self.w_max - (self.w_max - self.w_min) * frac

    @staticmethod
    def _template_of(c: Candidate) -> dict[str, Any]:
        return {"spacegroup": int(c.spacegroup), "wyckoffs": [w.to_dict() for w in c.wyckoffs],
                "numbers": c.numbers.tolist(), "lattice": c.lattice.tolist(), "frac": c.frac.tolist(),
                "cell": c.origin.get("cell", "conventional")}

    @staticmethod
    def _candidate_of(template: dict[str, Any]) -> Candidate:
        return Candidate.from_dict({"numbers": template["numbers"], "frac": template["frac"],
                                    "lattice": template["lattice"], "spacegroup": template["spacegroup"],
                                    "wyckoffs": template["wyckoffs"], "generator": "pso",
                                    "origin": {"cell": template.get("cell", "conventional")}})

    def _n_lattice(self, template: dict[str, Any]) -> int:
        return n_lattice_params(int(template["spacegroup"]))

    def _difference(self, a: np.ndarray, b: np.ndarray, n_lat: int) -> np.ndarray:
        """``a − b``: plain for lattice parameters, minimum image for fractional coordinates."""
        d = a - b
        d[n_lat:] -= np.round(d[n_lat:])
        return d

    @property
    def deduper(self):
        if self._deduper is None:
            from lamcsp.generators.dedupe import Deduper

            self._deduper = Deduper(sim_threshold=self.sim_threshold) if self.sim_threshold else Deduper()
        return self._deduper

    def _fingerprint(self, c: Candidate) -> np.ndarray:
        return self.deduper.describe([c])[0].fingerprint

    def _fp_distance(self, p: Particle, q: Particle) -> float:
        """Fingerprint distance of two particles' personal bests (same template, so same
        composition); ``inf`` when either is unknown."""
        if p.best_fp is None or q.best_fp is None or len(p.best_fp) != len(q.best_fp):
            return float("inf")
        from lamcsp.generators.dedupe import Fingerprinted

        z = np.asarray(p.template["numbers"])
        dummy = np.zeros((len(z), 3))
        a = Fingerprinted(z, dummy, np.eye(3), p.best_fp)
        b = Fingerprinted(z, dummy, np.eye(3), q.best_fp)
        return self.deduper.fingerprint_distance(a, b)

    def _new_particle(self, c: Candidate, x: np.ndarray | None = None) -> Particle:
        from lamcsp.generators.symmetric import to_vector

        vec = to_vector(c) if x is None else x
        p = Particle(self.next_pid, self._template_of(c), vec.copy(), np.zeros_like(vec))
        self.next_pid += 1
        return p

    # ---- feedback: fold relaxed results in (Lamarckian) ------------------------------------------
    def observe(self, evaluated: list[Evaluated]) -> None:
        """Fold in relaxed results of earlier proposals (others are ignored)."""
        from lamcsp.generators.symmetric import to_vector

        by_pid = {p.pid: p for p in self.particles}
        for ev in evaluated:
            prop = ev.candidate.origin.get("pso_proposal")
            if prop is None or prop in self.seen or prop not in self.pending:
                continue
            self.seen.add(prop)
            p = by_pid.get(self.pending.pop(prop))
            if p is None:
                continue
            p.evaluated += 1
            if not ev.ok or not np.isfinite(ev.enthalpy_per_atom):
                p.stagnant += 1
                continue
            template = self._candidate_of(p.template)
            relaxed = project_to_template(template, ev.relaxed)
            if relaxed is None:  # relaxation left the template: keep the structure out
                p.stagnant += 1
                continue
            p.x = to_vector(relaxed)
            moved = p.best_x is not None
            if ev.enthalpy_per_atom < p.best_h - 1e-6:
                p.best_h = float(ev.enthalpy_per_atom)
                p.best_x = p.x.copy()
                p.best_fp = self._fingerprint(ev.relaxed)
                p.stagnant = 0  # a best another particle holds is re-seeded by _reseed
            else:
                p.stagnant += 1
                if moved and self.reseed_duplicates and self._held(p, self._fingerprint(ev.relaxed)):
                    p.stagnant = self.stagnation  # moved into a held basin: re-seed it

    def tell(self, outcomes: Sequence[Outcome]) -> None:
        """What became of its proposals. One the search will not relax (screened out, a
        duplicate, left out by the energy prescreen, or beyond the budget): a new particle it
        would have started leaves the swarm; a moved particle stops waiting (it moves again next
        generation) and counts the wasted move towards its stagnation. The relaxed ones are
        read from ``context.population`` at the next :meth:`propose` (:meth:`observe`), where
        a resumed search finds them too."""
        by_pid = {p.pid: p for p in self.particles}
        for c in (o.candidate for o in outcomes if o.status in NOT_RELAXED):
            prop = c.origin.get("pso_proposal")
            if prop is None or prop not in self.pending:
                continue
            p = by_pid.get(self.pending.pop(prop))
            if p is None:
                continue
            if p.best_x is None:
                self.particles.remove(p)
            else:
                p.stagnant += 1

    # ---- the generator -------------------------------------------------------------------------
    def propose(self, n: int, rng: np.random.Generator, context: GenerationContext) -> list[Candidate]:
        """``n`` candidates: the swarm's share (re-seeded particles as they are, then moved
        particles, best first) and new random structures that join the swarm. With
        ``oversample`` K the search asks for K × the structures it relaxes: the swarm's share
        is of ``n // K``, and K new random structures are drawn for each one relaxed."""
        self.observe(context.population)
        k = self.oversample
        base = max(1, n // k)
        out: list[Candidate] = []
        if self.generation > 0:
            n_swarm = int(round(self.pso_ratio * base))
            for p, cand in self._reseed(rng, context)[:n_swarm]:
                out.append(self._tag(cand, p.pid))
            waiting = set(self.pending.values())
            ready = sorted(
                (p for p in self.particles if p.best_x is not None and p.pid not in waiting),
                key=lambda p: p.best_h,
            )
            for p in ready:
                if len(out) >= n_swarm:
                    break
                c = self._move(p, rng, context)
                if c is not None:
                    out.append(self._tag(c, p.pid))
        if k > 1:  # particles already in the swarm are relaxed, not ranked against new ones
            for c in out:
                c.origin["prescreen"] = False
        n_new = min(n - len(out), (base - len(out)) * k)
        if n_new > 0:
            fresh = (context.sample("random", self.random_options, n_new) if context.sample is not None
                     else self.random.propose(n_new, rng, context))  # drawn by the search where it can
            for c in fresh:
                p = self._new_particle(c)
                self.particles.append(p)
                out.append(self._tag(c, p.pid))
        self._trim(base)
        self.generation += 1
        return out

    def _tag(self, c: Candidate, pid: int) -> Candidate:
        c.generator = "pso"
        c.origin = {**c.origin, "pso_proposal": self.next_proposal, "particle": pid,
                    "pso_generation": self.generation}
        self.pending[self.next_proposal] = pid
        self.next_proposal += 1
        return c

    def _trim(self, first: int) -> None:
        """Keep ``swarm_size`` particles (default: ``first``, the structures the first
        generation relaxes): those waiting for a result, then the best."""
        if self.swarm_size is None:
            self.swarm_size = max(1, first)
        if len(self.particles) <= self.swarm_size:
            return
        waiting = set(self.pending.values())
        keep = sorted(self.particles, key=lambda p: (p.pid not in waiting, p.best_h))
        self.particles = keep[: max(self.swarm_size, len(waiting))]

    def _neighbourhood_best(self, p: Particle) -> Particle | None:
        """The best better particle among ``p``'s neighbours (global: all particles; local:
        the ``n_best`` nearest by fingerprint), whatever their template."""
        mates = [q for q in self.particles if q is not p and q.best_x is not None
                 and q.template["numbers"] == p.template["numbers"]]
        if self.mode == "local" and p.best_fp is not None:
            mates.sort(key=lambda q: self._fp_distance(p, q))
            mates = mates[: self.n_best]
        better = [q for q in mates if q.best_h < p.best_h - 1e-9]
        return min(better, key=lambda q: q.best_h) if better else None

    def _move(self, p: Particle, rng: np.random.Generator, context: GenerationContext) -> Candidate | None:
        """One PSO step of ``p``; a particle whose leader has another template migrates into
        it (position: the leader's best plus a random velocity of up to ``v_max``)."""
        from lamcsp.generators.symmetric import from_vector

        leader = self._neighbourhood_best(p)  # only particles with a best are leaders
        assert p.best_x is not None  # only particles with a best are moved
        if leader is not None and template_key(leader.template) != template_key(p.template):
            assert leader.best_x is not None
            if self.migration == "redraw":
                drawn = self._redraw_in(leader, p, rng, context)
                if drawn is not None:
                    return drawn
            p.template = dict(leader.template)
            p.x = leader.best_x.copy()
            p.best_x, p.best_h, p.best_fp = leader.best_x.copy(), leader.best_h, leader.best_fp
            n_lat = self._n_lattice(p.template)
            scale = np.ones_like(p.x)
            scale[:n_lat] = 0.1 * np.abs(p.x[:n_lat])
            p.v = rng.uniform(-self.v_max, self.v_max, p.x.size) * scale
            leader = None
            migrated = True
        else:
            migrated = False
        template = self._candidate_of(p.template)
        n_lat = self._n_lattice(p.template)
        scale = np.ones_like(p.x)
        scale[:n_lat] = np.maximum(np.abs(p.x[:n_lat]), 1.0)  # lattice moves are relative
        if migrated:
            v = p.v
        else:
            w = self.inertia()
            cog = self._difference(p.best_x, p.x, n_lat)
            soc = (self._difference(leader.best_x, p.x, n_lat)
                   if leader is not None and leader.best_x is not None else np.zeros_like(p.x))
            v = w * p.v + self.c1 * rng.random(p.x.size) * cog + self.c2 * rng.random(p.x.size) * soc
            vmax = self.v_max * scale
            v = np.clip(v, -vmax, vmax)
            if np.abs(v / scale).max() < 0.5 * self.turbulence:  # would barely move: turbulence
                kick = rng.normal(0.0, self.turbulence, p.x.size)
                kick[:n_lat] *= 0.1 * scale[:n_lat]
                v = v + kick
        for attempt in range(4):
            x = clamp_vector(template, p.x + v * (0.5**attempt))
            cand = from_vector(template, x)
            if passes_distances(cand, context):
                p.v = v * (0.5**attempt)
                p.x = x
                cand.origin = {**cand.origin, "operator": "pso-migrate" if migrated else "pso",
                               "leader": None if leader is None else leader.pid}
                return cand
        p.stagnant += 1
        return None

    def _redraw_in(self, leader: Particle, p: Particle, rng: np.random.Generator,
                   context: GenerationContext) -> Candidate | None:
        """``migration="redraw"``: ``p`` starts afresh in ``leader``'s template (its lattice
        within 5 %, free coordinates uniform, no personal best); ``None`` when no draw passes
        the distance screen (the particle then migrates to the leader's best)."""
        from lamcsp.generators.symmetric import from_vector

        assert leader.best_x is not None
        template = self._candidate_of(leader.template)
        n_lat = self._n_lattice(leader.template)
        for _ in range(8):
            x = leader.best_x.copy()
            x[:n_lat] *= 1.0 + rng.normal(0.0, 0.05, n_lat)
            x[n_lat:] = rng.random(x.size - n_lat)
            x = clamp_vector(template, x)
            cand = from_vector(template, x)
            if passes_distances(cand, context):
                p.template = dict(leader.template)
                p.x, p.v = x, np.zeros_like(x)
                p.best_x, p.best_h, p.best_fp = None, float("inf"), None
                cand.origin = {**cand.origin, "operator": "pso-redraw", "leader": leader.pid}
                return cand
        return None

    def _reseed(
        self, rng: np.random.Generator, context: GenerationContext
    ) -> list[tuple[Particle, Candidate]]:
        """Replace stagnant particles and those duplicating a better one; the replacements
        (with the candidates they start from) are returned, to be proposed as they are."""
        ready = sorted((p for p in self.particles if p.best_x is not None), key=lambda p: p.best_h)
        if not ready:
            return []
        best = ready[0]
        waiting = set(self.pending.values())
        doomed: list[Particle] = []
        for i, p in enumerate(ready):
            if p is best or p.pid in waiting:
                continue
            dup = any(self._same(p, q) for q in ready[:i])
            if dup or p.stagnant >= self.stagnation:
                doomed.append(p)
        fresh: list[tuple[Particle, Candidate]] = []
        for p in doomed:
            self.particles.remove(p)
            if self.reseed_duplicates:  # its moves go to new random structures (propose)
                continue
            made = self._clone_around(best, rng, context) if rng.random() < self.clone_probability else None
            if made is None:
                cands = self.random.propose(1, rng, context)
                made = (self._new_particle(cands[0]), cands[0]) if cands else None
            if made is not None:
                self.particles.append(made[0])
                fresh.append(made)
        return fresh

    def _held(self, p: Particle, fp: np.ndarray) -> bool:
        """Whether a structure of ``p``'s template with fingerprint ``fp`` is a particle's best
        (``p``'s own included): a move that relaxed into a basin the swarm holds."""
        probe = Particle(-1, p.template, p.x, p.v, best_fp=fp)
        return any(self._same(probe, q) for q in self.particles if q.best_x is not None)

    def _same(self, p: Particle, q: Particle) -> bool:
        """Whether two personal bests are the same structure by fingerprint."""
        return self._fp_distance(p, q) < self.deduper.sim_threshold

    def _clone_around(
        self, best: Particle, rng: np.random.Generator, context: GenerationContext
    ) -> tuple[Particle, Candidate] | None:
        """A new particle in the global best's template, drawn around its best position."""
        from lamcsp.generators.symmetric import from_vector

        template = self._candidate_of(best.template)
        n_lat = self._n_lattice(best.template)
        if best.best_x is None:
            return None
        for _ in range(4):
            x = best.best_x.copy()
            x[n_lat:] += rng.normal(0.0, 2 * self.turbulence, x.size - n_lat)
            x[:n_lat] *= 1.0 + rng.normal(0.0, 0.05, n_lat)
            x = clamp_vector(template, x)
            cand = from_vector(template, x)
            if passes_distances(cand, context):
                cand.origin = {**cand.origin, "operator": "pso-clone", "leader": best.pid}
                p = Particle(self.next_pid, self._template_of(cand), x, np.zeros_like(x))
                self.next_pid += 1
                return p, cand
        return None
