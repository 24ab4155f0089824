"""Hull maths, pure: convex hulls of enthalpies at one pressure and the pressures where the lowest
of several enthalpy curves changes.

Nothing here reads files or databases: the inputs are records with ``db_id``, ``formula``,
``reduced_formula``, ``enthalpy`` and ``enthalpy_per_atom`` (:class:`lamcsp.store.Record`, the
typed row record), so the report, the verification and the fine-tune loop compute hulls the
same way (:func:`hull_at`).

At a pressure where every element of the system has a pure-element record the hull is
pymatgen's :class:`~pymatgen.analysis.phase_diagram.PhaseDiagram` (``kind="phase_diagram"``);
otherwise each structure is compared with the lowest one of its reduced formula
(``kind="lowest_polymorph"``, formation enthalpy ``None``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from pymatgen.analysis.phase_diagram import PhaseDiagram

__all__ = ["HULL_KINDS", "Hull", "HullRecord", "composition_fractions", "hull_at", "transitions"]

HULL_KINDS = ("phase_diagram", "lowest_polymorph")


class HullRecord(Protocol):
    """What a hull needs of a structure (:class:`lamcsp.store.Record` has it)."""

    db_id: int
    formula: str
    reduced_formula: str
    enthalpy: float
    enthalpy_per_atom: float



@dataclasses.dataclass
class Hull:
    """The hull of the eligible rows at one pressure.

    Attributes:
        kind: ``"phase_diagram"`` or ``"lowest_polymorph"``.
        stable: ids of the hull structures, sorted by composition fraction.
        e_above: energy above the hull (or above the lowest polymorph) per row id, eV/atom.
        formation: formation enthalpy per atom per row id, eV/atom (None: lowest_polymorph).
        pd: the phase diagram (None: lowest_polymorph).
    """

    kind: str
    stable: list[int]
    e_above: dict[int, float]
    formation: dict[int, float | None]
    pd: PhaseDiagram | None = None


def _covers(records: Sequence[Any], elements: Sequence[str]) -> bool:
    from pymatgen.core import Composition

    pure = {str(Composition(r.formula).elements[0]) for r in records
            if len(Composition(r.formula).elements) == 1}
    return set(elements) <= pure


def composition_fractions(formula: str, elements: Sequence[str]) -> tuple[float, ...]:
    from pymatgen.core import Composition

    comp = Composition(formula)
    return tuple(comp.get_atomic_fraction(el) for el in elements[1:])


def hull_at(records: Sequence[Any], elements: Sequence[str]) -> Hull:
    """The hull of ``records`` (eligible rows at one pressure) in the system ``elements``."""
    if _covers(records, elements):
        return _phase_diagram(records, elements)
    return _lowest_polymorph(records, elements)


def _phase_diagram(records: Sequence[Any], elements: Sequence[str]) -> Hull:
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition, Element

    entries = [PDEntry(Composition(r.formula), r.enthalpy, name=r.reduced_formula, attribute=r.db_id)
               for r in records]
    pd = PhaseDiagram(entries, elements=[Element(el) for el in elements])
    stable = sorted(cast("list[PDEntry]", list(pd.stable_entries)),
                    key=lambda e: (composition_fractions(e.composition.formula, elements), e.name))
    return Hull(
        kind="phase_diagram",
        stable=[cast(int, e.attribute) for e in stable],
        e_above={r.db_id: cast(float, pd.get_e_above_hull(e)) for r, e in zip(records, entries)},
        formation={r.db_id: float(pd.get_form_energy_per_atom(e)) for r, e in zip(records, entries)},
        pd=pd,
    )


def _lowest_polymorph(records: Sequence[Any], elements: Sequence[str]) -> Hull:
    lowest: dict[str, Any] = {}
    for r in records:
        best = lowest.get(r.reduced_formula)
        if best is None or (r.enthalpy_per_atom, r.db_id) < (best.enthalpy_per_atom, best.db_id):
            lowest[r.reduced_formula] = r
    stable = sorted(lowest.values(),
                    key=lambda r: (composition_fractions(r.formula, elements), r.reduced_formula))
    return Hull(
        kind="lowest_polymorph",
        stable=[r.db_id for r in stable],
        e_above={r.db_id: r.enthalpy_per_atom - lowest[r.reduced_formula].enthalpy_per_atom
                 for r in records},
        formation={r.db_id: None for r in records},
    )


def transitions(curves: dict[int, dict[float, float]]) -> list[tuple[float, int, int, bool]]:
    """Pressures where the lowest of several enthalpy curves changes.

    Args:
        curves: ``{polymorph id: {pressure GPa: enthalpy per atom eV}}`` of one composition.

    Returns:
        ``(pressure, from id, to id, interpolated)`` in order of pressure. Between consecutive
        grid pressures with different lowest polymorphs A and B, the pressure is where the
        straight lines through H_B - H_A meet zero; when A or B lacks one of the two points it
        is the midpoint (``interpolated`` False).
    """
    grid = sorted({p for curve in curves.values() for p in curve})
    lowest = [(p, min((c[p], k) for k, c in curves.items() if p in c)[1]) for p in grid]
    out = []
    for (p0, a), (p1, b) in zip(lowest, lowest[1:]):
        if a == b:
            continue
        ca, cb = curves[a], curves[b]
        if all(p in c for p in (p0, p1) for c in (ca, cb)):
            d0, d1 = cb[p0] - ca[p0], cb[p1] - ca[p1]
            out.append((p0 + d0 / (d0 - d1) * (p1 - p0), a, b, True))
        else:
            out.append((0.5 * (p0 + p1), a, b, False))
    return out
