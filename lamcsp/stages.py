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
    relax      the executor, each result journaled as it arrives (lamcsp.inflight); the
               workers it leaves idle draw the next generation's random share meanwhile
               (draw_ahead)
    dedupe     per unit, within the generation and against the unit's unique structures
    tell       the relaxed population, counters and the seen structures (what the generators
               read next generation); best enthalpy and patience
    write      the generation's rows, each with its dedupe flags, in one transaction
               (write_rows); then the journal goes

Each stage is a function (or the small :class:`SimilarityScreen`) of a unit's
:class:`UnitState`, the campaign and the parts it uses (deduper, executor, store), so a test or
a benchmark calls it by its public name; :meth:`lamcsp.search.Search.run_generation` strings
them together.
"""

from __future__ import annotations

import dataclasses
import math
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
    from lamcsp.inflight import GenerationJournal
    from lamcsp.parallel import Job
    from lamcsp.relax.relaxer import RelaxResult
    from lamcsp.store import ResultStore

__all__ = ["SAMPLE_STREAM", "TOP_UP_ROUNDS", "TOP_UP_STREAM", "Relaxed", "SimilarityScreen", "UnitState",
           "candidate_key", "dedupe", "deduper_for", "draw_ahead", "new_unit_state", "oversample_of",
           "pending", "prescreen", "propose", "relax_and_store", "screen", "tell", "tell_not_relaxed",
           "top_up", "update_best", "write_rows"]

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


@dataclasses.dataclass
class Relaxed:
    """A generation's relaxations (:func:`relax_and_store`), in the order of its candidates:
    each result, its row (the row id where it is stored already, else the placeholder
    :func:`pending` until :func:`write_rows` writes it) and, for the rows not yet stored, what
    :meth:`~lamcsp.store.ResultStore.add` needs (``items``, by position)."""

    results: list[RelaxResult]
    rows: list[int]
    items: dict[int, dict[str, Any]]


def pending(i: int) -> int:
    """The placeholder row id of the generation's ``i``-th result until its row is written
    (negative: real row ids start at 1)."""
    return -(i + 1)


def relax_and_store(todo: Sequence[Proposed], g: int, store: ResultStore, executor: Any,
                    row_item: Callable[..., dict[str, Any]], journal: GenerationJournal,
                    then: Sequence[Job] = (), meanwhile: Callable[[], None] | None = None) -> Relaxed:
    """Relax generation ``g``'s candidates through the executor; each result goes to the
    ``journal`` as it arrives (:mod:`lamcsp.inflight`; ``row_item(result, key, **kw)`` makes
    its row), and :func:`write_rows` writes the rows with their dedupe flags. A candidate whose
    result is stored or journaled already (relaxed before an interruption) is read back, not
    relaxed again. ``then``: jobs for the workers the relaxations leave idle (the next
    generation's draws, :func:`draw_ahead`); ``meanwhile``: the caller's work while the
    workers relax (the last generation's rows), run whether or not anything is relaxed."""
    from ase.db.core import now

    from lamcsp.relax.relaxer import RelaxResult, atoms_to_dict
    from lamcsp.store import plain, result_of_row

    keys = [candidate_key(us.unit.index, g, k) for us, k, _ in todo]
    stored = {r.key: r for r in store.rows(role="search", generation=g)}
    journaled = journal.read()
    out = Relaxed([None] * len(todo), [pending(i) for i in range(len(todo))], {})  # type: ignore[list-item]
    for i, key in enumerate(keys):
        if key in stored:  # relaxed and written before an interruption
            _check_same_start((stored[key].data or {}).get("candidate"), todo[i][2], key, g)
            out.results[i], out.rows[i] = result_of_row(stored[key]), int(stored[key].id)
        elif key in journaled:  # relaxed before an interruption, not written yet
            rec = journaled[key]
            _check_same_start(rec["item"]["data"].get("candidate"), todo[i][2], key, g)
            out.results[i] = RelaxResult.from_dict(rec["result"])
            out.items[i] = {**rec["item"], "result": out.results[i]}
    todo_idx = [i for i in range(len(todo)) if out.results[i] is None]

    def store_one(j: int, result: RelaxResult) -> None:
        fault("relaxed")
        i = todo_idx[j]
        us, k, cand = todo[i]
        out.results[i] = result
        data: dict[str, Any] = {"candidate": cand.to_dict()}
        if result.frames:  # relaxation-trajectory frames, for the fine-tune loop
            data["frames"] = [atoms_to_dict(a) for a in result.frames]
        item = row_item(result, keys[i], role="search", generation=g, generator=cand.generator,
                        unit=us.unit.index, candidate=k, data=data,
                        extra={"order": i, "prescreen_calls": us.prescreen_calls.get(g, 0)})
        item["ctime"] = now()  # when it arrived, not when the generation's rows are written
        out.items[i] = item
        journal.add(keys[i], {"result": result.to_dict(),
                              "item": plain({k: v for k, v in item.items() if k != "result"})})

    if todo_idx or then:
        try:
            executor.relax([todo[i][2].to_atoms() for i in todo_idx],
                           [todo[i][0].unit.pressure_gpa for i in todo_idx], on_result=store_one,
                           labels=[keys[i] for i in todo_idx], then=then, meanwhile=meanwhile)
        finally:  # what arrived is on the disk, also when a worker failed
            journal.close()
    elif meanwhile is not None:
        meanwhile()
    return out


def write_rows(store: ResultStore, relaxed: Relaxed, updates: dict[int, dict[str, Any]],
               unit_states: Sequence[UnitState]) -> dict[int, int]:
    """Write a generation's rows, each with its dedupe flags (``updates``: row or placeholder
    -> key values, from :func:`dedupe`), and the new flags of rows stored before (a
    representative that a lower copy replaced), in one transaction; then the placeholders in
    the units' ``stored_rows`` become the row ids (returned: placeholder -> row id). The
    representatives are written first, so that their duplicates can name their ids."""
    ids: dict[int, int] = {}

    def target(i: int) -> int:  # the row (or placeholder) row i duplicates, 0 for none
        return int(updates.get(pending(i), {}).get("duplicate_of", 0))

    def flagged(i: int) -> dict[str, Any]:
        kv = dict(updates.get(pending(i), {}))
        item = dict(relaxed.items[i])
        dup = int(kv.pop("duplicate_of", 0))
        item["unique"] = bool(kv.pop("unique", item["unique"]))
        item["duplicate_of"] = ids.get(dup, 0) if dup < 0 else dup
        item["extra"] = {**item["extra"], **kv}
        return item

    with store.transaction():
        left = sorted(relaxed.items)
        while left:  # rows whose representative has its id first (a chain takes more rounds)
            part = [i for i in left if target(i) >= 0 or target(i) in ids] or left
            written = store.add_many([flagged(i) for i in part])
            ids.update((pending(i), rid) for i, rid in zip(part, written))
            for _ in part:
                fault("dedupe-write")
            left = [i for i in left if pending(i) not in ids]
        for rid, kv in sorted(updates.items()):
            if rid > 0:  # stored before: a replaced representative, or a row read back on --resume
                dup = kv.get("duplicate_of")
                store.update(rid, **({**kv, "duplicate_of": ids[dup]} if dup is not None and dup < 0 else kv))
    for i, rid in ids.items():
        relaxed.rows[-i - 1] = rid
    for us in unit_states:
        us.stored_rows = [ids.get(r, r) for r in us.stored_rows]
    return ids


def _check_same_start(was: dict[str, Any] | None, cand: Candidate, key: str, g: int) -> None:
    """A result read back on ``--resume`` (``was``: the candidate stored with it) must hold the
    candidate proposed again under its key: a generation interrupted under a lamcsp that drew
    candidates differently (before the per-candidate streams of :mod:`lamcsp.draws`) cannot be
    finished by this one."""
    if was is None:
        return
    # loose: a funnel's quench, run again in other batches, may move a start by rounding
    same = (list(was["numbers"]) == cand.numbers.tolist()
            and np.allclose(was["lattice"], cand.lattice, atol=1e-3)
            and np.allclose(was["frac"], cand.frac, atol=1e-3))
    if not same:
        raise SetupError("--resume", f"row {key} of generation {g} holds another structure "
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


def candidate_key(unit: int, generation: int, candidate: int) -> str:
    """The key a relaxed candidate is stored under (``u<unit>-g<generation>-c<candidate>``)."""
    return f"u{unit}-g{generation}-c{candidate}"
