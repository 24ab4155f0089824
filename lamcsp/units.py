"""A campaign's search units, and the RNG streams of their generators (pure: no files, no MPI).

A campaign is split into *search units*, one per (composition, pressure): a fixed composition
gives one unit per pressure; a variable composition gives one unit per reduced composition in
its ranges (all cells of that composition up to ``system.max_atoms``; pure-element end members
are always searched, unless a reference structure file is given for that element) and pressure.
Each unit has its own generators (named in the campaign, sharing ``population`` by their
``share``), its own relaxed population and its own deduplication.

The RNG of generator *i* of unit *u* in generation *g* is derived from the campaign seed as
``SeedSequence(seed, spawn_key=(u, i, g))`` (:func:`unit_rng`), so no RNG state needs saving. A
generator whose candidates are independent draws (a :class:`~lamcsp.generators.base.Sampler`)
gets one stream per candidate instead, ``SeedSequence(seed, spawn_key=(u, i, g, k))``
(:func:`candidate_rng`), so that any worker can draw candidate *k* and the candidates do not
depend on how many ranks draw them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lamcsp.campaign import Campaign

__all__ = ["SearchUnit", "candidate_rng", "generator_counts", "search_units", "unit_rng",
           "variable_compositions"]


@dataclasses.dataclass(frozen=True)
class SearchUnit:
    """One (composition, pressure) of a campaign.

    Attributes:
        index: position in the campaign's unit list (part of row keys and RNG spawn keys).
        composition: atoms per formula unit (reduced for variable compositions).
        formula_units: allowed formula units per cell.
        pressure_gpa: the pressure, GPa; ``pressure_index`` its position in the campaign.
    """

    index: int
    composition: dict[str, int]
    formula_units: tuple[int, ...]
    pressure_gpa: float
    pressure_index: int

    @property
    def reduced_formula(self) -> str:
        from lamcsp.io import reduced_formula

        return reduced_formula(self.composition)

    @property
    def label(self) -> str:
        return f"{self.reduced_formula} @ {self.pressure_gpa:g} GPa"


def variable_compositions(
    variable: dict[str, tuple[int, int]], max_atoms: int, references: Sequence[str] = ()
) -> list[tuple[dict[str, int], tuple[int, ...]]]:
    """Every reduced composition of a variable-composition system with its formula units.

    Cells hold ``lo..hi`` atoms of each element and ``1..max_atoms`` in all. Pure-element end
    members (needed for formation enthalpies) are added with ``1..min(max_atoms, max(hi, 4))``
    atoms when the ranges exclude them, unless ``references`` names the element.
    """
    elements = list(variable)
    groups: dict[tuple[int, ...], set[int]] = {}
    for counts in itertools.product(*(range(lo, hi + 1) for lo, hi in variable.values())):
        total = sum(counts)
        if total == 0 or total > max_atoms:
            continue
        g = math.gcd(*counts)
        groups.setdefault(tuple(c // g for c in counts), set()).add(g)
    for i, el in enumerate(elements):
        pure = tuple(int(k == i) for k in range(len(elements)))
        if pure not in groups and el not in references:
            top = min(max_atoms, max(variable[el][1], 4))
            groups[pure] = set(range(1, top + 1))
    out = []
    for red, fus in groups.items():
        comp = {el: n for el, n in zip(elements, red) if n}
        out.append((comp, tuple(sorted(fus))))
    out.sort(key=lambda cf: (len(cf[0]), tuple(-cf[0].get(el, 0) for el in elements)))
    return out


def search_units(campaign: Campaign) -> list[SearchUnit]:
    """The campaign's units: every composition at every pressure (pressure-major order)."""
    s = campaign.system
    if s.composition is not None:
        fus = tuple(f for f in s.formula_units
                    if s.max_atoms is None or f * sum(s.composition.values()) <= s.max_atoms)
        comps = [(dict(s.composition), fus)]
    else:
        assert s.variable is not None and s.max_atoms is not None
        comps = variable_compositions(s.variable, s.max_atoms, list(s.references))
    units = []
    for j, p in enumerate(s.pressures):
        for comp, fus in comps:
            units.append(SearchUnit(len(units), comp, fus, float(p), j))
    return units


def generator_counts(shares: Sequence[float], population: int) -> list[int]:
    """Structures per generator: ``population`` split by ``shares``, largest remainders first."""
    raw = [s * population for s in shares]
    counts = [int(math.floor(x)) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: population - sum(counts)]:
        counts[i] += 1
    return counts


def unit_rng(seed: int, unit: int, generator: int, generation: int) -> np.random.Generator:
    """The RNG of one generator of one unit in one generation (derived from the seed)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(unit, generator, generation)))


def candidate_rng(seed: int, unit: int, stream: int, generation: int, *index: int) -> np.random.Generator:
    """The RNG of one candidate (``index``: its place in the stream, e.g. ``k`` or a top-up's
    round and ``k``) of one stream (a generator's index, or another of the stages' streams) of
    one unit in one generation."""
    key = (unit, stream, generation, *index)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
