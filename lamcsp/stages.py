"""One generation of the search as stages over plain data.

::

    propose    each active unit's generators: a sampler's candidates (the random generator's)
               drawn and distance-screened through the executor, each from its own stream
               (lamcsp.draws, lamcsp.units.candidate_rng), so on the MPI workers; the others'
               on the coordinator (lamcsp.units.unit_rng), their new random structures drawn
               like a sampler's (context.sample)
    screen     minimum distances (kernels.screen), then CALYPSO's similarity screen against what
               the unit has seen (dedupe.before_relax), topped up with new random structures
    prescreen  oversampling generators: single points (or the funnel's quench) through the
               executor; the lowest starts fill the population
    relax      the executor, results stored as they arrive (RowBuffer); the workers it leaves
               idle draw the next generation's random share meanwhile (draw_ahead)
    dedupe     per unit, within the generation and against the unit's unique structures
    tell       the relaxed population, counters and the seen structures (what the generators
               read next generation); best enthalpy and patience

Each stage is a function (or the small :class:`SimilarityScreen`) of a unit's
:class:`UnitState`, the campaign and the parts it uses (deduper, executor, store), so a test or
a benchmark calls it by its public name; :meth:`lamcsp.search.Search.run_generation` strings
them together.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lamcsp.draws import draw_ahead  # noqa: F401 - a stage, importable from here
from lamcsp.errors import SetupError
from lamcsp.faults import fault

# the screens (lamcsp.screens) are stages too: importable from here
from lamcsp.screens import (  # noqa: F401
    TOP_UP_ROUNDS,
    TOP_UP_STREAM,
    SimilarityScreen,
    oversample_of,
    prescreen,
    screen,
    top_up,
)
from lamcsp.store import result_ok
from lamcsp.units import SearchUnit, candidate_rng, unit_rng

if TYPE_CHECKING:

    from lamcsp.campaign import Campaign
    from lamcsp.draws import Ahead
    from lamcsp.generators.base import Candidate, GenerationContext, Generator
    from lamcsp.generators.dedupe import Deduper, StoredStructures
    from lamcsp.generators.dedupe_pairs import Confirm
    from lamcsp.parallel import Job
    from lamcsp.relax.relaxer import RelaxResult
    from lamcsp.store import ResultStore

__all__ = ["SAMPLE_STREAM", "TOP_UP_ROUNDS", "TOP_UP_STREAM", "RowBuffer", "SimilarityScreen", "UnitState",
           "candidate_key", "dedupe", "deduper_for", "draw_ahead", "new_unit_state", "oversample_of",
           "prescreen", "propose", "relax_and_store", "screen", "tell", "tell_not_relaxed", "top_up",
           "update_best"]

#: the first candidate-index prefix of the draws a generator asks for (``context.sample``):
#: call ``c`` of generator ``i`` draws from ``(unit, i, generation, SAMPLE_STREAM + c, j)``
SAMPLE_STREAM = 1000

#: a unit, the index of one of its candidates, and the candidate
Proposed = tuple["UnitState", int, "Candidate"]


# --------------------------------------------------------------------------------- state


@dataclasses.dataclass
class UnitState:
    """What a unit carries from one generation to the next."""

    unit: SearchUnit
    generators: list[tuple[str, float, Generator]]
    context: GenerationContext
    stored: StoredStructures
    stored_rows: list[int] = dataclasses.field(default_factory=list)
    best: float = math.inf
    history: list[float] = dataclasses.field(default_factory=list)
    stagnant: int = 0
    active: bool = True
    relaxed: int = 0
    failed: int = 0
    #: candidates not relaxed because they duplicate what ``seen`` holds (dedupe.before_relax)
    screened: int = 0
    #: candidates not relaxed because their start's enthalpy ranked them out (a generator's
    #: ``oversample``)
    prescreened: int = 0
    #: model calls of the energy prescreen by generation (single points, or ``relax.quench_steps``
    #: + 1 per candidate), written on the generation's rows as ``prescreen_calls`` (not
    #: checkpointed: a resumed generation prescreens again, the same way)
    prescreen_calls: dict[int, int] = dataclasses.field(default_factory=dict)
    #: every relaxed structure and its start, at the unit's volume per atom (not checkpointed:
    #: rebuilt from the database on resume)
    seen: StoredStructures | None = None
    #: why the unit stopped, where it did not simply run out of budget or patience
    note: str = ""
    #: the generator (index into ``generators``) of each candidate of the generation in flight
    #: (not checkpointed: a resumed generation proposes again)
    owners: dict[int, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "screened": self.screened,
            "prescreened": self.prescreened,
            "note": self.note,
            "best": None if not math.isfinite(self.best) else self.best,
            "history": [None if not math.isfinite(h) else h for h in self.history],
            "stagnant": self.stagnant,
            "active": self.active,
            "relaxed": self.relaxed,
            "failed": self.failed,
            "stored_rows": list(self.stored_rows),
            "generators": [g.state_dict() for _, _, g in self.generators],
        }


def deduper_for(campaign: Campaign) -> Deduper:
    """The campaign's deduper (its ``dedupe`` section)."""
    from lamcsp.generators.dedupe import Deduper

    d = campaign.dedupe
    return Deduper(sim_threshold=d.sim_threshold, fingerprint=d.fingerprint, use_matcher=d.use_matcher,
                   ltol=d.ltol, stol=d.stol, angle_tol=d.angle_tol, energy_tol=d.energy_tol)


