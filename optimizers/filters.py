"""Cell filters: the cell's degrees of freedom as extra "positions", the stress as extra
"forces", so optimizers treat atoms and cell alike and never branch on "cell or not".

:class:`FrechetCellFilter` follows ASE's ``FrechetCellFilter`` (ase/filters.py), itself after
C. Ortner's JuLIP ``expcell``: with the deformation gradient ``F`` (``cell = ref_cell @ Fᵀ``),
the generalised coordinates are the atoms in the undeformed frame, ``x = r F⁻ᵀ``, and
``X = c·log F`` for the cell (``c`` = ``exp_cell_factor``, the atom count by default). The
generalised forces are ``f F`` for atoms and ``L(log Fᵀ, G) / c`` for the cell, where
``G = σ_v F⁻ᵀ`` with the virial ``σ_v = -V (σ + p I)`` and ``L(A, E)`` the Fréchet derivative
of the matrix exponential (the adjoint of ``E ↦ L(log F, E)``; derivation: H. Shinohara,
"Gradient of energy with respect to the log of the deformation tensor", the note cited by
ASE). Minimising with these forces minimises the enthalpy ``H = E + pV``.

Each filter has three methods over a :class:`RelaxState`: :meth:`init` (set reference cells
and cell coordinates), :meth:`get_x` / :meth:`set_x` (generalised coordinates), and
:meth:`apply` (store a model output and the generalised forces).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch
from lamcsp.relax.state import ATOM, SYSTEM, BatchedState


@dataclasses.dataclass(kw_only=True)
class RelaxState(BatchedState):
    """A batch under relaxation: geometry, filter coordinates and the last evaluation.

    Attributes (beyond :class:`BatchedState`):
        ref_cell: cell at the start, the filter's reference ``(S, 3, 3)``, Å.
        cell_x: generalised cell coordinates ``(S, 3, 3)`` (``c·log F``; zero for fixed cells).
        cell_factor: scale ``c`` of the cell coordinates ``(S,)``.
        energy: potential energy ``(S,)``, eV; ``enthalpy``: ``E + pV`` ``(S,)``, eV.
        forces: model forces ``(N, 3)``, eV/Å; ``stress``: ``(S, 3, 3)``, eV/Å³.
        atom_gforce: generalised forces on atoms ``(N, 3)``; ``cell_gforce`` on the cell
            ``(S, 3, 3)``: what optimizers follow and what ``fmax`` is tested against.
        n_steps: optimizer steps taken by each system ``(S,)``.
    """

    ref_cell: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    cell_x: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    cell_factor: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    energy: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    enthalpy: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    stress: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    cell_gforce: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    n_steps: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    forces: torch.Tensor = dataclasses.field(metadata=ATOM)
    atom_gforce: torch.Tensor = dataclasses.field(metadata=ATOM)

    def fmax(self) -> torch.Tensor:
        """Largest generalised force row per system ``(S,)``, as ASE's filters report it."""
        atom_norm = torch.linalg.norm(self.atom_gforce, dim=-1)
        fmax_atoms = torch.zeros(self.n_systems, dtype=self.dtype, device=self.device)
        fmax_atoms = fmax_atoms.scatter_reduce(0, self.system_idx, atom_norm, "amax")
        fmax_cell = torch.linalg.norm(self.cell_gforce, dim=-1).amax(-1)
        return torch.maximum(fmax_atoms, fmax_cell)


def relax_state_from(state: BatchedState, cell_factor: torch.Tensor | None = None) -> RelaxState:
    """A :class:`RelaxState` around a batch, with zero forces and identity deformation."""
    s, n = state.n_systems, state.n_atoms
    dev, dt = state.device, state.dtype
    base = {f.name: getattr(state, f.name) for f in dataclasses.fields(BatchedState)}
    if cell_factor is None:
        cell_factor = state.n_atoms_per_system.to(dt)
    return RelaxState(
        **base,
        ref_cell=state.cell.clone(),
        cell_x=torch.zeros((s, 3, 3), dtype=dt, device=dev),
        cell_factor=cell_factor.to(dev, dt),
        energy=torch.zeros(s, dtype=dt, device=dev),
        enthalpy=torch.zeros(s, dtype=dt, device=dev),
        stress=torch.zeros((s, 3, 3), dtype=dt, device=dev),
        cell_gforce=torch.zeros((s, 3, 3), dtype=dt, device=dev),
        n_steps=torch.zeros(s, dtype=torch.long, device=dev),
        forces=torch.zeros((n, 3), dtype=dt, device=dev),
        atom_gforce=torch.zeros((n, 3), dtype=dt, device=dev),
    )


def _atoms_times(x: torch.Tensor, mats: torch.Tensor, system_idx: torch.Tensor) -> torch.Tensor:
    """Row vectors ``x (N, 3)`` times the ``(3, 3)`` matrix of their system."""
    return torch.bmm(x.unsqueeze(1), mats[system_idx]).squeeze(1)


