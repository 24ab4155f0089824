"""Genetic operators (generators/genetic.py): every child keeps the composition and atom count and
passes the distance screen (checked against ASE's neighbour list), each operator does what it
says (heredity splices both parents, lattice mutation strains by the expected amount, permutation
swaps unlike species in a kept lattice), same seed -> same children, and the random generator
takes over while the population is too small."""

from __future__ import annotations

import os

import numpy as np
import pytest
from ase.build import bulk, niggli_reduce
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list
from lamcsp.generators.base import (
    Candidate,
    Evaluated,
    GenerationContext,
    GeneratorBase,
    get_generator,
    register,
)
from lamcsp.generators.genetic import GeneticGenerator, min_distance_matrix, target_numbers

from lamcsp.errors import SetupError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NA, CL = 11, 17
TARGET = np.array([NA] * 4 + [CL] * 4)


def _crystals():
    """Three 8-atom Na4Cl4 cells: rocksalt, CsCl-type (2x2x1), zincblende."""
    return [
        bulk("NaCl", "rocksalt", a=5.64, cubic=True),
        bulk("NaCl", "cesiumchloride", a=3.35) * (2, 2, 1),
        bulk("NaCl", "zincblende", a=6.0, cubic=True),
    ]


def _population(extra: bool = True) -> list[Evaluated]:
    """Two rattled copies of each crystal (made-up enthalpies, rocksalt lowest), plus, when
    ``extra``, entries that must never be parents: a failed one and one of another size,
    both with the lowest enthalpy."""
    out = []
    for k, (atoms, h) in enumerate(zip(_crystals(), [-3.0, -2.9, -2.8])):
        for r in range(2):
            a = atoms.copy()
            a.rattle(0.05, seed=10 * k + r)
            c = Candidate.from_atoms(a, generator="test", origin={"id": f"s{k}-{r}"})
            out.append(Evaluated(c, c, h + 0.01 * r))
    if extra:
        bad = Candidate.from_atoms(_crystals()[0], origin={"id": "failed"})
        out.append(Evaluated(bad, bad, -10.0, ok=False))
        small = Candidate.from_atoms(bulk("NaCl", "rocksalt", a=5.64), origin={"id": "small"})
        out.append(Evaluated(small, small, -10.0))
    return out


def _context(**kw) -> GenerationContext:
    kw.setdefault("population", _population())
    return GenerationContext(composition={"Na": 1, "Cl": 1}, formula_units=[4], **kw)


def _only(op: str, **kw) -> GeneticGenerator:
    shares = {"heredity": 0.0, "lattice_mutation": 0.0, "permutation": 0.0}
    shares[op] = 1.0
    return GeneticGenerator(**shares, fraction_random=0.0, **kw)


def _screen_ok(c: Candidate, factor: float = 0.7) -> bool:
    """Reference screen: no pair (images included) closer than factor x the covalent radii."""
    atoms = c.to_atoms()
    i, j, d = neighbor_list("ijd", atoms, 3.0)
    limit = factor * (covalent_radii[atoms.numbers[i]] + covalent_radii[atoms.numbers[j]])
    return bool(np.all(d >= limit - 1e-9))


def _same_frac(a: np.ndarray, b: np.ndarray, tol: float = 1e-6) -> bool:
    d = a - b
    d -= np.round(d)
    return bool(np.abs(d).max() < tol)


@pytest.mark.parametrize("op", ["heredity", "lattice_mutation", "permutation"])
def test_children_keep_composition_and_pass_screen(op):
    ctx = _context()
    children = _only(op).propose(12, np.random.default_rng(1), ctx)
    assert len(children) == 12
    for c in children:
        assert c.generator == "ga" and c.spacegroup is None and c.wyckoffs is None
        assert c.origin["operator"] == op
        assert c.n_atoms == 8
        assert np.array_equal(np.sort(c.numbers), TARGET)
        assert _screen_ok(c), c.origin
        assert c.volume > 0
        # never the failed entry (index 6) nor the 2-atom one (index 7)
        assert set(c.origin["parents"]) <= set(range(6))
        ids = [ctx.population[i].relaxed.origin["id"] for i in c.origin["parents"]]
        assert c.origin["parent_ids"] == ids
        Candidate.from_dict(c.to_dict())  # plain data


