"""Structure fingerprints and their distances, for deduplication.

Two fingerprints, each a fixed-length vector for a given list of elements, so every structure
of one composition space is comparable, and each invariant to atom order, supercell, rotation
and origin shift:

* :func:`bcm_fingerprints`: CALYPSO's bond characterization matrix (Y. Wang, J. Lv, L. Zhu,
  Y. Ma, Phys. Rev. B 82, 094116 (2010); Comput. Phys. Commun. 183, 2063 (2012)). For each
  unordered element pair ``(A, B)`` and each ``l`` in ``ls``, the bond-orientational order
  parameter of the A–B bonds (Steinhardt, Nelson, Ronchetti, Phys. Rev. B 28, 784 (1983)):

  .. math::

      Q_l^{AB} = \\sqrt{\\frac{4\\pi}{2l+1} \\sum_{m=-l}^{l}
          \\Big| \\frac{\\sum_{b} w(r_b)\\, Y_{lm}(\\hat r_b)}{\\sum_{b} w(r_b)} \\Big|^2},
      \\qquad w(r) = \\tfrac12 \\big(\\cos(\\pi r / r_c) + 1\\big) \\text{ for } r < r_c,

  the sums running over every A–B bond ``b`` (an atom of the cell to a periodic image of
  another, or of itself) shorter than ``r_c``. The CALYPSO papers weight a bond by
  ``exp(-α (r - b_AB))`` and divide by the bond count (CALYPSO's code is closed, so this is
  not checked against it); the cosine cutoff weight used here (J. Behler, M. Parrinello,
  Phys. Rev. Lett. 98, 146401 (2007)) goes to zero at ``r_c``, so the fingerprint is
  continuous as bonds enter or leave the sphere, and dividing by the summed weight keeps it
  independent of cell size. Only even ``l`` are allowed: a bond and its reverse are the same
  bond, and odd harmonics cancel between them. ``Q_0`` is 1 where the pair has a bond within
  ``r_c`` and 0 where it has none (then every ``Q_l`` of that pair is 0).
  Layout: ``[pair_0: Q_l for l in ls, pair_1: ..., ...]``, pairs as :func:`element_pairs`.

* :func:`ov_fingerprints`: the Oganov–Valle radial fingerprint (A. R. Oganov, M. Valle,
  J. Chem. Phys. 130, 104504 (2009)), binned:

  .. math::

      F_{AB}(k) = \\sum_{i \\in A} \\sum_{j \\in B,\\, j \\ne i}
          \\frac{\\int_{k\\Delta}^{(k+1)\\Delta} g_\\sigma(R - R_{ij})\\, dR}
               {4\\pi R_{ij}^2 \\,(N_A N_B / V)\\, \\Delta} - 1,

  ``i`` over the atoms of the cell, ``j`` over all periodic images, ``g_σ`` a normalised
  Gaussian (integrated exactly over each bin with ``erf``, and cut at ``6σ`` on either side),
  ``k = 0 .. round(r_max / Δ) - 1``. A pair with an element absent from the structure gives
  zeros. Layout: ``[pair_0: bins, pair_1: bins, ...]``. Defaults ``Δ = 0.08``, ``σ = 0.03``
  Å are USPEX's (``deltaFing``, ``sigmaFing``); ``r_max = 6`` Å is shorter than USPEX's 10 Å
  to keep the cost down (ranking polymorphs needs the first few shells).

Distances (:func:`fingerprint_distance_matrix`, :func:`fingerprint_distances`, in
:mod:`lamcsp.kernels.fingerprint_distances` and importable from here) take per-feature
weights; ``"cosine"`` is OV's cosine distance ``0.5 (1 - cos)`` in ``[0, 1]``, with the pair
weights ``N_A N_B / Σ N_A N_B`` of :func:`pair_weights` (:func:`ov_distance`).

Every numba kernel has a plain NumPy ``*_reference`` twin that the tests compare against.
Periodic images are searched exactly as in :mod:`lamcsp.kernels.distances`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np
from lamcsp.kernels.distances import image_buffer, pair_images

# the distances live in their own module; importable from here as before
from lamcsp.kernels.fingerprint_distances import (  # noqa: E402, F401
    _METRICS,
    fingerprint_distance_matrix,
    fingerprint_distance_matrix_reference,
    fingerprint_distances,
    fingerprint_distances_reference,
)

from lamcsp.errors import SetupError

DEFAULT_LS = (0, 2, 4, 6, 8, 10)
_NSIG = 6.0  # Gaussians of the OV fingerprint are cut at this many sigma


# ---------------------------------------------------------------------------------------------
# shared preparation


def element_pairs(elements: Sequence[int]) -> list[tuple[int, int]]:
    """Unordered element pairs ``(A, B)``, ``A <= B``, of the sorted unique ``elements``.

    This fixes the layout of both fingerprints: ``[(A1, A1), (A1, A2), ..., (A2, A2), ...]``.
    """
    el = sorted({int(z) for z in elements})
    return [(a, b) for i, a in enumerate(el) for b in el[i:]]


def pair_weights(elements: Sequence[int], numbers: Sequence[int]) -> np.ndarray:
    """OV's pair weights ``N_A N_B / Σ_{A,B} N_A N_B`` over ordered pairs, folded onto the
    unordered pairs of :func:`element_pairs` (so ``(A, B)``, ``A != B``, counts twice).

    Args:
        elements: the element list of the fingerprints.
        numbers: atomic numbers of one structure (only the proportions matter).

    Returns:
        ``(n_pairs,)`` weights summing to 1 (all zero if no listed element is present).
    """
    z = np.asarray(numbers, dtype=np.int64)
    counts = {a: float(np.count_nonzero(z == a)) for a in sorted({int(e) for e in elements})}
    w = np.array([counts[a] * counts[b] * (1.0 if a == b else 2.0) for a, b in element_pairs(elements)])
    total = w.sum()
    return w / total if total > 0 else w


def _prepare(positions, cells, counts, numbers, elements, r_search):
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    if len(cells) != len(counts) or counts.sum() != len(positions) or len(numbers) != len(positions):
        raise SetupError(
            "counts",
            f"{len(cells)} cells, {len(counts)} counts summing to {counts.sum()}, "
            f"{len(positions)} positions and {len(numbers)} numbers do not agree",
        )
    pairs = element_pairs(elements)
    if not pairs:
        raise SetupError("elements", "the element list is empty")
    el = np.array(sorted({a for p in pairs for a in p}), dtype=np.int64)
    missing = np.setdiff1d(numbers, el)
    if len(missing):
        raise SetupError(
            "elements", f"atomic numbers {missing.tolist()} are not in the element list {el.tolist()}"
        )
    zmax = int(max(el.max(), numbers.max(initial=0)))
    pair_of = np.full((zmax + 1, zmax + 1), -1, dtype=np.int64)
    for p, (a, b) in enumerate(pairs):
        pair_of[a, b] = pair_of[b, a] = p
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    sys_idx = np.repeat(np.arange(len(counts)), counts)
    inv = np.linalg.inv(cells) if len(cells) else cells
    frac = np.einsum("ni,nij->nj", positions, inv[sys_idx]) if len(sys_idx) else positions.copy()
    nmax = np.ceil(r_search * np.linalg.norm(inv, axis=-2) + 0.5).astype(np.int64).reshape(-1, 3)
    return frac, cells, offsets, numbers, pairs, pair_of, nmax


def _neighbours_reference(f, cell, nmax_s, r_search):
    """All (i, j, image) vectors of one system shorter than ``r_search`` (ordered, self excluded)."""
    n = len(f)
    rng = [np.arange(-m, m + 1) for m in nmax_s]
    images = np.stack(np.meshgrid(*rng, indexing="ij"), -1).reshape(-1, 3)
    d = f[None, :, :] - f[:, None, :]
    d -= np.floor(d + 0.5)
    vec = (d[:, :, None, :] + images[None, None]) @ cell
    r = np.linalg.norm(vec, axis=-1)
    self_img = np.eye(n, dtype=bool)[:, :, None] & (np.abs(images).sum(1) == 0)[None, None, :]
    keep = ~self_img & (r < r_search) & (r > 0.0)
    i, j, _ = np.nonzero(keep)
    return i, j, vec[keep], r[keep]


# ---------------------------------------------------------------------------------------------
# BCM


def _check_bcm(ls, cutoff, n_pairs):
    ls_arr = np.asarray(ls, dtype=np.int64).reshape(-1)
    if len(ls_arr) == 0 or np.any(ls_arr < 0) or np.any(ls_arr % 2):
        raise SetupError("ls", f"must be a non-empty list of even l >= 0, got {list(ls)}")
    rc = np.asarray(cutoff, dtype=np.float64).reshape(-1)
    if len(rc) == 1:
        rc = np.full(n_pairs, rc[0])
    if len(rc) != n_pairs or np.any(~np.isfinite(rc)) or np.any(rc <= 0):
        raise SetupError(
            "cutoff", f"must be > 0 Å, one value or one per element pair ({n_pairs}); got {cutoff}"
        )
    return ls_arr, rc


def _ylm_norms(lmax: int) -> np.ndarray:
    """``N_lm = sqrt((2l+1)/(4π) (l-m)!/(l+m)!)`` for ``0 <= m <= l <= lmax``."""
    out = np.zeros((lmax + 1, lmax + 1))
    for l in range(lmax + 1):  # noqa: E741
        for m in range(l + 1):
            ratio = math.exp(math.lgamma(l - m + 1) - math.lgamma(l + m + 1))  # (l-m)! / (l+m)!
            out[l, m] = math.sqrt((2 * l + 1) / (4 * math.pi) * ratio)
    return out


@numba.njit(cache=True, fastmath=False)
def _bcm_kernel(frac, cells, offsets, numbers, pair_of, n_pairs, rc_pair, nmax, ls,
                norms):  # pragma: no cover
    n_sys = cells.shape[0]
    lmax = norms.shape[0] - 1
    nl = ls.shape[0]
    out = np.zeros((n_sys, n_pairs * nl))
    qre = np.zeros((n_pairs, lmax + 1, lmax + 1))
    buf = image_buffer(nmax)
    qim = np.zeros((n_pairs, lmax + 1, lmax + 1))
    wsum = np.zeros(n_pairs)
    for s in range(n_sys):
        c = cells[s]
        qre[:] = 0.0
        qim[:] = 0.0
        wsum[:] = 0.0
        start, end = offsets[s], offsets[s + 1]
        for i in range(start, end):
            for j in range(i, end):
                p = pair_of[numbers[i], numbers[j]]
                if p < 0:
                    continue
                rc = rc_pair[p]
                # Y_lm(-r) = Y_lm(r) for even l: the (j, i) bonds equal the (i, j) ones
                fac = 1.0 if i == j else 2.0
                for t in range(pair_images(frac, i, j, c, nmax[s], rc * rc, buf)):
                    x, y, z, r2 = buf[t, 0], buf[t, 1], buf[t, 2], buf[t, 3]
                    if r2 == 0.0:
                        continue
                    r = np.sqrt(r2)
                    w = fac * 0.5 * (np.cos(np.pi * r / rc) + 1.0)
                    wsum[p] += w
                    ct = z / r
                    ux = x / r
                    uy = y / r
                    # Y_lm = N_lm P~_l^m(cosθ) (sinθ e^{iφ})^m, with P~ the polynomial part
                    # of the associated Legendre function: no poles, no trigonometry.
                    er = 1.0
                    ei = 0.0
                    pmm = 1.0
                    for m in range(lmax + 1):
                        if m > 0:
                            t = er * ux - ei * uy
                            ei = er * uy + ei * ux
                            er = t
                            pmm = -pmm * (2 * m - 1)
                        p2 = 0.0
                        p1 = 0.0
                        for l in range(m, lmax + 1):  # noqa: E741
                            if l == m:
                                val = pmm
                            elif l == m + 1:
                                val = ct * (2 * m + 1) * pmm
                            else:
                                val = (ct * (2 * l - 1) * p1 - (l + m - 1) * p2) / (l - m)
                            p2 = p1
                            p1 = val
                            g = w * norms[l, m] * val
                            qre[p, l, m] += g * er
                            qim[p, l, m] += g * ei
        for p in range(n_pairs):
            if wsum[p] <= 0.0:
                continue
            for il in range(nl):
                l = ls[il]  # noqa: E741
                acc = qre[p, l, 0] ** 2 + qim[p, l, 0] ** 2
                for m in range(1, l + 1):  # |q_l,-m| = |q_lm| for real weights
                    acc += 2.0 * (qre[p, l, m] ** 2 + qim[p, l, m] ** 2)
                out[s, p * nl + il] = np.sqrt(4.0 * np.pi / (2 * l + 1) * acc) / wsum[p]
    return out


def bcm_fingerprints(
    positions, cells, counts, numbers, elements: Sequence[int], ls: Sequence[int] = DEFAULT_LS,
    cutoff: float | Sequence[float] = 5.0,
) -> np.ndarray:
    """Bond characterization matrices of a batch of structures (see the module docstring).

    Args:
        positions: Cartesian positions of all systems, concatenated, ``(N, 3)``, Å.
        cells: lattice vectors as rows, ``(S, 3, 3)``, Å.
        counts: atoms per system, ``(S,)``.
        numbers: atomic numbers, ``(N,)``; each must be in ``elements``.
        elements: the element list; fixes the pairs (:func:`element_pairs`) and so the length.
        ls: the (even) angular momenta.
        cutoff: bond cutoff ``r_c``, Å; one value, or one per element pair.

    Returns:
        ``(S, n_pairs * len(ls))`` fingerprints (``Q_l`` in ``[0, 1]``).
    """
    ls_arr, rc = _check_bcm(ls, cutoff, len(element_pairs(elements)))
    frac, cells, offsets, numbers, pairs, pair_of, nmax = _prepare(
        positions, cells, counts, numbers, elements, float(rc.max())
    )
    norms = _ylm_norms(int(ls_arr.max()))
    return _bcm_kernel(frac, cells, offsets, numbers, pair_of, len(pairs), rc, nmax, ls_arr, norms)


def _sph_harm(l: int, m: np.ndarray, polar: np.ndarray, azimuth: np.ndarray) -> np.ndarray:  # noqa: E741
    import scipy.special as sp

    if hasattr(sp, "sph_harm_y"):  # scipy >= 1.15
        return sp.sph_harm_y(l, m, polar, azimuth)
    return sp.sph_harm(m, l, azimuth, polar)  # older scipy: (m, n, azimuthal, polar)


def bcm_fingerprints_reference(
    positions, cells, counts, numbers, elements: Sequence[int], ls: Sequence[int] = DEFAULT_LS,
    cutoff: float | Sequence[float] = 5.0,
) -> np.ndarray:
    """Plain NumPy/SciPy version of :func:`bcm_fingerprints` (the test reference): every
    ordered bond, every ``m`` from ``-l`` to ``l``, ``Y_lm`` from ``scipy.special``."""
    ls_arr, rc = _check_bcm(ls, cutoff, len(element_pairs(elements)))
    frac, cells, offsets, numbers, pairs, pair_of, nmax = _prepare(
        positions, cells, counts, numbers, elements, float(rc.max())
    )
    out = np.zeros((len(cells), len(pairs) * len(ls_arr)))
    for s in range(len(cells)):
        f = frac[offsets[s] : offsets[s + 1]]
        z = numbers[offsets[s] : offsets[s + 1]]
        if len(f) == 0:
            continue
        i, j, vec, r = _neighbours_reference(f, cells[s], nmax[s], float(rc.max()))
        pidx = pair_of[z[i], z[j]]
        for p in range(len(pairs)):
            sel = (pidx == p) & (r < rc[p])
            if not sel.any():
                continue
            w = 0.5 * (np.cos(np.pi * r[sel] / rc[p]) + 1.0)
            polar = np.arccos(np.clip(vec[sel, 2] / r[sel], -1.0, 1.0))
            azimuth = np.arctan2(vec[sel, 1], vec[sel, 0])
            for il, l in enumerate(ls_arr):  # noqa: E741
                m = np.arange(-l, l + 1)
                y = _sph_harm(int(l), m[:, None], polar[None, :], azimuth[None, :])
                qlm = (y * w[None, :]).sum(1) / w.sum()
                out[s, p * len(ls_arr) + il] = np.sqrt(4 * np.pi / (2 * l + 1) * np.sum(np.abs(qlm) ** 2))
    return out


def bcm_fingerprint(
    positions, cell, numbers, elements: Sequence[int] | None = None, ls: Sequence[int] = DEFAULT_LS,
    cutoff: float | Sequence[float] = 5.0,
) -> np.ndarray:
    """The BCM fingerprint of one structure, ``(n_pairs * len(ls),)``; ``elements`` defaults to
    the structure's own. See :func:`bcm_fingerprints`."""
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    el = sorted(set(numbers.tolist())) if elements is None else elements
    return bcm_fingerprints(positions, np.asarray(cell)[None], [len(numbers)], numbers, el, ls, cutoff)[0]


