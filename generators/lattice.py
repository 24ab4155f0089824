"""Cells of the symmetric generators: the canonical lattice of each crystal system and its free
parameters, random lattice shapes at a target volume, and the primitive cells of centred space
groups.

Lattice shapes (before scaling to the volume): lengths ``a, b, c`` each log-uniform in
``[1, 2]`` (so no ratio exceeds 2); triclinic angles uniform in ``[60°, 120°]`` with the
cell's volume at least half that of the right-angled cell with the same lengths (redrawn
otherwise); monoclinic (b unique) ``β`` uniform in ``[60°, 120°]``; tetragonal, trigonal and
hexagonal ``c/a`` log-uniform in ``[1/2, 2]``; trigonal and R groups on hexagonal axes.

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
bounds to respect). The symmetry-reduced vector of a candidate
(:mod:`lamcsp.generators.symmetry_vector`) starts with these parameters.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numba
import numpy as np
from lamcsp.generators.base import Candidate
from lamcsp.generators.wyckoff import LATTICE_TYPES, space_group

from lamcsp.errors import SetupError

__all__ = ["centring_multiplicity", "centring_transform", "conventional_lattice", "is_primitive_cell",
           "lattice_from_params", "lattice_params", "primitive_indices", "to_primitive"]

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
