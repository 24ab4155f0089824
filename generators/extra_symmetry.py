"""The screen for symmetry beyond the group a structure was built in (step 5 of
:class:`~lamcsp.generators.symmetric.SymmetricRandom`), in numba, with a plain NumPy reference.

A structure built from the orbits of G is G-invariant by construction; spglib reports another
group only when the structure has more symmetry. That happens when special positions (or a
single orbit of one species) combine into a larger group: an extra translation (a finer
lattice) or an operation whose rotation is not in G's point group. The screen looks for both
directly (a few microseconds; spglib takes 0.3-20 ms per structure, most for cubic lattices).
It is stricter than comparing group numbers in one case: a finer lattice whose smaller cell
has the same group type (Si on 3a + 3b of R-3m is R-3m with half the cell) is rejected too,
as it holds fewer formula units than requested.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from lamcsp.generators.wyckoff import space_group

__all__ = ["SYMPREC", "has_extra_symmetry", "has_extra_symmetry_reference"]

#: spglib tolerance of the final check, Å
SYMPREC = 0.01

_UNIT = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                  if (i, j, k) != (0, 0, 0)], dtype=np.int64)


@functools.cache
def _point_group(sg: int) -> np.ndarray:
    rots = np.rint(space_group(sg).positions[0].ops[:, :, :3]).astype(np.int64)
    return np.ascontiguousarray(np.unique(rots, axis=0))


@numba.njit(cache=True, inline="always")
def _wrapped_norm2(d0, d1, d2, lattice):  # pragma: no cover - jitted
    """Squared Cartesian length of the fractional difference ``(d0, d1, d2)`` wrapped to the
    nearest lattice image (per component, enough for the small tolerances it is used with)."""
    d0 -= np.rint(d0)
    d1 -= np.rint(d1)
    d2 -= np.rint(d2)
    x = d0 * lattice[0, 0] + d1 * lattice[1, 0] + d2 * lattice[2, 0]
    y = d0 * lattice[0, 1] + d1 * lattice[1, 1] + d2 * lattice[2, 1]
    z = d0 * lattice[0, 2] + d1 * lattice[1, 2] + d2 * lattice[2, 2]
    return x * x + y * y + z * z


@numba.njit(cache=True)
def _maps(frac, species, lattice, w, t, symprec2):  # pragma: no cover - jitted
    """Whether ``x -> w x + t`` maps every atom onto an atom of its species (within symprec)."""
    n = frac.shape[0]
    for i in range(n):
        y0 = w[0, 0] * frac[i, 0] + w[0, 1] * frac[i, 1] + w[0, 2] * frac[i, 2] + t[0]
        y1 = w[1, 0] * frac[i, 0] + w[1, 1] * frac[i, 1] + w[1, 2] * frac[i, 2] + t[1]
        y2 = w[2, 0] * frac[i, 0] + w[2, 1] * frac[i, 1] + w[2, 2] * frac[i, 2] + t[2]
        found = False
        for k in range(n):
            if species[k] != species[i]:
                continue
            if _wrapped_norm2(y0 - frac[k, 0], y1 - frac[k, 1], y2 - frac[k, 2], lattice) < symprec2:
                found = True
                break
        if not found:
            return False
    return True


@numba.njit(cache=True)
def _lattice_rotations(lattice, tol):  # pragma: no cover - jitted
    """Integer matrices ``W`` (entries -1..1, columns the images of the basis vectors) that
    keep the metric within ``tol`` (Å on lengths, Å² scaled on products)."""
    g = lattice @ lattice.T
    units = _UNIT
    nu = units.shape[0]
    gu = np.empty(nu)
    for u in range(nu):
        v = units[u]
        s = 0.0
        for a in range(3):
            for b in range(3):
                s += v[a] * g[a, b] * v[b]
        gu[u] = np.sqrt(s)
    cand = np.zeros((3, nu), dtype=np.int64)
    nc = np.zeros(3, dtype=np.int64)
    for i in range(3):
        li = np.sqrt(g[i, i])
        for u in range(nu):
            if abs(gu[u] - li) < tol:
                cand[i, nc[i]] = u
                nc[i] += 1
    out = np.empty((nc[0] * nc[1] * nc[2], 3, 3), dtype=np.int64)
    m = 0
    for i0 in range(nc[0]):
        for i1 in range(nc[1]):
            for i2 in range(nc[2]):
                w = np.empty((3, 3), dtype=np.int64)
                for r in range(3):
                    w[r, 0] = units[cand[0, i0], r]
                    w[r, 1] = units[cand[1, i1], r]
                    w[r, 2] = units[cand[2, i2], r]
                det = (w[0, 0] * (w[1, 1] * w[2, 2] - w[1, 2] * w[2, 1])
                       - w[0, 1] * (w[1, 0] * w[2, 2] - w[1, 2] * w[2, 0])
                       + w[0, 2] * (w[1, 0] * w[2, 1] - w[1, 1] * w[2, 0]))
                if det != 1 and det != -1:
                    continue
                ok = True
                for a in range(3):
                    for b in range(a + 1, 3):
                        s = 0.0
                        for p in range(3):
                            for q in range(3):
                                s += w[p, a] * g[p, q] * w[q, b]
                        if abs(s - g[a, b]) > tol * (np.sqrt(g[a, a]) + np.sqrt(g[b, b])):
                            ok = False
                if ok:
                    out[m] = w
                    m += 1
    return out[:m]


@numba.njit(cache=True)
def _extra_symmetry(frac, species, lattice, pg_rots, centring, symprec):  # pragma: no cover - jitted
    """Whether the structure has a symmetry operation beyond its group G: a translation that is
    not a lattice or centring vector of G, or a lattice rotation outside G's point group
    (``pg_rots``) combined with any translation.

    Args:
        frac: fractional coordinates ``(n, 3)`` of a G-invariant structure.
        species: species index per atom ``(n,)``.
        lattice: lattice vectors as rows ``(3, 3)``, Å.
        pg_rots: G's rotations in the conventional basis ``(k, 3, 3)``, int64.
        centring: G's centring translations ``(c, 3)``.
        symprec: distance tolerance, Å.
    """
    n = frac.shape[0]
    s2 = symprec * symprec
    # the rarest species anchors the candidate translations
    n_species = species.max() + 1
    counts = np.zeros(n_species, dtype=np.int64)
    for i in range(n):
        counts[species[i]] += 1
    ref = 0
    for s in range(n_species):
        if counts[s] > 0 and (counts[ref] == 0 or counts[s] < counts[ref]):
            ref = s
    a0 = 0
    while species[a0] != ref:
        a0 += 1
    eye = np.eye(3, dtype=np.int64)
    t = np.empty(3)
    for j in range(n):
        if species[j] != ref or j == a0:
            continue
        for r in range(3):
            t[r] = frac[j, r] - frac[a0, r]
        known = False
        for c in range(centring.shape[0]):
            if _wrapped_norm2(t[0] - centring[c, 0], t[1] - centring[c, 1], t[2] - centring[c, 2],
                              lattice) < s2:
                known = True
                break
        if not known and _maps(frac, species, lattice, eye, t, s2):
            return True
    rots = _lattice_rotations(lattice, 4.0 * symprec)
    for q in range(rots.shape[0]):
        w = rots[q]
        in_g = False
        for p in range(pg_rots.shape[0]):
            same = True
            for a in range(3):
                for b in range(3):
                    if pg_rots[p, a, b] != w[a, b]:
                        same = False
            if same:
                in_g = True
                break
        if in_g:
            continue
        for j in range(n):
            if species[j] != ref:
                continue
            for r in range(3):
                t[r] = frac[j, r] - (w[r, 0] * frac[a0, 0] + w[r, 1] * frac[a0, 1] + w[r, 2] * frac[a0, 2])
            if _maps(frac, species, lattice, w, t, s2):
                return True
    return False


def has_extra_symmetry(frac: np.ndarray, numbers: np.ndarray, lattice: np.ndarray, sg: int,
                       symprec: float = SYMPREC) -> bool:
    """Whether a structure invariant under space group ``sg`` (conventional setting) has more
    symmetry than ``sg`` (numba; see :func:`has_extra_symmetry_reference`).

    Args:
        frac: fractional coordinates ``(n, 3)``.
        numbers: atomic numbers (or any species labels) ``(n,)``.
        lattice: lattice vectors as rows ``(3, 3)``, Å.
        sg: the space group the structure was built in.
        symprec: distance tolerance, Å.
    """
    _, species = np.unique(np.asarray(numbers), return_inverse=True)
    return bool(_extra_symmetry(np.ascontiguousarray(frac, dtype=np.float64), species.astype(np.int64),
                                np.ascontiguousarray(lattice, dtype=np.float64), _point_group(sg),
                                np.ascontiguousarray(space_group(sg).centring), float(symprec)))


def has_extra_symmetry_reference(frac: np.ndarray, numbers: np.ndarray, lattice: np.ndarray, sg: int,
                                 symprec: float = SYMPREC) -> bool:
    """Plain NumPy version of :func:`has_extra_symmetry` (the test reference): every integer
    matrix with entries -1..1 and determinant ±1 that keeps the metric, and every translation
    that takes the first atom of the rarest species onto an atom of its species."""
    import itertools

    frac = np.asarray(frac, dtype=np.float64)
    lattice = np.asarray(lattice, dtype=np.float64)
    _, species = np.unique(np.asarray(numbers), return_inverse=True)
    counts = np.bincount(species)
    ref = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
    a0 = int(np.flatnonzero(species == ref)[0])
    targets = np.flatnonzero(species == ref)
    same = species[:, None] == species[None, :]

    def maps(w: np.ndarray, t: np.ndarray) -> bool:
        d = (frac @ w.T + t)[:, None, :] - frac[None, :, :]
        d -= np.rint(d)
        r2 = ((d @ lattice) ** 2).sum(-1)
        return bool(np.all(np.any((r2 < symprec**2) & same, axis=1)))

    def wrapped_norm(t: np.ndarray) -> float:
        d = t - np.rint(t)
        return float(np.linalg.norm(d @ lattice))

    centring = space_group(sg).centring
    for j in targets:
        t = frac[j] - frac[a0]
        if j == a0 or any(wrapped_norm(t - c) < symprec for c in centring):
            continue
        if maps(np.eye(3), t):
            return True
    g = lattice @ lattice.T
    lengths = np.sqrt(np.diag(g))
    tol = 4.0 * symprec
    pg = {tuple(r.ravel()) for r in _point_group(sg)}
    ws = np.array(list(itertools.product((-1, 0, 1), repeat=9))).reshape(-1, 3, 3)
    ws = ws[np.abs(np.rint(np.linalg.det(ws))) == 1]
    gw = np.einsum("kpa,pq,kqb->kab", ws, g, ws)
    ok = np.all(np.abs(np.sqrt(np.einsum("kaa->ka", gw)) - lengths) < tol, axis=1)
    iu = np.triu_indices(3, 1)
    ok &= np.all((np.abs(gw - g) <= tol * (lengths[:, None] + lengths[None, :]))[:, iu[0], iu[1]], axis=1)
    for w in ws[ok]:
        if tuple(w.ravel()) in pg:
            continue
        for j in targets:
            if maps(w, frac[j] - w @ frac[a0]):
                return True
    return False
