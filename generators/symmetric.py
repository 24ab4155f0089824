"""The symmetric random generator (the CALYPSO / AIRSS / PyXtal workhorse), and the
symmetry-reduced vector of a candidate that a particle swarm moves in.

For each structure :class:`SymmetricRandom` draws

1. a number of formula units ``Z`` uniformly among the allowed ones that at least one allowed
   space group can hold, then a space group among those that hold ``Z`` formula units
   (screened exactly and up front by :func:`lamcsp.generators.wyckoff.can_hold`, never by
   trial and error): uniformly (AIRSS, PyXtal, CALYPSO), or with ``group_weights=
   "point_group"`` in proportion to the order of its point group;
2. a Wyckoff assignment (:func:`lamcsp.generators.wyckoff.random_assignment`), or, with
   probability ``special``, one of the group's assignments with the fewest free coordinates.
   Both are a prior for symmetry (off by default; ``benchmarks/csp_success.py --methods
   random,random_prior`` measures it): most small-cell ground states have every atom on a fixed
   special position in a group of high point-group order, while most of the groups that can
   hold a composition have a low one;
3. a lattice of the group's crystal system at the target volume (below);
4. the free coordinates of each orbit, site by site: an orbit is built with the group's
   compiled operations and checked (within itself and against the atoms placed so far, all
   periodic images) against the minimum-distance matrix
   (:func:`lamcsp.kernels.distances.orbit_clear`); a site is redrawn up to ``SITE_TRIES``
   times, then the lattice is redrawn; after ``LATTICES_PER_ASSIGNMENT`` lattices the Wyckoff
   assignment is redrawn, after ``ASSIGNMENTS_PER_GROUP`` assignments the space group. Sites
   without free coordinates are placed first, then the others by decreasing multiplicity.
   This loop is one numba call.
5. a screen for symmetry beyond the group (:func:`has_extra_symmetry`: extra translations, or
   lattice rotations outside the point group, as spglib would find at ``symprec=0.01``):
   special positions, or a single orbit of one species, often combine into a larger group
   (Si8 on 8c of Im-3m is Pm-3m), and such structures are drawn again. It costs microseconds
   where spglib takes 0.3-20 ms, so rejections stay cheap;
6. spglib (``symprec=0.01``) on the survivor: it must report the requested group, or the
   structure is drawn again (``verify=True``; after the screen this has not been seen to
   reject anything).

``max_attempts`` counts lattices per structure. Space groups whose only arrangements have a
larger group (45 of the 205 that hold Si8 by multiplicity) are left after
``ASSIGNMENTS_PER_GROUP`` draws, so emitted structures are spread over the groups that can
really carry the composition.

Defaults, each overridable through :class:`~lamcsp.generators.base.GenerationContext`:

* minimum distance of a pair: ``distance_factor × (r_cov(a) + r_cov(b))`` with ASE's covalent
  radii (``ase.data.covalent_radii``), or ``context.min_distance[(Za, Zb)]``;
* volume per atom: PyXtal's element volumes, the mean of the covalent-sphere and the van der
  Waals-sphere volumes ``4π/3 (r_cov³ + r_vdW³) / 2`` with PyXtal's radii (the mean of the
  volume PyXtal draws), or ``context.element_volumes[Z]``; the target cell volume is their
  sum times ``volume_factor`` (the generator option, else ``context.volume_factor``). Every
  lattice is drawn at exactly the target volume.

Lattice shapes (before scaling to the volume): lengths ``a, b, c`` each log-uniform in
``[1, 2]`` (so no ratio exceeds 2); triclinic angles uniform in ``[60°, 120°]`` with the
cell's volume at least half that of the right-angled cell with the same lengths (redrawn
otherwise); monoclinic (b unique) ``β`` uniform in ``[60°, 120°]``; tetragonal, trigonal and
hexagonal ``c/a`` log-uniform in ``[1/2, 2]``; trigonal and R groups on hexagonal axes.

Symmetry-reduced vector (:func:`to_vector` / :func:`from_vector`, for the particle swarm)::

    [ lattice parameters (lattice_params) | free coordinates of site 0 | of site 1 | ... ]

The lattice parameters are the free entries of the canonical lower-triangular cell (rows
``a = (a_x, 0, 0)``, ``b = (b_x, b_y, 0)``, ``c = (c_x, c_y, c_z)``), in Å:

=============  =====================================  ================================
crystal system parameters                              cell
=============  =====================================  ================================
triclinic      ``a_x, b_x, b_y, c_x, c_y, c_z`` (6)    lower triangular
monoclinic     ``a, b, c cosβ, c sinβ`` (4)            b unique: ``b = (0, b, 0)``
orthorhombic   ``a, b, c`` (3)                         diagonal
tetragonal     ``a, c`` (2)                            diagonal, ``b = a``
trigonal,      ``a, c`` (2)                            ``b = (-a/2, a√3/2, 0)``
hexagonal
cubic          ``a`` (1)                               diagonal
=============  =====================================  ================================

Any values with positive diagonal entries give a valid cell of the right system (no angle
bounds to respect). Each site then contributes its position's free fractional coordinates,
in ``x, y, z`` order (``WyckoffPosition.free_axes``), in the order of ``candidate.wyckoffs``.
``from_vector(template, to_vector(c))`` rebuilds ``c`` bit for bit, and
``to_vector(from_vector(t, v))`` returns ``v`` bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numba
import numpy as np
from lamcsp.generators.base import Candidate, GenerationContext, GeneratorBase, WyckoffSite, register
from lamcsp.generators.wyckoff import (
    LATTICE_TYPES,
    can_hold,
    feasible_assignments,
    random_assignment,
    space_group,
)
from lamcsp.kernels.distances import image_range, orbit_clear

from lamcsp.errors import SetupError

#: tries for one site's free coordinates before the lattice is redrawn
SITE_TRIES = 10
#: lattices drawn for one Wyckoff assignment before it is redrawn
LATTICES_PER_ASSIGNMENT = 8
#: Wyckoff assignments drawn for one space group before it is redrawn
ASSIGNMENTS_PER_GROUP = 10
#: extra ``max_attempts`` budgets for the first structure of a call before the request is
#: declared impossible
FIRST_FAILURE_RETRIES = 9
#: spglib tolerance of the final check, Å
SYMPREC = 0.01
#: densest packing of equal spheres (Kepler): no cell can hold more
_MAX_PACKING = math.pi / math.sqrt(18.0)

_N_PARAMS = (6, 4, 3, 2, 2, 2, 1)  # per LATTICE_TYPES entry


# --- lattices ---------------------------------------------------------------------------------


@numba.njit(cache=True)
def _matrix(code, p):  # pragma: no cover - jitted
    m = np.zeros((3, 3))
    if code == 0:
        m[0, 0] = p[0]
        m[1, 0] = p[1]
        m[1, 1] = p[2]
        m[2, 0] = p[3]
        m[2, 1] = p[4]
        m[2, 2] = p[5]
    elif code == 1:
        m[0, 0] = p[0]
        m[1, 1] = p[1]
        m[2, 0] = p[2]
        m[2, 2] = p[3]
    elif code == 2:
        m[0, 0] = p[0]
        m[1, 1] = p[1]
        m[2, 2] = p[2]
    elif code == 3:
        m[0, 0] = p[0]
        m[1, 1] = p[0]
        m[2, 2] = p[1]
    elif code == 4 or code == 5:
        m[0, 0] = p[0]
        m[1, 0] = -0.5 * p[0]
        m[1, 1] = 0.5 * np.sqrt(3.0) * p[0]
        m[2, 2] = p[1]
    else:
        m[0, 0] = p[0]
        m[1, 1] = p[0]
        m[2, 2] = p[0]
    return m


@numba.njit(cache=True)
def _draw_params(rng, code, volume):  # pragma: no cover - jitted
    ln2 = np.log(2.0)
    deg = np.pi / 180.0
    if code == 0:
        la = np.exp(ln2 * rng.random())
        lb = np.exp(ln2 * rng.random())
        lc = np.exp(ln2 * rng.random())
        while True:
            ca = np.cos((60.0 + 60.0 * rng.random()) * deg)
            cb = np.cos((60.0 + 60.0 * rng.random()) * deg)
            cg = np.cos((60.0 + 60.0 * rng.random()) * deg)
            q = 1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg
            if q >= 0.25:
                break
        sg = np.sqrt(1.0 - cg * cg)
        p = np.array([la, lb * cg, lb * sg, lc * cb, lc * (ca - cb * cg) / sg, lc * np.sqrt(q) / sg])
    elif code == 1:
        la = np.exp(ln2 * rng.random())
        lb = np.exp(ln2 * rng.random())
        lc = np.exp(ln2 * rng.random())
        beta = (60.0 + 60.0 * rng.random()) * deg
        p = np.array([la, lb, lc * np.cos(beta), lc * np.sin(beta)])
    elif code == 2:
        p = np.array([np.exp(ln2 * rng.random()), np.exp(ln2 * rng.random()), np.exp(ln2 * rng.random())])
    elif code == 3 or code == 4 or code == 5:
        p = np.array([1.0, np.exp(ln2 * (2.0 * rng.random() - 1.0))])
    else:
        p = np.array([1.0])
    m = _matrix(code, p)
    scale = (volume / (m[0, 0] * m[1, 1] * m[2, 2])) ** (1.0 / 3.0)
    return p * scale


def _code(lattice_type: str) -> int:
    try:
        return LATTICE_TYPES.index(lattice_type)
    except ValueError:
        raise SetupError(
            "lattice_type", f"unknown lattice type {lattice_type!r}; known: {', '.join(LATTICE_TYPES)}"
        ) from None


def lattice_from_params(lattice_type: str, params: Sequence[float] | np.ndarray) -> np.ndarray:
    """The canonical cell of a crystal system from its free parameters (layout in the module
    docstring).

    Args:
        lattice_type: one of :data:`~lamcsp.generators.wyckoff.LATTICE_TYPES`.
        params: the system's free cell entries ``(k,)``, Å.

    Returns:
        Lattice vectors as rows ``(3, 3)``, Å.
    """
    code = _code(lattice_type)
    p = np.ascontiguousarray(params, dtype=np.float64).reshape(-1)
    if len(p) != _N_PARAMS[code]:
        raise SetupError("params", f"a {lattice_type} cell has {_N_PARAMS[code]} parameters, got {len(p)}")
    return _matrix(code, p)


def _read_params(code: int, m: np.ndarray) -> np.ndarray:
    if code == 0:
        return np.array([m[0, 0], m[1, 0], m[1, 1], m[2, 0], m[2, 1], m[2, 2]])
    if code == 1:
        return np.array([m[0, 0], m[1, 1], m[2, 0], m[2, 2]])
    if code == 2:
        return np.array([m[0, 0], m[1, 1], m[2, 2]])
    if code in (3, 4, 5):
        return np.array([m[0, 0], m[2, 2]])
    return np.array([m[0, 0]])


def lattice_params(lattice_type: str, matrix: np.ndarray) -> np.ndarray:
    """The free parameters of a cell (inverse of :func:`lattice_from_params`).

    A cell already in canonical form is read exactly. Any other cell (rotated, or relaxed so
    that it deviates slightly from its system) is first rotated to the canonical orientation
    through its metric, then projected onto the system: lengths that the system makes equal
    are averaged, angles it fixes are taken as fixed.

    Args:
        lattice_type: one of :data:`~lamcsp.generators.wyckoff.LATTICE_TYPES`.
        matrix: lattice vectors as rows ``(3, 3)``, Å.

    Returns:
        ``(k,)`` parameters, Å.
    """
    code = _code(lattice_type)
    m = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
    p = _read_params(code, m)
    if np.array_equal(_matrix(code, p), m):
        return p
    g = m @ m.T
    a, b, c = np.sqrt(np.diag(g))
    if code == 0:
        low = np.linalg.cholesky(g)
        return _read_params(0, low)
    if code == 1:
        cos_beta = g[0, 2] / (a * c)
        return np.array([a, b, c * cos_beta, c * math.sqrt(max(0.0, 1.0 - cos_beta * cos_beta))])
    if code == 2:
        return np.array([a, b, c])
    if code in (3, 4, 5):
        return np.array([0.5 * (a + b), c])
    return np.array([(a + b + c) / 3.0])


# --- placement kernel -------------------------------------------------------------------------


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


# --- extra-symmetry screen -------------------------------------------------------------------
#
# A structure built from the orbits of G is G-invariant by construction; spglib reports another
# group only when the structure has more symmetry. That happens when special positions (or a
# single orbit of one species) combine into a larger group: an extra translation (a finer
# lattice) or an operation whose rotation is not in G's point group. The screen looks for both
# directly (a few microseconds; spglib takes 0.3-20 ms per structure, most for cubic lattices).
# It is stricter than comparing group numbers in one case: a finer lattice whose smaller cell
# has the same group type (Si on 3a + 3b of R-3m is R-3m with half the cell) is rejected too,
# as it holds fewer formula units than requested.

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


# --- primitive cells of centred groups ----------------------------------------------------------


@functools.cache
def centring_transform(sg: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(M, M⁻¹)`` for a centred space group (``None`` for a primitive one): the rows of ``M``
    are a primitive cell's vectors in the conventional cell's fractional coordinates, so the
    primitive lattice is ``M @ conventional`` and fractional coordinates map as
    ``x_primitive = x_conventional @ M⁻¹``.

    ``M`` is the first triple of centring translations and unit vectors (centring vectors
    first) whose volume is ``1/k`` for ``k`` centring translations: ``F`` gives the three
    face vectors, ``R`` (hexagonal axes) the two centring vectors and ``b``.
    """
    import itertools

    centring = space_group(sg).centring
    k = len(centring)
    if k == 1:
        return None
    vectors = [np.asarray(t, dtype=float) for t in centring[1:]] + list(np.eye(3))
    for trio in itertools.combinations(vectors, 3):
        m = np.array(trio)
        if abs(abs(np.linalg.det(m)) - 1.0 / k) < 1e-9:
            if np.linalg.det(m) < 0:
                m[2] = -m[2]
            return m, np.linalg.inv(m)
    raise RuntimeError(f"space group {sg}: no primitive cell from centring {centring.tolist()}")