# ---------------------------------------------------------------------------------------------
# Oganov-Valle


def _check_ov(r_max, delta, sigma):
    if not (delta > 0 and sigma > 0 and r_max > delta):
        raise SetupError(
            "ov_fingerprint", f"need r_max > delta > 0 and sigma > 0 (Å), got {r_max=}, {delta=}, {sigma=}"
        )
    n_bins = int(round(r_max / delta))
    return n_bins, n_bins * delta + _NSIG * sigma


@numba.njit(cache=True, fastmath=False)
def _ov_kernel(frac, cells, offsets, numbers, pair_of, pair_a, pair_b, nmax, r_search, n_bins, delta,
               sigma):  # pragma: no cover
    n_sys = cells.shape[0]
    n_pairs = pair_a.shape[0]
    out = np.zeros((n_sys, n_pairs * n_bins))
    inv_s = 1.0 / (np.sqrt(2.0) * sigma)
    r2max = r_search * r_search
    zmax = pair_of.shape[0]
    n_el = np.zeros(zmax, dtype=np.int64)
    buf = image_buffer(nmax)
    for s in range(n_sys):
        c = cells[s]
        vol = abs(
            c[0, 0] * (c[1, 1] * c[2, 2] - c[1, 2] * c[2, 1])
            - c[0, 1] * (c[1, 0] * c[2, 2] - c[1, 2] * c[2, 0])
            + c[0, 2] * (c[1, 0] * c[2, 1] - c[1, 1] * c[2, 0])
        )
        start, end = offsets[s], offsets[s + 1]
        n_el[:] = 0
        for i in range(start, end):
            n_el[numbers[i]] += 1
        for i in range(start, end):
            for j in range(i, end):
                p = pair_of[numbers[i], numbers[j]]
                if p < 0:
                    continue
                # i in A, j in B over ordered pairs: an A-A pair i < j counts as (i, j) and (j, i);
                # for A != B the unordered cell pair stands for exactly one ordered (A, B) pair.
                fac = 2.0 if (i != j and numbers[i] == numbers[j]) else 1.0
                norm = fac * vol / (4.0 * np.pi * n_el[pair_a[p]] * n_el[pair_b[p]] * delta)
                for t in range(pair_images(frac, i, j, c, nmax[s], r2max, buf)):
                    r2 = buf[t, 3]
                    if r2 == 0.0:
                        continue
                    r = np.sqrt(r2)
                    k0 = max(0, int(np.floor((r - _NSIG * sigma) / delta)))
                    k1 = min(n_bins - 1, int(np.floor((r + _NSIG * sigma) / delta)))
                    if k0 > k1:
                        continue
                    scale = norm / r2
                    lo = math.erf((k0 * delta - r) * inv_s)
                    base = p * n_bins
                    for kb in range(k0, k1 + 1):
                        hi = math.erf(((kb + 1) * delta - r) * inv_s)
                        out[s, base + kb] += 0.5 * (hi - lo) * scale
                        lo = hi
        for p in range(n_pairs):
            if n_el[pair_a[p]] > 0 and n_el[pair_b[p]] > 0:
                for kb in range(n_bins):
                    out[s, p * n_bins + kb] -= 1.0
    return out


