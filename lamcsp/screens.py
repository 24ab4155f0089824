"""The screens of one generation, before anything is relaxed (stages of :mod:`lamcsp.stages`).

::

    screen      minimum distances (kernels.screen), one batched call
    similarity  CALYPSO's similarity screen against what the unit has seen
                (:class:`SimilarityScreen`, ``dedupe.before_relax``), topped up with new
                random structures (:func:`top_up`)
    prescreen   oversampling generators: single points, or the funnel's quench, through the
                executor; the lowest starts fill the population (:func:`prescreen`)

Each is a function (or the small :class:`SimilarityScreen`) of a unit's
:class:`~lamcsp.stages.UnitState`, the campaign and the parts it uses; :func:`lamcsp.stages.propose`
calls them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lamcsp.errors import SetupError

if TYPE_CHECKING:
    from ase import Atoms

    from lamcsp.campaign import Campaign
    from lamcsp.generators.base import Candidate, GenerationContext
    from lamcsp.generators.dedupe import Deduper
    from lamcsp.stages import UnitState

__all__ = ["TOP_UP_ROUNDS", "TOP_UP_STREAM", "SimilarityScreen", "oversample_of", "prescreen", "screen",
           "top_up"]

#: rounds of new random candidates that replace screened duplicates (dedupe.before_relax)
TOP_UP_ROUNDS = 4
#: the spawn key "generator" index of the top-up random stream
TOP_UP_STREAM = 1000


class SimilarityScreen:
    """CALYPSO's similarity screen before relaxation (``dedupe.before_relax``): structures are
    compared at the unit's target volume per atom (fingerprints depend on scale) with what the
    unit has relaxed or started from (``UnitState.seen``), by the structure matcher, without
    an energy test."""

    def __init__(self, deduper: Deduper):
        self.deduper = deduper

    def at_unit_volume(self, us: UnitState, items: Sequence[Candidate | Atoms]) -> list[Candidate]:
        """Structures scaled to the unit's target volume per atom."""
        from ase.data import atomic_numbers

        from lamcsp.generators.base import Candidate
        from lamcsp.generators.symmetric import default_element_volume

        comp = us.unit.composition  # every structure of a unit has it: one volume per atom
        volume = sum(n * default_element_volume(int(atomic_numbers[el])) for el, n in comp.items())
        v0 = us.context.volume_factor * volume / sum(comp.values())
        out = []
        for it in items:
            c = it if isinstance(it, Candidate) else Candidate.from_atoms(it)
            scale = (v0 * c.n_atoms / c.volume) ** (1.0 / 3.0)
            out.append(Candidate(c.numbers, c.frac, c.lattice * scale))
        return out

    def remember(self, us: UnitState, items: Sequence[Candidate | Atoms]) -> None:
        """Add ``items`` to what the unit has seen."""
        if us.seen is not None and items:
            us.seen.extend(self.deduper.describe(self.at_unit_volume(us, items)))

    def new(self, us: UnitState, cands: list[Candidate], executor: Any = None) -> list[bool]:
        """Which of ``cands`` are new: no duplicate among the earlier ones of the list or what
        the unit has seen. The matcher's questions go through ``executor`` where its tasks run
        on workers (:func:`lamcsp.matching.confirm_for`)."""
        from lamcsp.matching import confirm_for

        if us.seen is None or not cands:
            return [True] * len(cands)
        confirm = confirm_for(executor, self.deduper) if executor is not None else None
        entries = self.deduper.describe(self.at_unit_volume(us, cands))
        _, dup = self.deduper.unique(entries, confirm=confirm)
        known = self.deduper.against(entries, us.seen, confirm=confirm)
        return [bool(d < 0 and k < 0) for d, k in zip(dup, known)]


def top_up(us: UnitState, g: int, cands: list[Candidate], keep: np.ndarray,
           errors: list[tuple[UnitState, str, SetupError]], campaign: Campaign, seed: int,
           similarity: SimilarityScreen, executor: Any) -> list[bool]:
    """CALYPSO's similarity screen (``dedupe.before_relax``): candidates that duplicate a
    structure the unit has relaxed (or started from), or an earlier candidate, are dropped and
    replaced by new symmetric random structures (appended to ``cands``; drawn through the
    executor, :mod:`lamcsp.draws`, candidate ``j`` of round ``r`` from stream
    ``(unit, TOP_UP_STREAM, g, r, j)``), in up to ``TOP_UP_ROUNDS`` rounds; returns the new
    keep mask."""
    from lamcsp.draws import DrawRequest, draw

    ok = [bool(k) for k in keep]
    new = similarity.new(us, [c for c, k in zip(cands, ok) if k], executor)
    it = iter(new)
    ok = [k and next(it) for k in ok]
    us.screened += sum(1 for c, k in zip(cands, keep) if k) - sum(ok)
    for r in range(TOP_UP_ROUNDS):
        missing = campaign.population - sum(ok)
        if missing <= 0:
            break
        (d,) = draw([DrawRequest("random", {}, us.context, seed, (us.unit.index, TOP_UP_STREAM, g), missing,
                                 (r,))], executor)
        if d.error is not None and not any(c is not None for c in d.candidates):
            errors.append((us, "random", d.error))
            break
        extra = [c for c in d.candidates if c is not None]
        fit = [f for c, f in zip(d.candidates, d.keep) if c is not None]
        for c in extra:
            c.generator = "random"
        kept = [c for c, f in zip(extra, fit) if f]
        fresh = similarity.new(us, [c for c, k in zip(cands, ok) if k] + kept, executor)[sum(ok):]
        us.screened += len(kept) - sum(fresh)
        for c, f in zip(extra, fit):
            cands.append(c)
            ok.append(bool(f) and (fresh.pop(0) if f else False))
    return ok


