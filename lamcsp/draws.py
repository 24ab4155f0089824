"""Candidates drawn on the workers: the part of proposing that needs no coordinator.

A generator whose candidates are independent draws (a
:class:`~lamcsp.generators.base.Sampler`: the symmetric random generator) reads nothing the
coordinator holds. Candidate ``k`` of stream ``i`` of unit ``u`` in generation ``g`` comes from its
own RNG (:func:`lamcsp.units.candidate_rng`), so any worker can draw it, and the
minimum-distance screen (:func:`lamcsp.stages.screen`) runs there too. :func:`draw` sends a
generation's requests through the executor's ``map`` (one :class:`DrawTask` per generator and
options): on one rank they run in-process, under MPI on every worker while the coordinator
waits for the results. The same seed gives the same candidates on any number of ranks and in
any batching.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lamcsp.errors import SetupError
from lamcsp.parallel import Task, WorkerInfo

if TYPE_CHECKING:
    from lamcsp.generators.base import Candidate, GenerationContext

__all__ = ["DrawRequest", "DrawTask", "Drawn", "draw", "draw_task", "proposals", "sampler_for"]


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


def draw(requests: Sequence[DrawRequest], executor: Any) -> list[Drawn]:
    """The candidates of ``requests``, drawn through ``executor.map`` (one call per generator
    and options), in request order."""
    from lamcsp.generators.base import Candidate

    groups: dict[str, list[int]] = {}
    tasks: dict[str, Task] = {}
    for r, req in enumerate(requests):
        task = draw_task(req.generator, req.options)
        groups.setdefault(task.key, []).append(r)
        tasks[task.key] = task
    out: list[Drawn] = [Drawn([], []) for _ in requests]
    for key, members in groups.items():
        items, owner = [], []
        for r in members:
            req = requests[r]
            plain = _plain_context(req.context)
            for j in range(req.n):
                items.append({"context": plain, "seed": req.seed, "key": [*req.stream, *req.index, j]})
                owner.append(r)
        labels = [f"draw {requests[r].generator} {item['key']}" for r, item in zip(owner, items)]
        results = executor.map(tasks[key], items, labels=labels)
        for r, res in zip(owner, results):
            d = out[r]
            if res["error"] is not None and d.error is None:
                d.error = SetupError(*res["error"])
            cand = None if res["candidate"] is None else Candidate.from_dict(res["candidate"])
            d.candidates.append(cand)
            d.keep.append(bool(res["keep"]))
    return out


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
