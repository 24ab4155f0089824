"""Fault injection for the crash-safety tests: ``LAMCSP_FAULT=POINT:N`` kills this process with
SIGKILL the N-th time it reaches ``POINT`` (1 when ``:N`` is left out).

Points: ``relaxed`` (a relaxation finished, before it is journaled), ``store-write`` (inside
the transaction that writes a row, before it commits), ``dedupe-write`` (inside the transaction
that writes a generation's rows with their dedupe flags, after each row), ``checkpoint-write``
(the new checkpoint is written to its temporary file but not yet moved over the old one),
``worker-relaxed`` (a parallel relax worker sent a result). With ``LAMCSP_FAULT_RANK=R`` only
the processes of MPI rank R (``LAMCSP_RANK``, set in relax workers) count. Without
``LAMCSP_FAULT``, :func:`fault` does nothing.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def fault(point: str) -> None:
    """Kill this process with SIGKILL if ``LAMCSP_FAULT`` asks for it at this point now."""
    spec = os.environ.get("LAMCSP_FAULT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    rank = os.environ.get("LAMCSP_FAULT_RANK")
    if rank is not None and rank != os.environ.get("LAMCSP_RANK", "0"):
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