def primitive_indices(frac: np.ndarray, sg: int) -> np.ndarray:
    """Indices of the conventional atoms ``frac`` that the primitive cell keeps: the first atom
    of each set of atoms related by the centring translations of ``sg``, in order."""
    tr = centring_transform(sg)
    if tr is None:
        return np.arange(len(frac))
    xp = np.mod(np.asarray(frac) @ tr[1], 1.0)
    keep: list[int] = []
    for i in range(len(xp)):
        if not any(np.abs((d := xp[i] - xp[j]) - np.round(d)).max() < 1e-6 for j in keep):
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def to_primitive(frac: np.ndarray, lattice: np.ndarray, sg: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A conventional cell of centred group ``sg`` as its primitive cell: ``(kept atom indices,
    fractional coordinates (wrapped), lattice)`` (see :func:`centring_transform`)."""
    tr = centring_transform(sg)
    if tr is None:
        return np.arange(len(frac)), np.asarray(frac, dtype=float), np.asarray(lattice, dtype=float)
    keep = primitive_indices(frac, sg)
    k = len(space_group(sg).centring)
    if len(keep) * k != len(frac):
        raise RuntimeError(f"space group {sg}: {len(frac)} conventional atoms gave {len(keep)} "
                           "primitive ones")
    return keep, np.mod(np.asarray(frac)[keep] @ tr[1], 1.0), tr[0] @ np.asarray(lattice)


def is_primitive_cell(candidate: Candidate) -> bool:
    """Whether a symmetric candidate of a centred group holds its primitive cell: fewer atoms
    than its Wyckoff orbits fill (by the centring multiplicity); read from the atoms, not from
    ``origin``, which evolutionary generators rewrite."""
    if candidate.spacegroup is None or not candidate.wyckoffs:
        return False
    k = centring_multiplicity(int(candidate.spacegroup))
    if k == 1:
        return False
    data = space_group(int(candidate.spacegroup))
    full = sum(data.positions[w.index].multiplicity for w in candidate.wyckoffs)
    return candidate.n_atoms * k == full


def conventional_lattice(candidate: Candidate) -> np.ndarray:
    """The conventional lattice of a symmetric candidate (its own, unless it holds the
    primitive cell of a centred group)."""
    if is_primitive_cell(candidate):
        tr = centring_transform(int(candidate.spacegroup))
        if tr is not None:
            return tr[1] @ candidate.lattice
    return candidate.lattice


def centring_multiplicity(sg: int) -> int:
    """Lattice points per conventional cell of ``sg`` (1 P, 2 A/B/C/I, 3 R, 4 F), from the
    first letter of its symbol (without loading the group's Wyckoff tables)."""
    return _CENTRING_POINTS[_lattice_letters()[int(sg)]]


_CENTRING_POINTS = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "R": 3, "F": 4}


@functools.cache
def _lattice_letters() -> dict[int, str]:
    import spglib

    letters: dict[int, str] = {}
    for hall in range(1, 531):
        t = spglib.get_spacegroup_type(hall)
        letters.setdefault(int(t.number), str(t.international_short)[0])
    return letters


# --- element data -----------------------------------------------------------------------------


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


# --- the generator ----------------------------------------------------------------------------


def check_oversample(oversample: Any) -> int:
    """``oversample`` (of ``random`` and of the swarm) as an int ≥ 1."""
    if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)) or oversample < 1:
        raise SetupError("oversample", f"must be an integer >= 1, got {oversample!r}")
    return int(oversample)


