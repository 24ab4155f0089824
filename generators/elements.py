"""Element data of the symmetric generators: the default volume per atom
(:func:`default_element_volume`), compositions read from symbols or atomic numbers, and
symbols for messages.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np

from lamcsp.errors import SetupError

__all__ = ["default_element_volume"]


@functools.cache
def default_element_volume(z: int) -> float:
    """PyXtal's element volume: mean of the covalent- and van der Waals-sphere volumes, Å³
    (PyXtal's radii; ASE's where PyXtal has none, a van der Waals radius of twice the
    covalent one where neither has)."""
    from ase.data import chemical_symbols, covalent_radii
    from ase.data.vdw_alvarez import vdw_radii
    from pyxtal.database.element import Element

    el = Element(chemical_symbols[z])
    r_cov = el.covalent_radius if el.covalent_radius is not None else float(covalent_radii[z])
    r_vdw = el.vdw_radius
    if r_vdw is None:
        r_vdw = float(vdw_radii[z]) if np.isfinite(vdw_radii[z]) else 2.0 * r_cov
    return float(4.0 / 3.0 * math.pi * (r_cov**3 + r_vdw**3) / 2.0)


def _parse_composition(composition: Mapping[str, int] | Mapping[int, int]) -> dict[int, int]:
    from ase.data import atomic_numbers, chemical_symbols

    if not composition:
        raise SetupError("composition", "the composition is empty; give atoms per formula unit, e.g. Si8")
    out: dict[int, int] = {}
    for key, count in composition.items():
        if isinstance(key, str):
            if key not in atomic_numbers or key == "X":
                raise SetupError("composition", f"unknown element {key!r}; use chemical symbols such as 'Si'")
            z = atomic_numbers[key]
        elif isinstance(key, (int, np.integer)) and 1 <= int(key) < len(chemical_symbols):
            z = int(key)
        else:
            raise SetupError("composition", f"unknown element {key!r}")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise SetupError("composition", f"the count of {key} must be a positive integer, got {count!r}")
        out[z] = out.get(z, 0) + int(count)
    return out


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z]
