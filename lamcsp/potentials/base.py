"""The ``Potential`` seam: one batched call from a :class:`BatchedState` to energies,
forces and stresses.

Contract of :meth:`Potential.forward` (all tensors on the state's device and dtype):

* ``"energy"``: ``(S,)`` total energy per system, eV;
* ``"forces"``: ``(N, 3)``, eV/Å, ``-dE/dr``;
* ``"stress"``: ``(S, 3, 3)``, eV/Å³, ASE's sign convention ``(1/V) dE/dε``
  (a compressed crystal that wants to expand has a negative stress; its internal pressure
  is ``-trace/3``);
* optionally ``"errors"``: a list of ``S`` entries, ``None`` or a short reason for a system the
  backend could not evaluate (its energy is then NaN).

The enthalpy ``H = E + pV`` is formed by the cell filter, not by potentials.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import torch

from lamcsp.errors import SetupError
from lamcsp.relax.state import BatchedState

Output = dict[str, Any]


class Potential(abc.ABC):
    """A batched interatomic potential.

    Subclasses implement :meth:`forward`; calling the object counts the model calls and
    accumulates wall time in :attr:`timings` (``"total"`` plus whatever parts the backend
    reports, e.g. ``"graph"`` and ``"model"``).
    """

    #: short backend name, used in model ids and error messages
    name: str = "potential"

    def __init__(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64):
        self.device = torch.device(device)
        self.dtype = dtype
        self.n_calls = 0
        self.n_evaluations = 0
        self.timings: dict[str, float] = {"total": 0.0}

    @property
    def model_id(self) -> str:
        """A string that identifies the model and its parameters (stored with results)."""
        return self.name

    @property
    def supported_numbers(self) -> set[int] | None:
        """Atomic numbers the model covers, or ``None`` for any."""
        return None

    def check_numbers(self, numbers: Any, field: str = "structures") -> None:
        """Raise :class:`SetupError` naming the elements this model does not cover."""
        allowed = self.supported_numbers
        if allowed is None:
            return
        from ase.data import chemical_symbols

        present = {int(z) for z in torch.as_tensor(numbers).flatten().tolist()}
        missing = sorted(present - allowed)
        if missing:
            names = ", ".join(chemical_symbols[z] if 0 < z < 119 else str(z) for z in missing)
            raise SetupError(
                field,
                f"the {self.name} model does not cover element(s) {names}; "
                f"it covers {len(allowed)} elements (Z in {min(allowed)}..{max(allowed)})",
            )

    @abc.abstractmethod
    def forward(self, state: BatchedState) -> Output:
        """Energies ``(S,)``, forces ``(N, 3)`` and stresses ``(S, 3, 3)`` of a batch."""

    def __call__(self, state: BatchedState) -> Output:
        t0 = time.perf_counter()
        out = self.forward(state)
        self.timings["total"] += time.perf_counter() - t0
        self.n_calls += 1
        self.n_evaluations += state.n_systems
        return out

    def reset_counters(self) -> None:
        self.n_calls = 0
        self.n_evaluations = 0
        self.timings = {k: 0.0 for k in self.timings}

    def _tick(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds


def energy_forces_stress(
    state: BatchedState,
    energy_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
) -> Output:
    """Forces and stresses of an energy function by one reverse-mode pass.

    ``energy_fn(positions, cell)`` gets positions ``(N, 3)`` and cells ``(S, 3, 3)`` that are
    deformed by a zero strain ``ε`` (so ``dE/dε`` is the virial) and returns energies
    ``(S,)``. Forces are ``-dE/dr`` and stresses ``(1/V) dE/dε`` (ASE's convention), both
    from a single ``torch.autograd.grad`` call without building a double-backward graph.

    Args:
        state: the batch.
        energy_fn: the model's energy as a function of the deformed geometry.
        dtype: compute dtype of the model (the state's when ``None``); results are cast back.
    """
    dt = dtype or state.dtype
    positions = state.positions.detach().to(dt).requires_grad_(True)
    strain = torch.zeros(
        (state.n_systems, 3, 3), dtype=dt, device=state.device, requires_grad=True
    )
    deform = torch.eye(3, dtype=dt, device=state.device) + strain
    cell = torch.bmm(state.cell.detach().to(dt), deform)
    pos = torch.bmm(positions.unsqueeze(1), deform[state.system_idx]).squeeze(1)
    energy = energy_fn(pos, cell)
    grad_r, grad_e = torch.autograd.grad(energy.sum(), (positions, strain), allow_unused=True)
    if grad_r is None:
        grad_r = torch.zeros_like(positions)
    if grad_e is None:
        grad_e = torch.zeros_like(strain)
    volume = torch.linalg.det(state.cell.detach().to(dt)).abs()
    return {
        "energy": energy.detach().to(state.dtype),
        "forces": (-grad_r).detach().to(state.dtype),
        "stress": (grad_e / volume[:, None, None]).detach().to(state.dtype),
    }


def unevaluable(pos: np.ndarray, numbers: np.ndarray, cells: np.ndarray, counts: np.ndarray,
                covered: Collection[int], model_id: str) -> list[str | None]:
    """Why each structure of a batch cannot be evaluated, or None: empty, non-finite positions or
    cell, a singular cell, a collapsed one (under 0.5 Å³ per atom, which also keeps a neighbour
    search bounded), or an element the model does not cover (atomic numbers ``covered``). What a
    batched backend checks before its graph, so that one such structure fails alone (NaN results
    with the reason) and never stops the batch.

    Args:
        pos: (N, 3) positions of all atoms; ``numbers`` (N,) their atomic numbers.
        cells: (S, 3, 3) cells; ``counts`` (S,) atoms per structure.
    """
    n_sys = len(counts)
    sys_of_atom = np.repeat(np.arange(n_sys), counts)
    finite = np.isfinite(cells).reshape(n_sys, -1).all(1)
    finite &= np.bincount(sys_of_atom, ~np.isfinite(pos).all(1), minlength=n_sys) == 0
    vol = np.abs(np.linalg.det(np.where(np.isfinite(cells), cells, 0.0)))
    known = np.zeros(max(int(numbers.max(initial=0)), max(covered, default=0)) + 1, dtype=bool)
    known[list(covered)] = True
    outside = ~known[np.clip(numbers, 0, None)]
    n_out = np.bincount(sys_of_atom, outside, minlength=n_sys)
    errors: list[str | None] = [None] * n_sys
    for s in np.nonzero((counts == 0) | ~finite | ~(vol > 0.5 * np.maximum(counts, 1)) | (n_out > 0))[0]:
        if counts[s] == 0:
            errors[s] = "empty structure"
        elif not finite[s]:
            errors[s] = "non-finite positions or cell"
        elif not vol[s] > 1e-6:
            errors[s] = f"singular cell (volume {vol[s]:.3g} Å³)"
        elif vol[s] / counts[s] < 0.5:
            errors[s] = f"collapsed cell ({vol[s] / counts[s]:.3g} Å³ per atom)"
        else:
            bad = sorted({int(z) for z in numbers[sys_of_atom == s][outside[sys_of_atom == s]]})
            errors[s] = f"element(s) Z={bad} not covered by {model_id}"
    return errors


def assemble_outputs(state: BatchedState, result: Output | None, good: Sequence[int],
                     errors: list[str | None]) -> Output:
    """A batched backend's full-batch outputs from the model's outputs on the evaluable systems.

    ``result`` holds the outputs of the systems ``good`` (in that order; None when none was
    evaluated); the others, and every system with an ``errors`` reason, get NaN energy, forces
    and stress. Everything is on the state's device and dtype, and ``out["errors"]`` is
    ``errors`` (one reason or None per system). Shared by the CHGNet, SevenNet and MACE backends.
    """
    dev, dt = state.device, state.dtype
    if result is not None and len(good) == state.n_systems:
        out: Output = {k: result[k].to(device=dev, dtype=dt) for k in ("energy", "forces", "stress")}
    else:
        nan = float("nan")
        out = {"energy": torch.full((state.n_systems,), nan, dtype=dt, device=dev),
               "forces": torch.full((state.n_atoms, 3), nan, dtype=dt, device=dev),
               "stress": torch.full((state.n_systems, 3, 3), nan, dtype=dt, device=dev)}
        if result is not None:
            g = torch.as_tensor(list(good), device=dev, dtype=torch.long)
            out["energy"][g] = result["energy"].to(device=dev, dtype=dt)
            out["stress"][g] = result["stress"].to(device=dev, dtype=dt)
            out["forces"][torch.isin(state.system_idx, g)] = result["forces"].to(device=dev, dtype=dt)
    failed = [s for s, e in enumerate(errors) if e is not None]
    if failed:
        f = torch.as_tensor(failed, device=dev, dtype=torch.long)
        out["energy"][f] = float("nan")
        out["stress"][f] = float("nan")
        out["forces"][torch.isin(state.system_idx, f)] = float("nan")
    out["errors"] = errors
    return out
