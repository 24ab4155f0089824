"""Distances between fingerprints (of :mod:`lamcsp.kernels.fingerprints`): all pairs of one
set, or of two sets, with per-feature weights; ``"cosine"`` is Oganov and Valle's cosine distance
``0.5 (1 - cos)`` in ``[0, 1]``, ``"euclidean"`` the weighted Euclidean distance. Numba
kernels, each with a plain NumPy ``*_reference`` twin that the tests compare against.
"""

from __future__ import annotations

import numba
import numpy as np

from lamcsp.errors import SetupError

__all__ = ["fingerprint_distance_matrix", "fingerprint_distance_matrix_reference", "fingerprint_distances",
           "fingerprint_distances_reference"]

_METRICS = {"cosine": 0, "euclidean": 1}


def _check_metric(F, G, weights, metric):
    if metric not in _METRICS:
        raise SetupError("metric", f"unknown metric {metric!r}; allowed: {', '.join(_METRICS)}")
    F = np.ascontiguousarray(F, dtype=np.float64)
    G = np.ascontiguousarray(G, dtype=np.float64)
    if F.ndim != 2 or G.ndim != 2 or F.shape[1] != G.shape[1]:
        raise SetupError("fingerprints", f"need (n, d) and (m, d) arrays, got {F.shape} and {G.shape}")
    if weights is None:
        w = np.ones(F.shape[1])
    else:
        w = np.ascontiguousarray(weights, dtype=np.float64).reshape(-1)
    if len(w) != F.shape[1] or np.any(~(w >= 0)):
        raise SetupError("weights", f"need one weight >= 0 per feature ({F.shape[1]}), got {len(w)}")
    return F, G, w, _METRICS[metric]


# Reassociating the sums lets LLVM vectorise them; the result moves by rounding only.
_FAST = {"reassoc", "contract"}


@numba.njit(cache=True, fastmath=_FAST, inline="always")
def _dist(F, i, G, j, nf, ng, code):  # pragma: no cover
    d = F.shape[1]
    acc = 0.0
    if code == 0:
        if nf == 0.0 or ng == 0.0:
            return 0.0 if nf == ng else 0.5
        for k in range(d):
            acc += F[i, k] * G[j, k]
        v = 0.5 * (1.0 - acc / (nf * ng))
        return min(1.0, max(0.0, v))
    for k in range(d):
        t = F[i, k] - G[j, k]
        acc += t * t
    return np.sqrt(acc)


@numba.njit(cache=True, fastmath=_FAST)
def _norms(F):  # pragma: no cover
    out = np.empty(F.shape[0])
    for i in range(F.shape[0]):
        acc = 0.0
        for k in range(F.shape[1]):
            acc += F[i, k] * F[i, k]
        out[i] = np.sqrt(acc)
    return out


@numba.njit(cache=True, fastmath=_FAST)
def _pdist_kernel(F, code):  # pragma: no cover
    n = F.shape[0]
    nf = _norms(F)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            v = _dist(F, i, F, j, nf[i], nf[j], code)
            out[i, j] = v
            out[j, i] = v
    return out


@numba.njit(cache=True, fastmath=_FAST)
def _cdist_kernel(F, G, code):  # pragma: no cover
    nf = _norms(F)
    ng = _norms(G)
    out = np.empty((F.shape[0], G.shape[0]))
    for i in range(F.shape[0]):
        for j in range(G.shape[0]):
            out[i, j] = _dist(F, i, G, j, nf[i], ng[j], code)
    return out


def fingerprint_distance_matrix(F, weights=None, metric: str = "cosine") -> np.ndarray:
    """Pairwise distances within a population's fingerprints.

    Args:
        F: fingerprints, ``(n, d)``.
        weights: per-feature weights ``>= 0``, ``(d,)`` (e.g. pair weights repeated over each
            pair's block); ``None``: all 1.
        metric: ``"cosine"``: ``0.5 (1 - Σ w f g / sqrt(Σ w f² · Σ w g²))`` in ``[0, 1]`` (OV;
            two zero vectors are at 0, a zero and a non-zero one at 0.5); ``"euclidean"``:
            ``sqrt(Σ w (f - g)²)``.

    Returns:
        ``(n, n)`` symmetric distances with a zero diagonal.
    """
    F, _, w, code = _check_metric(F, F, weights, metric)
    return _pdist_kernel(np.ascontiguousarray(F * np.sqrt(w)), code)


def fingerprint_distances(F, G, weights=None, metric: str = "cosine") -> np.ndarray:
    """Distances from each of ``F (n, d)`` to each of ``G (m, d)`` (a population against what is
    stored), ``(n, m)``; ``weights`` and ``metric`` as :func:`fingerprint_distance_matrix`."""
    F, G, w, code = _check_metric(F, G, weights, metric)
    sw = np.sqrt(w)
    return _cdist_kernel(np.ascontiguousarray(F * sw), np.ascontiguousarray(G * sw), code)


def fingerprint_distances_reference(F, G, weights=None, metric: str = "cosine") -> np.ndarray:
    """Plain NumPy version of :func:`fingerprint_distances` (the test reference)."""
    F, G, w, code = _check_metric(F, G, weights, metric)
    if code == 1:
        return np.sqrt(np.einsum("ijk,k->ij", (F[:, None, :] - G[None, :, :]) ** 2, w))
    nf = np.sqrt((F**2) @ w)
    ng = np.sqrt((G**2) @ w)
    denom = nf[:, None] * ng[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.clip(0.5 * (1.0 - ((F * w) @ G.T) / denom), 0.0, 1.0)
    zero = denom == 0.0
    d[zero] = np.where(nf[:, None] == ng[None, :], 0.0, 0.5)[zero]
    return d


def fingerprint_distance_matrix_reference(F, weights=None, metric: str = "cosine") -> np.ndarray:
    """Plain NumPy version of :func:`fingerprint_distance_matrix` (the test reference)."""
    d = fingerprint_distances_reference(F, F, weights, metric)
    np.fill_diagonal(d, 0.0)
    return d
