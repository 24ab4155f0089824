"""lamcsp: crystal structure prediction with large atomic models.

Subpackages: :mod:`lamcsp.relax` (batched state and relaxer), :mod:`lamcsp.optimizers`
(FIRE, L-BFGS, cell filters), :mod:`lamcsp.potentials` (the ``Potential`` seam: CHGNet, ASE
calculators, pair potentials), :mod:`lamcsp.kernels` (numba loops), :mod:`lamcsp.generators`.
"""

__version__ = "0.1.0"
