"""Dedupe's StructureMatcher confirmations on the workers.

:class:`~lamcsp.generators.dedupe.Deduper` asks its matcher questions in bulk through a
:class:`~lamcsp.generators.dedupe_pairs.Confirm` (:mod:`lamcsp.generators.dedupe_pairs`).
:class:`ExecutorConfirm` sends them through the executor's ``map`` as :class:`MatchTask` items:
each item a few hundred pairs (``pairs_per_task``), with the reduced cells it needs as plain
arrays (lattice, atomic numbers, fractional coordinates: :meth:`Fingerprinted.reduced_cell`),
so a worker answers with the matcher alone; cells not reduced yet are reduced on the workers
first (:class:`ReduceTask`, once per structure). :func:`confirm_for` gives the
run's confirmer: the executor's where it has other processes to answer, else ``None``
(the deduper's own, in this process, which asks exactly the pairs the greedy pass needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lamcsp.parallel import Task, WorkerInfo

if TYPE_CHECKING:
    from lamcsp.generators.dedupe import Deduper, Fingerprinted
    from lamcsp.generators.dedupe_pairs import Question

__all__ = ["CELLS_KEPT", "PAIRS_PER_TASK", "ExecutorConfirm", "MatchTask", "ReduceTask", "confirm_for",
           "match_task"]

#: reduced cells a worker keeps built (a few kB each)
CELLS_KEPT = 5000

#: matcher pairs per map item: a ``fit`` takes about a millisecond on these cells, so a few
#: hundred make an item whose messaging is small beside its work
PAIRS_PER_TASK = 256


def match_task(deduper: Deduper) -> Task:
    """The :class:`~lamcsp.parallel.Task` that answers ``deduper``'s matcher questions."""
    return Task("lamcsp.matching:MatchTask", {"matcher_options": dict(deduper.matcher_options)})


def _plain(deduper: Deduper, entry: Fingerprinted) -> dict[str, Any]:
    opts = deduper.matcher_options
    if opts.get("ignored_species"):  # such a matcher reduces after dropping species: the plain cell
        return {"lattice": entry.lattice, "numbers": entry.numbers, "frac": entry.frac, "reduced": False}
    lattice, numbers, frac = entry.reduced_cell(bool(opts.get("primitive_cell", True)))
    return {"lattice": lattice, "numbers": numbers, "frac": frac, "reduced": True}


class MatchTask:
    """Answers matcher questions on a worker (a :class:`~lamcsp.parallel.Task` factory):
    items are ``{"cells": [plain cell, ...], "questions": [[entry, [candidate, ...]], ...],
    "stop": bool}`` (cells by position), results the answers, one list of bools per question
    (:class:`~lamcsp.generators.dedupe_pairs.InProcess`)."""

    def __init__(self, spec: dict[str, Any], worker: WorkerInfo):
        from lamcsp.generators.dedupe import Deduper

        self.deduper = Deduper(matcher_options=spec["matcher_options"])
        self.primitive = bool(spec["matcher_options"].get("primitive_cell", True))
        self._cells: dict[bytes, Fingerprinted] = {}

    def cell(self, c: dict[str, Any]) -> Fingerprinted:
        """The entry of a plain cell, kept (the ``CELLS_KEPT`` most recent): a cell comes in
        many items, and building its pymatgen structure was a quarter of a worker's time."""
        from lamcsp.generators.dedupe import Fingerprinted

        key = b"".join(np.ascontiguousarray(c[k]).tobytes() for k in ("lattice", "numbers", "frac"))
        key += bytes([c["reduced"]])
        entry = self._cells.pop(key, None)
        if entry is None:
            entry = (Fingerprinted.from_reduced_cell(c["lattice"], c["numbers"], c["frac"], self.primitive)
                     if c["reduced"] else Fingerprinted(c["numbers"], c["frac"], c["lattice"], []))
        self._cells[key] = entry  # the most recently used last
        while len(self._cells) > CELLS_KEPT:
            del self._cells[next(iter(self._cells))]
        return entry

    def __call__(self, items: Sequence[dict[str, Any]], emit: Any) -> None:
        from lamcsp.generators.dedupe_pairs import InProcess

        ask = InProcess(self.deduper.matches)
        for j, item in enumerate(items):
            cells = [self.cell(c) for c in item["cells"]]
            questions = [(cells[e], [cells[c] for c in cs]) for e, cs in item["questions"]]
            emit(j, ask(questions, bool(item["stop"])))