def test_children_pass_the_batched_kernel_screen():
    screen = pytest.importorskip("lamcsp.kernels.screen")
    ctx = _context()
    children = GeneticGenerator(fraction_random=0.0).propose(24, np.random.default_rng(13), ctx)
    z = np.arange(max(NA, CL) + 1)
    dmin = 0.7 * (covalent_radii[z][:, None] + covalent_radii[z][None, :])
    passes, worst = screen.distance_screen(
        np.concatenate([c.positions for c in children]), np.stack([c.lattice for c in children]),
        [c.n_atoms for c in children], np.concatenate([c.numbers for c in children]), dmin,
    )
    assert passes.all(), worst


def test_distance_overrides_are_honoured():
    # a Na-Cl minimum larger than rocksalt's 2.82 Å nearest neighbours forces repair or rejection
    ctx = _context(min_distance={(NA, CL): 2.9})
    gen = GeneticGenerator(fraction_random=0.0, random_generator="_test_fallback")
    children = gen.propose(12, np.random.default_rng(2), ctx)
    assert sum(c.generator == "ga" for c in children) >= 6
    assert any(c.origin.get("expansion", 1.0) > 1.0 for c in children)
    for c in children:
        if c.generator != "ga":
            continue
        d = min_distance_matrix(c.numbers, ctx)
        atoms = c.to_atoms()
        i, j, dist = neighbor_list("ijd", atoms, 3.5)
        assert np.all(dist >= d[i, j] - 1e-9)
    d = min_distance_matrix(TARGET, ctx)  # Na Na Na Na Cl Cl Cl Cl
    assert d[0, 7] == d[7, 0] == 2.9 and np.isclose(d[0, 1], 0.7 * 2 * covalent_radii[NA])


def test_heredity_takes_atoms_from_both_parents():
    ctx = _context()
    children = _only("heredity").propose(16, np.random.default_rng(3), ctx)
    checked = 0
    for c in children:
        pa, pb = c.origin["parents"]
        assert pa != pb
        n_a, n_b = c.origin["from_parents"]
        assert n_a >= 1 and n_b >= 1 and n_a + n_b == 8
        sources = np.array(c.origin["atom_sources"])
        assert sorted(set(sources.tolist())) == [0, 1]
        # the lattice is the weighted mean of the parents' Niggli cells, at the mean volume
        reduced = []
        for p, shift in zip((pa, pb), c.origin["shifts"]):
            atoms = ctx.population[p].relaxed.to_atoms()
            niggli_reduce(atoms)
            reduced.append((atoms, np.asarray(shift)))
        w = c.origin["lattice_weight"]
        mean = w * reduced[0][0].cell.array + (1 - w) * reduced[1][0].cell.array
        vol = w * reduced[0][0].get_volume() + (1 - w) * reduced[1][0].get_volume()
        grow = c.origin["expansion"]
        assert np.isclose(c.volume, vol * grow**3)
        assert np.allclose(c.lattice, grow * mean * (vol / abs(np.linalg.det(mean))) ** (1 / 3))
        if c.origin["repair_sweeps"] or grow != 1.0:
            continue
        # unrepaired: every atom sits where an atom of the same species sat in its parent
        for k in range(c.n_atoms):
            atoms, shift = reduced[sources[k]]
            same = atoms.numbers == c.numbers[k]
            d = c.frac[k] - (atoms.get_scaled_positions()[same] - shift)
            d -= np.round(d)
            assert np.abs(d).max(axis=1).min() < 1e-6
        checked += 1
    assert checked >= 3


