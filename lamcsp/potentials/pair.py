"""Analytic pair potentials in torch: Lennard-Jones and Morse, batched, periodic, several species.

They exist for fast tests and analytic benchmark landscapes; both are energy-shifted so the
pair energy is zero at the cutoff (as ASE's ``LennardJones(smooth=False)``), and forces and
stresses come from one autograd pass through :func:`energy_forces_stress`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lamcsp.errors import SetupError
from lamcsp.potentials.base import Output, Potential, energy_forces_stress
from lamcsp.potentials.neighbors import periodic_pairs
from lamcsp.relax.state import BatchedState

PairKey = tuple[int, int]


def _pair_table(
    values: float | Mapping[PairKey, float] | Mapping[int, float], mixing: str, name: str
) -> dict[PairKey, float] | float:
    """Normalise a parameter given as a scalar, per element (mixed) or per pair.

    Elements are atomic numbers or symbols; pairs are ``(Za, Zb)`` tuples or ``"Ar-Kr"``
    strings (so a campaign file can give them).
    """
    if isinstance(values, (int, float)):
        return float(values)
    if not isinstance(values, Mapping):
        raise SetupError(name, f"give a number, a mapping per element or per pair, got {values!r}")
    values = {_pair_key(k, name): v for k, v in values.items()}
    table: dict[PairKey, float] = {}
    keys = list(values)
    if keys and all(isinstance(k, int) for k in keys):
        per_el = {int(k): float(v) for k, v in values.items() if isinstance(k, int)}
        for a in per_el:
            for b in per_el:
                if mixing == "geometric":
                    table[(a, b)] = (per_el[a] * per_el[b]) ** 0.5
                else:
                    table[(a, b)] = 0.5 * (per_el[a] + per_el[b])
        return table
    for k, v in values.items():
        if isinstance(k, int):
            raise SetupError(name, "give the parameter per element or per pair, not mixed")
        a, b = k
        table[(int(a), int(b))] = float(v)
        table[(int(b), int(a))] = float(v)
    return table


def _pair_key(key: Any, name: str) -> Any:
    """An element (int) or pair (tuple of ints) from an int, symbol, tuple or ``"A-B"``."""
    from ase.data import atomic_numbers

    def z(x: Any) -> int:
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, str) and x in atomic_numbers:
            return atomic_numbers[x]
        raise SetupError(name, f"unknown element {x!r} in the {name} parameters")

    if isinstance(key, str) and "-" in key:
        a, _, b = key.partition("-")
        return (z(a), z(b))
    if isinstance(key, (tuple, list)):
        a, b = key
        return (z(a), z(b))
    return z(key)


class PairPotential(Potential):
    """Base of the analytic pair potentials: a pair energy ``phi(r; params(Zi, Zj))``.

    Parameters are given as a scalar (all pairs), a ``{Z: value}`` mapping (mixed by the
    rule of each parameter), or a ``{(Za, Zb): value}`` mapping (explicit pairs).
    """

    param_names: tuple[str, ...] = ()
    #: mixing rule of each parameter for per-element input (Lorentz-Berthelot by default)
    mixing: dict[str, str] = {}

    def __init__(
        self,
        cutoff: float,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
        **params: float | Mapping,
    ):
        super().__init__(device=device, dtype=dtype)
        self.cutoff = float(cutoff)
        self.params = {
            k: _pair_table(params[k], self.mixing.get(k, "arithmetic"), k)
            for k in self.param_names
        }

    @property
    def supported_numbers(self) -> set[int] | None:
        zs: set[int] | None = None
        for table in self.params.values():
            if isinstance(table, dict):
                found = {a for a, _ in table}
                zs = found if zs is None else zs & found
        return zs

    @property
    def model_id(self) -> str:
        return f"{self.name}(cutoff={self.cutoff:g},{self.params})"

    def _param(self, name: str, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
        table = self.params[name]
        if isinstance(table, float):
            return torch.full(zi.shape, table, dtype=self.dtype, device=zi.device)
        zmax = max(max(a, b) for a, b in table) + 1
        grid = torch.full((zmax, zmax), float("nan"), dtype=self.dtype, device=zi.device)
        for (a, b), v in table.items():
            grid[a, b] = v
        return grid[zi.clamp(max=zmax - 1), zj.clamp(max=zmax - 1)]

    def pair_energy(self, r: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
        """Unshifted pair energy ``(P,)`` at distances ``r (P,)``, eV."""
        raise NotImplementedError

    def forward(self, state: BatchedState) -> Output:
        state = state.to(self.device)
        i, j, shift = periodic_pairs(state.positions, state.cell, state.system_idx, self.cutoff)
        zi, zj = state.numbers[i], state.numbers[j]
        sys = state.system_idx[i]
        rc = torch.full_like(shift[:, 0], self.cutoff, dtype=self.dtype)

        def energy_fn(pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
            vec = pos[j] - pos[i] + torch.bmm(shift.to(cell.dtype).unsqueeze(1), cell[sys]).squeeze(1)
            r = torch.linalg.norm(vec, dim=-1)
            e_pair = self.pair_energy(r, zi, zj) - self.pair_energy(rc, zi, zj)
            energy = torch.zeros(state.n_systems, dtype=cell.dtype, device=cell.device)
            return energy.index_add(0, sys, 0.5 * e_pair)

        return energy_forces_stress(state, energy_fn, dtype=self.dtype)


class LennardJones(PairPotential):
    """``phi(r) = 4 ε [(σ/r)^12 - (σ/r)^6]``, shifted to zero at ``cutoff``.

    Args:
        epsilon: well depth ε, eV (scalar, per element: geometric mean, or per pair).
        sigma: σ, Å (scalar, per element: arithmetic mean, or per pair).
        cutoff: Å; ``3 σ`` of the largest σ when not given (ASE's default ``rc``).
    """

    name = "lj"
    param_names = ("epsilon", "sigma")
    mixing = {"epsilon": "geometric", "sigma": "arithmetic"}

    def __init__(
        self,
        epsilon: float | Mapping = 1.0,
        sigma: float | Mapping = 1.0,
        cutoff: float | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ):
        if cutoff is None:
            smax = sigma if isinstance(sigma, (int, float)) else max(sigma.values())
            cutoff = 3.0 * float(smax)
        super().__init__(cutoff, device=device, dtype=dtype, epsilon=epsilon, sigma=sigma)

    def pair_energy(self, r: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
        eps = self._param("epsilon", zi, zj)
        sig = self._param("sigma", zi, zj)
        s6 = (sig / r) ** 6
        return 4.0 * eps * (s6 * s6 - s6)


class Morse(PairPotential):
    """``phi(r) = ε e^{ρ0 (1 - r/r0)} (e^{ρ0 (1 - r/r0)} - 2)`` (ASE's ``MorsePotential``
    parameters), shifted to zero at ``cutoff``.

    Args:
        epsilon: well depth ε, eV.
        rho0: dimensionless stiffness ρ0 (``a r0`` in the ``D, a, r0`` form).
        r0: equilibrium distance, Å.
        cutoff: Å; ``2.5 r0`` of the largest r0 when not given.
    """

    name = "morse"
    param_names = ("epsilon", "rho0", "r0")
    mixing = {"epsilon": "geometric", "rho0": "arithmetic", "r0": "arithmetic"}

    def __init__(
        self,
        epsilon: float | Mapping = 1.0,
        rho0: float | Mapping = 6.0,
        r0: float | Mapping = 1.0,
        cutoff: float | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ):
        if cutoff is None:
            rmax = r0 if isinstance(r0, (int, float)) else max(r0.values())
            cutoff = 2.5 * float(rmax)
        super().__init__(cutoff, device=device, dtype=dtype, epsilon=epsilon, rho0=rho0, r0=r0)

    def pair_energy(self, r: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
        eps = self._param("epsilon", zi, zj)
        rho0 = self._param("rho0", zi, zj)
        r0 = self._param("r0", zi, zj)
        ex = torch.exp(rho0 * (1.0 - r / r0))
        return eps * ex * (ex - 2.0)