class ReduceTask:
    """Reduces cells on a worker as ``StructureMatcher`` would (a :class:`~lamcsp.parallel.Task`
    factory; :meth:`Fingerprinted.reduced`): items ``{"lattice", "numbers", "frac"}``, results
    the reduced cell in the same form."""

    def __init__(self, spec: dict[str, Any], worker: WorkerInfo):
        self.primitive = bool(spec["primitive"])

    def __call__(self, items: Sequence[dict[str, Any]], emit: Any) -> None:
        from lamcsp.generators.dedupe import Fingerprinted

        for j, it in enumerate(items):
            lattice, numbers, frac = Fingerprinted(it["numbers"], it["frac"], it["lattice"], []).reduced_cell(
                self.primitive)
            emit(j, {"lattice": lattice, "numbers": numbers, "frac": frac})


class ExecutorConfirm:
    """A :class:`~lamcsp.generators.dedupe_pairs.Confirm` whose answers come from
    ``executor.map`` (:class:`MatchTask`): speculative, since a round costs a map call.

    Args:
        executor: the run's :class:`~lamcsp.parallel.Executor`.
        deduper: whose matcher options the workers use.
        pairs_per_task: matcher pairs per map item (a question is never split).
    """

    speculative = True

    def __init__(self, executor: Any, deduper: Deduper, pairs_per_task: int = PAIRS_PER_TASK):
        self.executor = executor
        self.deduper = deduper
        self.task = match_task(deduper)
        self.pairs_per_task = int(pairs_per_task)

    def reduce(self, entries: Sequence[Fingerprinted]) -> None:
        """Reduce the cells of ``entries`` not reduced yet on the workers, once each (the
        reduction costs about as much as a ``fit``)."""
        opts = self.deduper.matcher_options
        primitive = bool(opts.get("primitive_cell", True))
        todo = list({id(e): e for e in entries if not e.has_reduced(primitive)}.values())
        if not todo or opts.get("ignored_species"):
            return
        task = Task("lamcsp.matching:ReduceTask", {"primitive": primitive})
        items = [{"lattice": e.lattice, "numbers": e.numbers, "frac": e.frac} for e in todo]
        for e, r in zip(todo, self.executor.map(task, items, labels=["dedupe reduce"] * len(items))):
            e.give_reduced_cell(r["lattice"], r["numbers"], r["frac"], primitive)

    def __call__(self, questions: Sequence[Question], stop: bool = True) -> list[list[bool]]:
        self.reduce([e for entry, candidates in questions for e in (entry, *candidates)])
        items: list[dict[str, Any]] = []
        cells: dict[int, int] = {}  # id(entry) -> position in the current item's cells
        pairs = 0
        for entry, candidates in questions:
            if not items or (pairs and pairs + len(candidates) > self.pairs_per_task):
                items.append({"cells": [], "questions": [], "stop": stop})
                cells, pairs = {}, 0
            item = items[-1]
            refs = []
            for e in (entry, *candidates):
                if id(e) not in cells:
                    cells[id(e)] = len(item["cells"])
                    item["cells"].append(_plain(self.deduper, e))
                refs.append(cells[id(e)])
            item["questions"].append([refs[0], refs[1:]])
            pairs += len(candidates)
        labels = [f"dedupe matcher questions {k}" for k in range(len(items))]
        answers = self.executor.map(self.task, items, labels=labels)
        return [list(a) for batch in answers for a in batch]


def confirm_for(executor: Any, deduper: Deduper) -> ExecutorConfirm | None:
    """The run's confirmer: through ``executor`` where its tasks run in other processes
    (``executor.workers``), else ``None`` (the deduper's own, here: the same answers, and no
    speculative questions)."""
    return ExecutorConfirm(executor, deduper) if executor.workers > 0 else None
