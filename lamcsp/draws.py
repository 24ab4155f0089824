"""Candidates drawn on the workers: the part of proposing that needs no coordinator.

A generator whose candidates are independent draws (a
:class:`~lamcsp.generators.base.Sampler`: the symmetric random generator) reads nothing the
coordinator holds. Candidate ``k`` of stream ``i`` of unit ``u`` in generation ``g`` comes from its
own RNG (:func:`lamcsp.units.candidate_rng`), so any worker can draw it, and the
minimum-distance screen (:func:`lamcsp.stages.screen`) runs there too. :func:`draw` sends a
generation's requests through the executor's ``map`` (one :class:`DrawTask` per generator and
options): on one rank they run in-process, under MPI on every worker. Since they depend on
nothing a generation returns, the search draws generation g+1's random share while g relaxes
(:func:`draw_ahead`, an :class:`Ahead` whose jobs go to the executor's ``relax(..., then=)``):
under MPI the workers that finish relaxing draw while the others still relax, and
:func:`draw` takes those candidates instead of drawing them again. The same seed gives the
same candidates on any number of ranks, in any batching, drawn ahead or not.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lamcsp.errors import SetupError
from lamcsp.parallel import Job, Task, WorkerInfo

if TYPE_CHECKING:
    from lamcsp.campaign import Campaign
    from lamcsp.generators.base import Candidate, GenerationContext
    from lamcsp.stages import UnitState

__all__ = ["Ahead", "DrawRequest", "DrawTask", "Drawn", "draw", "draw_ahead", "draw_task", "proposals",
           "sampler_for", "sampler_requests", "wanted_counts"]


@dataclasses.dataclass
class DrawRequest:
    """``n`` candidates of one generator for one unit: candidate ``j`` from
    ``candidate_rng(seed, *stream, *index, j)``.

    Args:
        generator: the registered name of a :class:`~lamcsp.generators.base.Sampler`.
        options: its options (plain data, as in the campaign).
        context: the unit's context (its ``population`` is not sent).
        seed: the campaign seed.
        stream: ``(unit, stream, generation)`` of :func:`lamcsp.units.candidate_rng`.
        n: how many.
        index: indices before ``j`` (e.g. a top-up's round).
    """

    generator: str
    options: dict[str, Any]
    context: GenerationContext
    seed: int
    stream: tuple[int, int, int]
    n: int
    index: tuple[int, ...] = ()


@dataclasses.dataclass
class Drawn:
    """One request's candidates (``None`` where a draw built nothing), which of them pass the
    distance screen, and the first :class:`~lamcsp.errors.SetupError` a draw raised (the
    request cannot be met: bad options, a composition the generator cannot build)."""

    candidates: list[Candidate | None]
    keep: list[bool]
    error: SetupError | None = None


def _plain_context(context: GenerationContext) -> dict[str, Any]:
    # a sampler reads neither the population nor the generation (the stream has it): leaving
    # them out keeps one context per unit for the whole run (DrawTask's cache)
    return {f.name: getattr(context, f.name) for f in dataclasses.fields(context)
            if f.name not in ("population", "generation", "sample")}


def draw_task(generator: str, options: dict[str, Any]) -> Task:
    """The :class:`~lamcsp.parallel.Task` that draws candidates of one generator."""
    return Task("lamcsp.draws:DrawTask", {"generator": generator, "options": dict(options)})


class DrawTask:
    """Draws candidates on a worker (a :class:`~lamcsp.parallel.Task` factory): items are
    ``{"context": plain context, "seed": int, "key": [unit, stream, generation, *index]}``,
    results ``{"candidate": Candidate.to_dict() or None, "keep": bool, "error": [field,
    message] or None}``."""

    def __init__(self, spec: dict[str, Any], worker: WorkerInfo):
        from lamcsp.generators import get_generator

        self.generator = get_generator(spec["generator"], **spec["options"])
        self._contexts: dict[bytes, GenerationContext] = {}

    def context(self, plain: dict[str, Any]) -> GenerationContext:
        from lamcsp.generators.base import GenerationContext

        key = pickle.dumps(plain)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = GenerationContext(**plain)
        return ctx

    def __call__(self, items: Sequence[dict[str, Any]], emit: Any) -> None:
        from lamcsp.stages import screen
        from lamcsp.units import candidate_rng

        for j, item in enumerate(items):
            ctx = self.context(item["context"])
            try:
                c = self.generator.draw(candidate_rng(item["seed"], *item["key"]), ctx)
            except SetupError as exc:
                emit(j, {"candidate": None, "keep": False, "error": [exc.field, exc.message]})
                continue
            keep = c is not None and bool(screen([c], ctx)[0])
            emit(j, {"candidate": None if c is None else c.to_dict(), "keep": keep, "error": None})


def draw(requests: Sequence[DrawRequest], executor: Any, ahead: Ahead | None = None) -> list[Drawn]:
    """The candidates of ``requests``, drawn through ``executor.map`` (one call per generator
    and options), in request order; those ``ahead`` already holds (the same request, drawn
    while the previous generation relaxed) are taken from it."""
    out: list[Drawn | None] = [None] * len(requests)
    if ahead is not None:
        for r, req in enumerate(requests):
            out[r] = ahead.take(req)
    todo = [r for r in range(len(requests)) if out[r] is None]
    jobs, owners = _jobs([requests[r] for r in todo])
    for job in jobs:
        job.results = executor.map(job.task, job.items, labels=job.labels)
    for r, d in zip(todo, _collect(len(todo), jobs, owners)):
        out[r] = d
    return [d for d in out if d is not None]


def _jobs(requests: Sequence[DrawRequest]) -> tuple[list[Job], list[list[int]]]:
    """The draws of ``requests`` as executor jobs, one per generator and options, and the
    request of each job's items."""
    groups: dict[str, list[int]] = {}
    tasks: dict[str, Task] = {}
    for r, req in enumerate(requests):
        task = draw_task(req.generator, req.options)
        groups.setdefault(task.key, []).append(r)
        tasks[task.key] = task
    jobs: list[Job] = []
    owners: list[list[int]] = []
    for key, members in groups.items():
        items, owner = [], []
        for r in members:
            req = requests[r]
            plain = _plain_context(req.context)
            for j in range(req.n):
                items.append({"context": plain, "seed": req.seed, "key": [*req.stream, *req.index, j]})
                owner.append(r)
        labels = [f"draw {requests[r].generator} {item['key']}" for r, item in zip(owner, items)]
        jobs.append(Job(tasks[key], items, labels))
        owners.append(owner)
    return jobs, owners


def _collect(n: int, jobs: Sequence[Job], owners: Sequence[Sequence[int]]) -> list[Drawn]:
    """The :class:`Drawn` of each of ``n`` requests from its jobs' results."""
    from lamcsp.generators.base import Candidate

    out: list[Drawn] = [Drawn([], []) for _ in range(n)]
    for job, owner in zip(jobs, owners):
        for r, res in zip(owner, job.results):
            d = out[r]
            if res["error"] is not None and d.error is None:
                d.error = SetupError(*res["error"])
            cand = None if res["candidate"] is None else Candidate.from_dict(res["candidate"])
            d.candidates.append(cand)
            d.keep.append(bool(res["keep"]))
    return out


class Ahead:
    """Draws made ahead of their generation: the random share of generation g+1 is drawn while
    g relaxes (the ``jobs`` go to the executor's ``relax(..., then=jobs)``), then
    :func:`draw` takes each request it holds instead of drawing it again. A request it holds
    gives the same candidates either way (each comes from its own stream); one it does not
    hold (a unit that changed, a generation that never came) is drawn as usual."""

    def __init__(self, requests: Sequence[DrawRequest]):
        self.requests = list(requests)
        self.jobs, self._owners = _jobs(self.requests)
        self._drawn: dict[bytes, Drawn] | None = None

    def take(self, request: DrawRequest) -> Drawn | None:
        """The candidates drawn ahead for ``request`` (``None``: not drawn ahead, or not yet)."""
        if self._drawn is None:
            if any(len(job.results) != len(job.items) for job in self.jobs):
                return None  # the relaxations stopped before these ran
            drawn = _collect(len(self.requests), self.jobs, self._owners)
            self._drawn = {_identity(r): d for r, d in zip(self.requests, drawn)}
        return self._drawn.pop(_identity(request), None)


def _identity(req: DrawRequest) -> bytes:
    """What makes two requests draw the same candidates."""
    return pickle.dumps((draw_task(req.generator, req.options).key, _plain_context(req.context), req.seed,
                         tuple(req.stream), tuple(req.index), int(req.n)))


def wanted_counts(us: UnitState, campaign: Campaign) -> list[int]:
    """How many candidates each of a unit's generators proposes (its share of the population,
    times its oversampling)."""
    from lamcsp.screens import oversample_of
    from lamcsp.units import generator_counts

    counts = generator_counts([s for _, s, _ in us.generators], campaign.population)
    return [n * oversample_of(gen) for (_, _, gen), n in zip(us.generators, counts)]


def sampler_requests(active: Sequence[UnitState], g: int, campaign: Campaign,
                     seed: int) -> list[tuple[UnitState, int, DrawRequest]]:
    """The draws of generation ``g``'s samplers (the random share) for the units ``active``:
    ``(unit, generator index, request)``."""
    from lamcsp.generators.base import is_sampler

    out = []
    for us in active:
        for gi, ((name, _, gen), n) in enumerate(zip(us.generators, wanted_counts(us, campaign))):
            options = _spec_options(campaign, gi, name)
            if n > 0 and is_sampler(gen) and options is not None:
                out.append((us, gi, DrawRequest(name, options, us.context, seed, (us.unit.index, gi, g), n)))
    return out


def draw_ahead(unit_states: Sequence[UnitState], g: int, campaign: Campaign, seed: int, *,
               spent: int) -> Ahead | None:
    """Generation ``g``'s random share (the samplers' draws of the units active now), to be
    drawn while ``g - 1`` relaxes (``relax_and_store(..., then=ahead.jobs)``) and taken by
    :func:`lamcsp.stages.propose` (``ahead=``). It depends on nothing ``g - 1`` returns: each
    candidate has its own stream (:func:`lamcsp.units.candidate_rng`), so the candidates are
    the ones :func:`~lamcsp.stages.propose` would draw. ``None`` where ``g`` will not run (the
    last generation, or the relaxation budget spent by ``spent``) or has no sampler."""
    if campaign.generations is not None and g >= campaign.generations:
        return None
    if campaign.max_relaxations is not None and spent >= campaign.max_relaxations:
        return None
    requests = sampler_requests([us for us in unit_states if us.active], g, campaign, seed)
    return Ahead([r for *_, r in requests]) if requests else None


def _spec_options(campaign: Campaign, gi: int, name: str) -> dict[str, Any] | None:
    """The options of the campaign's generator ``gi`` (from which a worker builds its own
    copy), or ``None`` where the unit's generator ``gi`` is not the campaign's (a test's)."""
    specs = campaign.generators
    return dict(specs[gi].options) if gi < len(specs) and specs[gi].name == name else None


def sampler_for(executor: Any, context: GenerationContext, seed: int, stream: tuple[int, int, int],
                first: int) -> Any:
    """The ``context.sample`` of one generator's ``propose`` (``stream``: its unit, index and
    generation): the ``c``-th call's candidate ``j`` comes from
    ``candidate_rng(seed, *stream, first + c, j)``, drawn through ``executor``; candidates
    that built nothing are left out."""
    calls = [0]

    def sample(generator: str, options: dict[str, Any], n: int) -> list[Candidate]:
        req = DrawRequest(generator, options, context, seed, stream, int(n), (first + calls[0],))
        (d,) = draw([req], executor)
        calls[0] += 1
        if d.error is not None and not any(c is not None for c in d.candidates):
            raise d.error
        return [c for c in d.candidates if c is not None]

    return sample


def proposals(generator: Any, n: int, seed: int, stream: tuple[int, int, int], context: GenerationContext,
              executor: Any = None) -> list[Candidate]:
    """What ``generator`` proposes in a search as generator ``stream[1]`` of unit ``stream[0]`` in
    generation ``stream[2]`` (before the screens): a sampler's ``n`` draws from their own
    streams, or another generator's ``propose`` with its new random structures drawn as the
    search draws them (``context.sample``). What a test or a benchmark calls to see a
    generation's candidates again."""
    from lamcsp.generators.base import is_sampler
    from lamcsp.stages import SAMPLE_STREAM
    from lamcsp.units import candidate_rng, unit_rng

    if is_sampler(generator):
        drawn = (generator.draw(candidate_rng(seed, *stream, j), context) for j in range(n))
        return [c for c in drawn if c is not None]
    if executor is None:
        from lamcsp.parallel import SerialExecutor

        executor = SerialExecutor(None)
    ctx = dataclasses.replace(context, sample=sampler_for(executor, context, seed, stream, SAMPLE_STREAM))
    return list(generator.propose(n, unit_rng(seed, *stream), ctx))[:n]
