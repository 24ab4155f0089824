"""Everything that proposes structures (symmetric random, particle swarm, genetic operators).

The generators themselves arrive with the generator issue; this package exists so that the
layout of DESIGN.md (``generators/`` installed as ``lamcsp.generators``) holds from the start.
"""
