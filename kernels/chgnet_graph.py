"""CHGNet's crystal graphs (atom graph and bond graph) for a whole batch in one call.

CHGNet builds, per structure, a pymatgen neighbour list, a Cython graph of Python edge objects
and a line graph in pure Python (about 1.3 ms for a 16-atom cell). :func:`build_graph` builds
the same graphs for all structures of a batch at once: a numba kernel finds the neighbour pairs
and a second one the angle list. :func:`build_graph_reference` is the plain NumPy version the
kernels are tested against (and both against CHGNet's own converter).

The graphs hold the same edge *sets* as CHGNet's converter, not the same edge order:

* **atom graph**: one directed edge ``(i, j, n)`` for every atom ``j`` (translated by the integer
  lattice vector ``n``) within ``atom_cutoff`` of atom ``i`` of the same structure, the atom
  itself at ``n = 0`` excluded (pymatgen's ``get_neighbor_list`` convention, ``d <= r + 1e-8``).
  Each undirected edge ``u`` owns two directed edges, ``2u`` = ``(i, j, n)`` and ``2u + 1`` =
  ``(j, i, -n)``, so ``directed2undirected = d // 2`` and ``undirected2directed = 2u``.
* **bond graph** (angles): a row ``[atom, u1, d1, u2, d2]`` for every directed edge ``d1`` whose
  undirected edge is at most ``bond_cutoff`` long, and every other directed edge ``d2`` with the
  same centre atom shorter than ``bond_cutoff`` (CHGNet's ``line_graph_adjacency_list``).

Indices are global over the batch (atoms numbered as in the concatenated positions).
"""

from __future__ import annotations

import dataclasses

import numba
import numpy as np

#: pymatgen's ``numerical_tol``: a neighbour at ``cutoff + TOL`` still counts.
TOL = 1e-8


@dataclasses.dataclass
class GraphArrays:
    """The atom and bond graphs of a batch, NumPy arrays with batch-global indices.

    Attributes:
        center: centre atom of each directed edge, ``(E,)`` int64.
        neighbor: neighbour atom of each directed edge, ``(E,)`` int64.
        image: lattice translation of the neighbour, ``(E, 3)`` int64; the edge vector is
            ``r[neighbor] + image @ cell - r[center]``.
        distance: edge length, ``(E,)`` float64, Å.
        directed2undirected: ``(E,)`` int64.
        undirected2directed: ``(U,)`` int64, one directed edge of each undirected edge.
        bond_graph: ``(A, 5)`` int64 rows ``[atom, u1, d1, u2, d2]``.
    """

    center: np.ndarray
    neighbor: np.ndarray
    image: np.ndarray
    distance: np.ndarray
    directed2undirected: np.ndarray
    undirected2directed: np.ndarray
    bond_graph: np.ndarray

    @property
    def n_directed(self) -> int:
        return int(self.center.shape[0])

    @property
    def n_angles(self) -> int:
        return int(self.bond_graph.shape[0])


