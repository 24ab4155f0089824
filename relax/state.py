"""The batched state: many periodic structures in one set of tensors.

Every field has a declared scope, given in the dataclass field metadata:

* ``"atom"``: first dimension runs over all atoms of the batch, ``(N, ...)``;
* ``"system"``: first dimension runs over structures, ``(S, ...)``;
* ``"global"``: shared by the whole batch (a Python scalar or a tensor).

Because the scope is declared, :func:`select`, :func:`concatenate` and :func:`split` work
for any subclass (optimizer states add their own per-atom and per-system fields) without
knowing its fields. Cells hold lattice vectors as rows (ASE and pymatgen convention);
positions are Cartesian in Å; pressure is in eV/Å³ inside lamcsp.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Structure

EV_PER_A3_PER_GPA = 1.0 / 160.21766208
"""1 GPa in eV/Å³."""

S = TypeVar("S", bound="BatchedState")


#: field metadata of the three scopes: ``dataclasses.field(metadata=ATOM)`` and so on
ATOM: dict[str, str] = {"scope": "atom"}
SYSTEM: dict[str, str] = {"scope": "system"}
GLOBAL: dict[str, str] = {"scope": "global"}


def atom_field(**kwargs: Any) -> Any:
    """A dataclass field whose first dimension runs over atoms."""
    return dataclasses.field(metadata={"scope": "atom"}, **kwargs)


def system_field(**kwargs: Any) -> Any:
    """A dataclass field whose first dimension runs over systems."""
    return dataclasses.field(metadata={"scope": "system"}, **kwargs)


def global_field(**kwargs: Any) -> Any:
    """A dataclass field shared by the whole batch."""
    return dataclasses.field(metadata={"scope": "global"}, **kwargs)


@dataclasses.dataclass(kw_only=True)
class BatchedState:
    """Positions, species and cells of ``S`` periodic structures with ``N`` atoms in all.

    Attributes:
        positions: Cartesian positions, ``(N, 3)``, Å.
        numbers: atomic numbers, ``(N,)``, int64.
        cell: lattice vectors as rows, ``(S, 3, 3)``, Å.
        pressure: external (scalar) pressure per system, ``(S,)``, eV/Å³.
        system_idx: index of the system each atom belongs to, ``(N,)``, int64, sorted.
    """

    positions: torch.Tensor = dataclasses.field(metadata=ATOM)
    numbers: torch.Tensor = dataclasses.field(metadata=ATOM)
    system_idx: torch.Tensor = dataclasses.field(metadata=ATOM)
    cell: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    pressure: torch.Tensor = dataclasses.field(metadata=SYSTEM)

    # ---- derived quantities -------------------------------------------------------------
    @property
    def n_systems(self) -> int:
        return int(self.cell.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_atoms_per_system(self) -> torch.Tensor:
        """Atoms in each system, ``(S,)``."""
        return torch.bincount(self.system_idx, minlength=self.n_systems)

    @property
    def volume(self) -> torch.Tensor:
        """Cell volumes, ``(S,)``, Å³."""
        return torch.linalg.det(self.cell).abs()

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def dtype(self) -> torch.dtype:
        return self.positions.dtype

    def frac_positions(self) -> torch.Tensor:
        """Fractional coordinates, ``(N, 3)``."""
        inv = torch.linalg.inv(self.cell)[self.system_idx]
        return torch.bmm(self.positions.unsqueeze(1), inv).squeeze(1)

    # ---- generic manipulation -----------------------------------------------------------
    @classmethod
    def scopes(cls) -> dict[str, str]:
        """Field name -> scope, for every dataclass field."""
        return {f.name: f.metadata.get("scope", "global") for f in dataclasses.fields(cls)}

    def to(self: S, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> S:
        """Copy to ``device``; floating-point fields are cast to ``dtype`` when given."""
        changes = {}
        for name in self.scopes():
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                cast = dtype if (dtype is not None and value.is_floating_point()) else None
                changes[name] = value.to(device=device, dtype=cast)
        return dataclasses.replace(self, **changes)

    def clone(self: S) -> S:
        changes = {
            n: getattr(self, n).clone()
            for n in self.scopes()
            if isinstance(getattr(self, n), torch.Tensor)
        }
        return dataclasses.replace(self, **changes)


def select(state: S, systems: torch.Tensor | Sequence[int]) -> S:
    """The sub-batch made of ``systems`` (indices or a boolean mask), in the order given.

    ``system_idx`` is renumbered 0..len(systems)-1 in that order.
    """
    device = state.device
    idx = torch.as_tensor(systems, device=device)
    if idx.dtype == torch.bool:
        idx = torch.nonzero(idx).flatten()
    idx = idx.long()
    counts = state.n_atoms_per_system
    offsets = torch.cumsum(counts, 0) - counts
    # Atom indices of the chosen systems, in the chosen order.
    sel_counts = counts[idx]
    total = int(sel_counts.sum())
    new_sys = torch.repeat_interleave(torch.arange(len(idx), device=device), sel_counts)
    starts = torch.repeat_interleave(offsets[idx], sel_counts)
    within = torch.arange(total, device=device) - torch.repeat_interleave(
        torch.cumsum(sel_counts, 0) - sel_counts, sel_counts
    )
    atom_idx = starts + within
    changes: dict[str, Any] = {}
    for name, scope in state.scopes().items():
        value = getattr(state, name)
        if name == "system_idx":
            changes[name] = new_sys
        elif scope == "atom":
            changes[name] = value[atom_idx]
        elif scope == "system":
            changes[name] = value[idx]
    return dataclasses.replace(state, **changes)


def concatenate(states: Sequence[S]) -> S:
    """One batch from several; global fields are taken from the first state."""
    if not states:
        raise ValueError("concatenate() needs at least one state")
    first = states[0]
    changes: dict[str, Any] = {}
    offset = 0
    sys_parts = []
    for st in states:
        sys_parts.append(st.system_idx + offset)
        offset += st.n_systems
    for name, scope in first.scopes().items():
        if name == "system_idx":
            changes[name] = torch.cat(sys_parts)
        elif scope in ("atom", "system"):
            changes[name] = torch.cat([getattr(st, name) for st in states])
    return dataclasses.replace(first, **changes)


def split(state: S) -> list[S]:
    """One single-system state per system."""
    return [select(state, [i]) for i in range(state.n_systems)]


# ---- conversion to and from ASE / pymatgen ---------------------------------------------
def _as_atoms(structure: Atoms | Structure) -> Atoms:
    from ase import Atoms

    if isinstance(structure, Atoms):
        return structure
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)


def from_structures(
    structures: Sequence[Atoms | Structure],
    *,
    pressure_gpa: float | Sequence[float] = 0.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> BatchedState:
    """Build a batch from ASE ``Atoms`` and/or pymatgen ``Structure`` objects.

    Args:
        structures: periodic structures (3D, with a cell of positive volume).
        pressure_gpa: one external pressure for all, or one per structure, in GPa.
        device: where the tensors live.
        dtype: floating-point dtype of positions, cells and pressures.
    """
    atoms_list = [_as_atoms(s) for s in structures]
    if not atoms_list:
        raise ValueError("from_structures() needs at least one structure")
    n = [len(a) for a in atoms_list]
    positions = np.concatenate([a.get_positions() for a in atoms_list])
    numbers = np.concatenate([a.get_atomic_numbers() for a in atoms_list])
    cell = np.stack([np.asarray(a.get_cell()) for a in atoms_list])
    p = np.broadcast_to(np.asarray(pressure_gpa, dtype=float), (len(atoms_list),))
    return BatchedState(
        positions=torch.as_tensor(positions, dtype=dtype, device=device),
        numbers=torch.as_tensor(numbers, dtype=torch.long, device=device),
        system_idx=torch.repeat_interleave(
            torch.arange(len(n), device=device), torch.as_tensor(n, device=device)
        ),
        cell=torch.as_tensor(cell, dtype=dtype, device=device),
        pressure=torch.as_tensor(p * EV_PER_A3_PER_GPA, dtype=dtype, device=device),
    )


def _per_system(state: BatchedState) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(numbers, positions, cell)`` NumPy arrays of each system, in batch order."""
    pos = state.positions.detach().cpu().numpy()
    num = state.numbers.detach().cpu().numpy()
    cell = state.cell.detach().cpu().numpy()
    bounds = np.concatenate([[0], np.cumsum(state.n_atoms_per_system.cpu().numpy())])
    return [(num[b:e], pos[b:e], cell[i]) for i, (b, e) in enumerate(zip(bounds[:-1], bounds[1:]))]


def to_atoms(state: BatchedState) -> list[Atoms]:
    """One ASE ``Atoms`` (periodic in 3D) per system, in batch order."""
    from ase import Atoms

    return [Atoms(numbers=num, positions=pos, cell=cell, pbc=True) for num, pos, cell in _per_system(state)]


def to_structures(state: BatchedState) -> list[Structure]:
    """One pymatgen ``Structure`` per system, in batch order."""
    from pymatgen.core import Lattice, Structure

    return [
        Structure(Lattice(cell), num.tolist(), pos, coords_are_cartesian=True)
        for num, pos, cell in _per_system(state)
    ]
