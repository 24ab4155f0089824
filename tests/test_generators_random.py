"""The symmetric random generator: Wyckoff feasibility, distance screen, requested space groups
(checked with spglib), reproducibility, impossible requests, the symmetry-reduced vector, and
``lamcsp generate``."""

from __future__ import annotations

import contextlib
import signal

import numpy as np
import pytest
import spglib
from ase.data import covalent_radii
from lamcsp.generators import Candidate, GenerationContext, WyckoffSite, get_generator
from lamcsp.generators import symmetric as sym
from lamcsp.generators.wyckoff import (
    LATTICE_TYPES,
    can_hold,
    feasible_assignments,
    random_assignment,
    space_group,
)
from lamcsp.kernels.distances import image_range, orbit_clear, orbit_clear_reference

from lamcsp.errors import SetupError


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail instead of hanging (SIGALRM; the suite runs on Linux)."""

    def boom(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _cut2(numbers, factor=0.7):
    zs = sorted(set(int(z) for z in numbers))
    r = np.array([covalent_radii[z] for z in zs])
    species = np.searchsorted(zs, numbers)
    return species, (factor * (r[:, None] + r[None, :])) ** 2


def _spglib_number(c: Candidate) -> int:
    data = spglib.get_symmetry_dataset((c.lattice, c.frac, c.numbers), symprec=0.01)
    return 0 if data is None else int(data.number)


# --- kernels and Wyckoff data -----------------------------------------------------------------


def test_orbit_clear_matches_reference():
    rng = np.random.default_rng(0)
    n_true = 0
    for _ in range(300):
        n = int(rng.integers(1, 12))
        lattice = np.diag(rng.uniform(2.0, 6.0, 3)) + rng.normal(0.0, 0.8, (3, 3))
        frac = rng.random((n, 3))
        species = rng.integers(0, 2, n)
        cut = rng.uniform(0.3, 2.5, (2, 2))
        cut2 = ((cut + cut.T) / 2) ** 2
        n_old = int(rng.integers(0, n))
        fast = orbit_clear(frac, species, n_old, n - n_old, lattice, cut2, image_range(lattice, np.sqrt(cut2.max())))
        assert fast == orbit_clear_reference(frac, species, n_old, n - n_old, lattice, cut2)
        n_true += fast
    assert 20 < n_true < 280  # both outcomes exercised


def test_image_range_is_enough_for_skewed_cells():
    lattice = np.array([[3.0, 0, 0], [2.9, 0.5, 0], [0, 0, 4.0]])  # a very flat cell
    nmax = image_range(lattice, 2.0)
    recip = np.linalg.norm(np.linalg.inv(lattice), axis=0)
    assert np.all(nmax >= np.floor(2.0 * recip + 0.5))
    assert nmax[0] >= 2


def test_space_group_tables():
    for sg in (1, 2, 14, 62, 166, 194, 227):
        data = space_group(sg)
        assert data.positions[0].dof == 3 and data.positions[0].index == 0
        for p in data.positions:
            assert p.ops.shape == (p.multiplicity, 3, 4)
            assert len(p.free_axes) == p.dof
            proj = np.vstack([p.ops[0], [0, 0, 0, 1]])
            assert np.allclose(proj @ proj, proj)  # the projector is idempotent
    assert space_group(166).lattice_type == "trigonal"  # R groups on hexagonal axes
    assert len(space_group(166).centring) == 3 and len(space_group(225).centring) == 4
    assert {space_group(sg).lattice_type for sg in range(1, 231)} == set(LATTICE_TYPES)


def test_can_hold_matches_pyxtal():
    from pyxtal.symmetry import Group

    rng = np.random.default_rng(3)
    for _ in range(150):
        sg = int(rng.integers(1, 231))
        counts = [int(x) for x in rng.integers(1, 20, size=int(rng.integers(1, 4)))]
        assert can_hold(sg, counts) == Group(sg).check_compatible(counts)[0], (sg, counts)


def test_can_hold_basic_cases():
    assert not can_hold(14, [1])  # smallest orbit of P2_1/c is 2
    assert can_hold(14, [2]) and can_hold(2, [1])
    assert can_hold(225, [4, 4])  # rock salt
    assert not can_hold(225, [4, 4, 4, 4, 4])  # only 4a and 4b hold 4 atoms
    assert not can_hold(230, [8])


def test_random_assignments_are_feasible():
    rng = np.random.default_rng(1)
    for sg, counts in [(62, {12: 4, 14: 4, 8: 12}), (225, {11: 4, 17: 4}), (47, {14: 8}), (166, {3: 6, 8: 12})]:
        data = space_group(sg)
        allowed = set(feasible_assignments(sg, counts, limit=100_000))
        for _ in range(20):
            a = random_assignment(sg, counts, rng)
            for z, n in counts.items():
                assert sum(data.positions[i].multiplicity for zz, i in a if zz == z) == n
            fixed = [i for _, i in a if data.positions[i].dof == 0]
            assert len(fixed) == len(set(fixed))  # positions without freedom at most once
            canon = tuple(sorted(a, key=lambda zi: (list(counts).index(zi[0]), zi[1])))
            assert canon in allowed


# --- the generator ----------------------------------------------------------------------------


CASES = [
    ({"Si": 8}, [1]),
    ({"Mg": 1, "Si": 1, "O": 3}, [4]),
    ({"Li": 2, "Mn": 1, "Si": 1, "O": 4}, [2]),
    ({"Ca": 1, "Ti": 1, "O": 3}, [1, 2, 4]),
]


@pytest.mark.parametrize(("composition", "fus"), CASES)
def test_outputs_pass_distance_screen_and_composition(composition, fus):
    gen = get_generator("random")
    assert isinstance(gen, sym.SymmetricRandom)
    ctx = GenerationContext(composition=composition, formula_units=fus)
    cands = gen.propose(12, np.random.default_rng(7), ctx)
    assert len(cands) == 12
    per_fu = sym._parse_composition(composition)
    target = sum(sym.default_element_volume(z) * n for z, n in per_fu.items())
    for c in cands:
        fu = c.origin["formula_units"]
        assert fu in fus
        zs, counts = np.unique(c.numbers, return_counts=True)
        assert dict(zip(zs.tolist(), counts.tolist())) == {z: n * fu for z, n in per_fu.items()}
        species, cut2 = _cut2(c.numbers)
        assert orbit_clear_reference(c.frac, species, 0, c.n_atoms, c.lattice, cut2)
        assert c.volume == pytest.approx(target * fu, rel=1e-9)
        assert c.generator == "random" and c.spacegroup is not None
        # primitive cells (the default): a centred group's orbits fill k primitive cells
        k = len(space_group(c.spacegroup).centring) if c.origin.get("cell") == "primitive" else 1
        assert sum(space_group(c.spacegroup).positions[w.index].multiplicity for w in c.wyckoffs) == k * c.n_atoms
        assert np.all((c.frac >= 0) & (c.frac < 1))


#: triclinic to cubic, P, C, I, F and R centring
SPREAD = [1, 2, 5, 9, 14, 15, 19, 43, 62, 70, 88, 122, 139, 146, 148, 160, 166, 167,
          173, 186, 194, 198, 206, 216, 225, 227, 230]


def test_requested_space_groups_by_spglib():
    rng = np.random.default_rng(11)
    ctx = GenerationContext(composition={"Mg": 1, "Si": 1, "O": 3}, formula_units=list(range(1, 17)))
    for sg in SPREAD:
        gen = sym.SymmetricRandom(spacegroups=[sg])
        for c in gen.propose(3, rng, ctx):
            assert c.spacegroup == sg
            assert _spglib_number(c) == sg, (sg, [w.label for w in c.wyckoffs])


def test_emitted_space_groups_by_spglib_default_range():
    gen = sym.SymmetricRandom()
    cands = gen.propose(150, np.random.default_rng(5), GenerationContext(composition={"Si": 8}))
    assert all(_spglib_number(c) == c.spacegroup for c in cands)
    assert len({c.spacegroup for c in cands}) > 60
    assert len({space_group(c.spacegroup).lattice_type for c in cands}) >= 6
    assert gen.stats["rejected_spglib"] == 0  # the extra-symmetry screen catches them first


def test_extra_symmetry_screen_matches_reference_and_spglib():
    rng = np.random.default_rng(2)
    checked = extra = finer = 0
    for sg, counts in [(229, {14: 8}), (41, {14: 8}), (225, {11: 4, 17: 4}), (225, {14: 8}), (62, {14: 8}),
                       (166, {14: 6}), (194, {14: 4, 8: 4}), (14, {14: 4})]:
        for a in feasible_assignments(sg, counts, limit=6):
            template = Candidate(
                numbers=np.zeros(0), frac=np.zeros((0, 3)), lattice=np.eye(3), spacegroup=sg,
                wyckoffs=[WyckoffSite(z, i, space_group(sg).positions[i].label, np.zeros(3)) for z, i in a],
            )
            code = sym.LATTICE_TYPES.index(space_group(sg).lattice_type)
            size = sym.vector_size(template)
            for _ in range(3):
                lat = sym._draw_params(rng, code, 12.0 * sum(counts.values()))
                c = sym.from_vector(template, np.concatenate([lat, rng.random(size - len(lat))]))
                species, _ = _cut2(c.numbers)
                if not orbit_clear_reference(c.frac, species, 0, c.n_atoms, c.lattice, np.full((2, 2), 0.5**2)):
                    continue  # atoms on top of each other: not a structure spglib should judge
                fast = sym.has_extra_symmetry(c.frac, c.numbers, c.lattice, sg)
                assert fast == sym.has_extra_symmetry_reference(c.frac, c.numbers, c.lattice, sg)
                number = _spglib_number(c)
                if number != sg:
                    assert fast, (sg, a)  # the screen never lets a wrong group through
                elif fast:
                    # stricter than the group number: a finer lattice (fewer formula units)
                    prim = spglib.find_primitive((c.lattice, c.frac, c.numbers), symprec=0.01)
                    assert len(prim[2]) < c.n_atoms // len(space_group(sg).centring), (sg, a)
                    finer += 1
                checked += 1
                extra += fast
    assert checked > 40 and 5 < extra < checked and finer < extra


def test_same_seed_same_candidates():
    ctx = GenerationContext(composition={"Mg": 1, "Si": 1, "O": 3}, formula_units=[1, 2, 4])
    a = sym.SymmetricRandom().propose(10, np.random.default_rng(42), ctx)
    b = sym.SymmetricRandom().propose(10, np.random.default_rng(42), ctx)
    c = sym.SymmetricRandom().propose(10, np.random.default_rng(43), ctx)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert [x.to_dict() for x in a] != [x.to_dict() for x in c]


def test_options_override_context():
    ctx = GenerationContext(composition={"Si": 2}, formula_units=[1], spacegroups=[2], volume_factor=1.0)
    gen = sym.SymmetricRandom(spacegroups=[12], formula_units=[2], volume_factor=2.0)
    cands = gen.propose(4, np.random.default_rng(0), ctx)
    v1 = sym.default_element_volume(14)
    for c in cands:
        assert c.spacegroup == 12 and c.n_atoms == 4
        assert c.volume == pytest.approx(2.0 * 4 * v1)
    ctx2 = GenerationContext(composition={"Si": 4}, element_volumes={14: 30.0}, min_distance={(14, 14): 2.5})
    for c in sym.SymmetricRandom().propose(4, np.random.default_rng(0), ctx2):
        assert c.volume == pytest.approx(120.0)
        species, _ = _cut2(c.numbers)
        assert orbit_clear_reference(c.frac, species, 0, c.n_atoms, c.lattice, np.array([[2.5**2]]))


# --- impossible requests ----------------------------------------------------------------------


def test_composition_no_group_can_hold():
    # smallest orbits 2, 4, 4 in the conventional cell; in a primitive cell Fm-3m holds one atom
    gen = sym.SymmetricRandom(spacegroups=[14, 62, 225], cell="conventional")
    with deadline(10), pytest.raises(SetupError) as err:
        gen.propose(2, np.random.default_rng(0), GenerationContext(composition={"Si": 1}))
    assert err.value.field == "spacegroups" and "Si1" in err.value.message


def test_group_that_holds_only_higher_symmetry():
    gen = sym.SymmetricRandom(spacegroups=[229], cell="conventional")  # Si8 only on 8c: always Pm-3m
    with deadline(20), pytest.raises(SetupError) as err:
        gen.propose(2, np.random.default_rng(0), GenerationContext(composition={"Si": 8}))
    assert err.value.field == "spacegroups"


# rejected up front (packing bound) / after the attempts (just under the bound, where only
# conventional cells are tried)
@pytest.mark.parametrize(("d", "cell"), [(10.0, "primitive"), (3.1, "conventional")])
def test_distances_that_cannot_fit(d, cell):
    ctx = GenerationContext(composition={"Si": 8}, min_distance={(14, 14): d})
    with deadline(20), pytest.raises(SetupError) as err:
        sym.SymmetricRandom(cell=cell).propose(3, np.random.default_rng(0), ctx)
    assert err.value.field == "min_distance"
    assert f"{d:.2f}" in err.value.message


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        (dict(composition={"Xx": 2}), "composition"),
        (dict(composition={"Si": 0}), "composition"),
        (dict(composition={"Si": 2}, spacegroups=[231]), "spacegroups"),
        (dict(composition={"Si": 2}, formula_units=[0]), "formula_units"),
        (dict(composition={"Si": 2}, volume_factor=-1.0), "volume_factor"),
    ],
)
def test_bad_input(kw, field):
    with pytest.raises(SetupError) as err:
        sym.SymmetricRandom().propose(1, np.random.default_rng(0), GenerationContext(**kw))
    assert err.value.field == field
    with pytest.raises(SetupError):
        sym.SymmetricRandom(max_attempts=0)


def test_group_weight_is_the_point_group_order():
    # P1 (1), P2/m (2/m: 4), Fm-3m (m-3m: 48, 4 lattice points), P6_3/mmc (6/mmm: 24),
    # R-3m (-3m: 12, 3 lattice points on hexagonal axes), Fd-3m (48)
    assert [sym.group_weight(g) for g in (1, 10, 225, 194, 166, 227)] == [1, 4, 48, 24, 12, 48]


def _total_dof(c: Candidate) -> int:
    data = space_group(c.spacegroup)
    return sum(data.positions[w.index].dof for w in c.wyckoffs)


def test_point_group_weights_draw_groups_by_their_order():
    ctx = GenerationContext(composition={"Cr": 1, "N": 1})
    rng = np.random.default_rng(3)
    uniform = sym.SymmetricRandom().propose(300, rng, ctx)
    weighted = sym.SymmetricRandom(group_weights="point_group").propose(300, rng, ctx)
    order_u = np.mean([sym.group_weight(c.spacegroup) for c in uniform])
    order_w = np.mean([sym.group_weight(c.spacegroup) for c in weighted])
    # the groups that hold CrN in 2 atoms average an order of about 10; weighted by the order,
    # the draw averages about 23 (extra-symmetry rejections take some of the high ones back)
    assert order_w > 1.7 * order_u
    assert all(_spglib_number(c) == c.spacegroup for c in weighted[:50])
    # before any rejection, a group is drawn in proportion to its point group's order: counted
    # over 20,000 draws, each group's frequency is within 5 standard errors of its weight
    plan = sym._Plan(sym.SymmetricRandom(group_weights="point_group"), ctx)
    (_, groups), = plan.choices
    drawn = [plan.draw_group(rng, "point_group")[1] for _ in range(20_000)]
    orders = np.array([sym.group_weight(g) for g in groups], dtype=float)
    p = orders / orders.sum()
    freq = np.array([drawn.count(g) for g in groups]) / len(drawn)
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / len(drawn)) + 1e-12)
    low = int(np.argmin(orders))
    assert freq[groups.index(221)] > 0.5 * orders.max() / orders[low] * freq[low]  # m-3m against the lowest


def test_special_draws_the_fewest_free_coordinates():
    ctx = GenerationContext(composition={"Dy": 1, "Zn": 2}, formula_units=[2])
    rng = np.random.default_rng(5)
    special = sym.SymmetricRandom(special=1.0).propose(100, rng, ctx)
    plain = sym.SymmetricRandom().propose(100, rng, ctx)

    def fewest(c: Candidate) -> int:
        counts = {int(z): int((c.numbers == z).sum()) * (sym.centring_multiplicity(c.spacegroup)
                                                          if c.origin.get("cell") == "primitive" else 1)
                  for z in (66, 30)}
        data = space_group(c.spacegroup)
        return min(sum(data.positions[i].dof for _, i in a)
                   for a in feasible_assignments(c.spacegroup, counts))

    on_fewest = np.mean([_total_dof(c) == fewest(c) for c in special])
    # a group's fewest-coordinate assignments are left once one comes out with a higher
    # symmetry, so not every structure has them; still far more than without the option
    # (measured: 0.45 against 0.28)
    assert on_fewest > np.mean([_total_dof(c) == fewest(c) for c in plain]) + 0.1
    assert np.mean([_total_dof(c) for c in special]) < np.mean([_total_dof(c) for c in plain])
    # and the groups are drawn as before: the fallback keeps the draw off the low-symmetry groups
    orders = [np.mean([sym.group_weight(c.spacegroup) for c in cs]) for cs in (special, plain)]
    assert orders[0] > 0.8 * orders[1]


@pytest.mark.parametrize(("kw", "field"), [(dict(group_weights="icsd"), "group_weights"),
                                           (dict(special=1.5), "special"), (dict(special="yes"), "special"),
                                           (dict(group_weights="pdf"), "group_weights"),
                                           (dict(wyckoff_weights="point_group"), "wyckoff_weights")])
def test_bad_prior_options(kw, field):
    with pytest.raises(SetupError) as err:
        sym.SymmetricRandom(**kw)
    assert err.value.field == field


def test_mp_prior_draws_groups_and_wyckoff_sets_as_often_as_known_crystals_have_them():
    """``group_weights="mp"``: a group's weight is its count among PyXtal's Materials Project
    statistics for that conventional-cell size, plus ``MP_PSEUDOCOUNT`` (checked against the CSV
    read with pandas); ``wyckoff_weights="mp"``: the known Wyckoff sets of a group are drawn in
    proportion to their counts (AB in Fm-3m: only 4a + 4b, both ways round), and in 400 draws
    for TiO2 x 4 the prior's most frequent group is drawn more often than under the uniform
    draw."""
    from collections import Counter
    from importlib.resources import files

    import pandas as pd

    df = pd.read_csv(files("pyxtal").joinpath("database/spg_num_wps_mp.csv"))
    counts = df.groupby(["spg", "n_atoms"])["count"].sum()
    ctx = GenerationContext(composition={"Ti": 1, "O": 2}, formula_units=[4])
    plan = sym._Plan(sym.SymmetricRandom(group_weights="mp"), ctx)
    (_, groups), w = plan.choices[0], plan.weights[0]
    ref = np.array([counts.get((sg, 12 * sym.centring_multiplicity(sg)), 0) + sym.MP_PSEUDOCOUNT
                    for sg in groups])
    np.testing.assert_allclose(w, ref / ref.sum(), rtol=1e-12)
    found, p = sym.mp_assignments(225, ((11, 4), (17, 4)))
    assert sorted(found) == [((11, 10), (17, 11)), ((11, 11), (17, 10))] and np.allclose(p, 0.5)
    top = groups[int(np.argmax(w))]
    drawn = {gw: Counter(c.spacegroup for c in sym.SymmetricRandom(group_weights=gw).propose(
        400, np.random.default_rng(3), ctx)) for gw in ("uniform", "mp")}
    assert drawn["mp"][top] > 2 * drawn["uniform"][top]


@pytest.mark.parametrize(("name", "kw", "field"), [
    ("random", dict(oversample=0), "oversample"), ("random", dict(oversample=1.5), "oversample"),
    ("random", dict(oversample=True), "oversample"), ("pso", dict(oversample=0), "oversample"),
    # a generator's own draws are prescreened (the swarm's: its own option), in random_options
    # the option would do nothing
    ("pso", dict(random_options={"oversample": 2}), "random_options"),
    ("ga", dict(random_options={"oversample": 2}), "random_options")])
def test_bad_oversample(name, kw, field):
    with pytest.raises(SetupError) as err:
        get_generator(name, **kw)
    assert err.value.field == field


# --- symmetry-reduced vectors -----------------------------------------------------------------


def test_vector_round_trip_is_exact():
    rng = np.random.default_rng(4)
    ctx = GenerationContext(composition={"Mg": 1, "Si": 1, "O": 3}, formula_units=[1, 2, 4])
    cands = sym.SymmetricRandom(cell="conventional").propose(40, rng, ctx)
    seen = set()
    for c in cands:
        v = sym.to_vector(c)
        assert len(v) == sym.vector_size(c) == len(sym.vector_labels(c))
        back = sym.from_vector(c, v)
        assert np.array_equal(back.frac, c.frac) and np.array_equal(back.lattice, c.lattice)
        assert np.array_equal(back.numbers, c.numbers) and back.spacegroup == c.spacegroup
        assert all(np.array_equal(a.free, b.free) for a, b in zip(back.wyckoffs, c.wyckoffs))
        moved = v + rng.normal(0.0, 0.05, len(v))
        assert np.array_equal(sym.to_vector(sym.from_vector(c, moved)), moved)
        seen.add(space_group(c.spacegroup).lattice_type)
        # a moved particle keeps (at least) its group
        assert _spglib_number(sym.from_vector(c, v + rng.normal(0.0, 0.005, len(v)))) == c.spacegroup
    assert len(seen) >= 4


def test_primitive_cells_of_centred_groups():
    """Formula units count the primitive cell: 2-atom NaCl in Fm-3m is rocksalt; every centred
    candidate is a primitive cell of its group whose vector round trip holds to rounding and
    which projects onto its own template (the centring image nearest each generating point)."""
    from lamcsp.generators.swarm import project_to_template
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(11)
    nacl = sym.SymmetricRandom(spacegroups=[225]).propose(
        3, rng, GenerationContext(composition={"Na": 1, "Cl": 1}))
    rocksalt = Structure.from_spacegroup(225, Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    for c in nacl:
        assert c.n_atoms == 2 and c.origin["cell"] == "primitive" and _spglib_number(c) == 225
        assert StructureMatcher().fit(c.to_structure(), rocksalt)
    centred = 0
    for comp, fus in [({"Mg": 1, "Si": 1, "O": 3}, [1, 2]), ({"Pu": 1, "Al": 2}, [2]), ({"Si": 1}, [2, 4])]:
        for c in sym.SymmetricRandom().propose(60, rng, GenerationContext(composition=comp, formula_units=fus)):
            k = len(space_group(c.spacegroup).centring)
            assert c.n_atoms == sum(comp.values()) * c.origin["formula_units"]
            assert _spglib_number(c) == c.spacegroup
            if k == 1:
                assert "cell" not in c.origin
                continue
            centred += 1
            assert c.origin["cell"] == "primitive"
            assert abs(np.linalg.det(sym.conventional_lattice(c))) == pytest.approx(k * c.volume, rel=1e-12)
            back = sym.from_vector(c, sym.to_vector(c))
            assert np.allclose(back.frac, c.frac, atol=1e-12) and np.allclose(back.lattice, c.lattice, atol=1e-12)
            conv = sym.from_vector(c, sym.to_vector(c), reduce=False)
            assert conv.n_atoms == k * c.n_atoms and _spglib_number(conv) == c.spacegroup
            same = project_to_template(c, Candidate(c.numbers, c.frac, c.lattice))
            assert same is not None and np.allclose(same.frac, c.frac, atol=1e-9)
    assert centred >= 30


def test_lattice_params_round_trip_and_rotation():
    rng = np.random.default_rng(6)
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    for code, name in enumerate(LATTICE_TYPES):
        p = sym._draw_params(rng, code, 100.0)
        m = sym.lattice_from_params(name, p)
        assert np.array_equal(sym.lattice_params(name, m), p)
        assert abs(np.linalg.det(m)) == pytest.approx(100.0)
        assert np.allclose(sym.lattice_params(name, m @ rot.T), p, atol=1e-10)
    with pytest.raises(SetupError):
        sym.lattice_from_params("cubic", [1.0, 2.0])


def test_from_vector_rejects_bad_input():
    c = sym.SymmetricRandom().propose(1, np.random.default_rng(0), GenerationContext(composition={"Si": 4}))[0]
    with pytest.raises(SetupError):
        sym.from_vector(c, np.zeros(sym.vector_size(c) + 1))
    with pytest.raises(SetupError):
        sym.to_vector(Candidate(c.numbers, c.frac, c.lattice))


# --- CLI --------------------------------------------------------------------------------------


def test_cli_generate(tmp_path, capsys):
    from ase.io import read

    from lamcsp.cli import main

    a, b = tmp_path / "a.extxyz", tmp_path / "b.extxyz"
    args = ["generate", "--composition", "MgSiO3", "--formula-units", "1-2,4", "--spacegroups", "2,10-20,62",
            "-n", "6", "--seed", "9"]
    assert main([*args, "-o", str(a)]) == 0
    assert main([*args, "-o", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    frames = read(str(a), index=":")
    assert len(frames) == 6
    for atoms in frames:
        sg = atoms.info["spacegroup"]
        assert sg in [2, *range(10, 21), 62]
        assert atoms.info["generator"] == "random"
        fu = atoms.info["formula_units"]
        zs, counts = np.unique(atoms.numbers, return_counts=True)
        assert dict(zip(zs.tolist(), counts.tolist())) == {12: fu, 14: fu, 8: 3 * fu}
        data = spglib.get_symmetry_dataset((atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers),
                                           symprec=0.01)
        assert data.number == sg


def test_cli_generate_errors(tmp_path, capsys):
    from lamcsp.cli import main

    out = str(tmp_path / "x.extxyz")
    assert main(["generate", "--composition", "Qq2", "-o", out]) == 2
    assert "--composition" in capsys.readouterr().err
    assert main(["generate", "--composition", "Si", "--spacegroups", "14", "-o", out]) == 2
    assert "--spacegroups" in capsys.readouterr().err
    assert main(["generate", "--composition", "Si", "--spacegroups", "5-300", "-o", out]) == 2
    assert "--spacegroups" in capsys.readouterr().err
