"""Resuming a search (``lamcsp search --resume``): the state after the last completed generation.

The checkpoint holds the counters, the generators' ``state_dict()`` and the row ids of each
unit's stored representatives; the relaxed populations, what the units have seen and the
representatives' fingerprints are rebuilt from the database's rows of the generations before
the checkpoint's (see :mod:`lamcsp.search` for what the rerun of an interrupted generation
reads back).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from lamcsp.errors import SetupError
from lamcsp.store import h_now, result_ok

if TYPE_CHECKING:
    from lamcsp.search import Search

__all__ = ["restore"]


def restore(search: Search, state: dict[str, Any]) -> None:
    """Put ``search`` back in the state after its last completed generation: the checkpoint's
    ``state`` and, from the database, the rows before that generation."""
    from lamcsp.generators.base import Candidate, Evaluated

    if len(state.get("units", [])) != len(search.unit_states):
        raise SetupError("checkpoint", "the checkpoint does not match this campaign's units")
    search.generation = int(state["generation"])
    search.spent = int(state["spent"])
    search.done = bool(state.get("done", False))
    by_unit: dict[int, list[Any]] = {}
    for row in search.store.rows(role="search"):
        if row.generation < search.generation:
            by_unit.setdefault(int(row.unit), []).append(row)
    for us, d in zip(search.unit_states, state["units"]):
        us.best = math.inf if d["best"] is None else float(d["best"])
        us.history = [math.inf if h is None else float(h) for h in d["history"]]
        us.stagnant, us.active = int(d["stagnant"]), bool(d["active"])
        us.relaxed, us.failed = int(d["relaxed"]), int(d["failed"])
        for (_, _, gen), gs in zip(us.generators, d["generators"]):
            if gs is not None:
                gen.load_state_dict(gs)
        rows = sorted(by_unit.get(us.unit.index, []), key=lambda r: (r.generation, r.candidate))
        for row in rows:
            ok = result_ok(row)
            h = h_now(row) if ok else math.inf
            us.context.population.append(Evaluated(
                Candidate.from_dict(row.data["candidate"]), Candidate.from_atoms(row.toatoms()), h, ok))
        search.similarity.remember(us, [e.candidate for e in us.context.population]
                                   + [e.relaxed for e in us.context.population if e.ok])
        us.screened, us.note = int(d.get("screened", 0)), str(d.get("note", ""))
        us.prescreened = int(d.get("prescreened", 0))
        us.stored_rows = [int(i) for i in d["stored_rows"]]
        if us.stored_rows:
            rows = search.rows_by_id(us.stored_rows)
            hs = [h_now(r) for r in rows]
            us.stored.extend(search.deduper.describe([r.toatoms() for r in rows], hs))