def test_lattice_mutation_strains_by_the_expected_amount():
    ctx = _context()
    norms = {}
    for sigma in (0.05, 0.25):
        children = _only("lattice_mutation", strain_sigma=sigma).propose(40, np.random.default_rng(4), ctx)
        eps_norms = []
        for c in children:
            parent = ctx.population[c.origin["parents"][0]].relaxed
            eps = np.asarray(c.origin["strain"])
            assert np.allclose(eps, eps.T)
            grow = c.origin["expansion"]
            expected = parent.lattice @ (np.eye(3) + eps) * c.origin["volume_scale"] * grow
            assert np.allclose(c.lattice, expected)
            assert np.isclose(c.volume, parent.volume * grow**3)  # preserve_volume
            assert np.array_equal(c.numbers, parent.numbers)
            if c.origin["repair_sweeps"] == 0:
                assert _same_frac(c.frac, parent.frac)
            eps_norms.append(np.linalg.norm(eps))
        norms[sigma] = float(np.mean(eps_norms))
        # E|eps|_F^2 = 3 sigma^2 + 6 (sigma/2)^2 -> |eps|_F about 2 sigma
        assert 1.2 * sigma < norms[sigma] < 3.0 * sigma, (sigma, norms[sigma])
    assert 3.0 < norms[0.25] / norms[0.05] < 8.0


def test_lattice_mutation_without_volume_rescaling():
    ctx = _context()
    for c in _only("lattice_mutation", preserve_volume=False).propose(8, np.random.default_rng(5), ctx):
        parent = ctx.population[c.origin["parents"][0]].relaxed
        eps = np.asarray(c.origin["strain"])
        assert c.origin["volume_scale"] == 1.0
        assert np.isclose(c.volume, parent.volume * np.linalg.det(np.eye(3) + eps) * c.origin["expansion"] ** 3)


def test_permutation_swaps_unlike_species_in_the_same_lattice():
    ctx = _context()
    children = _only("permutation", max_swaps=3).propose(20, np.random.default_rng(6), ctx)
    n_swaps = set()
    for c in children:
        parent = ctx.population[c.origin["parents"][0]].relaxed
        assert np.array_equal(c.lattice, parent.lattice)
        swaps = c.origin["swaps"]
        assert 1 <= len(swaps) <= 3
        n_swaps.add(len(swaps))
        swapped = sorted(i for pair in swaps for i in pair)
        assert len(set(swapped)) == len(swapped)  # each atom in at most one swap
        for i, j in swaps:
            assert parent.numbers[i] != parent.numbers[j]
            assert c.numbers[i] == parent.numbers[j] and c.numbers[j] == parent.numbers[i]
        assert np.flatnonzero(c.numbers != parent.numbers).tolist() == swapped
        # rocksalt/CsCl/zincblende swaps need no repair; a permutation never expands
        assert c.origin["repair_sweeps"] == 0 and c.origin["expansion"] == 1.0
        assert _same_frac(c.frac, parent.frac)
    assert len(n_swaps) > 1


def test_one_element_composition_never_permutes():
    population = []
    for k, (name, h) in enumerate([("diamond", -5.4), ("fcc", -5.0), ("bcc", -4.9)]):
        a = bulk("Si", name, a={"diamond": 5.43, "fcc": 3.9, "bcc": 3.1}[name], cubic=True)
        a = a * (1, 1, 2) if len(a) == 4 else a * (2, 2, 1) if len(a) == 2 else a
        a.rattle(0.03, seed=k)
        c = Candidate.from_atoms(a)
        population.append(Evaluated(c, c, h))
    ctx = GenerationContext(composition={"Si": 1}, formula_units=[8], population=population)
    children = GeneticGenerator(fraction_random=0.0).propose(12, np.random.default_rng(14), ctx)
    assert len(children) == 12
    assert {c.origin["operator"] for c in children} == {"heredity", "lattice_mutation"}
    assert all(c.n_atoms == 8 and set(c.numbers.tolist()) == {14} and _screen_ok(c) for c in children)