def check_no_oversample(random_options: dict[str, Any], owner: str, own: bool = False) -> None:
    """``oversample`` is read by the search from the generators of a campaign; in another
    generator's ``random_options`` it would do nothing, so it is an error there (``own``: the
    owner has an ``oversample`` option of its own, named in the message)."""
    if random_options.get("oversample", 1) != 1:
        where = (f"give it as the {owner}'s own option, next to random_options" if own
                 else f"the {owner}'s new structures are not prescreened")
        raise SetupError("random_options", "oversample in random_options would do nothing: the search "
                                           f"prescreens a generator's own draws ({where})")


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


class _Plan:
    """Everything :meth:`SymmetricRandom.propose` derives from the options and context."""

    def __init__(self, gen: SymmetricRandom, context: GenerationContext):
        from ase.data import covalent_radii

        per_fu = _parse_composition(context.composition)
        self.species = tuple(per_fu)
        fus = gen.formula_units if gen.formula_units is not None else context.formula_units
        if not fus:
            raise SetupError("formula_units", "no formula units given; give e.g. [1, 2, 4]")
        for z in fus:
            if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or z < 1:
                raise SetupError("formula_units", f"formula units are positive integers, got {z!r}")
        sgs = gen.spacegroups if gen.spacegroups is not None else context.spacegroups
        if not sgs:
            raise SetupError("spacegroups", "no space groups given; give numbers 1-230")
        for sg in sgs:
            if isinstance(sg, bool) or not isinstance(sg, (int, np.integer)) or not 1 <= sg <= 230:
                raise SetupError("spacegroups", f"space groups are integers 1-230, got {sg!r}")
        sgs = sorted({int(s) for s in sgs})
        self.all_groups = sgs
        vf = gen.volume_factor if gen.volume_factor is not None else context.volume_factor
        if not (isinstance(vf, (int, float)) and math.isfinite(vf) and vf > 0):
            raise SetupError("volume_factor", f"must be a positive number, got {vf!r}")

        # (Z, [space groups holding Z formula units]); in primitive cells a centred group's
        # conventional cell holds Z x (its lattice points) formula units
        cell = gen.cell
        self.choices: list[tuple[int, list[int]]] = []
        for fu in sorted({int(z) for z in fus}):
            ok = [sg for sg in sgs
                  if can_hold(sg, [n * fu * (centring_multiplicity(sg) if cell == "primitive" else 1)
                                   for n in per_fu.values()])]
            if ok:
                self.choices.append((fu, ok))
        self.cell = cell
        self.per_fu = per_fu
        #: each choice's group weights, normalised (``group_weights`` other than ``"uniform"``)
        self.weights = [w / w.sum() for w in (np.array(
            [group_weight(sg) if gen.group_weights == "point_group"
             else mp_group_count(sg, self._conventional_atoms(fu, sg)) + MP_PSEUDOCOUNT for sg in ok],
            dtype=float) for fu, ok in self.choices)]
        if not self.choices:
            formula = "".join(f"{_symbol(z)}{n}" for z, n in per_fu.items())
            raise SetupError(
                "spacegroups",
                f"no allowed space group can hold composition {formula} x {sorted(set(fus))} formula "
                f"units (space groups {_ranges(sgs)}); the Wyckoff multiplicities of these groups "
                "cannot add up to the atom counts. Allow more space groups or other formula units.",
            )

        # minimum-distance matrix (species order) and volumes
        k = len(self.species)
        cut = np.empty((k, k))
        for i, za in enumerate(self.species):
            for j, zb in enumerate(self.species):
                d = context.min_distance.get((za, zb), context.min_distance.get((zb, za)))
                if d is None:
                    d = context.distance_factor * (covalent_radii[za] + covalent_radii[zb])
                if not (math.isfinite(d) and d >= 0):
                    raise SetupError("min_distance",
                                     f"{_symbol(za)}-{_symbol(zb)}: must be >= 0 Å, got {d!r}")
                cut[i, j] = d
        self.cut = cut
        self.cut2 = np.ascontiguousarray(cut**2)
        self.cutmax = float(cut.max())
        vols = []
        for z in self.species:
            v = context.element_volumes.get(z, default_element_volume(z))
            if not (math.isfinite(v) and v > 0):
                raise SetupError("element_volumes", f"{_symbol(z)}: must be > 0 Å^3, got {v!r}")
            vols.append(v)
        self.volume_per_fu = float(vf * sum(v * n for v, n in zip(vols, per_fu.values())))

        # Kepler bound: spheres of radius min_k d_ik / 2 around the atoms are disjoint
        packed = sum(n * 4.0 / 3.0 * math.pi * (cut[i].min() / 2.0) ** 3
                     for i, n in enumerate(per_fu.values()))
        if packed > _MAX_PACKING * self.volume_per_fu:
            raise SetupError(
                "min_distance",
                f"the minimum distances ({self.describe_distances()}) cannot fit at the target volume "
                f"of {self.volume_per_fu:.1f} Å^3 per formula unit: even the densest sphere packing "
                f"needs {packed / _MAX_PACKING:.1f} Å^3. Lower min_distance/distance_factor or raise "
                "volume_factor/element_volumes.",
            )

    def _conventional_atoms(self, fu: int, sg: int) -> int:
        """Atoms in the conventional cell of ``sg`` holding ``fu`` formula units."""
        lattice_points = centring_multiplicity(sg) if self.cell == "primitive" else 1
        return fu * lattice_points * sum(self.per_fu.values())

    def draw_group(self, rng: np.random.Generator, group_weights: str) -> tuple[int, int]:
        """Formula units (uniformly) and a space group holding them, uniformly or by
        :func:`group_weight` (``group_weights``)."""
        k = int(rng.integers(len(self.choices)))
        fu, sgs = self.choices[k]
        if group_weights == "uniform":
            return fu, sgs[int(rng.integers(len(sgs)))]
        return fu, sgs[int(rng.choice(len(sgs), p=self.weights[k]))]

    def describe_distances(self) -> str:
        parts = []
        for i, za in enumerate(self.species):
            for j in range(i, len(self.species)):
                parts.append(f"{_symbol(za)}-{_symbol(self.species[j])} {self.cut[i, j]:.2f} Å")
        return ", ".join(parts)


