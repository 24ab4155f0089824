"""The particle swarm's space (:mod:`lamcsp.generators.swarm`): a particle as plain data, its
template (space group and Wyckoff assignment) and the maps between structures and positions
in it: the number of free lattice parameters, clamping a moved position to physical lattices,
projecting a relaxed structure back onto its template, the distance check.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from lamcsp.generators.base import Candidate, GenerationContext

__all__ = ["Particle", "clamp_vector", "n_lattice_params", "passes_distances", "project_to_template",
           "template_key"]


def n_lattice_params(sg: int) -> int:
    """Number of free lattice parameters of the crystal system of space group ``sg``."""
    from lamcsp.generators.symmetric import lattice_params
    from lamcsp.generators.wyckoff import lattice_type

    return len(lattice_params(lattice_type(sg), np.eye(3)))


def passes_distances(candidate: Candidate, context: GenerationContext) -> bool:
    """Whether ``candidate`` respects the context's minimum-distance matrix."""
    from lamcsp.generators.genetic import min_distance_matrix, passes_screen

    return passes_screen(candidate.frac, candidate.lattice, min_distance_matrix(candidate.numbers, context))


def clamp_vector(template: Candidate, x: np.ndarray) -> np.ndarray:
    """Keep a moved particle physical: lattice diagonal entries at least 1 Å, tilts of
    triclinic and monoclinic cells at most half the vector they lean on (a reduced cell),
    the volume within [0.5, 2] of the template's, and coordinates wrapped into [0, 1).
    """
    from lamcsp.generators.symmetric import lattice_from_params, lattice_params
    from lamcsp.generators.wyckoff import lattice_type

    kind = lattice_type(int(template.spacegroup))
    n_lat = n_lattice_params(int(template.spacegroup))
    out = np.asarray(x, dtype=float).copy()
    m = lattice_from_params(kind, out[:n_lat])
    for k in range(3):
        m[k, k] = max(m[k, k], 1.0)
    if kind in ("triclinic", "monoclinic"):
        m[1, 0] = np.clip(m[1, 0], -0.5 * m[0, 0], 0.5 * m[0, 0])
        m[2, 0] = np.clip(m[2, 0], -0.5 * m[0, 0], 0.5 * m[0, 0])
        m[2, 1] = np.clip(m[2, 1], -0.5 * m[1, 1], 0.5 * m[1, 1])
    params = lattice_params(kind, m)
    vol, ref = abs(np.linalg.det(lattice_from_params(kind, params))), template.volume
    if not 0.5 * ref <= vol <= 2.0 * ref:
        params = params * (float(np.clip(vol, 0.5 * ref, 2.0 * ref)) / vol) ** (1.0 / 3.0)
    out[:n_lat] = params
    out[n_lat:] = np.mod(out[n_lat:], 1.0)
    return out


def project_to_template(template: Candidate, relaxed: Candidate, tol: float = 0.05) -> Candidate | None:
    """The relaxed structure as a point of ``template``'s symmetry-reduced space.

    The relaxer keeps the atom order, so each orbit's first atom is the relaxed generating
    point; its free coordinates and the relaxed cell's parameters (projected onto the crystal
    system) give the vector. ``None`` when the relaxed structure has left the template (atoms
    more than ``tol`` (fractional) from the symmetrised ones, or another composition).
    """
    from lamcsp.generators.base import WyckoffSite
    from lamcsp.generators.symmetric import (
        centring_transform,
        from_vector,
        is_primitive_cell,
        primitive_indices,
        to_vector,
    )

    if relaxed.n_atoms != template.n_atoms or not np.array_equal(relaxed.numbers, template.numbers):
        return None
    # index (in the relaxed cell) of each orbit's first atom; a primitive cell of a centred group
    # keeps the first atom of each centring class, in conventional order (symmetric.to_primitive)
    starts, start = [], 0
    for w in template.wyckoffs or []:
        starts.append(start)
        start += int("".join(ch for ch in w.label if ch.isdigit()))
    frac = relaxed.frac
    tr = centring_transform(int(template.spacegroup)) if is_primitive_cell(template) else None
    if tr is not None:
        conv = from_vector(template, to_vector(template), reduce=False)
        where = {int(c): p for p, c in enumerate(primitive_indices(conv.frac, int(template.spacegroup)))}
        starts = [where[s] for s in starts]
        frac = relaxed.frac @ tr[0]  # conventional fractional coordinates
    sites = []
    for w, s in zip(template.wyckoffs or [], starts):
        point = frac[s]
        if tr is not None:  # the centring image of the atom nearest the template's generating point
            from lamcsp.generators.wyckoff import space_group

            images = point + space_group(int(template.spacegroup)).centring
            d = images - np.asarray(w.free)
            d -= np.round(d)
            point = images[int(np.argmin((d**2).sum(axis=1)))]
        sites.append(WyckoffSite(w.number, w.index, w.label, point.copy()))
    # the relaxed cell as it is: to_vector reads a primitive cell's conventional lattice itself
    shaped = Candidate(relaxed.numbers, relaxed.frac, relaxed.lattice, spacegroup=template.spacegroup,
                       wyckoffs=sites, generator=template.generator)
    projected = from_vector(template, to_vector(shaped))
    diff = projected.frac - relaxed.frac
    diff -= np.round(diff)
    if np.abs(diff).max() > tol:
        return None
    return projected


@dataclasses.dataclass
class Particle:
    """One particle: its template, position, velocity and personal best (plain data)."""

    pid: int
    template: dict[str, Any]
    x: np.ndarray
    v: np.ndarray
    best_x: np.ndarray | None = None
    best_h: float = float("inf")
    best_fp: np.ndarray | None = None
    stagnant: int = 0
    evaluated: int = 0

    def to_dict(self) -> dict[str, Any]:
        def arr(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(t) for t in a]

        return {"pid": self.pid, "template": self.template, "x": arr(self.x), "v": arr(self.v),
                "best_x": arr(self.best_x), "best_h": float(self.best_h), "best_fp": arr(self.best_fp),
                "stagnant": self.stagnant, "evaluated": self.evaluated}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Particle:
        def arr(a: list[float] | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a, dtype=float)

        return cls(int(d["pid"]), d["template"], np.asarray(d["x"], dtype=float),
                   np.asarray(d["v"], dtype=float), arr(d["best_x"]), float(d["best_h"]),
                   arr(d["best_fp"]), int(d["stagnant"]), int(d["evaluated"]))


def template_key(template: dict[str, Any]) -> tuple:
    """Particles can be differenced only within one key: space group and Wyckoff assignment."""
    return (template["spacegroup"], tuple((w["number"], w["index"]) for w in template["wyckoffs"]))
