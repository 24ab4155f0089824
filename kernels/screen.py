"""Minimum-distance screen of a batch of candidates, per element pair.

A candidate passes when every interatomic distance (an atom to its own periodic images
included) is at least the minimum distance of its element pair, ``d_ij >= dmin[Z_i, Z_j]``.
:func:`distance_screen` is the numba kernel, :func:`distance_screen_reference` the plain NumPy
reference it is tested against.

Both are exact for any cell shape (the image-range idea of :mod:`lamcsp.kernels.distances`):
only pairs closer than ``ratio_cap * max(dmin)`` can have ``d / dmin < ratio_cap``, and the
images searched along lattice vector ``k`` are ``ceil(r_search * |b_k| + 0.5)`` on either side,
``b_k`` the reciprocal vectors (without 2π), which covers every image within ``r_search``.
"""

from __future__ import annotations

import numba
import numpy as np
from lamcsp.kernels.distances import image_buffer, pair_images

from lamcsp.errors import SetupError


def _prepare(positions, cells, counts, numbers, dmin, ratio_cap):
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    dmin = np.asarray(dmin, dtype=np.float64)
    if dmin.ndim != 2 or dmin.shape[0] != dmin.shape[1]:
        raise SetupError("dmin", f"must be a square (Zmax+1, Zmax+1) matrix, got shape {dmin.shape}")
    if not np.allclose(dmin, dmin.T):
        raise SetupError("dmin", "must be symmetric: dmin[Za, Zb] == dmin[Zb, Za]")
    if np.any(dmin < 0) or not np.all(np.isfinite(dmin)):
        raise SetupError("dmin", "minimum distances must be finite and >= 0 Å")
    if len(cells) != len(counts) or counts.sum() != len(positions) or len(numbers) != len(positions):
        raise SetupError(
            "counts",
            f"{len(cells)} cells, {len(counts)} counts summing to {counts.sum()}, "
            f"{len(positions)} positions and {len(numbers)} numbers do not agree",
        )
    if len(numbers) and (numbers.min() < 0 or numbers.max() >= dmin.shape[0]):
        raise SetupError("numbers", f"atomic numbers must lie in [0, {dmin.shape[0] - 1}] (the size of dmin)")
    if not ratio_cap > 0:
        raise SetupError("ratio_cap", f"must be > 0, got {ratio_cap}")
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    sys_idx = np.repeat(np.arange(len(counts)), counts)
    inv = np.linalg.inv(cells) if len(cells) else cells
    frac = np.einsum("ni,nij->nj", positions, inv[sys_idx]) if len(sys_idx) else positions.copy()
    r_search = float(ratio_cap) * float(dmin.max(initial=0.0))
    nmax = np.ceil(r_search * np.linalg.norm(inv, axis=-2) + 0.5).astype(np.int64).reshape(-1, 3)
    return frac, cells, offsets, numbers, dmin, nmax, r_search


@numba.njit(cache=True, fastmath=False)
def _screen_kernel(frac, cells, offsets, numbers, dmin, nmax, r_search, ratio_cap):  # pragma: no cover
    n_sys = cells.shape[0]
    out = np.empty(n_sys)
    r2max = r_search * r_search
    buf = image_buffer(nmax)
    for s in range(n_sys):
        c = cells[s]
        worst = ratio_cap
        start, end = offsets[s], offsets[s + 1]
        for i in range(start, end):
            for j in range(i, end):
                dm = dmin[numbers[i], numbers[j]]
                if dm <= 0.0:
                    continue
                for t in range(pair_images(frac, i, j, c, nmax[s], r2max, buf)):
                    q = np.sqrt(buf[t, 3]) / dm
                    if q < worst:
                        worst = q
        out[s] = worst
    return out


def distance_screen(
    positions, cells, counts, numbers, dmin, ratio_cap: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Which systems of a batch keep every pair at or above its minimum distance.

    Args:
        positions: Cartesian positions of all systems, concatenated, ``(N, 3)``, Å.
        cells: lattice vectors as rows, ``(S, 3, 3)``, Å.
        counts: atoms per system, ``(S,)``.
        numbers: atomic numbers, ``(N,)``.
        dmin: minimum distance per element pair, symmetric ``(Zmax+1, Zmax+1)``, Å; a zero
            entry means that pair is not checked.
        ratio_cap: the worst ratio is reported exactly up to this value and as ``ratio_cap``
            above it; the search radius is ``ratio_cap * dmin.max()``, so the default (1.0)
            is the cheapest exact pass/fail screen.

    Returns:
        ``(passes, worst_ratio)``: ``passes (S,)`` bool, True where ``d_ij >= dmin[Z_i, Z_j]``
        for every pair; ``worst_ratio (S,)`` the smallest ``d_ij / dmin[Z_i, Z_j]`` over all
        pairs and periodic images, capped at ``ratio_cap`` (an empty system gives the cap).

    Raises:
        SetupError: inconsistent shapes, a non-symmetric or negative ``dmin``, or an atomic
            number outside ``dmin``.
    """
    frac, cells, offsets, numbers, dmin, nmax, r_search = _prepare(
        positions, cells, counts, numbers, dmin, ratio_cap
    )
    ratio = _screen_kernel(frac, cells, offsets, numbers, dmin, nmax, r_search, float(ratio_cap))
    return ratio >= 1.0, ratio


def distance_screen_reference(
    positions, cells, counts, numbers, dmin, ratio_cap: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Plain NumPy version of :func:`distance_screen` (the test reference)."""
    frac, cells, offsets, numbers, dmin, nmax, r_search = _prepare(
        positions, cells, counts, numbers, dmin, ratio_cap
    )
    out = np.full(len(cells), float(ratio_cap))
    for s in range(len(cells)):
        f = frac[offsets[s] : offsets[s + 1]]
        z = numbers[offsets[s] : offsets[s + 1]]
        n = len(f)
        if n == 0:
            continue
        rng = [np.arange(-m, m + 1) for m in nmax[s]]
        images = np.stack(np.meshgrid(*rng, indexing="ij"), -1).reshape(-1, 3)
        d = f[None, :, :] - f[:, None, :]
        d -= np.floor(d + 0.5)
        r = np.linalg.norm((d[:, :, None, :] + images[None, None]) @ cells[s], axis=-1)
        self_img = np.eye(n, dtype=bool)[:, :, None] & (np.abs(images).sum(1) == 0)[None, None, :]
        dm = dmin[z[:, None], z[None, :]][:, :, None]
        keep = ~self_img & (r < r_search) & (dm > 0)
        if keep.any():
            ratios = r / np.where(dm > 0, dm, 1.0)
            out[s] = min(float(ratio_cap), float(ratios[keep].min()))
    return out >= 1.0, out
