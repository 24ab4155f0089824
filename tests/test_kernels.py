"""Numba kernels against their NumPy references (and against ASE's neighbour list)."""

import numpy as np
from ase.build import bulk
from ase.neighborlist import neighbor_list
from lamcsp.kernels.distances import min_distances, min_distances_reference


def _random_cells(rng, n_sys):
    pos, cells, counts = [], [], []
    for _ in range(n_sys):
        n = int(rng.integers(1, 13))
        cell = np.diag(rng.uniform(2.0, 7.0, 3))
        cell[1, 0] = rng.uniform(-3, 3)  # skewed cells, some strongly
        cell[2, :2] = rng.uniform(-3, 3, 2)
        frac = rng.random((n, 3)) + rng.integers(-1, 2, size=(n, 3))  # some outside the cell
        pos.append(frac @ cell)
        cells.append(cell)
        counts.append(n)
    return np.concatenate(pos), np.stack(cells), np.array(counts)


def test_min_distance_kernel_equals_reference():
    rng = np.random.default_rng(42)
    pos, cells, counts = _random_cells(rng, 40)
    for cutoff in (0.5, 2.0, 4.0):
        got = min_distances(pos, cells, counts, cutoff)
        ref = min_distances_reference(pos, cells, counts, cutoff)
        assert np.allclose(got, ref, atol=1e-12)


def test_min_distance_matches_ase_neighbor_list():
    rng = np.random.default_rng(7)
    pos, cells, counts = _random_cells(rng, 15)
    got = min_distances(pos, cells, counts, 6.0)
    start = 0
    for k, n in enumerate(counts):
        from ase import Atoms

        a = Atoms("H" * n, positions=pos[start : start + n], cell=cells[k], pbc=True)
        d = neighbor_list("d", a, 6.0)
        expect = min(6.0, d.min()) if len(d) else 6.0
        assert abs(got[k] - expect) < 1e-9
        start += n


def test_known_crystal():
    si = bulk("Si", "diamond", 5.43)
    d = min_distances(si.positions, si.cell[None], [2], 5.0)
    assert abs(d[0] - 5.43 * np.sqrt(3) / 4) < 1e-12