def new_unit_state(unit: SearchUnit, campaign: Campaign, deduper: Deduper) -> UnitState:
    """A unit's state before its first generation: the campaign's generators, built fresh, and
    its context."""
    from lamcsp.generators import get_generator
    from lamcsp.generators.base import GenerationContext

    gens = [(g.name, g.share, get_generator(g.name, **g.options)) for g in campaign.generators]
    ctx = GenerationContext(composition=dict(unit.composition), formula_units=list(unit.formula_units),
                            spacegroups=list(campaign.system.spacegroups), pressure_gpa=unit.pressure_gpa,
                            distance_factor=campaign.system.distance_factor,
                            volume_factor=campaign.system.volume_factor)
    seen = deduper.new_store() if campaign.dedupe.before_relax else None
    return UnitState(unit, gens, ctx, deduper.new_store(), seen=seen)


# --------------------------------------------------------------------------------- propose


def propose(unit_states: Sequence[UnitState], g: int, campaign: Campaign, seed: int, *, spent: int,
            executor: Any, similarity: SimilarityScreen,
            warn: Callable[[UnitState, str, SetupError, int], None] | None = None,
            ahead: Ahead | None = None) -> list[Proposed]:
    """Every active unit's candidates of generation ``g`` that pass the screens (and the energy
    prescreen), as ``(unit, candidate index, candidate)``, within the relaxation budget
    (``spent`` relaxations so far); lowest start enthalpy first where the prescreen has it.
    Generators are told which of their candidates will not be relaxed, and why
    (:func:`tell_not_relaxed`); ``us.owners`` maps each candidate to its generator for
    :func:`tell`. ``ahead``: the samplers' draws made while the last generation relaxed
    (:func:`draw_ahead`).

    Raises:
        SetupError: no generator of any unit could build a structure.
    """
    from lamcsp.draws import draw, sampler_for, sampler_requests, wanted_counts

    out: list[Proposed] = []
    errors: list[tuple[UnitState, str, SetupError]] = []
    proposed: list[tuple[UnitState, list[Candidate], list[int | None], list[str | None]]] = []
    # the samplers' candidates first, all units' in one go through the executor (the workers
    # draw and screen them, each from its own stream; or drawn ahead, while g - 1 relaxed); the
    # other generators propose here
    active = [us for us in unit_states if us.active]
    wanted = {us.unit.index: wanted_counts(us, campaign) for us in active}
    requests = sampler_requests(active, g, campaign, seed)
    for us in active:
        us.context.generation = g
    results = draw([r for *_, r in requests], executor, ahead)
    drawn = {(us.unit.index, gi): d for (us, gi, _), d in zip(requests, results)}
    for us in active:
        cands: list[Candidate] = []
        owner: list[int | None] = []  # the generator (index) of each candidate
        ranked: set[int] = set()  # indices of the candidates the energy prescreen ranks
        passed: list[bool | None] = []  # the distance screen, where a worker ran it
        for gi, ((name, _, gen), n) in enumerate(zip(us.generators, wanted[us.unit.index])):
            if n == 0:
                continue
            k = oversample_of(gen)
            flags: list[bool | None]
            d = drawn.get((us.unit.index, gi))
            if d is not None:
                got = [c for c in d.candidates if c is not None]
                flags = [f for c, f in zip(d.candidates, d.keep) if c is not None]
                if d.error is not None and not got:  # this composition cannot be built by it
                    errors.append((us, name, d.error))
                elif not got:  # not one draw built a structure: propose says why, or builds one
                    try:
                        rng = candidate_rng(seed, us.unit.index, gi, g, n)
                        got = list(gen.propose(1, rng, us.context))[:1]
                    except SetupError as exc:
                        errors.append((us, name, exc))
                    flags = [None] * len(got)
            else:  # its new random structures are drawn where the executor runs (context.sample)
                stream = (us.unit.index, gi, g)
                us.context.sample = sampler_for(executor, us.context, seed, stream, SAMPLE_STREAM)
                try:
                    got = list(gen.propose(n, unit_rng(seed, us.unit.index, gi, g), us.context))[:n]
                except SetupError as exc:  # this composition cannot be built by this generator
                    errors.append((us, name, exc))
                    got = []
                finally:
                    us.context.sample = None
                flags = [None] * len(got)
            for c in got:
                c.generator = name
            if k > 1:  # all but those the generator asks to relax (a swarm's moved particles)
                ranked.update(len(cands) + j for j, c in enumerate(got) if c.origin.get("prescreen", True))
            cands.extend(got)
            owner.extend([gi] * len(got))
            passed.extend(flags)
        here = [j for j, f in enumerate(passed) if f is None]
        keep = np.array([bool(f) for f in passed], dtype=bool)
        if here:
            keep[here] = screen([cands[j] for j in here], us.context)
        why: list[str | None] = [None if f else "screened" for f in keep]  # why not relaxed
        if us.seen is not None:
            keep = top_up(us, g, cands, keep, errors, campaign, seed, similarity, executor)
            why += [None if f else "screened" for f in keep[len(why):]]  # the top-up's
            why = [w or (None if f else "duplicate") for w, f in zip(why, keep)]
        owner.extend([None] * (len(cands) - len(owner)))  # the top-up's random structures
        proposed.append((us, cands, owner, why))
        us.owners = {k: gi for k, gi in enumerate(owner) if gi is not None}
        start: dict[int, float] = {}
        if ranked:
            dup: set[int] = set()
            keep, start = prescreen(us, g, cands, keep, ranked, campaign, executor, similarity, dup)
            why = [w or (None if f else "duplicate" if k in dup else "prescreened")
                   for k, (w, f) in enumerate(zip(why, keep))]
            proposed[-1] = (us, cands, owner, why)
        if not any(keep) and us.seen is not None and not any(e[0] is us for e in errors):
            us.active = False
            us.note = "every new candidate duplicated one already relaxed"
        # where the prescreen has the starts' enthalpies, the lowest is relaxed first
        kept = sorted((k for k in range(len(cands)) if keep[k]), key=lambda k: start.get(k, math.inf))
        out.extend((us, k, cands[k]) for k in kept)
    if errors and not out:  # nothing at all can be built: a campaign error, not bad luck
        exc = errors[0][2]
        raise SetupError(exc.field, f"no generator could build a structure of {errors[0][0].unit.label} "
                                    f"({errors[0][1]}): {exc.message}")
    if warn is not None:
        for us, name, exc in errors:
            warn(us, name, exc, g)
    if campaign.max_relaxations is not None:
        out = out[: max(0, campaign.max_relaxations - spent)]
    tell_not_relaxed(proposed, out)
    return out


