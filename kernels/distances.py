"""Minimum interatomic distance per system, under periodic boundary conditions.

:func:`min_distances` is the numba kernel; :func:`min_distances_reference` the plain NumPy
reference it is tested against. Both are exact for any cell shape: the images searched along
each lattice vector come from the reciprocal-vector lengths and the cutoff, so a distance below
``cutoff`` is never missed, and anything above it is reported as ``cutoff`` (capped).
"""

from __future__ import annotations

import numba
import numpy as np


def _recip_lengths(cells: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(cells)
    return np.linalg.norm(inv, axis=-2)


@numba.njit(cache=True, fastmath=False)
def _min_dist_kernel(frac, cells, offsets, nmax, cutoff):  # pragma: no cover - jitted
    n_sys = cells.shape[0]
    out = np.empty(n_sys)
    for s in range(n_sys):
        c = cells[s]
        best2 = cutoff * cutoff
        start, end = offsets[s], offsets[s + 1]
        for i in range(start, end):
            for j in range(i, end):
                d0 = frac[j, 0] - frac[i, 0]
                d1 = frac[j, 1] - frac[i, 1]
                d2 = frac[j, 2] - frac[i, 2]
                d0 -= np.floor(d0 + 0.5)
                d1 -= np.floor(d1 + 0.5)
                d2 -= np.floor(d2 + 0.5)
                for a in range(-nmax[s, 0], nmax[s, 0] + 1):
                    for b in range(-nmax[s, 1], nmax[s, 1] + 1):
                        for k in range(-nmax[s, 2], nmax[s, 2] + 1):
                            if i == j and a == 0 and b == 0 and k == 0:
                                continue
                            f0 = d0 + a
                            f1 = d1 + b
                            f2 = d2 + k
                            x = f0 * c[0, 0] + f1 * c[1, 0] + f2 * c[2, 0]
                            y = f0 * c[0, 1] + f1 * c[1, 1] + f2 * c[2, 1]
                            z = f0 * c[0, 2] + f1 * c[1, 2] + f2 * c[2, 2]
                            r2 = x * x + y * y + z * z
                            if r2 < best2:
                                best2 = r2
        out[s] = np.sqrt(best2)
    return out


def _prepare(positions, cells, counts, cutoff):
    positions = np.asarray(positions, dtype=np.float64)
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    sys = np.repeat(np.arange(len(counts)), counts)
    inv = np.linalg.inv(cells)
    frac = np.einsum("ni,nij->nj", positions, inv[sys]) if len(sys) else positions.copy()
    nmax = np.ceil(cutoff * _recip_lengths(cells) + 0.5).astype(np.int64)
    return frac, cells, offsets, nmax


def min_distances(positions, cells, counts, cutoff: float = 3.0) -> np.ndarray:
    """Shortest interatomic distance of each system, capped at ``cutoff``.

    Args:
        positions: Cartesian positions of all systems, concatenated, ``(N, 3)``, Å.
        cells: lattice vectors as rows, ``(S, 3, 3)``, Å.
        counts: atoms per system, ``(S,)``.
        cutoff: distances at or above it are reported as ``cutoff``, Å.

    Returns:
        ``(S,)`` minimum distances (including an atom to its own periodic images), Å.
    """
    frac, cells, offsets, nmax = _prepare(positions, cells, counts, cutoff)
    return _min_dist_kernel(frac, cells, offsets, nmax, float(cutoff))


def min_distances_reference(positions, cells, counts, cutoff: float = 3.0) -> np.ndarray:
    """Plain NumPy version of :func:`min_distances` (the test reference)."""
    frac, cells, offsets, nmax = _prepare(positions, cells, counts, cutoff)
    out = np.full(len(cells), float(cutoff))
    for s in range(len(cells)):
        f = frac[offsets[s] : offsets[s + 1]]
        if len(f) == 0:
            continue
        rng = [np.arange(-m, m + 1) for m in nmax[s]]
        images = np.stack(np.meshgrid(*rng, indexing="ij"), -1).reshape(-1, 3)
        d = f[None, :, :] - f[:, None, :]
        d -= np.floor(d + 0.5)
        vec = (d[:, :, None, :] + images[None, None]) @ cells[s]
        r = np.linalg.norm(vec, axis=-1)
        n = len(f)
        self_img = (np.arange(n)[:, None] == np.arange(n)[None, :])[:, :, None] & (
            np.abs(images).sum(1) == 0
        )[None, None, :]
        r[self_img] = np.inf
        out[s] = min(float(cutoff), float(r.min()))
    return out
