"""Composition and overlaps of evolved structures (the genetic generator's children, the
particle swarm's moved particles): the target atomic numbers of a cell, the minimum-distance
matrix, shortest periodic distances, the minimum-distance screen and the overlap repair.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from lamcsp.generators.base import GenerationContext

from lamcsp.errors import SetupError

__all__ = ["min_distance_matrix", "passes_screen", "repair", "target_numbers"]


def target_numbers(composition: Mapping[str, int], formula_units: int) -> np.ndarray:
    """The sorted atomic numbers of a cell of ``formula_units`` formula units, ``(n_atoms,)``.

    Raises:
        SetupError: an unknown element or a count that is not a positive integer.
    """
    from ase.data import atomic_numbers

    out: list[int] = []
    for symbol, count in composition.items():
        if symbol not in atomic_numbers:
            raise SetupError("composition", f"unknown element {symbol!r}")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise SetupError("composition",
                             f"the count of {symbol} must be a positive integer, got {count!r}")
        out += [atomic_numbers[symbol]] * int(count) * int(formula_units)
    return np.sort(np.asarray(out, dtype=np.int64))


def min_distance_matrix(numbers: np.ndarray, context: GenerationContext) -> np.ndarray:
    """Minimum allowed distance of every pair of atoms, ``(n, n)``, Å.

    ``context.min_distance[(Za, Zb)]`` where given (either order), else
    ``context.distance_factor`` × (covalent radius of Za + that of Zb) from ``ase.data``.
    """
    from ase.data import covalent_radii

    numbers = np.asarray(numbers, dtype=np.int64)
    species = np.unique(numbers)
    table = np.empty((len(species), len(species)))
    for a, za in enumerate(species):
        for b, zb in enumerate(species):
            key = (int(za), int(zb))
            if key in context.min_distance:
                table[a, b] = context.min_distance[key]
            elif key[::-1] in context.min_distance:
                table[a, b] = context.min_distance[key[::-1]]
            else:
                table[a, b] = context.distance_factor * (covalent_radii[za] + covalent_radii[zb])
    idx = np.searchsorted(species, numbers)
    return table[idx[:, None], idx[None, :]]


def _distances(
    frac_a: np.ndarray, frac_b: np.ndarray, lattice: np.ndarray, cutoff: float, same: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Shortest periodic distance between every point of ``a`` and every point of ``b``.

    Exact below ``cutoff`` for any cell shape (the images searched along each lattice vector
    come from the reciprocal-vector lengths, as in :mod:`lamcsp.kernels.distances`); above it,
    a distance may be that of a farther image, but is still at least ``cutoff``.

    Args:
        frac_a: fractional coordinates ``(na, 3)``.
        frac_b: fractional coordinates ``(nb, 3)``.
        lattice: lattice vectors as rows ``(3, 3)``, Å.
        cutoff: Å.
        same: ``a`` and ``b`` are the same set; an atom's distance to itself (zero image) is
            excluded, the one to its periodic images is kept.

    Returns:
        ``r (na, nb)`` in Å and the Cartesian vectors ``(na, nb, 3)`` from ``a`` to ``b``.
    """
    d = frac_b[None, :, :] - frac_a[:, None, :]
    d -= np.round(d)
    recip = np.linalg.norm(np.linalg.inv(lattice), axis=0)
    nmax = np.ceil(cutoff * recip + 0.5).astype(int)
    axes = [np.arange(-m, m + 1) for m in nmax]
    images = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    vec = (d[:, :, None, :] + images[None, None]) @ lattice
    r = np.linalg.norm(vec, axis=-1)
    if same:
        zero = int(np.flatnonzero(np.abs(images).sum(1) == 0)[0])
        diag = np.arange(len(frac_a))
        r[diag, diag, zero] = np.inf
    k = np.argmin(r, axis=-1)
    ia, ib = np.indices(k.shape)
    return r[ia, ib, k], vec[ia, ib, k]


def passes_screen(frac: np.ndarray, lattice: np.ndarray, dmin: np.ndarray) -> bool:
    """Whether no two atoms (or an atom and its own image) are closer than ``dmin (n, n)``."""
    r, _ = _distances(frac, frac, lattice, float(dmin.max()) * 1.01, same=True)
    return bool(np.all(r >= dmin))


def repair(
    frac: np.ndarray,
    lattice: np.ndarray,
    dmin: np.ndarray,
    rng: np.random.Generator,
    steps: int,
    max_expansion: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """Remove overlaps: a few sweeps of soft-sphere moves, then, if need be, a small expansion.

    Each sweep moves both atoms of every pair closer than ``dmin`` apart along their
    connecting vector by just over half the overlap. Overlaps that remain (a uniformly
    compressed cell, where the pushes cancel, or an atom too close to its own image) are
    removed by scaling the lattice up isotropically, when the factor needed is at most
    ``max_expansion``.

    Args:
        frac: fractional coordinates ``(n, 3)``.
        lattice: lattice vectors as rows ``(3, 3)``, Å.
        dmin: minimum distance of every pair ``(n, n)``, Å.
        rng: for the push direction of coincident atoms.
        steps: most soft-sphere sweeps.
        max_expansion: largest isotropic scale factor of the lattice allowed (1: none).

    Returns:
        Wrapped fractional coordinates ``(n, 3)``, the lattice ``(3, 3)`` and
        ``{"repair_sweeps": int, "expansion": float}``; ``None`` when overlaps remain.
    """
    frac = np.array(frac, dtype=float)
    inv = np.linalg.inv(lattice)
    cutoff = float(dmin.max()) * 1.01
    for sweep in range(steps + 1):
        r, vec = _distances(frac, frac, lattice, cutoff, same=True)
        overlap = r < dmin
        if not overlap.any():
            return frac % 1.0, np.array(lattice, dtype=float), {"repair_sweeps": sweep, "expansion": 1.0}
        bad = np.triu(overlap, 1)
        if sweep == steps or not bad.any():
            break
        i, j = np.nonzero(bad)
        u = vec[i, j]
        rij = r[i, j]
        coincident = rij < 1e-6
        if coincident.any():  # no direction to push along: pick one at random
            u[coincident] = rng.normal(size=(int(coincident.sum()), 3))
            rij = np.where(coincident, np.linalg.norm(u, axis=1), rij)
        push = ((dmin[i, j] - r[i, j]) * 0.55 / rij)[:, None] * u
        disp = np.zeros_like(frac)
        np.add.at(disp, j, push)
        np.add.at(disp, i, -push)
        frac = frac + disp @ inv
    factor = float(np.max(dmin / np.maximum(r, 1e-12))) * (1.0 + 1e-6)
    if factor > max_expansion:
        return None
    return frac % 1.0, lattice * factor, {"repair_sweeps": sweep, "expansion": factor}