def tell_not_relaxed(proposed: list[tuple[UnitState, list[Candidate], list[int | None], list[str | None]]],
                     out: list[Proposed]) -> None:
    """Tell each generator which of its candidates will not be relaxed, and why (an
    :class:`~lamcsp.generators.base.Outcome` each: ``screened``, ``duplicate``,
    ``prescreened``, or ``budget`` for one that passed but lies beyond the budget), so that it
    does not wait for their results (the swarm drops the particles they would have started)."""
    from lamcsp.generators.base import Outcome

    relaxed = {(us.unit.index, k) for us, k, _ in out}
    for us, cands, owner, why in proposed:
        told: dict[int, list[Outcome]] = {}
        for k, (c, gi) in enumerate(zip(cands, owner)):
            if gi is not None and (us.unit.index, k) not in relaxed:
                told.setdefault(gi, []).append(Outcome(c, why[k] or "budget"))
        for gi, outcomes in told.items():
            us.generators[gi][2].tell(outcomes)


# --------------------------------------------------------------------------------- relax


def relax_and_store(todo: Sequence[Proposed], g: int, store: ResultStore, executor: Any,
                    row_item: Callable[..., dict[str, Any]],
                    then: Sequence[Job] = ()) -> tuple[list[RelaxResult], list[int]]:
    """Relax generation ``g``'s candidates through the executor and store each result as it
    arrives (:class:`RowBuffer`; ``row_item(result, key, **kw)`` makes its row). A candidate
    already stored under its key (relaxed before an interruption) is read back, not relaxed
    again. ``then``: jobs for the workers the relaxations leave idle (the next generation's
    draws, :func:`draw_ahead`). Returns the results and their row ids, in the order of
    ``todo``."""
    from lamcsp.relax.relaxer import atoms_to_dict
    from lamcsp.store import result_of_row

    keys = [candidate_key(us.unit.index, g, k) for us, k, _ in todo]
    stored = {r.key: r for r in store.rows(role="search", generation=g)}
    results: list[Any] = [None] * len(todo)
    row_ids: list[Any] = [None] * len(todo)
    for i, key in enumerate(keys):
        if key in stored:  # relaxed before an interruption: read back, not relaxed again
            _check_same_start(stored[key], todo[i][2], key)
            results[i], row_ids[i] = result_of_row(stored[key]), int(stored[key].id)
    buffer = RowBuffer(store)
    pending = [i for i in range(len(todo)) if results[i] is None]

    def store_one(j: int, result: RelaxResult) -> None:
        fault("relaxed")
        i = pending[j]
        us, k, cand = todo[i]
        results[i] = result
        data: dict[str, Any] = {"candidate": cand.to_dict()}
        if result.frames:  # relaxation-trajectory frames, for the fine-tune loop
            data["frames"] = [atoms_to_dict(a) for a in result.frames]
        buffer.add(i, row_item(result, keys[i], role="search", generation=g, generator=cand.generator,
                               unit=us.unit.index, candidate=k, deduped=False, data=data,
                               extra={"order": i, "prescreen_calls": us.prescreen_calls.get(g, 0)}))
        for i2, rid in buffer.ready():
            row_ids[i2] = rid

    if pending or then:
        try:
            executor.relax([todo[i][2].to_atoms() for i in pending],
                           [todo[i][0].unit.pressure_gpa for i in pending], on_result=store_one,
                           labels=[keys[i] for i in pending], then=then)
        finally:  # what arrived is stored, also when a worker failed
            for i, rid in buffer.flush():
                row_ids[i] = rid
    return results, row_ids


