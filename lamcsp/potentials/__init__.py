"""The ``Potential`` seam and its backends.

* :class:`~lamcsp.potentials.base.Potential`: one batched ``forward(state)`` giving
  ``energy (S,)`` eV, ``forces (N, 3)`` eV/Å, ``stress (S, 3, 3)`` eV/Å³.
* Backends: CHGNet (the embedded default), DeePMD-kit, SevenNet, any ASE calculator (one structure at a time),
  Lennard-Jones and Morse in torch (batched, for fast tests).
* :func:`load_potential` turns a model spec (``chgnet``, ``chgnet:PATH``, ``emt``,
  ``ase:NAME``) into a potential on a device.
"""

from lamcsp.potentials.ase_calc import ASECalculatorPotential, PotentialCalculator
from lamcsp.potentials.base import Potential, energy_forces_stress
from lamcsp.potentials.pair import LennardJones, Morse, PairPotential
from lamcsp.potentials.registry import BACKENDS, load_potential

__all__ = [
    "BACKENDS",
    "ASECalculatorPotential",
    "LennardJones",
    "Morse",
    "PairPotential",
    "Potential",
    "PotentialCalculator",
    "energy_forces_stress",
    "load_potential",
]
