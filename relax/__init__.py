"""The batched relaxer: batched state, in-flight batching, convergence, device placement."""

from lamcsp.relax.relaxer import Relaxer, RelaxResult, SinglePoint, relax
from lamcsp.relax.state import (
    EV_PER_A3_PER_GPA,
    BatchedState,
    concatenate,
    from_structures,
    select,
    split,
    to_atoms,
    to_structures,
)

__all__ = [
    "EV_PER_A3_PER_GPA",
    "BatchedState",
    "RelaxResult",
    "Relaxer",
    "SinglePoint",
    "concatenate",
    "from_structures",
    "relax",
    "select",
    "split",
    "to_atoms",
    "to_structures",
]

