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


@numba.njit(cache=True, inline="always")
def pair_images(frac, i, j, c, nmax, r2max, buf):  # pragma: no cover - jitted
    """The periodic images of the pair ``(i, j)`` closer than ``sqrt(r2max)``.

    Writes ``x, y, z, r²`` of ``r_j - r_i + n·cell`` for every lattice vector ``n`` in
    ``[-nmax, nmax]`` (the self-image ``n = 0`` skipped when ``i == j``) into ``buf`` rows and
    returns how many. ``buf`` needs ``prod(2·nmax + 1)`` rows. The one image loop shared by the
    distance, screen and fingerprint kernels.
    """
    d0 = frac[j, 0] - frac[i, 0]
    d1 = frac[j, 1] - frac[i, 1]
    d2 = frac[j, 2] - frac[i, 2]
    d0 -= np.floor(d0 + 0.5)
    d1 -= np.floor(d1 + 0.5)
    d2 -= np.floor(d2 + 0.5)
    count = 0
    for a in range(-nmax[0], nmax[0] + 1):
        for b in range(-nmax[1], nmax[1] + 1):
            for k in range(-nmax[2], nmax[2] + 1):
                if i == j and a == 0 and b == 0 and k == 0:
                    continue
                f0 = d0 + a
                f1 = d1 + b
                f2 = d2 + k
                x = f0 * c[0, 0] + f1 * c[1, 0] + f2 * c[2, 0]
                y = f0 * c[0, 1] + f1 * c[1, 1] + f2 * c[2, 1]
                z = f0 * c[0, 2] + f1 * c[1, 2] + f2 * c[2, 2]
                r2 = x * x + y * y + z * z
                if r2 < r2max:
                    buf[count, 0] = x
                    buf[count, 1] = y
                    buf[count, 2] = z
                    buf[count, 3] = r2
                    count += 1
    return count


@numba.njit(cache=True)
def image_buffer(nmax):  # pragma: no cover - jitted
    """A ``buf`` for :func:`pair_images` with image ranges ``nmax (S, 3)`` (the largest)."""
    rows = 1
    for s in range(nmax.shape[0]):
        r = (2 * nmax[s, 0] + 1) * (2 * nmax[s, 1] + 1) * (2 * nmax[s, 2] + 1)
        rows = max(rows, r)
    return np.empty((rows, 4))


@numba.njit(cache=True, fastmath=False)
def _min_dist_kernel(frac, cells, offsets, nmax, cutoff):  # pragma: no cover - jitted
    n_sys = cells.shape[0]
    out = np.empty(n_sys)
    buf = image_buffer(nmax)
    for s in range(n_sys):
        c = cells[s]
        best2 = cutoff * cutoff
        start, end = offsets[s], offsets[s + 1]
        for i in range(start, end):
            for j in range(i, end):
                for t in range(pair_images(frac, i, j, c, nmax[s], best2, buf)):
                    best2 = min(best2, buf[t, 3])
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


# --- minimum-distance matrix screen (per species pair), for placing atoms one orbit at a time ---


@numba.njit(cache=True, fastmath=False)
def image_range(lattice, cutoff):  # pragma: no cover - jitted
    """Periodic images to search along each lattice vector so that no distance below
    ``cutoff`` is missed, for minimum-image-wrapped fractional differences.

    Args:
        lattice: lattice vectors as rows ``(3, 3)``, Å.
        cutoff: the largest distance of interest, Å.

    Returns:
        ``(3,)`` int64: image offsets ``-n..n`` along each vector (``floor(cutoff * |b_k| +
        1/2)``, ``b_k`` the reciprocal vectors without 2π).
    """
    out = np.empty(3, dtype=np.int64)
    c = lattice
    vol = abs(
        c[0, 0] * (c[1, 1] * c[2, 2] - c[1, 2] * c[2, 1])
        - c[0, 1] * (c[1, 0] * c[2, 2] - c[1, 2] * c[2, 0])
        + c[0, 2] * (c[1, 0] * c[2, 1] - c[1, 1] * c[2, 0])
    )
    for k in range(3):
        u = c[(k + 1) % 3]
        w = c[(k + 2) % 3]
        x = u[1] * w[2] - u[2] * w[1]
        y = u[2] * w[0] - u[0] * w[2]
        z = u[0] * w[1] - u[1] * w[0]
        out[k] = int(np.floor(cutoff * np.sqrt(x * x + y * y + z * z) / vol + 0.5))
    return out


