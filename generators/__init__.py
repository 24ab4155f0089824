"""Everything that proposes structures: symmetric random, particle swarm, genetic operators,
substitution into known structures (``template``).

The public seam is :class:`Generator` (``propose(n, rng, context) -> list[Candidate]``,
``tell(outcomes)``, ``state_dict()`` / ``load_state_dict()``; :class:`GeneratorBase` for one that
carries nothing; :class:`Sampler`, ``draw(rng, context)``, for one whose candidates are independent
draws, which the search then draws on the workers), registered by name and through the
``lamcsp.generators`` entry-point group.
"""

from lamcsp.generators.base import (
    Candidate,
    Evaluated,
    GenerationContext,
    Generator,
    GeneratorBase,
    Outcome,
    Sampler,
    WyckoffSite,
    available_generators,
    candidates_to_state,
    get_generator,
    is_sampler,
    register,
)

# the built-in generators register themselves on import
from lamcsp.generators import genetic, swarm, symmetric, template  # noqa: E402,F401  isort: skip

__all__ = [
    "Candidate",
    "Evaluated",
    "GenerationContext",
    "Generator",
    "GeneratorBase",
    "Outcome",
    "Sampler",
    "WyckoffSite",
    "available_generators",
    "candidates_to_state",
    "get_generator",
    "is_sampler",
    "register",
]