def ov_fingerprints(
    positions, cells, counts, numbers, elements: Sequence[int], r_max: float = 6.0, delta: float = 0.08,
    sigma: float = 0.03,
) -> np.ndarray:
    """Oganov–Valle fingerprints of a batch of structures (see the module docstring).

    Args:
        positions: Cartesian positions of all systems, concatenated, ``(N, 3)``, Å.
        cells: lattice vectors as rows, ``(S, 3, 3)``, Å.
        counts: atoms per system, ``(S,)``.
        numbers: atomic numbers, ``(N,)``; each must be in ``elements``.
        elements: the element list; fixes the pairs (:func:`element_pairs`) and so the length.
        r_max: the last bin ends here, Å.
        delta: bin width, Å.
        sigma: Gaussian smearing, Å.

    Returns:
        ``(S, n_pairs * round(r_max / delta))`` fingerprints.
    """
    n_bins, r_search = _check_ov(r_max, delta, sigma)
    frac, cells, offsets, numbers, pairs, pair_of, nmax = _prepare(
        positions, cells, counts, numbers, elements, r_search
    )
    pa = np.array([a for a, _ in pairs], dtype=np.int64)
    pb = np.array([b for _, b in pairs], dtype=np.int64)
    return _ov_kernel(frac, cells, offsets, numbers, pair_of, pa, pb, nmax, r_search, n_bins, float(delta),
                      float(sigma))


