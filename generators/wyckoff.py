"""Wyckoff positions of the 230 space groups, compiled once per group for fast placement, and
the choice of Wyckoff orbits that hold a composition.

The data come from PyXtal's tables (:class:`pyxtal.symmetry.Group`, International Tables in the
conventional setting: monoclinic groups b-unique, the seven R groups on hexagonal axes), not
retyped here. :func:`space_group` turns one group into plain NumPy arrays, cached:

* every Wyckoff position's affine operations ``ops (m, 3, 4)`` (``x' = ops[k, :, :3] @ x +
  ops[k, :, 3]``), ``m`` its multiplicity in the conventional cell;
* ``ops[0]`` is the projector onto the position: applied to any point it gives a generating
  point of the orbit (``(x, 2x, 1/4)`` for ``6h`` of P6_3/mmc); applying all ``ops`` to the
  generating point gives the orbit. PyXtal's projectors are idempotent and every free
  coordinate ``c`` has ``ops[0, c, c] == 1`` with nothing else on that row, so the free
  coordinates of a generating point are read directly as ``point[free_axes]``.

Feasibility (:func:`can_hold`): a composition ``{Z: atoms in the cell}`` fits a group when each
species' count is a sum of orbit multiplicities, where positions with free coordinates may be
used any number of times (with different coordinates) but positions without (``dof == 0``) at
most once in the whole structure. That is decided exactly by a small memoised search: positions
with free coordinates form an unbounded knapsack per species; fixed positions are grouped by
multiplicity (interchangeable for counting) and handed out species by species.

Choosing an assignment (:func:`random_assignment`) follows PyXtal's ``choose_wyckoff`` but never
walks into a dead end: species are filled in the given order; at each step the orbits that still
leave a completion are found with the feasibility search; with probability 1/2 one is drawn
among those of the highest multiplicity (the general position whenever it fits), otherwise
uniformly among all of them. The greedy half keeps most atoms on positions with free
coordinates (structures rarely end up with more symmetry than requested); the uniform half
still visits special positions, as real crystals do.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping

import numpy as np

from lamcsp.errors import SetupError

#: PyXtal's lattice types, in order of increasing symmetry; trigonal groups (R groups
#: included) use hexagonal axes, as hexagonal ones do.
LATTICE_TYPES = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")


@dataclasses.dataclass(frozen=True, eq=False)
class WyckoffPosition:
    """One Wyckoff position of a space group, compiled.

    Attributes:
        index: position in PyXtal's list for the group (0 is the general position).
        letter: Wyckoff letter.
        multiplicity: orbit size in the conventional cell.
        dof: number of free coordinates.
        ops: affine operations ``(multiplicity, 3, 4)``; ``ops[0]`` is the projector.
        free_axes: the free coordinates (columns of the projector that are not zero),
            ``len(free_axes) == dof``.
    """

    index: int
    letter: str
    multiplicity: int
    dof: int
    ops: np.ndarray
    free_axes: tuple[int, ...]

    @property
    def label(self) -> str:
        """Multiplicity and letter, e.g. ``"4a"``."""
        return f"{self.multiplicity}{self.letter}"

    def generating_point(self, xyz: np.ndarray) -> np.ndarray:
        """The projection of fractional ``xyz (3,)`` onto the position, ``(3,)`` (not wrapped)."""
        op = self.ops[0]
        return op[:, :3] @ np.asarray(xyz, dtype=float) + op[:, 3]


@dataclasses.dataclass(frozen=True, eq=False)
class SpaceGroupData:
    """A space group's Wyckoff positions as arrays.

    Attributes:
        number: international number (1-230).
        symbol: Hermann-Mauguin symbol.
        lattice_type: one of :data:`LATTICE_TYPES`.
        positions: Wyckoff positions, general first (PyXtal's order).
        centring: lattice-centring translations ``(k, 3)`` (the zero vector first).
        free_mults: multiplicities of positions with free coordinates (usable any number
            of times), sorted.
        fixed_mults: the distinct multiplicities of positions without free coordinates.
        fixed_groups: for each of ``fixed_mults``, the indices of those positions.
    """

    number: int
    symbol: str
    lattice_type: str
    positions: tuple[WyckoffPosition, ...]
    centring: np.ndarray
    free_mults: tuple[int, ...]
    fixed_mults: tuple[int, ...]
    fixed_groups: tuple[tuple[int, ...], ...]

    @property
    def general_multiplicity(self) -> int:
        return self.positions[0].multiplicity

    @property
    def min_multiplicity(self) -> int:
        return min(p.multiplicity for p in self.positions)


def _check_sg(sg: int, field: str = "spacegroups") -> int:
    if isinstance(sg, bool) or not isinstance(sg, (int, np.integer)) or not 1 <= int(sg) <= 230:
        raise SetupError(field, f"space groups are integers 1-230, got {sg!r}")
    return int(sg)


@functools.cache
def space_group(sg: int) -> SpaceGroupData:
    """The compiled Wyckoff data of space group ``sg`` (cached; ~3 ms on first use).

    Raises:
        SetupError: ``sg`` is not 1-230.
    """
    sg = _check_sg(sg)
    from pyxtal.symmetry import Group

    group = Group(sg)
    positions = []
    for i, wp in enumerate(group.Wyckoff_positions):
        ops = np.array([op.affine_matrix[:3, :] for op in wp.ops], dtype=np.float64)
        ops.setflags(write=False)
        proj = ops[0, :, :3]
        free_axes = tuple(int(c) for c in range(3) if np.any(proj[:, c] != 0.0))
        dof = int(wp.get_dof())
        # what reading free coordinates as point[free_axes] relies on (true of every group in
        # PyXtal's tables; guard a change of them)
        rows_ok = all(np.array_equal(ops[0, c], np.eye(3, 4)[c]) for c in free_axes)
        if len(free_axes) != dof or not rows_ok:
            raise RuntimeError(f"space group {sg} position {wp.letter}: unexpected projector {ops[0]}")
        positions.append(WyckoffPosition(i, str(wp.letter), int(wp.multiplicity), dof, ops, free_axes))
    gen = positions[0].ops
    is_translation = np.all(np.abs(gen[:, :, :3] - np.eye(3)) < 1e-12, axis=(1, 2))
    centring = np.mod(gen[is_translation, :, 3], 1.0)
    centring.setflags(write=False)
    free_mults = tuple(sorted({p.multiplicity for p in positions if p.dof > 0}))
    fixed_mults = tuple(sorted({p.multiplicity for p in positions if p.dof == 0}))
    fixed_groups = tuple(
        tuple(p.index for p in positions if p.dof == 0 and p.multiplicity == m) for m in fixed_mults
    )
    return SpaceGroupData(
        number=sg, symbol=str(group.symbol), lattice_type=str(group.lattice_type),
        positions=tuple(positions), centring=centring, free_mults=free_mults,
        fixed_mults=fixed_mults, fixed_groups=fixed_groups,
    )


def lattice_type(sg: int) -> str:
    """The lattice type of space group ``sg`` (one of :data:`LATTICE_TYPES`)."""
    return space_group(sg).lattice_type


def lattice_type_of(sg: int) -> str:
    """Lattice type from the group number alone (no table load)."""
    sg = _check_sg(sg)
    for last, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"),
                       (167, "trigonal"), (194, "hexagonal"), (230, "cubic")):
        if sg <= last:
            return name
    raise AssertionError("unreachable")


# --- feasibility ------------------------------------------------------------------------------


@functools.cache
def _representable(free_mults: tuple[int, ...], n: int) -> bool:
    """Whether ``n`` is a sum of ``free_mults`` (repetition allowed)."""
    if n == 0:
        return True
    if not free_mults:
        return False
    ok = np.zeros(n + 1, dtype=bool)
    ok[0] = True
    for v in range(1, n + 1):
        for m in free_mults:
            if m <= v and ok[v - m]:
                ok[v] = True
                break
    return bool(ok[n])


def _fixed_choices(mults: tuple[int, ...], avail: tuple[int, ...], n: int):
    """Vectors ``k <= avail`` with ``sum(k * mults) <= n``; yields ``(k, atoms used)``."""

    def rec(j: int, left: int, acc: tuple[int, ...]):
        if j == len(mults):
            yield acc, n - left
            return
        m = mults[j]
        for k in range(min(avail[j], left // m) + 1):
            yield from rec(j + 1, left - k * m, acc + (k,))

    yield from rec(0, n, ())


@functools.lru_cache(maxsize=500_000)
def _feasible(sg: int, ns: tuple[int, ...], avail: tuple[int, ...]) -> bool:
    """Whether species counts ``ns`` (in order) can be filled with ``avail[j]`` unused fixed
    positions of multiplicity ``fixed_mults[j]`` left."""
    if not ns:
        return True
    data = space_group(sg)
    n, rest = ns[0], ns[1:]
    for k, used in _fixed_choices(data.fixed_mults, avail, n):
        if _representable(data.free_mults, n - used):
            left = tuple(a - b for a, b in zip(avail, k))
            if _feasible(sg, rest, left):
                return True
    return False


def _counts_tuple(counts: Mapping[int, int] | Iterable[int]) -> tuple[int, ...]:
    values = list(counts.values()) if isinstance(counts, Mapping) else list(counts)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise SetupError("composition", f"atom counts must be non-negative integers, got {v!r}")
    return tuple(int(v) for v in values)


def can_hold(sg: int, counts: Mapping[int, int] | Iterable[int]) -> bool:
    """Whether space group ``sg`` has Wyckoff orbits holding ``counts`` (atoms per species in
    the conventional cell, ``{Z: n}`` or just the numbers). Exact, cached by ``(sg, counts)``."""
    sg = _check_sg(sg)
    ns = tuple(sorted((n for n in _counts_tuple(counts) if n > 0), reverse=True))
    return _can_hold(sg, ns)


@functools.lru_cache(maxsize=200_000)
def _can_hold(sg: int, ns: tuple[int, ...]) -> bool:
    data = space_group(sg)
    # every count must at least be reachable on its own
    if any(n % _gcd_all(sg) for n in ns):
        return False
    return _feasible(sg, ns, tuple(len(g) for g in data.fixed_groups))


@functools.cache
def _gcd_all(sg: int) -> int:
    return int(np.gcd.reduce([p.multiplicity for p in space_group(sg).positions]))


def feasible_assignments(
    sg: int, counts: Mapping[int, int], limit: int = 10_000
) -> list[tuple[tuple[int, int], ...]]:
    """All Wyckoff assignments of ``counts`` (``{Z: atoms in the cell}``) in group ``sg``.

    An assignment is a tuple of ``(Z, position index)``, species in the order of ``counts``,
    indices non-decreasing within a species (each multiset once).

    Args:
        sg: space group number.
        counts: atoms per species in the conventional cell.
        limit: stop after this many (the number can grow combinatorially).

    Returns:
        Up to ``limit`` assignments; empty when the group cannot hold the composition.
    """
    sg = _check_sg(sg)
    _counts_tuple(counts)
    data = space_group(sg)
    species = [(int(z), int(n)) for z, n in counts.items() if n > 0]
    out: list[tuple[tuple[int, int], ...]] = []
    group_of = {i: j for j, g in enumerate(data.fixed_groups) for i in g}

    def rec(s: int, left: int, start: int, used: frozenset[int], avail: tuple[int, ...], acc: list):
        if len(out) >= limit:
            return
        if s == len(species):
            out.append(tuple(acc))
            return
        z = species[s][0]
        if left == 0:
            nxt = species[s + 1][1] if s + 1 < len(species) else 0
            rec(s + 1, nxt, 0, used, avail, acc)
            return
        for p in data.positions[start:]:
            if p.multiplicity > left or (p.dof == 0 and p.index in used):
                continue
            av = avail
            us = used
            if p.dof == 0:
                j = group_of[p.index]
                av = avail[:j] + (avail[j] - 1,) + avail[j + 1:]
                us = used | {p.index}
            rest = tuple(n for _, n in species[s + 1:])
            if not _feasible(sg, (left - p.multiplicity,) + rest, av):
                continue
            acc.append((z, p.index))
            rec(s, left - p.multiplicity, p.index, us, av, acc)
            acc.pop()

    if species:
        rec(0, species[0][1], 0, frozenset(), tuple(len(g) for g in data.fixed_groups), [])
    return out


def random_assignment(
    sg: int, counts: Mapping[int, int], rng: np.random.Generator
) -> list[tuple[int, int]]:
    """A random Wyckoff assignment of ``counts`` (``{Z: atoms in the cell}``) in group ``sg``.

    Species are filled in the order of ``counts``; each orbit is drawn among those that leave
    a completion (never a dead end): with probability 1/2 among the feasible positions of the
    highest multiplicity, otherwise uniformly among all feasible positions.

    Returns:
        ``[(Z, position index), ...]`` grouped by species in the order of ``counts``.

    Raises:
        SetupError: the group cannot hold the composition (check :func:`can_hold` first).
    """
    sg = _check_sg(sg)
    species = [(int(z), int(n)) for z, n in counts.items() if n > 0]
    if not can_hold(sg, [n for _, n in species]):
        raise SetupError("spacegroups", f"space group {sg} cannot hold {dict(species)}")
    data = space_group(sg)
    group_of = {i: j for j, g in enumerate(data.fixed_groups) for i in g}
    avail = tuple(len(g) for g in data.fixed_groups)
    used: set[int] = set()
    out: list[tuple[int, int]] = []
    for s, (z, left) in enumerate(species):
        rest = tuple(n for _, n in species[s + 1:])
        while left > 0:
            options: list[tuple[WyckoffPosition, tuple[int, ...]]] = []
            for p in data.positions:
                if p.multiplicity > left or (p.dof == 0 and p.index in used):
                    continue
                av = avail
                if p.dof == 0:
                    j = group_of[p.index]
                    av = avail[:j] + (avail[j] - 1,) + avail[j + 1:]
                if _feasible(sg, (left - p.multiplicity,) + rest, av):
                    options.append((p, av))
            if rng.random() < 0.5:
                top = max(p.multiplicity for p, _ in options)
                options = [o for o in options if o[0].multiplicity == top]
            p, avail = options[int(rng.integers(len(options)))]
            if p.dof == 0:
                used.add(p.index)
            out.append((z, p.index))
            left -= p.multiplicity
    return out
