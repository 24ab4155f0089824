"""Batched geometry optimizers over a :class:`~lamcsp.optimizers.filters.RelaxState`.

Each optimizer is a pair ``init(state, **params) -> State`` and ``step(state, filter) ->
State``; the cell is relaxed through a filter (:class:`FrechetCellFilter`) and optimizers
never branch on whether it moves. :data:`OPTIMIZERS` maps names to the pairs.
"""

from lamcsp.optimizers.filters import (
    CellFilter,
    FixedCellFilter,
    FrechetCellFilter,
    RelaxState,
    make_filter,
    relax_state_from,
)
from lamcsp.optimizers.fire import FireState, fire_init, fire_step
from lamcsp.optimizers.lbfgs import LbfgsState, lbfgs_init, lbfgs_step

OPTIMIZERS = {
    "fire": (fire_init, fire_step),
    "lbfgs": (lbfgs_init, lbfgs_step),
}

__all__ = [
    "OPTIMIZERS",
    "CellFilter",
    "FireState",
    "FixedCellFilter",
    "FrechetCellFilter",
    "LbfgsState",
    "RelaxState",
    "fire_init",
    "fire_step",
    "lbfgs_init",
    "lbfgs_step",
    "make_filter",
    "relax_state_from",
]
