"""Which structures the fine-tune loop sends to the oracle: the committee's trust levels
(:func:`classify`), the frames that must not go (:func:`sane`), diversity by fingerprint
(:func:`farthest_point_order`) and DP-GEN's selection plus CSP's low-enthalpy hits
(:func:`select`). Pure strategy: no files, no MPI; the committee's numbers come in as a
:class:`~lamcsp.committee.Deviation`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from lamcsp.committee import Deviation

__all__ = ["Selection", "classify", "farthest_point_order", "sane", "select"]


def classify(max_devi_f: np.ndarray, lo: float, hi: float) -> dict[str, float]:
    """Fractions of structures that are accurate (< lo), candidates ([lo, hi)) and failed (>= hi)."""
    d = np.asarray(max_devi_f, dtype=float)
    n = max(1, len(d))
    return {
        "accurate": float((d < lo).sum() / n),
        "candidate": float(((d >= lo) & (d < hi)).sum() / n),
        "failed": float((d >= hi).sum() / n),
    }


def sane(
    atoms: Any, min_distance: float = 0.6, volume_per_atom: tuple[float, float] = (2.0, 200.0)
) -> str | None:
    """Why a frame must not go to the oracle (too-close atoms, a broken cell), or ``None``."""
    cell = np.asarray(atoms.cell.array, dtype=float)
    if not np.all(np.isfinite(cell)) or not np.all(np.isfinite(atoms.positions)):
        return "non-finite cell or positions"
    vol = abs(float(np.linalg.det(cell)))
    v = vol / max(1, len(atoms))
    if not volume_per_atom[0] <= v <= volume_per_atom[1]:
        return f"volume {v:.2f} Å^3/atom outside {volume_per_atom[0]}-{volume_per_atom[1]}"
    lengths = np.linalg.norm(cell, axis=1)
    if lengths.min() < 1.0 or vol / np.prod(lengths) < 0.05:
        return "degenerate cell"
    dmin = float(lengths.min())  # an atom and its own periodic image
    if len(atoms) > 1:
        d = atoms.get_all_distances(mic=True)
        np.fill_diagonal(d, np.inf)
        dmin = min(dmin, float(d.min()))
    if dmin < min_distance:
        return f"atoms {dmin:.2f} Å apart (< {min_distance})"
    return None


def farthest_point_order(fingerprints: np.ndarray, first: int = 0) -> list[int]:
    """Indices in farthest-point order (each next one the farthest from those taken)."""
    X = np.asarray(fingerprints, dtype=float)
    n = len(X)
    if n == 0:
        return []
    order = [first]
    dist = np.linalg.norm(X - X[first], axis=1)
    while len(order) < n:
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0 and nxt in order:
            rest = [i for i in range(n) if i not in order]
            order.extend(rest)
            break
        order.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(X - X[nxt], axis=1))
        dist[order] = -1.0
    return order


@dataclasses.dataclass
class Selection:
    """What one iteration sends to the oracle, and why the rest was not sent."""

    chosen: list[int]  # indices into the candidates, in selection order
    reasons: dict[int, str]  # index -> why it was left out
    fractions: dict[str, float]  # accurate / candidate / failed over all candidates


def select(
    structures: Sequence[Any],
    deviation: Deviation | None,
    enthalpy: Sequence[float],
    *,
    lo: float,
    hi: float,
    window: float,
    max_labels: int | None,
    fingerprints: np.ndarray | None = None,
    already: set[int] | None = None,
    excess: Sequence[float] | None = None,
    max_energy: float | None = None,
    near_minimum: set[int] | None = None,
) -> Selection:
    """DP-GEN's selection plus CSP's low-enthalpy hits.

    A structure is selected when ``lo <= max_devi_f < hi``, or when its ``enthalpy`` per atom
    (NaN for a frame that is not a relaxed hit) is within ``window`` eV/atom of the lowest (the
    hits a search must get right, whatever the committee says; give the energy above the hull
    for a variable-composition search). ``already`` (indices labelled in an earlier iteration)
    are not labelled again; an uncertain frame whose ``excess`` (enthalpy per atom above the
    best hit of its composition and pressure, by the committee) is over ``max_energy`` is left
    out: far up the slope of a random start, it says little about the basins the search keeps.
    ``near_minimum`` (relaxation frames close to a low-enthalpy hit's minimum) are selected with
    the low-enthalpy hits, whatever the committee says: the energy differences between the
    competitors decide the ranking. Without a committee (the first iteration) every relaxed hit
    may be selected (the initial data), the low-enthalpy ones first. Frames that fail
    :func:`sane` are cleaned out first. If more than ``max_labels`` remain, the low-enthalpy hits
    come first, then the rest in farthest-point order of ``fingerprints`` (diverse), else by
    decreasing deviation.
    """
    n = len(structures)
    reasons: dict[int, str] = {}
    H = np.asarray(enthalpy, dtype=float)
    hmin = np.nanmin(H) if n else 0.0
    low = [i for i in range(n) if np.isfinite(H[i]) and H[i] <= hmin + window]
    low += sorted(set(near_minimum or ()) - set(low))
    if deviation is not None:
        d = deviation.max_devi_f
        uncertain = [i for i in range(n) if lo <= d[i] < hi]
        for i in range(n):
            if d[i] >= hi:
                reasons[i] = f"max_devi_f {d[i]:.3f} >= trust_hi"
        fractions = classify(d, lo, hi)
    else:
        uncertain = []
        fractions = {"accurate": 0.0, "candidate": 1.0, "failed": 0.0}
    if deviation is None:  # the first iteration, no committee yet: every sane hit may go (DP-GEN's
        # initial data), the lowest first, then the most diverse, up to max_labels
        uncertain = [i for i in range(n) if np.isfinite(H[i])]
    picked = []
    for i in sorted(set(low) | set(uncertain),
                    key=lambda i: (i not in low, np.isnan(H[i]), np.nan_to_num(H[i]), i)):
        if already and i in already:
            reasons[i] = "labelled before"
            continue
        why = sane(structures[i])
        if not why and i not in low and excess is not None and max_energy is not None \
                and np.isfinite(excess[i]) and excess[i] > max_energy:
            why = f"{excess[i]:.2f} eV/atom above the best hit (> max_energy)"
        if why:
            reasons[i] = why
            continue
        picked.append(i)
    if max_labels is not None and len(picked) > max_labels:
        first = [i for i in picked if i in low]
        rest = [i for i in picked if i not in low]
        if fingerprints is not None and rest:
            order = farthest_point_order(np.asarray(fingerprints)[rest])
            rest = [rest[k] for k in order]
        elif deviation is not None:
            rest.sort(key=lambda i: -deviation.max_devi_f[i])
        keep = (first + rest)[:max_labels]
        for i in picked:
            if i not in keep:
                reasons[i] = "over max_labels"
        picked = keep
    for i in range(n):
        if i not in picked and i not in reasons:
            reasons[i] = (
                "accurate" if deviation is not None and deviation.max_devi_f[i] < lo else "not low enough"
            )
    return Selection(picked, reasons, fractions)


def _excess(structures: Sequence[Any], energy: np.ndarray, enthalpy: Sequence[float],
            pressures: Sequence[float] | None) -> np.ndarray:
    """Enthalpy per atom by the committee (mean energy + pV) above the lowest relaxed hit
    (finite ``enthalpy``) of the same composition and pressure; NaN where there is no such hit."""
    from lamcsp.io import reduced_formula
    from lamcsp.relax.state import EV_PER_A3_PER_GPA

    p = np.zeros(len(structures)) if pressures is None else np.asarray(pressures, dtype=float)
    h = np.array([e + pi * EV_PER_A3_PER_GPA * a.get_volume() / len(a)
                  for e, pi, a in zip(energy, p, structures)])
    keys = [(reduced_formula(a.get_chemical_formula()), round(float(pi), 6)) for a, pi in zip(structures, p)]
    best: dict[tuple[str, float], float] = {}
    for k, hi, h0 in zip(keys, h, enthalpy):
        if np.isfinite(h0):
            best[k] = min(best.get(k, np.inf), hi)
    return np.array([hi - best.get(k, np.nan) for k, hi in zip(keys, h)])
