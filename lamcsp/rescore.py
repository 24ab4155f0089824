"""The model cascade's rescore stage: a second, slower and more accurate model (``rescore:`` in
the campaign) re-relaxes the search model's best structures, so the answer is ranked by a
better model than the one that was fast enough to search with.

It is the verification stage (:mod:`lamcsp.verify`) with a LAM in the oracle's place, and stores
the same rows (``role=verify``, ``of`` = the search row, ``oracle`` = ``lam-<model id>``,
``stage=rescore``, ``model_h`` = the search model's enthalpy per atom), so the report ranks them
by both models as it does an oracle's. The differences: the picked structures are relaxed in one
batched relaxation (lamcsp's relaxer) on this process, not one oracle relaxation each, and
``oracle_calls`` counts the rescore model's steps. An oracle stage after it (``verify:``) takes
its picks from the rescore model's ranking (:func:`rescored_hits`): the cascade's answer is the
last stage's lowest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from lamcsp.verify import GENERATION, Comparison, Hit, compare_units, pick, verification_key, verified

log = logging.getLogger(__name__)

#: the ``stage`` key value of rescore rows
STAGE = "rescore"


def rescore_id(model_id: str) -> str:
    """The ``oracle`` key value of the rows of the rescore model ``model_id``."""
    return f"lam-{model_id}"


def run_rescore(hits: Sequence[Hit], spec: Any, relax: Any, *, potential: Any, store: Any, model_id: str,
                symprec: float = 0.1, progress: Callable[[str], None] | None = None) -> dict[str, Comparison]:
    """Re-relax the picked ``hits`` (:func:`lamcsp.verify.pick` with ``spec.top_k`` and
    ``spec.window``) with ``potential``, store each result as it finishes, and compare per unit.

    Structures this model re-relaxed before (their rows exist) are not relaxed again, so a
    resumed campaign repeats none.

    Args:
        hits: every unique hit of the run, with the search model's enthalpies.
        spec: the campaign's ``rescore`` section; ``relax`` its ``relax`` section (the optimizer,
            and ``fmax`` and ``max_steps`` where ``spec`` gives none).
        potential: the rescore model; ``store`` the run's :class:`~lamcsp.store.ResultStore`.
        model_id: the search model whose enthalpies ``hits`` carry.
        symprec: spglib tolerance of the stored space groups.
        progress: a line writer (default: ``INFO`` on this module's logger).
    """
    from lamcsp.relax.relaxer import Relaxer
    from lamcsp.store import row_item

    oid = rescore_id(potential.model_id)
    picked = pick(hits, spec.top_k, spec.window)
    todo = [h for h in picked if store.row_id(verification_key(oid, h.key)) is None]
    if todo:
        say = progress if progress is not None else log.info
        say(f"rescore: {len(todo)} structure(s) re-relaxed with {potential.model_id}, "
            f"{len(picked) - len(todo)} before")
        relaxer = Relaxer(potential, optimizer=relax.optimizer, fmax=spec.fmax or relax.fmax,
                          max_steps=spec.max_steps or relax.max_steps, max_atoms=relax.max_atoms,
                          progress=False)

        def stored(i: int, result: Any) -> None:
            h = todo[i]
            store.add(**row_item(
                result, verification_key(oid, h.key), role="verify", generation=GENERATION, generator=STAGE,
                unit=h.unit, model_id=potential.model_id, symprec=symprec,
                extra={"of": h.row_id, "oracle": oid, "mode": "relax", "model_h": h.h_model,
                       "model_h_id": model_id, "stage": STAGE, "oracle_calls": int(result.steps),
                       "oracle_rank": 0}))

        relaxer.relax([store.get(h.row_id).toatoms() for h in todo], [h.pressure for h in todo],
                      on_result=stored)
    return compare_units(hits, verified(store, oid))


def rescored_hits(hits: Sequence[Hit], store: Any, oid: str) -> list[Hit]:
    """The hits the rescore model ``oid`` re-relaxed, with its enthalpies per atom in place of the
    search model's (and ``e_above`` from them, per unit: the lowest of the unit is 0): what the
    next stage of the cascade picks from. Failed re-relaxations are left out."""
    import dataclasses

    h_new = {i: h for i, h in verified(store, oid).items() if math.isfinite(h)}
    mine = [h for h in hits if h.row_id in h_new]
    low: dict[int, float] = {}
    for h in mine:
        low[h.unit] = min(low.get(h.unit, math.inf), h_new[h.row_id])
    return [dataclasses.replace(h, h_model=h_new[h.row_id], e_above=h_new[h.row_id] - low[h.unit])
            for h in mine]