def ov_fingerprints_reference(
    positions, cells, counts, numbers, elements: Sequence[int], r_max: float = 6.0, delta: float = 0.08,
    sigma: float = 0.03,
) -> np.ndarray:
    """Plain NumPy/SciPy version of :func:`ov_fingerprints` (the test reference): every ordered
    ``(i in A, j in B)`` pair, every bin, masked to the same ``6σ`` window."""
    from scipy.special import erf

    n_bins, r_search = _check_ov(r_max, delta, sigma)
    frac, cells, offsets, numbers, pairs, pair_of, nmax = _prepare(
        positions, cells, counts, numbers, elements, r_search
    )
    edges = np.arange(n_bins + 1) * delta
    out = np.zeros((len(cells), len(pairs) * n_bins))
    for s in range(len(cells)):
        f = frac[offsets[s] : offsets[s + 1]]
        zs = numbers[offsets[s] : offsets[s + 1]]
        if len(f) == 0:
            continue
        vol = abs(np.linalg.det(cells[s]))
        i, j, _, r = _neighbours_reference(f, cells[s], nmax[s], r_search)
        for p, (a, b) in enumerate(pairs):
            na, nb = np.count_nonzero(zs == a), np.count_nonzero(zs == b)
            if na == 0 or nb == 0:
                continue
            rr = r[(zs[i] == a) & (zs[j] == b)]
            cdf = erf((edges[None, :] - rr[:, None]) / (np.sqrt(2.0) * sigma))
            mass = 0.5 * np.diff(cdf, axis=1)
            k0 = np.maximum(0, np.floor((rr - _NSIG * sigma) / delta))
            k1 = np.floor((rr + _NSIG * sigma) / delta)
            kk = np.arange(n_bins)[None, :]
            mass[(kk < k0[:, None]) | (kk > k1[:, None])] = 0.0
            hist = (mass / rr[:, None] ** 2).sum(0)
            out[s, p * n_bins : (p + 1) * n_bins] = hist * vol / (4 * np.pi * na * nb * delta) - 1.0
    return out