def _ranges(values: Sequence[int]) -> str:
    out, vals = [], sorted(values)
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(out)


@register("random")
class SymmetricRandom(GeneratorBase):
    """Random structures with a chosen space group and Wyckoff assignment (module docstring).

    Args:
        spacegroups: allowed space groups (default: ``context.spacegroups``).
        formula_units: allowed formula units per cell (default: ``context.formula_units``).
        volume_factor: target volume = this × the sum of element volumes (default:
            ``context.volume_factor``).
        max_attempts: lattices drawn per structure before giving up on it. When the first
            structure of a call fails ``1 + FIRST_FAILURE_RETRIES`` times, the request is taken
            as impossible and :class:`~lamcsp.errors.SetupError` is raised; later failures are skipped (fewer
            than ``n`` candidates are returned).
        verify: check every structure's space group with spglib (``symprec=0.01``) and
            redraw it when it differs.
        cell: ``"primitive"`` (default): formula units count the primitive cell, so a centred
            group (A, B, C, I: 2 lattice points, R: 3, F: 4) builds its conventional cell with
            that many times the formula units and emits the primitive cell (``origin["cell"] ==
            "primitive"``; rocksalt NaCl is a 2-atom Fm-3m candidate); ``"conventional"``:
            formula units count the conventional cell (PyXtal's ``numIons``), as emitted.
        group_weights: how a space group is drawn among those that hold the formula units:
            ``"uniform"`` (default; AIRSS, PyXtal and CALYPSO draw so), or ``"point_group"``:
            in proportion to the order of its point group (1 for P1 up to 48 for m-3m), a prior
            for the high symmetry of small-cell ground states (see :func:`group_weight`), or
            ``"mp"``: in proportion to how many known crystals (PyXtal's Materials Project
            statistics, :func:`mp_group_count`) have that group with as many atoms in the
            conventional cell, plus ``MP_PSEUDOCOUNT``.
        special: probability that a structure's Wyckoff assignment is drawn among the
            group's assignments with the fewest free coordinates (uniformly among those),
            instead of by :func:`~lamcsp.generators.wyckoff.random_assignment` (default 0).
            Once such a draw comes out with a higher symmetry than its group, the group's
            remaining tries use the usual draw, so the option does not move structures away
            from the groups whose special positions combine into larger ones.
        wyckoff_weights: ``"uniform"`` (default): Wyckoff assignments as above; ``"mp"``:
            ``MP_WYCKOFF_SHARE`` of them drawn among the group's assignments whose Wyckoff set
            (positions, whatever the species) known crystals of that group and conventional-cell
            size have (PyXtal's Materials Project statistics), in proportion to how many
            (:func:`mp_assignments`); where none has, the usual draw.
        oversample: candidates drawn per structure relaxed (default 1: each one drawn is
            relaxed). Above 1 the search evaluates the model once at each start (batched, not
            counted as relaxations) and relaxes those with the lowest enthalpy per atom
            (:func:`lamcsp.stages.prescreen`), lowest first: random starts whose atoms
            sit badly cost a model call instead of a relaxation.
    """

    name = "random"

    def __init__(
        self,
        spacegroups: list[int] | None = None,
        formula_units: list[int] | None = None,
        volume_factor: float | None = None,
        max_attempts: int = 200,
        verify: bool = True,
        cell: str = "primitive",
        group_weights: str = "uniform",
        special: float = 0.0,
        oversample: int = 1,
        wyckoff_weights: str = "uniform",
    ):
        if cell not in ("primitive", "conventional"):
            raise SetupError("cell", f"must be 'primitive' or 'conventional', got {cell!r}")
        if group_weights not in ("uniform", "point_group", "mp"):
            raise SetupError("group_weights",
                             f"must be 'uniform', 'point_group' or 'mp', got {group_weights!r}")
        if (isinstance(special, bool) or not isinstance(special, (int, float))
                or not 0.0 <= float(special) <= 1.0):
            raise SetupError("special", f"must be a probability within [0, 1], got {special!r}")
        self.oversample = check_oversample(oversample)
        self.cell = cell
        self.group_weights = group_weights
        self.special = float(special)
        if wyckoff_weights not in ("uniform", "mp"):
            raise SetupError("wyckoff_weights", f"must be 'uniform' or 'mp', got {wyckoff_weights!r}")
        self.wyckoff_weights = wyckoff_weights
        if (isinstance(max_attempts, bool) or not isinstance(max_attempts, (int, np.integer))
                or max_attempts < 1):
            raise SetupError("max_attempts", f"must be a positive integer, got {max_attempts!r}")
        # validated, with the context's, when a call starts (one error path for both)
        self.spacegroups = None if spacegroups is None else list(spacegroups)
        self.formula_units = None if formula_units is None else list(formula_units)
        self.volume_factor = volume_factor
        self.max_attempts = int(max_attempts)
        self.verify = bool(verify)
        #: counters since construction: structures built, lattices drawn, assignments drawn,
        #: structures rejected by the extra-symmetry screen and by spglib, structures given up
        self.stats: dict[str, int] = dict.fromkeys(
            ("built", "lattices", "assignments", "rejected_symmetry", "rejected_spglib", "failed"), 0)
        self._plans: dict[tuple[Any, ...], _Plan] = {}  # draw()'s plans by context

    def propose(self, n: int, rng: np.random.Generator, context: GenerationContext) -> list[Candidate]:
        """Up to ``n`` random symmetric candidates.

        Args:
            n: number of candidates wanted.
            rng: the only source of randomness (same state, same candidates).
            context: composition, formula units, space groups, distances and volumes.

        Returns:
            Candidates with ``spacegroup``, ``wyckoffs`` and ``origin["formula_units"]``; atoms
            site by site in the order of ``wyckoffs``, species in the order of the composition.

        Raises:
            SetupError: bad options or context; a composition no allowed space group can hold,
                or only in arrangements of higher symmetry (``"spacegroups"``); minimum
                distances that cannot fit (``"min_distance"``).
        """
        plan = _Plan(self, context)
        out: list[Candidate] = []
        for _ in range(int(n)):
            tally = {"lattices": 0, "placed": 0, "symmetry": 0}
            cand = self._one(plan, rng, tally)
            for _ in range(FIRST_FAILURE_RETRIES if not out else 0):
                if cand is not None:
                    break
                # before calling the request impossible, give it more tries: small cells of
                # many species often land in a larger group (AB3 in 4 atoms)
                cand = self._one(plan, rng, tally)
            if cand is not None:
                out.append(cand)
                continue
            self.stats["failed"] += 1
            if out:
                continue  # an unlucky structure; the request itself is possible
            groups = _ranges(plan.all_groups)
            if tally["placed"] * 2 < tally["lattices"]:
                also = (f" (the {tally['placed']} that did had a higher symmetry than their group)"
                        if tally["placed"] else "")
                raise SetupError(
                    "min_distance",
                    f"no structure could be built: in {tally['lattices']} lattices the minimum distances "
                    f"({plan.describe_distances()}) fitted {tally['placed']} times{also}, at the target "
                    f"volume of {plan.volume_per_fu:.1f} Å^3 per formula unit in space groups {groups}. "
                    "Lower min_distance/distance_factor, raise volume_factor, or allow more space groups.",
                )
            raise SetupError(
                "spacegroups",
                f"every structure placed in space groups {groups} ({tally['symmetry']} in "
                f"{tally['lattices']} lattices) had a higher symmetry than its group: the Wyckoff orbits "
                "that hold this composition there only form structures of a larger group. Allow more "
                "space groups or other formula units.",
            )
        return out

    def draw(self, rng: np.random.Generator, context: GenerationContext) -> Candidate | None:
        """One candidate from ``rng`` alone (the :class:`~lamcsp.generators.base.Sampler`
        protocol: the search gives each candidate its own stream and draws them on its
        workers), or ``None`` where ``max_attempts`` lattices held none.

        Raises:
            SetupError: bad options or context (as :meth:`propose`).
        """
        key = (tuple(sorted(context.composition.items())), tuple(context.formula_units),
               tuple(context.spacegroups), context.volume_factor, context.distance_factor,
               tuple(sorted(context.min_distance.items())), tuple(sorted(context.element_volumes.items())))
        plan = self._plans.get(key)
        if plan is None:  # the plan is the same for every draw of a unit: built once per worker
            plan = self._plans[key] = _Plan(self, context)
        cand = self._one(plan, rng, {"lattices": 0, "placed": 0, "symmetry": 0})
        if cand is None:
            self.stats["failed"] += 1
        return cand

    def _one(self, plan: _Plan, rng: np.random.Generator, tally: dict[str, int]) -> Candidate | None:
        import spglib

        left = self.max_attempts
        while left > 0:
            fu, sg = plan.draw_group(rng, self.group_weights)
            lattice_points = centring_multiplicity(sg) if plan.cell == "primitive" else 1
            conv_fu = fu * lattice_points
            counts = {z: n * conv_fu for z, n in plan.per_fu.items()}
            # the fewest-coordinate assignments are left for the group once one of them comes out
            # with a higher symmetry (often all of them do): else ``special`` would move the draw
            # away from the groups whose special positions combine into larger groups
            special = self.special
            for _ in range(ASSIGNMENTS_PER_GROUP):
                if left <= 0:
                    break
                drew_special = special > 0.0 and rng.random() < special
                known: tuple[Any, np.ndarray] = ((), np.empty(0))
                if not drew_special and self.wyckoff_weights == "mp" and rng.random() < MP_WYCKOFF_SHARE:
                    known = mp_assignments(sg, tuple(counts.items()))
                if drew_special:
                    fewest = fewest_dof_assignments(sg, tuple(counts.items()))
                    assignment = fewest[int(rng.integers(len(fewest)))]
                elif known[0]:
                    assignment = known[0][int(rng.choice(len(known[0]), p=known[1]))]
                else:
                    assignment = tuple(random_assignment(sg, counts, rng))
                comp = _compiled(sg, assignment, plan.species)
                self.stats["assignments"] += 1
                frac = np.empty((comp.n_atoms, 3))
                points = np.zeros((len(comp.site_mult), 3))
                params = np.empty(6)
                used = _build(rng, comp.code, plan.volume_per_fu * conv_fu, comp.ops, comp.site_start,
                              comp.site_mult, comp.site_dof, comp.site_species, comp.order, plan.cut2,
                              plan.cutmax, SITE_TRIES, min(LATTICES_PER_ASSIGNMENT, left),
                              frac, points, params)
                left -= abs(used)
                self.stats["lattices"] += abs(used)
                tally["lattices"] += abs(used)
                if used < 0:
                    continue
                tally["placed"] += 1
                lattice = _matrix(comp.code, params[: _N_PARAMS[comp.code]])
                frac = frac[comp.perm]
                if _extra_symmetry(frac, comp.atom_species, lattice, comp.pg_rots, comp.centring, SYMPREC):
                    self.stats["rejected_symmetry"] += 1
                    tally["symmetry"] += 1
                    if drew_special:
                        special = 0.0
                    continue
                if self.verify:
                    cell: Any = (lattice, frac, comp.numbers)
                    data = spglib.get_symmetry_dataset(cell, symprec=SYMPREC)
                    if data is None or int(data.number) != sg:
                        self.stats["rejected_spglib"] += 1
                        tally["symmetry"] += 1
                        continue
                self.stats["built"] += 1
                sites = [WyckoffSite(z, i, lab, points[s].copy())
                         for s, (z, i, lab) in enumerate(zip(comp.site_numbers, comp.indices, comp.labels))]
                origin: dict[str, Any] = {"formula_units": fu}
                numbers = comp.numbers.copy()
                if lattice_points > 1:
                    keep, frac, lattice = to_primitive(frac, lattice, sg)
                    numbers = numbers[keep]
                    origin["cell"] = "primitive"
                return Candidate(numbers, frac, lattice, spacegroup=sg, wyckoffs=sites,
                                 generator=self.name, origin=origin)
        return None