def expm_frechet_adjoint(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``L(aᵀ, g)``: the adjoint of the Fréchet derivative of ``expm`` at ``a``, batched.

    For every direction ``E``, ``<L(a, E), g> = <E, L(aᵀ, g)>``, so the nine directional
    derivatives ASE computes collapse into one. ``L`` comes from the block identity
    ``expm([[A, E], [0, A]]) = [[e^A, L(A, E)], [0, e^A]]``.

    Args:
        a: ``(S, 3, 3)``; g: ``(S, 3, 3)``.
    """
    s = a.shape[0]
    block = torch.zeros((s, 6, 6), dtype=a.dtype, device=a.device)
    at = a.transpose(1, 2)
    block[:, :3, :3] = at
    block[:, 3:, 3:] = at
    block[:, :3, 3:] = g
    return torch.linalg.matrix_exp(block)[:, :3, 3:]


class CellFilter(Protocol):
    """What optimizers need from a filter."""

    def init(self, state: BatchedState) -> RelaxState: ...

    def get_x(self, state: RelaxState) -> tuple[torch.Tensor, torch.Tensor]: ...

    def set_x(self, state: RelaxState, x_atoms: torch.Tensor, x_cell: torch.Tensor) -> RelaxState: ...

    def apply(self, state: RelaxState, output: dict[str, Any]) -> RelaxState: ...


class FixedCellFilter:
    """Atoms move, the cell stays; the cell coordinates and forces are zero."""

    def init(self, state: BatchedState) -> RelaxState:
        return relax_state_from(state)

    def get_x(self, state: RelaxState) -> tuple[torch.Tensor, torch.Tensor]:
        return state.positions, state.cell_x

    def set_x(self, state: RelaxState, x_atoms: torch.Tensor, x_cell: torch.Tensor) -> RelaxState:
        return dataclasses.replace(state, positions=x_atoms)

    def apply(self, state: RelaxState, output: dict[str, Any]) -> RelaxState:
        energy = output["energy"]
        return dataclasses.replace(
            state,
            energy=energy,
            enthalpy=energy + state.pressure * state.volume,
            forces=output["forces"],
            stress=output["stress"],
            atom_gforce=output["forces"],
            cell_gforce=torch.zeros_like(state.cell_gforce),
        )


class FrechetCellFilter:
    """Atoms and cell move together under a scalar external pressure (ASE's
    ``FrechetCellFilter`` with ``scalar_pressure`` taken per system from ``state.pressure``).

    Args:
        exp_cell_factor: scale of the cell coordinates; the atom count of each system when
            ``None`` (ASE's default).
    """

    def __init__(self, exp_cell_factor: float | None = None):
        self.exp_cell_factor = exp_cell_factor

    def init(self, state: BatchedState) -> RelaxState:
        factor = None
        if self.exp_cell_factor is not None:
            factor = torch.full((state.n_systems,), float(self.exp_cell_factor))
        return relax_state_from(state, factor)

    def deform_grad(self, state: RelaxState) -> torch.Tensor:
        """``F`` with ``cell = ref_cell @ Fᵀ``, from the cell coordinates, ``(S, 3, 3)``."""
        return torch.linalg.matrix_exp(state.cell_x / state.cell_factor[:, None, None])

    def get_x(self, state: RelaxState) -> tuple[torch.Tensor, torch.Tensor]:
        f_inv_t = torch.linalg.inv(self.deform_grad(state)).transpose(1, 2)
        return _atoms_times(state.positions, f_inv_t, state.system_idx), state.cell_x

    def set_x(self, state: RelaxState, x_atoms: torch.Tensor, x_cell: torch.Tensor) -> RelaxState:
        f = torch.linalg.matrix_exp(x_cell / state.cell_factor[:, None, None])
        f_t = f.transpose(1, 2)
        return dataclasses.replace(
            state,
            cell_x=x_cell,
            cell=torch.bmm(state.ref_cell, f_t),
            positions=_atoms_times(x_atoms, f_t, state.system_idx),
        )

    def apply(self, state: RelaxState, output: dict[str, Any]) -> RelaxState:
        energy, forces, stress = output["energy"], output["forces"], output["stress"]
        volume = state.volume
        eye = torch.eye(3, dtype=state.dtype, device=state.device)
        virial = -volume[:, None, None] * (stress + state.pressure[:, None, None] * eye)
        f = self.deform_grad(state)
        log_f = state.cell_x / state.cell_factor[:, None, None]
        ucf_grad = torch.bmm(virial, torch.linalg.inv(f.transpose(1, 2)))
        cell_gforce = expm_frechet_adjoint(log_f, ucf_grad) / state.cell_factor[:, None, None]
        return dataclasses.replace(
            state,
            energy=energy,
            enthalpy=energy + state.pressure * volume,
            forces=forces,
            stress=stress,
            atom_gforce=_atoms_times(forces, f, state.system_idx),
            cell_gforce=cell_gforce,
        )


def make_filter(relax_cell: bool = True, **kwargs: Any) -> CellFilter:
    """The Fréchet filter when the cell relaxes, the fixed-cell filter otherwise."""
    return FrechetCellFilter(**kwargs) if relax_cell else FixedCellFilter()