def _check_same_start(row: Any, cand: Candidate, key: str) -> None:
    """A row read back on ``--resume`` must hold the candidate proposed again under its key: a
    generation interrupted under a lamcsp that drew candidates differently (before the
    per-candidate streams of :mod:`lamcsp.draws`) cannot be finished by this one."""
    was = (row.data or {}).get("candidate")
    if was is None:
        return
    # loose: a funnel's quench, run again in other batches, may move a start by rounding
    same = (list(was["numbers"]) == cand.numbers.tolist()
            and np.allclose(was["lattice"], cand.lattice, atol=1e-3)
            and np.allclose(was["frac"], cand.frac, atol=1e-3))
    if not same:
        raise SetupError("--resume", f"row {key} of generation {row.generation} holds another structure "
                                     "than the candidate proposed again under its key: that generation was "
                                     "interrupted under a lamcsp version that drew candidates differently. "
                                     "Finish the run with that version, or start a new run (nothing was "
                                     "changed)")


# --------------------------------------------------------------------------------- after relaxing


def dedupe(us: UnitState, results: list[RelaxResult], rows: list[int | None],
           updates: dict[int, dict[str, Any]], deduper: Deduper, store: ResultStore,
           confirm: Confirm | None = None) -> None:
    """Dedupe one unit's results of a generation (row ids ``rows``) within the generation and
    against the unit's unique structures (``us.stored``; a lower new copy replaces the stored
    representative). The rows' new flags go to ``updates`` (row id -> key values), written by
    the caller in one transaction. ``confirm`` answers the matcher's questions (on the
    workers: :func:`lamcsp.matching.confirm_for`; default: here)."""
    ok = [j for j, r in enumerate(results) if result_ok(r)]
    for j in range(len(results)):
        if j not in ok:
            updates[rows[j]] = {"unique": False, "duplicate_of": 0, "deduped": True}
    if not ok:
        return
    energies = [float(results[j].enthalpy_per_atom) for j in ok]
    entries = deduper.describe([results[j].atoms for j in ok], energies)
    reps, dup = deduper.unique(entries, confirm=confirm)
    match = deduper.against([entries[r] for r in reps], us.stored, confirm=confirm)
    final: dict[int, int] = {}  # position in `ok` -> row id it stands for
    for r, m in zip(reps, match):
        rid = rows[ok[r]]
        if m < 0:
            us.stored.append(entries[r])
            us.stored_rows.append(rid)
            final[r] = rid
            updates[rid] = {"unique": True, "duplicate_of": 0, "deduped": True}
            continue
        old = us.stored_rows[m]
        old_h = us.stored.entries[m].energy
        if old_h is not None and entries[r].energy < old_h:  # the new copy is lower: it represents
            us.stored.replace(int(m), entries[r])
            us.stored_rows[m] = rid
            final[r] = rid
            updates[rid] = {"unique": True, "duplicate_of": 0, "deduped": True}
            updates[old] = {"unique": False, "duplicate_of": rid, "deduped": True}
            for row in store.rows(duplicate_of=old):
                updates[int(row.id)] = {**updates.get(int(row.id), {}), "duplicate_of": rid}
        else:
            final[r] = old
            updates[rid] = {"unique": False, "duplicate_of": old, "deduped": True}
    for a, d in enumerate(dup):
        if d >= 0:
            updates[rows[ok[a]]] = {"unique": False, "duplicate_of": final[int(d)], "deduped": True}