def test_same_seed_same_children():
    ctx = _context()
    gen = GeneticGenerator(fraction_random=0.0)
    first = [c.to_dict() for c in gen.propose(10, np.random.default_rng(7), ctx)]
    again = [c.to_dict() for c in GeneticGenerator(fraction_random=0.0).propose(10, np.random.default_rng(7), ctx)]
    other = [c.to_dict() for c in gen.propose(10, np.random.default_rng(8), ctx)]
    assert first == again
    assert first != other
    assert {d["origin"]["operator"] for d in first} <= {"heredity", "lattice_mutation", "permutation"}


def test_tournament_prefers_low_enthalpy():
    gen = GeneticGenerator(tournament_size=3, parent_fraction=1.0)
    rng = np.random.default_rng(9)
    pool = [4, 2, 0, 5, 1, 3]  # best first
    picks = np.array([gen._select(pool, rng) for _ in range(3000)])
    freq = [np.mean(picks == i) for i in pool]
    assert freq == sorted(freq, reverse=True)
    assert freq[-1] == 0.0 and freq[-2] == 0.0  # a 3-tournament never picks the two worst
    assert all(gen._select(pool, rng, exclude=4) != 4 for _ in range(50))


@pytest.mark.parametrize(
    "options, field",
    [
        ({"heredity": 0.5, "lattice_mutation": 0.5, "permutation": 0.5}, "heredity/lattice_mutation/permutation"),
        ({"heredity": -0.1, "lattice_mutation": 0.9, "permutation": 0.2}, "heredity"),
        ({"tournament_size": 0}, "tournament_size"),
        ({"fraction_random": 1.5}, "fraction_random"),
        ({"strain_sigma": 0.0}, "strain_sigma"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"min_population": 1}, "min_population"),
        ({"max_expansion": 0.9}, "max_expansion"),
        ({"random_generator": "ga"}, "random_generator"),
    ],
)
def test_bad_options(options, field):
    with pytest.raises(SetupError) as info:
        GeneticGenerator(**options)
    assert info.value.field == field
    assert field.split("/")[0] in str(info.value)


def test_registered_as_ga():
    gen = get_generator("ga", heredity=0.6, lattice_mutation=0.4, permutation=0.0)
    assert isinstance(gen, GeneticGenerator) and gen.name == "ga"
    assert target_numbers({"Cl": 1, "Na": 1}, 4).tolist() == TARGET.tolist()


@register("_test_fallback")
class _Fallback(GeneratorBase):
    """A stand-in random generator: rattled rocksalt, so the delegation is tested without
    generators/symmetric.py."""

    name = "_test_fallback"

    def propose(self, n, rng, context):
        out = []
        for _ in range(n):
            atoms = _crystals()[0]
            atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
            out.append(Candidate.from_atoms(atoms, generator=self.name, origin={"from": "fallback"}))
        return out


def test_small_population_delegates_to_the_random_generator():
    gen = GeneticGenerator(random_generator="_test_fallback", min_population=3)
    for population in ([], _population()[:2]):  # empty; two usable entries
        out = gen.propose(5, np.random.default_rng(10), _context(population=population))
        assert len(out) == 5
        assert all(c.generator == "_test_fallback" and c.origin["operator"] == "random" for c in out)
        assert all(c.origin["from"] == "fallback" for c in out)


def test_fraction_random_share():
    gen = GeneticGenerator(random_generator="_test_fallback", fraction_random=0.3)
    out = gen.propose(10, np.random.default_rng(11), _context())
    assert sum(c.origin["operator"] == "random" for c in out) == 3
    assert sum(c.generator == "ga" for c in out) == 7


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "generators", "symmetric.py")),
                    reason="generators/symmetric.py (the 'random' generator) is not there yet")
def test_empty_population_falls_back_to_symmetric_random():
    ctx = _context(population=[])
    out = GeneticGenerator().propose(3, np.random.default_rng(12), ctx)
    assert 1 <= len(out) <= 3
    for c in out:
        assert c.generator != "ga" and c.origin["operator"] == "random"
        assert np.array_equal(np.sort(c.numbers), TARGET)