@numba.njit(cache=True, fastmath=False)
def orbit_clear(frac, species, n_old, n_new, lattice, cut2, nmax):  # pragma: no cover - jitted
    """Whether atoms ``n_old .. n_old + n_new - 1`` keep the minimum-distance matrix among
    themselves and against atoms ``0 .. n_old - 1``, all periodic images included (an atom
    against its own images too). Stops at the first violation.

    Args:
        frac: fractional coordinates ``(>= n_old + n_new, 3)``.
        species: species index of each atom ``(>= n_old + n_new,)``, int64.
        n_old: atoms already accepted (checked only against the new ones).
        n_new: atoms to check.
        lattice: lattice vectors as rows ``(3, 3)``, Å.
        cut2: squared minimum distances between species ``(S, S)``, Å².
        nmax: images searched along each vector ``(3,)`` (:func:`image_range` of the
            largest cutoff).

    Returns:
        ``True`` when no pair is closer than its minimum distance.
    """
    buf = np.empty(((2 * nmax[0] + 1) * (2 * nmax[1] + 1) * (2 * nmax[2] + 1), 4))
    for i in range(n_old, n_old + n_new):
        si = species[i]
        for j in range(i + 1):
            if pair_images(frac, i, j, lattice, nmax, cut2[si, species[j]], buf) > 0:
                return False
    return True


def orbit_clear_reference(frac, species, n_old, n_new, lattice, cut2, nmax=None) -> bool:
    """Plain NumPy version of :func:`orbit_clear` (the test reference). ``nmax`` is ignored:
    the images come from the largest cutoff here."""
    frac = np.asarray(frac, dtype=np.float64)
    species = np.asarray(species, dtype=np.int64)
    lattice = np.asarray(lattice, dtype=np.float64)
    cut2 = np.asarray(cut2, dtype=np.float64)
    n = n_old + n_new
    if n_new == 0:
        return True
    cutoff = float(np.sqrt(cut2.max()))
    recip = np.linalg.norm(np.linalg.inv(lattice), axis=0)
    m = np.floor(cutoff * recip + 0.5).astype(int)
    images = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in m], indexing="ij"), -1).reshape(-1, 3)
    new = np.arange(n_old, n)
    d = frac[None, :n, :] - frac[new, None, :]  # (n_new, n, 3)
    d -= np.floor(d + 0.5)
    r2 = (((d[:, :, None, :] + images[None, None]) @ lattice) ** 2).sum(-1)  # (n_new, n, images)
    lim = cut2[species[new][:, None], species[None, :n]]
    self_pair = new[:, None] == np.arange(n)[None, :]
    zero = np.all(images == 0, axis=1)
    r2[self_pair[:, :, None] & zero[None, None, :]] = np.inf
    # a new atom is checked against every atom of index <= its own (the kernel's triangle)
    later = np.arange(n)[None, :] > new[:, None]
    r2[later] = np.inf
    return bool(np.all(r2 >= lim[:, :, None]))


def distance_matrix_ok(frac, species, lattice, cut2) -> bool:
    """Whether a whole structure keeps the minimum-distance matrix (numba).

    Args:
        frac: fractional coordinates ``(n, 3)``.
        species: species index per atom ``(n,)``.
        lattice: lattice vectors as rows ``(3, 3)``, Å.
        cut2: squared minimum distances between species ``(S, S)``, Å².
    """
    frac = np.ascontiguousarray(frac, dtype=np.float64)
    lattice = np.ascontiguousarray(lattice, dtype=np.float64)
    cut2 = np.ascontiguousarray(cut2, dtype=np.float64)
    nmax = image_range(lattice, float(np.sqrt(cut2.max())))
    return bool(orbit_clear(frac, np.asarray(species, dtype=np.int64), 0, len(frac), lattice, cut2, nmax))