# --- symmetry-reduced vectors -----------------------------------------------------------------


def _template_compiled(template: Candidate) -> _Compiled:
    if template.spacegroup is None or not template.wyckoffs:
        raise SetupError("candidate", "needs a space group and Wyckoff sites (a symmetric candidate)")
    assignment = tuple((int(w.number), int(w.index)) for w in template.wyckoffs)
    species = tuple(dict.fromkeys(z for z, _ in assignment))
    return _compiled(int(template.spacegroup), assignment, species)


def vector_size(template: Candidate) -> int:
    """Length of the symmetry-reduced vector of ``template``."""
    comp = _template_compiled(template)
    return _N_PARAMS[comp.code] + int(comp.site_dof.sum())


def vector_labels(template: Candidate) -> list[str]:
    """A name per vector entry, e.g. ``["a", "c", "Si 8h y", "Si 8h z"]``."""
    comp = _template_compiled(template)
    names = {0: ["a_x", "b_x", "b_y", "c_x", "c_y", "c_z"], 1: ["a", "b", "c cos(beta)", "c sin(beta)"],
             2: ["a", "b", "c"], 3: ["a", "c"], 4: ["a", "c"], 5: ["a", "c"], 6: ["a"]}[comp.code]
    out = list(names)
    for z, lab, axes in zip(comp.site_numbers, comp.labels, comp.free_axes):
        out.extend(f"{_symbol(z)} {lab} {'xyz'[a]}" for a in axes)
    return out