def prescreen(us: UnitState, g: int, cands: list[Candidate], keep: Sequence[bool], ranked: set[int],
              campaign: Campaign, executor: Any, similarity: SimilarityScreen,
              duplicates: set[int] | None = None) -> tuple[list[bool], dict[int, float]]:
    """The energy prescreen of oversampling generators (their ``oversample`` option): of
    their candidates that passed the screens, those with the lowest enthalpy per atom at the
    start (one model call each, batched through the executor's ``evaluate``) fill what the
    other candidates leave of the population; the rest are not relaxed.

    With ``relax.quench_steps`` (the funnel) the starts are relaxed that many steps instead
    (``executor.relax``) and ranked where the quench left them; the kept ones go on from there,
    and the quenched candidates are screened again for similarity (lowest first).

    The other candidates that passed get their single point in the same call, so that the
    generation is relaxed in order of start enthalpy, lowest first (:func:`propose`): the
    in-flight batcher and the MPI coordinator start structures in that order, and a budget
    that ends within the generation keeps the most promising. Each evaluated candidate keeps
    its value in ``origin["start_enthalpy"]`` (eV/atom).

    Returns:
        the new keep mask, and the start enthalpy per atom of each kept candidate (by index;
        ``inf`` where the single point failed); the quenched candidates the similarity screen
        dropped are added to ``duplicates``.
    """
    from lamcsp.stages import candidate_key

    ok = [bool(k) for k in keep]
    pool = [k for k in sorted(ranked) if ok[k]]
    rest = [k for k, f in enumerate(ok) if f and k not in ranked]
    slots = max(0, campaign.population - len(rest))
    todo = pool + rest
    if not todo:
        return ok, {}
    # labelled with the keys they would be stored under, so that a worker lost during the
    # prescreen names what it held
    quench = campaign.relax.quench_steps
    structures = [cands[k].to_atoms() for k in todo]
    labels = [f"{candidate_key(us.unit.index, g, k)} (prescreen)" for k in todo]
    res: Sequence[Any]
    if quench:
        res = executor.relax(structures, [us.unit.pressure_gpa] * len(todo), max_steps=quench, labels=labels)
    else:  # single points
        res = executor.evaluate(structures, [us.unit.pressure_gpa] * len(todo), labels=labels)
    h = {k: float(r.enthalpy_per_atom) if not r.failed and np.isfinite(r.enthalpy_per_atom) else math.inf
         for k, r in zip(todo, res)}
    us.prescreen_calls[g] = sum(int(r.steps) + 1 for r in res) if quench else len(res)
    if quench:  # the funnel: the kept candidates are relaxed on from where the quench left them
        for k, r in zip(todo, res):
            if math.isfinite(h[k]) and r.steps > 0:
                cands[k].frac = np.asarray(r.atoms.get_scaled_positions(wrap=False), dtype=float)
                cands[k].lattice = np.asarray(r.atoms.cell.array, dtype=float)
                cands[k].origin["quench_steps"] = int(r.steps)
        if us.seen is not None:
            # the similarity screen again, on the quenched structures (lowest first, so that
            # of two quenched into one basin the lower is kept): a quench falls into its basin,
            # so a candidate bound for a structure already relaxed (a swarm move near its
            # leader, most often) shows it here, at a few steps' cost instead of a relaxation
            live = sorted((k for k in todo if math.isfinite(h[k])), key=lambda k: h[k])
            fresh = similarity.new(us, [cands[k] for k in live], executor)
            for k, f in zip(live, fresh):
                if not f:
                    ok[k] = False
                    us.screened += 1
                    if duplicates is not None:
                        duplicates.add(k)
            pool = [k for k in pool if ok[k]]
            slots = max(0, campaign.population - sum(1 for k in rest if ok[k]))
    if len(pool) > slots:
        for j in np.argsort(np.array([h[k] for k in pool]), kind="stable")[slots:]:
            ok[pool[j]] = False
        us.prescreened += len(pool) - slots
    for k in todo:
        if math.isfinite(h[k]):
            cands[k].origin["start_enthalpy"] = h[k]
    return ok, {k: h[k] for k in todo if ok[k]}


def oversample_of(generator: Any) -> int:
    """Candidates a generator draws per structure relaxed (its ``oversample`` option, 1 when it
    has none): the search relaxes the lowest-enthalpy starts among them (:func:`prescreen`)."""
    return max(1, int(getattr(generator, "oversample", 1) or 1))


def screen(candidates: Sequence[Candidate], context: GenerationContext) -> np.ndarray:
    """Which candidates keep every pair of atoms at least the context's minimum distance apart
    (``kernels.screen.distance_screen``), one batched call."""
    from ase.data import covalent_radii

    from lamcsp.kernels.screen import distance_screen

    if not candidates:
        return np.zeros(0, dtype=bool)
    zmax = max(int(c.numbers.max()) for c in candidates)
    dmin = np.zeros((zmax + 1, zmax + 1))
    zs = sorted({int(z) for c in candidates for z in c.numbers})
    for a in zs:
        for b in zs:
            d = context.min_distance.get((a, b), context.min_distance.get((b, a)))
            if d is None:
                d = context.distance_factor * (covalent_radii[a] + covalent_radii[b])
            dmin[a, b] = d
    # a little slack: generators place atoms at exactly the minimum distance
    keep, _ = distance_screen(np.concatenate([c.positions for c in candidates]),
                              np.stack([c.lattice for c in candidates]),
                              np.array([c.n_atoms for c in candidates]),
                              np.concatenate([c.numbers for c in candidates]), dmin * 0.999)
    return keep
