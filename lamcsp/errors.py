"""Typed errors with an explicit policy (ASE's CalculatorSetupError vs CalculationFailed).

* :class:`SetupError`: bad input found before any work starts (a malformed file, an unknown
  element or model, an impossible option). The CLI prints its one-paragraph message and exits
  with status 2, never a traceback.
* :class:`CalculationError`: something failed while working on one item. Bulk APIs take
  ``on_error="raise"|"warn"|"skip"`` and record the failure instead of stopping.
"""

from __future__ import annotations


class LamcspError(Exception):
    """Base class of lamcsp's own errors."""


class SetupError(LamcspError, ValueError):
    """Bad input, detected before work starts.

    Args:
        field: the input field, option or file the problem is in (named in the message).
        message: what is wrong and what is allowed, in one paragraph.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class CalculationError(LamcspError, RuntimeError):
    """A calculation on one item failed (the batch and the campaign go on)."""


class WorkerError(LamcspError, RuntimeError):
    """A parallel worker raised or died; the campaign stops (what was stored stays; ``--resume``
    continues).

    Args:
        rank: the MPI rank of the worker.
        held: labels of the structures (or items) it held.
        message: one paragraph naming the rank and what it held.
        detail: the worker's traceback, where it raised.
    """

    def __init__(self, rank: int, held: list[str], message: str, detail: str = ""):
        self.rank = rank
        self.held = held
        self.message = message
        self.detail = detail
        super().__init__(message)