def _prepare(
    positions: np.ndarray, cells: np.ndarray, counts: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fractional coordinates, atom offsets, per-axis image bounds and search limits."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cells = np.ascontiguousarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    inv = np.linalg.inv(cells)
    sys_of_atom = np.repeat(np.arange(len(counts)), counts)
    frac = np.einsum("ni,nij->nj", positions, inv[sys_of_atom])
    # |f_a| = |v . inv[:, a]| <= cutoff * |inv[:, a]| for any vector v shorter than cutoff
    lim = (cutoff + TOL) * np.linalg.norm(inv, axis=1)  # (S, 3): column norms of inv
    nmax = np.ceil(lim + 0.5).astype(np.int64)
    return np.ascontiguousarray(frac), offsets, nmax, np.ascontiguousarray(lim), cells


def _directed_from_undirected(
    und: np.ndarray, dist: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Directed edges ``2u = (i, j, n)`` and ``2u + 1 = (j, i, -n)`` of undirected edges."""
    n_und = und.shape[0]
    center = np.empty(2 * n_und, dtype=np.int64)
    neighbor = np.empty(2 * n_und, dtype=np.int64)
    image = np.empty((2 * n_und, 3), dtype=np.int64)
    center[0::2], center[1::2] = und[:, 0], und[:, 1]
    neighbor[0::2], neighbor[1::2] = und[:, 1], und[:, 0]
    image[0::2], image[1::2] = und[:, 2:5], -und[:, 2:5]
    distance = np.repeat(dist, 2)
    d2u = np.arange(2 * n_und, dtype=np.int64) // 2
    u2d = 2 * np.arange(n_und, dtype=np.int64)
    return center, neighbor, image, distance, d2u, u2d


# ---- numba kernels -------------------------------------------------------------------------
@numba.njit(cache=True)
def _grow(und, dist):  # pragma: no cover - jitted
    cap = und.shape[0] * 2
    und2 = np.empty((cap, 5), dtype=np.int64)
    dist2 = np.empty(cap, dtype=np.float64)
    und2[: und.shape[0]] = und
    dist2[: dist.shape[0]] = dist
    return und2, dist2


@numba.njit(cache=True)
def _pairs_kernel(frac, cells, offsets, nmax, lim, cutoff, capacity):  # pragma: no cover
    """Undirected neighbour pairs ``[i, j, n0, n1, n2]`` (``i <= j``) and their lengths."""
    und = np.empty((max(capacity, 16), 5), dtype=np.int64)
    dist = np.empty(max(capacity, 16), dtype=np.float64)
    rc2 = (cutoff + 1e-8) * (cutoff + 1e-8)
    cnt = 0
    for s in range(cells.shape[0]):
        c = cells[s]
        lim0, lim1, lim2 = lim[s, 0] + 1e-9, lim[s, 1] + 1e-9, lim[s, 2] + 1e-9
        m0, m1, m2 = nmax[s, 0], nmax[s, 1], nmax[s, 2]
        for i in range(offsets[s], offsets[s + 1]):
            for j in range(i, offsets[s + 1]):
                d0 = frac[j, 0] - frac[i, 0]
                d1 = frac[j, 1] - frac[i, 1]
                d2 = frac[j, 2] - frac[i, 2]
                k0 = np.floor(d0 + 0.5)
                k1 = np.floor(d1 + 0.5)
                k2 = np.floor(d2 + 0.5)
                w0, w1, w2 = d0 - k0, d1 - k1, d2 - k2
                for a in range(-m0, m0 + 1):
                    f0 = w0 + a
                    if abs(f0) > lim0:
                        continue
                    for b in range(-m1, m1 + 1):
                        f1 = w1 + b
                        if abs(f1) > lim1:
                            continue
                        for t in range(-m2, m2 + 1):
                            f2 = w2 + t
                            if abs(f2) > lim2:
                                continue
                            if i == j and not (a > 0 or (a == 0 and (b > 0 or (b == 0 and t > 0)))):
                                continue  # self images: one of each +-n pair, never n = 0
                            x = f0 * c[0, 0] + f1 * c[1, 0] + f2 * c[2, 0]
                            y = f0 * c[0, 1] + f1 * c[1, 1] + f2 * c[2, 1]
                            z = f0 * c[0, 2] + f1 * c[1, 2] + f2 * c[2, 2]
                            r2 = x * x + y * y + z * z
                            if r2 <= rc2:
                                if cnt == und.shape[0]:
                                    und, dist = _grow(und, dist)
                                und[cnt, 0] = i
                                und[cnt, 1] = j
                                und[cnt, 2] = a - np.int64(k0)
                                und[cnt, 3] = b - np.int64(k1)
                                und[cnt, 4] = t - np.int64(k2)
                                dist[cnt] = np.sqrt(r2)
                                cnt += 1
    return und[:cnt], dist[:cnt]


@numba.njit(cache=True)
def _line_graph_kernel(center, distance, n_atoms, bond_cutoff):  # pragma: no cover - jitted
    """Angle rows ``[atom, u1, d1, u2, d2]`` (see the module docstring)."""
    n_dir = center.shape[0]
    deg = np.zeros(n_atoms + 1, dtype=np.int64)
    for d in range(n_dir):
        if distance[d] < bond_cutoff:
            deg[center[d] + 1] += 1
    start = np.cumsum(deg)  # start[a] .. start[a + 1]: short edges centred on a
    fill = start[:-1].copy()
    short = np.empty(start[-1], dtype=np.int64)
    for d in range(n_dir):
        if distance[d] < bond_cutoff:
            short[fill[center[d]]] = d
            fill[center[d]] += 1
    n_ang = 0
    for d in range(n_dir):
        # the undirected edge's length decides; both directions share it
        if distance[d - (d % 2)] <= bond_cutoff:
            c = center[d]
            n_ang += start[c + 1] - start[c] - (1 if distance[d] < bond_cutoff else 0)
    out = np.empty((n_ang, 5), dtype=np.int64)
    k = 0
    for d in range(n_dir):
        if distance[d - (d % 2)] <= bond_cutoff:
            c = center[d]
            for p in range(start[c], start[c + 1]):
                e = short[p]
                if e == d:
                    continue
                out[k, 0] = c
                out[k, 1] = d // 2
                out[k, 2] = d
                out[k, 3] = e // 2
                out[k, 4] = e
                k += 1
    return out


def build_graph(
    positions: np.ndarray,
    cells: np.ndarray,
    counts: np.ndarray,
    atom_cutoff: float = 6.0,
    bond_cutoff: float = 3.0,
) -> GraphArrays:
    """Atom and bond graphs of a batch (numba).

    Args:
        positions: Cartesian positions of all atoms, ``(N, 3)``, Å (unwrapped is fine).
        cells: lattice vectors as rows, ``(S, 3, 3)``, non-singular.
        counts: atoms per structure, ``(S,)``; atoms of a structure are contiguous.
        atom_cutoff: atom-graph cutoff, Å.
        bond_cutoff: bond-graph (angle) cutoff, Å.
    """
    center, neighbor, image, distance, d2u, u2d = _directed_pairs(positions, cells, counts, atom_cutoff)
    bond_graph = _line_graph_kernel(center, distance, int(len(positions)), float(bond_cutoff))
    return GraphArrays(center, neighbor, image, distance, d2u, u2d, bond_graph)


def _directed_pairs(
    positions: np.ndarray, cells: np.ndarray, counts: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    frac, offsets, nmax, lim, cells = _prepare(positions, cells, counts, cutoff)
    # capacity guess: 40 undirected neighbours per atom (grown inside the kernel if short)
    und, dist = _pairs_kernel(frac, cells, offsets, nmax, lim, float(cutoff), int(40 * frac.shape[0]))
    return _directed_from_undirected(und, dist)


def neighbor_pairs(
    positions: np.ndarray, cells: np.ndarray, counts: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The atom graph alone: every directed neighbour pair of a batch within ``cutoff`` (numba).

    Args as :func:`build_graph`. Returns ``center (E,)``, ``neighbor (E,)`` (batch-global atom
    indices, int64), ``image (E, 3)`` (int64; the pair vector is
    ``r[neighbor] + image @ cell - r[center]``) and ``distance (E,)`` (Å); both directions of
    every pair appear, the atom itself at ``image = 0`` never.
    """
    center, neighbor, image, distance, _, _ = _directed_pairs(positions, cells, counts, cutoff)
    return center, neighbor, image, distance


# ---- plain NumPy reference -----------------------------------------------------------------
def _pairs_reference(
    frac: np.ndarray, cells: np.ndarray, offsets: np.ndarray, nmax: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray]:
    parts, dists = [], []
    for s in range(cells.shape[0]):
        b, e = offsets[s], offsets[s + 1]
        f = frac[b:e]
        d = f[None, :, :] - f[:, None, :]  # (n, n, 3): j - i
        k = np.floor(d + 0.5)
        w = d - k
        rng = [np.arange(-m, m + 1) for m in nmax[s]]
        grid = np.stack(np.meshgrid(*rng, indexing="ij"), -1).reshape(-1, 3)
        vec = (w[:, :, None, :] + grid[None, None]) @ cells[s]
        r2 = (vec**2).sum(-1)
        ii, jj, gg = np.nonzero(r2 <= (cutoff + TOL) ** 2)
        g = grid[gg]
        lexpos = (g[:, 0] > 0) | ((g[:, 0] == 0) & ((g[:, 1] > 0) | ((g[:, 1] == 0) & (g[:, 2] > 0))))
        keep = (ii < jj) | ((ii == jj) & lexpos)
        ii, jj, gg, g = ii[keep], jj[keep], gg[keep], g[keep]
        image = g - k[ii, jj].astype(np.int64)
        parts.append(np.column_stack([ii + b, jj + b, image]).astype(np.int64))
        dists.append(np.sqrt(r2[ii, jj, gg]))
    if not parts:
        return np.zeros((0, 5), dtype=np.int64), np.zeros(0)
    return np.concatenate(parts), np.concatenate(dists)


def line_graph_reference(center: np.ndarray, distance: np.ndarray, bond_cutoff: float) -> np.ndarray:
    """Angle rows ``[atom, u1, d1, u2, d2]`` of directed edges paired as ``2u, 2u + 1``."""
    n_dir = center.shape[0]
    short = np.nonzero(distance < bond_cutoff)[0]
    order = np.argsort(center[short], kind="stable")
    short = short[order]
    short_centers = center[short]
    first = np.nonzero(distance[np.arange(n_dir) - np.arange(n_dir) % 2] <= bond_cutoff)[0]
    lo = np.searchsorted(short_centers, center[first], side="left")
    hi = np.searchsorted(short_centers, center[first], side="right")
    n_each = hi - lo
    d1 = np.repeat(first, n_each)
    within = np.arange(n_each.sum()) - np.repeat(np.cumsum(n_each) - n_each, n_each)
    d2 = short[np.repeat(lo, n_each) + within]
    keep = d1 != d2
    d1, d2 = d1[keep], d2[keep]
    return np.column_stack([center[d1], d1 // 2, d1, d2 // 2, d2]).astype(np.int64)


def build_graph_reference(
    positions: np.ndarray,
    cells: np.ndarray,
    counts: np.ndarray,
    atom_cutoff: float = 6.0,
    bond_cutoff: float = 3.0,
) -> GraphArrays:
    """The same graphs as :func:`build_graph`, in plain NumPy (one loop over structures)."""
    frac, offsets, nmax, _, cells = _prepare(positions, cells, counts, atom_cutoff)
    und, dist = _pairs_reference(frac, cells, offsets, nmax, float(atom_cutoff))
    center, neighbor, image, distance, d2u, u2d = _directed_from_undirected(und, dist)
    bond_graph = line_graph_reference(center, distance, float(bond_cutoff))
    return GraphArrays(center, neighbor, image, distance, d2u, u2d, bond_graph)
