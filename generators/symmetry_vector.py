"""The symmetry-reduced vector of a symmetric candidate, the space a particle swarm moves in
(:func:`to_vector` / :func:`from_vector`)::

    [ lattice parameters (lattice_params) | free coordinates of site 0 | of site 1 | ... ]

The lattice parameters are those of :mod:`lamcsp.generators.lattice` (the free entries of
the canonical cell of the crystal system, Å; table there). Each site then contributes its
position's free fractional coordinates, in ``x, y, z`` order (``WyckoffPosition.free_axes``),
in the order of ``candidate.wyckoffs``.
``from_vector(template, to_vector(c))`` rebuilds ``c`` bit for bit, and
``to_vector(from_vector(t, v))`` returns ``v`` bit for bit.
"""

from __future__ import annotations

import numpy as np
from lamcsp.generators.base import Candidate, WyckoffSite
from lamcsp.generators.elements import _symbol
from lamcsp.generators.lattice import (
    _N_PARAMS,
    _matrix,
    conventional_lattice,
    is_primitive_cell,
    lattice_params,
    to_primitive,
)
from lamcsp.generators.placement import _Compiled, _compiled, _orbits
from lamcsp.generators.wyckoff import LATTICE_TYPES, space_group

from lamcsp.errors import SetupError

__all__ = ["from_vector", "to_vector", "vector_labels", "vector_size"]


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