def ov_fingerprint(
    positions, cell, numbers, elements: Sequence[int] | None = None, r_max: float = 6.0, delta: float = 0.08,
    sigma: float = 0.03,
) -> np.ndarray:
    """The OV fingerprint of one structure, ``(n_pairs * n_bins,)``; ``elements`` defaults to the
    structure's own. See :func:`ov_fingerprints`."""
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    el = sorted(set(numbers.tolist())) if elements is None else elements
    cells = np.asarray(cell)[None]
    return ov_fingerprints(positions, cells, [len(numbers)], numbers, el, r_max, delta, sigma)[0]


def ov_distance(f1: np.ndarray, f2: np.ndarray, weights: np.ndarray | None = None) -> float:
    """OV's cosine distance ``0.5 (1 - Σ_AB w_AB F1_AB·F2_AB / (|F1| |F2|))`` in ``[0, 1]``.

    Args:
        f1, f2: two fingerprints of the same layout, ``(n_pairs * n_bins,)``.
        weights: per element pair, ``(n_pairs,)`` (:func:`pair_weights`); ``None``: equal.
    """
    f1 = np.asarray(f1, dtype=np.float64).reshape(-1)
    f2 = np.asarray(f2, dtype=np.float64).reshape(-1)
    w = None
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(f1) % len(weights):
            raise SetupError(
                "weights", f"{len(weights)} pair weights do not divide a fingerprint of length {len(f1)}"
            )
        w = np.repeat(weights, len(f1) // len(weights))
    return float(fingerprint_distances_reference(f1[None], f2[None], w, "cosine")[0, 0])
