"""Fingerprint and distance-screen kernels against their NumPy references, ASE, and symmetry."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list
from lamcsp.kernels import (
    bcm_fingerprint,
    bcm_fingerprints,
    bcm_fingerprints_reference,
    distance_screen,
    distance_screen_reference,
    element_pairs,
    fingerprint_distance_matrix,
    fingerprint_distance_matrix_reference,
    fingerprint_distances,
    fingerprint_distances_reference,
    ov_distance,
    ov_fingerprint,
    ov_fingerprints,
    ov_fingerprints_reference,
    pair_weights,
)

from lamcsp.errors import SetupError

ELEMENTS = [8, 12, 14]


def _random_batch(rng, n_sys, elements=ELEMENTS, n_max=9, lo=3.0, hi=6.0):
    """Skewed (some strongly) cells, several element types, some atoms outside the cell."""
    pos, cells, counts, numbers = [], [], [], []
    for _ in range(n_sys):
        n = int(rng.integers(1, n_max + 1))
        cell = np.diag(rng.uniform(lo, hi, 3))
        cell[1, 0] = rng.uniform(-3, 3)
        cell[2, :2] = rng.uniform(-3, 3, 2)
        frac = rng.random((n, 3)) + rng.integers(-1, 2, size=(n, 3))
        pos.append(frac @ cell)
        cells.append(cell)
        counts.append(n)
        numbers.append(rng.choice(elements, n))
    return np.concatenate(pos), np.stack(cells), np.array(counts), np.concatenate(numbers)


def _dmin(scale=1.0):
    d = np.zeros((15, 15))
    for (a, b), v in {(8, 8): 2.2, (8, 12): 1.8, (8, 14): 1.5, (12, 12): 2.6, (12, 14): 2.4, (14, 14): 2.2}.items():
        d[a, b] = d[b, a] = v * scale
    return d


def _rotation(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


# ------------------------------------------------------------------------- kernels vs references


def test_distance_screen_equals_reference():
    rng = np.random.default_rng(1)
    pos, cells, counts, numbers = _random_batch(rng, 30)
    for scale, cap in ((0.5, 1.0), (1.0, 1.0), (1.0, 2.5)):
        ok, ratio = distance_screen(pos, cells, counts, numbers, _dmin(scale), cap)
        ok_ref, ratio_ref = distance_screen_reference(pos, cells, counts, numbers, _dmin(scale), cap)
        assert np.array_equal(ok, ok_ref)
        assert np.allclose(ratio, ratio_ref, atol=1e-12)
        assert np.all(ratio <= cap)
        if cap == 1.0:
            assert 0 < ok.sum() < len(ok)  # the batch has both passing and failing systems


def test_distance_screen_matches_ase_neighbor_list():
    rng = np.random.default_rng(2)
    pos, cells, counts, numbers = _random_batch(rng, 15)
    dmin, cap = _dmin(), 2.0
    ok, ratio = distance_screen(pos, cells, counts, numbers, dmin, cap)
    start = 0
    for k, n in enumerate(counts):
        a = Atoms(numbers=numbers[start : start + n], positions=pos[start : start + n], cell=cells[k], pbc=True)
        i, j, d = neighbor_list("ijd", a, cap * dmin.max())
        q = d / dmin[a.numbers[i], a.numbers[j]]
        expect = min(cap, q.min()) if len(q) else cap
        assert abs(ratio[k] - expect) < 1e-9
        assert ok[k] == (expect >= 1.0)
        start += n


def test_distance_screen_known_crystal_and_errors():
    si = bulk("Si", "diamond", 5.43)
    d = np.zeros((15, 15))
    d[14, 14] = 2.0
    ok, ratio = distance_screen(si.positions, si.cell[None], [2], si.numbers, d, ratio_cap=2.0)
    assert ok[0] and abs(ratio[0] - 5.43 * np.sqrt(3) / 4 / 2.0) < 1e-12
    d[14, 14] = 2.5
    assert not distance_screen(si.positions, si.cell[None], [2], si.numbers, d)[0][0]
    asym = d.copy()
    asym[14, 8] = 1.0
    with pytest.raises(SetupError):
        distance_screen(si.positions, si.cell[None], [2], si.numbers, asym)
    with pytest.raises(SetupError):
        distance_screen(si.positions, si.cell[None], [2], si.numbers, np.zeros((10, 10)))


def test_bcm_kernel_equals_reference():
    rng = np.random.default_rng(3)
    pos, cells, counts, numbers = _random_batch(rng, 12)
    got = bcm_fingerprints(pos, cells, counts, numbers, ELEMENTS)
    ref = bcm_fingerprints_reference(pos, cells, counts, numbers, ELEMENTS)
    assert got.shape == (12, 6 * 6)
    assert np.allclose(got, ref, atol=1e-10)
    # per-pair cutoffs and other l
    rc = [3.0, 3.5, 4.0, 4.5, 5.0, 5.5]
    got = bcm_fingerprints(pos, cells, counts, numbers, ELEMENTS, ls=(2, 4, 12), cutoff=rc)
    ref = bcm_fingerprints_reference(pos, cells, counts, numbers, ELEMENTS, ls=(2, 4, 12), cutoff=rc)
    assert np.allclose(got, ref, atol=1e-10)
    assert np.all((got >= 0) & (got <= 1 + 1e-12))


def test_ov_kernel_equals_reference():
    rng = np.random.default_rng(4)
    pos, cells, counts, numbers = _random_batch(rng, 12)
    got = ov_fingerprints(pos, cells, counts, numbers, ELEMENTS)
    ref = ov_fingerprints_reference(pos, cells, counts, numbers, ELEMENTS)
    assert got.shape == (12, 6 * 75)
    assert np.allclose(got, ref, rtol=1e-10, atol=1e-9)
    got = ov_fingerprints(pos, cells, counts, numbers, ELEMENTS, r_max=4.0, delta=0.1, sigma=0.07)
    ref = ov_fingerprints_reference(pos, cells, counts, numbers, ELEMENTS, r_max=4.0, delta=0.1, sigma=0.07)
    assert np.allclose(got, ref, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_distance_matrix_equals_reference(metric):
    rng = np.random.default_rng(5)
    F = rng.normal(size=(25, 40))
    F[3] = 0.0  # a zero vector
    G = rng.normal(size=(7, 40))
    w = rng.random(40)
    for weights in (None, w):
        D = fingerprint_distance_matrix(F, weights, metric)
        assert np.allclose(D, fingerprint_distance_matrix_reference(F, weights, metric), atol=1e-12)
        assert np.allclose(D, D.T) and np.all(np.diag(D) == 0)
        C = fingerprint_distances(F, G, weights, metric)
        assert C.shape == (25, 7)
        assert np.allclose(C, fingerprint_distances_reference(F, G, weights, metric), atol=1e-12)
    with pytest.raises(SetupError):
        fingerprint_distance_matrix(F, metric="manhattan")


# ------------------------------------------------------------------------------- invariances


def _binary(rng):
    cell = np.array([[4.1, 0.0, 0.0], [1.3, 4.4, 0.0], [-0.9, 0.7, 5.2]])
    numbers = np.array([8, 8, 8, 14, 14, 12])
    frac = rng.random((6, 3))
    return Atoms(numbers=numbers, scaled_positions=frac, cell=cell, pbc=True)


@pytest.mark.parametrize("kind", ["bcm", "ov"])
def test_fingerprints_are_invariant(kind):
    rng = np.random.default_rng(6)
    a = _binary(rng)
    fp = bcm_fingerprint if kind == "bcm" else ov_fingerprint
    ref = fp(a.positions, a.cell, a.numbers, ELEMENTS)
    perm = rng.permutation(len(a))
    variants = {
        "permutation": (a.positions[perm], a.cell, a.numbers[perm]),
        "supercell 2x1x1": ((a * (2, 1, 1)).positions, (a * (2, 1, 1)).cell, (a * (2, 1, 1)).numbers),
        "supercell 1x2x2": ((a * (1, 2, 2)).positions, (a * (1, 2, 2)).cell, (a * (1, 2, 2)).numbers),
        "origin shift": (a.positions + np.array([0.37, -1.2, 2.9]), a.cell, a.numbers),
    }
    R = _rotation(rng)
    variants["rotation"] = (a.positions @ R.T, np.asarray(a.cell) @ R.T, a.numbers)
    for name, (p, c, z) in variants.items():
        got = fp(p, c, z, ELEMENTS)
        assert np.allclose(got, ref, atol=1e-9), name


def test_fingerprints_tell_polymorphs_apart():
    dia = bulk("Si", "diamond", 5.43)
    btin = bulk("Si", "bct", a=4.8, c=2.65)
    fcc, bcc = bulk("Si", "fcc", 3.85), bulk("Si", "bcc", 3.08)
    w = pair_weights([14], [14])
    for x, y in ((dia, btin), (fcc, bcc)):
        fx, fy = ov_fingerprint(x.positions, x.cell, x.numbers), ov_fingerprint(y.positions, y.cell, y.numbers)
        assert ov_distance(fx, fy, w) > 0.2
        bx, by = bcm_fingerprint(x.positions, x.cell, x.numbers), bcm_fingerprint(y.positions, y.cell, y.numbers)
        assert np.sqrt(np.mean((bx - by) ** 2)) > 0.05
    f = ov_fingerprint(dia.positions, dia.cell, dia.numbers)
    assert ov_distance(f, f, w) == pytest.approx(0.0, abs=1e-12)


def test_pairs_weights_and_errors():
    assert element_pairs([14, 8, 8]) == [(8, 8), (8, 14), (14, 14)]
    w = pair_weights([8, 14], [14, 8, 8])  # SiO2: N_O = 2, N_Si = 1 -> 4, 2*2, 1 over 9
    assert np.allclose(w, [4 / 9, 4 / 9, 1 / 9])
    si = bulk("Si", "diamond", 5.43)
    with pytest.raises(SetupError):
        bcm_fingerprint(si.positions, si.cell, si.numbers, ls=(1, 2))
    with pytest.raises(SetupError):
        ov_fingerprint(si.positions, si.cell, si.numbers, elements=[8])
    # an element of the list that the structure lacks gives a zero block
    f = ov_fingerprint(si.positions, si.cell, si.numbers, elements=[8, 14])
    assert np.all(f[: 2 * 75] == 0) and np.any(f[2 * 75 :] != 0)
