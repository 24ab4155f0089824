"""What dedupe keeps of a structure, as plain data: :class:`Fingerprinted` entries (the
structure, its fingerprint, its enthalpy, and its reduced cell once computed) and the
:class:`StoredStructures` a unit has kept, grouped by reduced composition. Both go into
checkpoints and across MPI ranks (``to_dict`` / ``from_dict``); :mod:`lamcsp.generators.dedupe`
makes and compares them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lamcsp.errors import SetupError

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["CompositionKey", "Fingerprinted", "StoredStructures", "composition_key"]

CompositionKey = tuple[tuple[int, int], ...]


def composition_key(numbers: Sequence[int]) -> CompositionKey:
    """Reduced composition as sorted ``((Z, count / gcd), ...)``: equal for a cell and its supercells."""
    z, n = np.unique(np.asarray(numbers, dtype=np.int64), return_counts=True)
    g = math.gcd(*(int(x) for x in n)) if len(n) else 1
    return tuple((int(a), int(b) // g) for a, b in zip(z, n))


@dataclasses.dataclass
class Fingerprinted:
    """One structure as dedupe sees it (plain data).

    Attributes:
        numbers: atomic numbers ``(n,)``.
        frac: fractional coordinates ``(n, 3)``.
        lattice: lattice vectors as rows ``(3, 3)``, Å.
        fingerprint: ``(d,)``, computed over the structure's own elements.
        energy: enthalpy per atom, eV, or ``None`` if unknown.
    """

    numbers: np.ndarray
    frac: np.ndarray
    lattice: np.ndarray
    fingerprint: np.ndarray
    energy: float | None = None
    _structure: Structure | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _reduced: dict[bool, Structure] = dataclasses.field(default_factory=dict, init=False, repr=False,
                                                        compare=False)
    _cells: dict[bool, tuple[np.ndarray, np.ndarray, np.ndarray]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.frac = np.asarray(self.frac, dtype=float).reshape(-1, 3)
        self.lattice = np.asarray(self.lattice, dtype=float).reshape(3, 3)
        self.fingerprint = np.asarray(self.fingerprint, dtype=float).reshape(-1)
        self.energy = None if self.energy is None else float(self.energy)

    @property
    def key(self) -> CompositionKey:
        return composition_key(self.numbers.tolist())

    def structure(self) -> Structure:
        """The pymatgen ``Structure`` (built once, on first use)."""
        if self._structure is None:
            from pymatgen.core import Lattice, Structure

            self._structure = Structure(Lattice(self.lattice), self.numbers.tolist(), self.frac)
        return self._structure

    def reduced(self, primitive: bool = True) -> Structure:
        """The structure as ``StructureMatcher`` reduces it before every comparison (Niggli cell,
        then the primitive cell when ``primitive``), computed once: dedupe compares an entry
        with many others, and the reduction was most of each ``fit``."""
        if primitive not in self._reduced:
            s = self.structure().get_reduced_structure(reduction_algo="niggli")
            self._reduced[primitive] = s.get_primitive_structure() if primitive else s
        return self._reduced[primitive]

    def reduced_cell(self, primitive: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`reduced` as plain arrays ``(lattice (3, 3), numbers (m,), frac (m, 3))``, made
        once (pymatgen builds ``frac_coords`` from the sites on every call)."""
        if primitive not in self._cells:
            r = self.reduced(primitive)
            self._cells[primitive] = (r.lattice.matrix, np.asarray(r.atomic_numbers, dtype=np.int64),
                                      r.frac_coords)
        return self._cells[primitive]

    def has_reduced(self, primitive: bool = True) -> bool:
        """Whether :meth:`reduced` is computed (or was given, :meth:`give_reduced_cell`)."""
        return primitive in self._reduced

    def give_reduced_cell(self, lattice: np.ndarray, numbers: np.ndarray, frac: np.ndarray,
                          primitive: bool = True) -> None:
        """Take :meth:`reduced` as computed elsewhere (:meth:`reduced_cell` of a copy: a
        worker reduced it)."""
        from pymatgen.core import Lattice, Structure

        self._cells[primitive] = (np.asarray(lattice, dtype=float), np.asarray(numbers, dtype=np.int64),
                                  np.asarray(frac, dtype=float))
        self._reduced[primitive] = Structure(Lattice(np.asarray(lattice, dtype=float)),
                                             np.asarray(numbers).tolist(), np.asarray(frac, dtype=float))

    @classmethod
    def from_reduced_cell(cls, lattice: np.ndarray, numbers: np.ndarray, frac: np.ndarray,
                          primitive: bool = True) -> Fingerprinted:
        """An entry that is its own reduced cell (from :meth:`reduced_cell`; no fingerprint):
        what a worker needs to answer :meth:`Deduper.matches`."""
        entry = cls(numbers, frac, lattice, np.zeros(0))
        entry.give_reduced_cell(lattice, numbers, frac, primitive)
        return entry

    def to_dict(self) -> dict[str, Any]:
        return {
            "numbers": self.numbers.tolist(),
            "frac": self.frac.tolist(),
            "lattice": self.lattice.tolist(),
            "fingerprint": self.fingerprint.tolist(),
            "energy": self.energy,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprinted:
        return cls(np.asarray(d["numbers"]), np.asarray(d["frac"]), np.asarray(d["lattice"]),
                   np.asarray(d["fingerprint"]), d.get("energy"))


class StoredStructures:
    """What is already stored, with fingerprints, grouped by reduced composition.

    ``append``/``extend`` add entries without recomputing any fingerprint; the stacked
    fingerprint matrix of a composition is rebuilt lazily after it grew.

    Args:
        signature: the fingerprint settings the entries were made with
            (:attr:`Deduper.signature`); :meth:`Deduper.against` refuses a store made with
            other settings. ``None``: not checked.
        entries: initial entries.
    """

    def __init__(self, signature: dict[str, Any] | None = None, entries: Sequence[Fingerprinted] = ()):
        self.signature = signature
        self.entries: list[Fingerprinted] = []
        self._groups: dict[CompositionKey, list[int]] = {}
        self._stacked: dict[CompositionKey, np.ndarray] = {}
        self.extend(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, entry: Fingerprinted) -> int:
        """Add one entry; returns its index."""
        if not isinstance(entry, Fingerprinted):
            raise SetupError(
                "stored", f"entries must be Fingerprinted (from Deduper.describe), got {type(entry).__name__}"
            )
        self.entries.append(entry)
        self._groups.setdefault(entry.key, []).append(len(self.entries) - 1)
        return len(self.entries) - 1

    def extend(self, entries: Sequence[Fingerprinted]) -> None:
        for e in entries:
            self.append(e)

    def replace(self, index: int, entry: Fingerprinted) -> None:
        """Put ``entry`` in the place of entry ``index`` (same composition: a lower-enthalpy
        copy of the same structure becomes its representative)."""
        if entry.key != self.entries[index].key:
            raise SetupError("stored", "a replacement must have the composition of the entry it replaces")
        self.entries[index] = entry
        self._stacked.pop(entry.key, None)

    def group(self, key: CompositionKey) -> tuple[np.ndarray, np.ndarray]:
        """Indices ``(k,)`` and stacked fingerprints ``(k, d)`` of the entries of one composition."""
        idx = self._groups.get(key, [])
        f = self._stacked.get(key)
        if f is None or len(f) != len(idx):
            f = np.stack([self.entries[i].fingerprint for i in idx]) if idx else np.zeros((0, 0))
            self._stacked[key] = f
        return np.asarray(idx, dtype=np.int64), f

    def to_dict(self) -> dict[str, Any]:
        return {"signature": self.signature, "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoredStructures:
        return cls(d.get("signature"), [Fingerprinted.from_dict(e) for e in d.get("entries", [])])