def tell(us: UnitState, relaxed: Sequence[tuple[int, Candidate]], results: Sequence[RelaxResult],
         similarity: SimilarityScreen, campaign: Campaign) -> None:
    """Fold a unit's relaxed candidates (``(candidate index, candidate)``) back: each generator
    is told the outcomes of its own (``ok`` or ``failed``, the relaxed structure and its
    enthalpy per atom); the relaxed population (what the evolutionary generators read next
    generation), the counters, what the unit has seen (the starts and the ok results) and its
    best enthalpy and patience (:func:`update_best`)."""
    from lamcsp.generators.base import Candidate, Evaluated, Outcome

    told: dict[int, list[Outcome]] = {}
    candidates = [c for _, c in relaxed]
    for (k, cand), r in zip(relaxed, results):
        ok = result_ok(r)
        h = float(r.enthalpy_per_atom) if ok else math.inf
        relaxed_as = Candidate.from_atoms(r.atoms)
        us.context.population.append(Evaluated(cand, relaxed_as, h, ok))
        us.relaxed += 1
        us.failed += int(not ok)
        gi = us.owners.get(k)
        if gi is not None:
            told.setdefault(gi, []).append(Outcome(cand, "ok" if ok else "failed", relaxed_as, h))
    for gi, outcomes in sorted(told.items()):
        us.generators[gi][2].tell(outcomes)
    similarity.remember(us, list(candidates) + [r.atoms for r in results if result_ok(r)])
    update_best(us, results, campaign)