def to_vector(candidate: Candidate) -> np.ndarray:
    """The symmetry-reduced vector of a symmetric candidate (layout in the module docstring).

    Args:
        candidate: a candidate with ``spacegroup`` and ``wyckoffs``.

    Returns:
        ``(k,)``: lattice parameters (Å), then the free fractional coordinates of each site.
    """
    comp = _template_compiled(candidate)
    lat = lattice_params(LATTICE_TYPES[comp.code], conventional_lattice(candidate))
    coords = [np.asarray(w.free, dtype=np.float64)[list(axes)]
              for w, axes in zip(candidate.wyckoffs or [], comp.free_axes)]
    return np.concatenate([lat, *coords]) if coords else lat


def from_vector(template: Candidate, vector: np.ndarray, reduce: bool = True) -> Candidate:
    """A candidate with the space group and Wyckoff assignment of ``template`` and the lattice
    and free coordinates of ``vector``; a primitive cell where ``template`` is one
    (:func:`is_primitive_cell`), unless ``reduce`` is false (then the conventional cell,
    atoms as in the full orbits).

    The generating points are kept as given (not wrapped); the atoms' fractional coordinates
    are wrapped into [0, 1). Atoms come site by site, each orbit in the position's operation
    order (as :class:`SymmetricRandom` emits them).

    Raises:
        SetupError: ``template`` is not symmetric, or ``vector`` has the wrong length, a
            non-finite entry or a cell with a diagonal entry <= 0.
    """
    comp = _template_compiled(template)
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    size = _N_PARAMS[comp.code] + int(comp.site_dof.sum())
    if len(v) != size:
        raise SetupError("vector", f"expected {size} entries for this template, got {len(v)}")
    if not np.all(np.isfinite(v)):
        raise SetupError("vector", "holds non-finite values")
    k = _N_PARAMS[comp.code]
    lattice = _matrix(comp.code, np.ascontiguousarray(v[:k]))
    if np.any(np.diag(lattice) <= 0.0):
        raise SetupError("vector", f"the cell's diagonal entries must be positive, got {np.diag(lattice)}")
    data = space_group(comp.sg)
    points = np.zeros((len(comp.site_mult), 3))
    sites = []
    sites_info = zip(comp.site_numbers, comp.indices, comp.labels, comp.free_axes)
    for s, (z, idx, lab, axes) in enumerate(sites_info):
        xyz = np.zeros(3)
        xyz[list(axes)] = v[k : k + len(axes)]
        k += len(axes)
        proj = data.positions[idx].ops[0]
        # the same arithmetic as the kernel, so that the round trip is exact
        points[s] = [proj[r, 0] * xyz[0] + proj[r, 1] * xyz[1] + proj[r, 2] * xyz[2] + proj[r, 3]
                     for r in range(3)]
        sites.append(WyckoffSite(z, idx, lab, points[s].copy()))
    frac = _orbits(comp.ops, comp.site_start, comp.site_mult, points)
    numbers = comp.numbers.copy()
    primitive = is_primitive_cell(template)
    if primitive and reduce:
        keep, frac, lattice = to_primitive(frac, lattice, comp.sg)
        numbers = numbers[keep]
    origin = dict(template.origin)
    if primitive and reduce:
        origin["cell"] = "primitive"
    else:
        origin.pop("cell", None)
    return Candidate(numbers, frac, lattice, spacegroup=comp.sg, wyckoffs=sites,
                     generator=template.generator, origin=origin)

