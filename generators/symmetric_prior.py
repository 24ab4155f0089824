"""Priors for symmetry of the symmetric random generator (its options ``group_weights``,
``special`` and ``wyckoff_weights``): the ready option sets :data:`SMALL_CELL_PRIOR` and
:data:`MP_PRIOR`, the weights of space groups by point-group order (:func:`group_weight`) or by
PyXtal's Materials Project statistics (:func:`mp_group_count`), and the Wyckoff assignments
they favour (:func:`fewest_dof_assignments`, :func:`mp_assignments`).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from lamcsp.generators.wyckoff import feasible_assignments, space_group

from lamcsp.errors import SetupError

__all__ = ["MP_PRIOR", "MP_PSEUDOCOUNT", "MP_WYCKOFF_SHARE", "SMALL_CELL_PRIOR", "fewest_dof_assignments",
           "group_weight", "mp_assignments", "mp_group_count"]


#: a symmetry prior for small cells (options of ``random``, or the swarm's ``random_options``):
#: space groups by point-group order, half the Wyckoff assignments among those with the fewest
#: free coordinates. Not the default: the CSP benchmark's ``lamcsp_prior`` measured it (README)
SMALL_CELL_PRIOR: dict[str, Any] = {"group_weights": "point_group", "special": 0.5}

#: the data-driven symmetry prior: space groups and Wyckoff sets drawn by their frequency among
#: known crystals of the same conventional-cell size (PyXtal's Materials Project statistics)
MP_PRIOR: dict[str, Any] = {"group_weights": "mp", "wyckoff_weights": "mp"}

#: added to every group's count under ``group_weights="mp"``: a group no known crystal of that
#: size has is drawn about as often as one seen once
MP_PSEUDOCOUNT = 1.0
#: under ``wyckoff_weights="mp"``, the share of Wyckoff assignments drawn among the known sets
#: (the rest by :func:`~lamcsp.generators.wyckoff.random_assignment`, so unseen ones stay open)
MP_WYCKOFF_SHARE = 0.5


@functools.lru_cache(maxsize=1)
def _mp_counts() -> dict[tuple[int, int], int]:
    """Known crystals per (space group, atoms in the conventional cell): PyXtal's statistics of
    the Materials Project (``pyxtal/database/spg_num_wps_mp.csv``, 88,678 structures; the
    Wyckoff sets summed)."""
    import csv
    from importlib.resources import files

    counts: dict[tuple[int, int], int] = {}
    with files("pyxtal").joinpath("database/spg_num_wps_mp.csv").open() as fh:
        for row in csv.DictReader(fh):
            key = (int(row["spg"]), int(row["n_atoms"]))
            counts[key] = counts.get(key, 0) + int(row["count"])
    return counts


@functools.lru_cache(maxsize=1)
def _mp_wyckoff_sets() -> dict[tuple[int, int, str], int]:
    """Known crystals per (space group, atoms in the conventional cell, Wyckoff set): the set
    as PyXtal writes it, the occupied positions' indices (0 the general position) sorted and
    joined by ``-``, whatever the species."""
    import csv
    from importlib.resources import files

    counts: dict[tuple[int, int, str], int] = {}
    with files("pyxtal").joinpath("database/spg_num_wps_mp.csv").open() as fh:
        for row in csv.DictReader(fh):
            counts[(int(row["spg"]), int(row["n_atoms"]), row["wps"])] = int(row["count"])
    return counts


@functools.lru_cache(maxsize=4096)
def mp_assignments(sg: int, counts: tuple[tuple[int, int], ...]
                   ) -> tuple[tuple[tuple[tuple[int, int], ...], ...], np.ndarray]:
    """The Wyckoff assignments of ``counts`` (``((Z, atoms in the cell), ...)``) in group ``sg``
    whose Wyckoff set some known crystals of that group and cell size have, and how many
    (``wyckoff_weights="mp"``; of the first 10,000 assignments)."""
    from lamcsp.generators.wyckoff import feasible_assignments

    n_atoms = sum(n for _, n in counts)
    table = _mp_wyckoff_sets()
    found, weights = [], []
    for a in feasible_assignments(sg, dict(counts)):
        c = table.get((sg, n_atoms, "-".join(str(i) for i in sorted(i for _, i in a))), 0)
        if c:
            found.append(tuple(a))
            weights.append(float(c))
    w = np.array(weights)
    return tuple(found), (w / w.sum() if len(w) else w)


def mp_group_count(sg: int, n_atoms: int) -> int:
    """How many Materials Project crystals have space group ``sg`` with ``n_atoms`` atoms in its
    conventional cell (``group_weights="mp"``, :func:`_mp_counts`)."""
    return _mp_counts().get((int(sg), int(n_atoms)), 0)


def group_weight(sg: int) -> int:
    """The order of space group ``sg``'s point group (1 for P1, 48 for Fm-3m): its general
    position's multiplicity over its lattice points. ``group_weights="point_group"`` draws a
    group in proportion to it: the ground states of small cells are mostly of high symmetry
    (of the 37 MP-20 test structures of at most 6 sites, 19 have every atom on a fixed special
    position, and 26 a point group of order 12 or more), while most of the groups that can
    hold a composition are of low symmetry."""
    data = space_group(sg)
    return data.general_multiplicity // len(data.centring)


@functools.lru_cache(maxsize=4096)
def fewest_dof_assignments(sg: int, counts: tuple[tuple[int, int], ...]
                           ) -> tuple[tuple[tuple[int, int], ...], ...]:
    """The Wyckoff assignments of ``counts`` (``((Z, atoms in the cell), ...)``) in group ``sg``
    with the fewest free coordinates in all (the first 10,000 assignments are looked at)."""
    data = space_group(sg)
    found = feasible_assignments(sg, dict(counts))
    if not found:
        raise SetupError("spacegroups", f"space group {sg} cannot hold {dict(counts)}")
    dofs = [sum(data.positions[i].dof for _, i in a) for a in found]
    low = min(dofs)
    return tuple(a for a, d in zip(found, dofs) if d == low)
