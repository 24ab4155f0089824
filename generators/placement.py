"""Placing Wyckoff orbits (step 4 of :class:`~lamcsp.generators.symmetric.SymmetricRandom`): one
space group and Wyckoff assignment compiled to arrays (:class:`_Compiled`, cached), and the
numba kernel that places every site on random lattices against the minimum-distance matrix
(:func:`lamcsp.kernels.distances.orbit_clear`).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from lamcsp.generators.extra_symmetry import _point_group
from lamcsp.generators.lattice import _draw_params, _matrix
from lamcsp.generators.wyckoff import LATTICE_TYPES, space_group
from lamcsp.kernels.distances import image_range, orbit_clear


@numba.njit(cache=True)
def _orbit(ops, start, mult, p0, p1, p2, frac, offset):  # pragma: no cover - jitted
    """Write the orbit of generating point ``p`` (ops ``start .. start+mult``) into
    ``frac[offset:offset+mult]``, wrapped into [0, 1)."""
    for k in range(mult):
        o = ops[start + k]
        for r in range(3):
            v = o[r, 0] * p0 + o[r, 1] * p1 + o[r, 2] * p2 + o[r, 3]
            v -= np.floor(v)
            if v >= 1.0:
                v = 0.0
            frac[offset + k, r] = v


@numba.njit(cache=True)
def _orbits(ops, site_start, site_mult, points):  # pragma: no cover - jitted
    n = 0
    for s in range(len(site_mult)):
        n += site_mult[s]
    frac = np.empty((n, 3))
    off = 0
    for s in range(len(site_mult)):
        _orbit(ops, site_start[s], site_mult[s], points[s, 0], points[s, 1], points[s, 2], frac, off)
        off += site_mult[s]
    return frac


@numba.njit(cache=True)
def _build(rng, code, volume, ops, site_start, site_mult, site_dof, site_species, order,
           cut2, cutmax, site_tries, lattice_tries, frac, points, params_out):  # pragma: no cover
    """Place all sites (in ``order``) on up to ``lattice_tries`` random lattices.

    ``frac`` is filled in placement order; ``points`` per site. Returns the number of
    lattices drawn, negative when none worked.
    """
    n_atoms = frac.shape[0]
    species = np.empty(n_atoms, dtype=np.int64)
    for lt in range(lattice_tries):
        params = _draw_params(rng, code, volume)
        lat = _matrix(code, params)
        nmax = image_range(lat, cutmax)
        n = 0
        ok = True
        for oi in range(len(order)):
            s = order[oi]
            m = site_mult[s]
            st = site_start[s]
            for k in range(m):
                species[n + k] = site_species[s]
            tries = site_tries if site_dof[s] > 0 else 1
            placed = False
            for _ in range(tries):
                x0 = 0.0
                x1 = 0.0
                x2 = 0.0
                if site_dof[s] > 0:
                    x0 = rng.random()
                    x1 = rng.random()
                    x2 = rng.random()
                o = ops[st]
                p0 = o[0, 0] * x0 + o[0, 1] * x1 + o[0, 2] * x2 + o[0, 3]
                p1 = o[1, 0] * x0 + o[1, 1] * x1 + o[1, 2] * x2 + o[1, 3]
                p2 = o[2, 0] * x0 + o[2, 1] * x1 + o[2, 2] * x2 + o[2, 3]
                _orbit(ops, st, m, p0, p1, p2, frac, n)
                if orbit_clear(frac, species, n, m, lat, cut2, nmax):
                    points[s, 0] = p0
                    points[s, 1] = p1
                    points[s, 2] = p2
                    placed = True
                    break
            if not placed:
                ok = False
                break
            n += m
        if ok:
            params_out[: len(params)] = params
            return lt + 1
    return -lattice_tries


class _Compiled:
    """One space group + Wyckoff assignment as the arrays the kernel takes."""

    __slots__ = ("sg", "code", "ops", "site_start", "site_mult", "site_dof", "site_species", "order",
                 "perm", "numbers", "atom_species", "labels", "indices", "site_numbers", "n_atoms",
                 "free_axes", "pg_rots", "centring")

    def __init__(self, sg: int, assignment: tuple[tuple[int, int], ...], species: tuple[int, ...]):
        data = space_group(sg)
        self.sg = sg
        self.code = LATTICE_TYPES.index(data.lattice_type)
        pos = [data.positions[i] for _, i in assignment]
        self.indices = [i for _, i in assignment]
        self.labels = [p.label for p in pos]
        self.site_numbers = [int(z) for z, _ in assignment]
        self.free_axes = [p.free_axes for p in pos]
        self.ops = np.ascontiguousarray(np.concatenate([p.ops for p in pos]))
        self.site_mult = np.array([p.multiplicity for p in pos], dtype=np.int64)
        self.site_start = np.concatenate([[0], np.cumsum(self.site_mult)[:-1]]).astype(np.int64)
        self.site_dof = np.array([p.dof for p in pos], dtype=np.int64)
        index_of = {z: k for k, z in enumerate(species)}
        self.site_species = np.array([index_of[z] for z, _ in assignment], dtype=np.int64)
        # fixed sites first (no retries), then by decreasing multiplicity (hardest first)
        self.order = np.array(
            sorted(range(len(pos)), key=lambda s: (pos[s].dof > 0, -pos[s].multiplicity, s)), dtype=np.int64
        )
        placed_start = np.empty(len(pos), dtype=np.int64)
        off = 0
        for s in self.order:
            placed_start[s] = off
            off += int(self.site_mult[s])
        self.n_atoms = off
        self.perm = np.concatenate(
            [np.arange(placed_start[s], placed_start[s] + self.site_mult[s]) for s in range(len(pos))]
        )
        self.numbers = np.repeat(np.array(self.site_numbers, dtype=np.int64), self.site_mult)
        self.atom_species = np.repeat(self.site_species, self.site_mult)
        self.pg_rots = _point_group(sg)
        self.centring = np.ascontiguousarray(data.centring)


@functools.lru_cache(maxsize=4096)
def _compiled(sg: int, assignment: tuple[tuple[int, int], ...], species: tuple[int, ...]) -> _Compiled:
    return _Compiled(sg, assignment, species)