def update_best(us: UnitState, results: Sequence[RelaxResult], campaign: Campaign) -> None:
    """The unit's best enthalpy per atom and patience after a generation (``results``: its
    relaxations, none when it proposed nothing): it stops after ``stop.patience`` generations
    without an improvement over ``stop.min_improvement``."""
    hs = [float(r.enthalpy_per_atom) for r in results if result_ok(r)]
    new = min(hs) if hs else math.inf
    if new < us.best - campaign.stop.min_improvement:
        us.stagnant = 0
    else:
        us.stagnant += 1
    us.best = min(us.best, new)
    us.history.append(us.best)
    patience = campaign.stop.patience
    if patience is not None and us.stagnant >= patience:
        us.active = False


# --------------------------------------------------------------------------------- helpers


class RowBuffer:
    """Relaxation results on their way to the store, written one transaction per batch.

    A commit costs about as much as writing a whole row (the database's fsync), so results that
    arrive close together are written together: the buffer is written when it holds ``rows``
    results, or when its oldest result has waited ``seconds`` by the time another arrives, and
    by :meth:`flush`. A kill loses at most what the buffer holds; those candidates are relaxed
    again on ``--resume`` (a stored row is never lost, nor written twice). Measured in
    ``benchmarks/mpi_scaling.py``.
    """

    def __init__(self, store: ResultStore, rows: int = 256, seconds: float = 2.0):
        self.store = store
        self.rows = rows
        self.seconds = seconds
        self._tags: list[Any] = []
        self._items: list[dict[str, Any]] = []
        self._since = 0.0

    def add(self, tag: Any, item: dict[str, Any]) -> None:
        """Queue one row (``item``: the arguments of :meth:`ResultStore.add`) under ``tag``."""
        if not self._items:
            self._since = time.monotonic()
        self._tags.append(tag)
        self._items.append(item)

    def ready(self) -> list[tuple[Any, int]]:
        """Write the queue if it is full or old enough; ``(tag, row id)`` of what was written."""
        if len(self._items) >= self.rows or time.monotonic() - self._since >= self.seconds:
            return self.flush()
        return []

    def flush(self) -> list[tuple[Any, int]]:
        """Write the queue now (one transaction); ``(tag, row id)`` of what was written."""
        if not self._items:
            return []
        ids = self.store.add_many(self._items)
        out = list(zip(self._tags, ids))
        self._tags, self._items = [], []
        return out


def candidate_key(unit: int, generation: int, candidate: int) -> str:
    """The key a relaxed candidate is stored under (``u<unit>-g<generation>-c<candidate>``)."""
    return f"u{unit}-g{generation}-c{candidate}"
