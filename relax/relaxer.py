"""The batched relaxer: any number of structures, many per model call.

A :class:`Relaxer` runs an optimizer (``fire`` or ``lbfgs``) through a cell filter (Fréchet
under a scalar pressure, or fixed cell) on an in-flight batch: after every model call,
converged, failed and exhausted systems leave and waiting ones join (see
:mod:`lamcsp.relax.batching`). Results come back in input order.

Converged means the largest generalised force row (atoms and cell, as ASE's filter reports
it) is below ``fmax``. A system that reaches ``max_steps`` is reported as not converged. A
system fails, with a reason, on a non-finite energy, force or stress, on a volume per atom
outside ``volume_bounds`` times its start, or on two atoms closer than ``min_distance``; the
rest of the batch goes on.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ase import Atoms
from lamcsp.kernels.distances import min_distances
from lamcsp.relax.batching import InFlightBatcher, default_max_atoms
from lamcsp.relax.state import (
    EV_PER_A3_PER_GPA,
    BatchedState,
    concatenate,
    from_structures,
    select,
)

if TYPE_CHECKING:
    from lamcsp.optimizers.filters import RelaxState

    from lamcsp.potentials.base import Potential


def atoms_to_dict(atoms: Atoms) -> dict[str, Any]:
    """An ``Atoms`` as plain data (lists, numbers; ``info`` kept where it is plain)."""
    d = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
         for k, v in atoms.todict().items() if k != "info"}
    d["info"] = {k: v for k, v in atoms.info.items()
                 if isinstance(v, (str, int, float, bool, type(None)))}
    return d


def atoms_from_dict(d: dict[str, Any]) -> Atoms:
    """The inverse of :func:`atoms_to_dict`."""
    atoms = Atoms.fromdict({k: (np.asarray(v) if isinstance(v, list) else v)
                            for k, v in d.items() if k != "info"})
    atoms.info.update(d.get("info") or {})
    return atoms


@dataclasses.dataclass
class RelaxResult:
    """The outcome of relaxing one structure.

    Attributes:
        atoms: final geometry (the last one reached, for failed and unconverged systems).
        energy: potential energy, eV. enthalpy: ``E + pV``, eV.
        pressure_gpa: the external pressure, GPa.
        converged: True when ``fmax`` was reached.
        steps: optimizer steps taken (model calls are ``steps + 1``).
        status: ``"converged"``, ``"max_steps"`` or ``"failed: REASON"``.
        fmax: final largest generalised force, eV/Å.
        forces: final forces ``(n, 3)``, eV/Å. stress: final stress ``(3, 3)``, eV/Å³.
        frames: geometries along the way (every ``snapshot_every`` steps of the relaxer; empty
            by default): the relaxation-trajectory frames the fine-tune loop rates.
    """

    atoms: Atoms
    energy: float
    enthalpy: float
    pressure_gpa: float
    converged: bool
    steps: int
    status: str
    fmax: float
    forces: np.ndarray
    stress: np.ndarray
    frames: list[Atoms] = dataclasses.field(default_factory=list)

    @property
    def enthalpy_per_atom(self) -> float:
        return self.enthalpy / len(self.atoms)

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what crosses MPI ranks): numbers, lists and ``Atoms.todict()``."""
        return {"atoms": atoms_to_dict(self.atoms),
                "energy": float(self.energy), "enthalpy": float(self.enthalpy),
                "pressure_gpa": float(self.pressure_gpa), "converged": bool(self.converged),
                "steps": int(self.steps), "status": str(self.status), "fmax": float(self.fmax),
                "forces": np.asarray(self.forces, dtype=float).tolist(),
                "stress": np.asarray(self.stress, dtype=float).tolist(),
                "frames": [atoms_to_dict(a) for a in self.frames]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RelaxResult:
        return cls(atoms=atoms_from_dict(d["atoms"]), energy=d["energy"], enthalpy=d["enthalpy"],
                   pressure_gpa=d["pressure_gpa"],
                   converged=d["converged"], steps=d["steps"], status=d["status"], fmax=d["fmax"],
                   forces=np.asarray(d["forces"], dtype=float).reshape(-1, 3),
                   stress=np.asarray(d["stress"], dtype=float).reshape(3, 3),
                   frames=[atoms_from_dict(a) for a in d.get("frames", [])])


@dataclasses.dataclass
class SinglePoint:
    """The model at one fixed structure (no optimizer step): what the energy prescreen, the
    fine-tune loop's rescoring and its committee need.

    Attributes:
        n_atoms: atoms in the structure. energy: eV. enthalpy: ``E + pV``, eV.
        pressure_gpa: the pressure of ``enthalpy``, GPa.
        forces: ``(n, 3)`` eV/Å. stress: ``(3, 3)`` eV/Å³.
        status: ``"ok"`` or ``"failed: REASON"`` (the relaxer's checks: a model error,
            non-finite output, atoms closer than its ``min_distance``).
    """

    n_atoms: int
    energy: float
    enthalpy: float
    pressure_gpa: float
    forces: np.ndarray
    stress: np.ndarray
    status: str = "ok"

    @property
    def enthalpy_per_atom(self) -> float:
        return self.enthalpy / self.n_atoms

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what crosses MPI ranks)."""
        return {"n_atoms": int(self.n_atoms), "energy": float(self.energy), "enthalpy": float(self.enthalpy),
                "pressure_gpa": float(self.pressure_gpa), "status": str(self.status),
                "forces": np.asarray(self.forces, dtype=float).tolist(),
                "stress": np.asarray(self.stress, dtype=float).tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SinglePoint:
        return cls(n_atoms=int(d["n_atoms"]), energy=float(d["energy"]), enthalpy=float(d["enthalpy"]),
                   pressure_gpa=float(d["pressure_gpa"]), status=str(d["status"]),
                   forces=np.asarray(d["forces"], dtype=float).reshape(-1, 3),
                   stress=np.asarray(d["stress"], dtype=float).reshape(3, 3))


class Relaxer:
    """Relax many structures with one potential, batched.

    Args:
        potential: the model (one batched call per step for all running systems).
        optimizer: ``"fire"`` (ASE's FIRE) or ``"lbfgs"``.
        fmax: convergence threshold on the largest generalised force, eV/Å.
        max_steps: steps before a system is reported as ``max_steps``.
        relax_cell: relax the cell through the Fréchet filter (else fixed cell).
        max_atoms: atom budget per model call; from the device when ``None``.
        optimizer_params: the optimizer's own parameters (ASE names: ``dt``, ``maxstep``...).
        min_distance: atoms closer than this (Å) fail the system.
        volume_bounds: allowed range of volume per atom relative to the start.
        dtype: floating-point dtype of the optimizer state.
        progress: show a progress bar (``None``: only when stderr is a terminal).
        snapshot_every: keep each structure's geometry every this many steps in
            ``RelaxResult.frames`` (0: none).
    """

    def __init__(
        self,
        potential: Potential,
        *,
        optimizer: str = "fire",
        fmax: float = 0.05,
        max_steps: int = 500,
        relax_cell: bool = True,
        max_atoms: int | None = None,
        optimizer_params: dict[str, float] | None = None,
        min_distance: float = 0.5,
        volume_bounds: tuple[float, float] = (0.3, 5.0),
        dtype: torch.dtype = torch.float64,
        progress: bool | None = None,
        snapshot_every: int = 0,
    ):
        # optimizers import lamcsp.relax.state, so they are imported here, not at module load
        from lamcsp.optimizers import OPTIMIZERS, make_filter

        if optimizer not in OPTIMIZERS:
            from lamcsp.errors import SetupError

            raise SetupError("optimizer", f"unknown optimizer {optimizer!r}; use one of {sorted(OPTIMIZERS)}")
        self.potential = potential
        self.optimizer = optimizer
        self.init_fn, self.step_fn = OPTIMIZERS[optimizer]
        self.fmax = float(fmax)
        self.max_steps = int(max_steps)
        self.filter = make_filter(relax_cell)
        self.max_atoms = max_atoms
        self.optimizer_params = dict(optimizer_params or {})
        self.min_distance = float(min_distance)
        self.volume_bounds = volume_bounds
        self.dtype = dtype
        self.progress = progress
        self.snapshot_every = int(snapshot_every)
        self.timings: dict[str, float] = {}
        self.n_model_calls = 0

    # -- helpers --------------------------------------------------------------------------
    def _tick(self, key: str, t0: float) -> float:
        t1 = time.perf_counter()
        self.timings[key] = self.timings.get(key, 0.0) + t1 - t0
        return t1

    def _failures(self, state: RelaxState, out: dict[str, Any]) -> list[str | None]:
        """A reason per system, or None when it is healthy."""
        reasons: list[str | None] = [None] * state.n_systems
        errors = out.get("errors") or [None] * state.n_systems
        sys_idx = state.system_idx
        bad_f = torch.zeros(state.n_systems, dtype=torch.bool, device=state.device)
        bad_f = bad_f.index_put((sys_idx,), ~torch.isfinite(out["forces"]).all(-1), accumulate=True)
        bad_e = ~torch.isfinite(out["energy"])
        bad_s = ~torch.isfinite(out["stress"]).flatten(1).all(-1)
        ratio = (state.volume / torch.linalg.det(state.ref_cell).abs()).cpu().numpy()
        counts = state.n_atoms_per_system.cpu().numpy()
        dmin = min_distances(
            state.positions.detach().cpu().numpy(),
            state.cell.detach().cpu().numpy(),
            counts,
            cutoff=max(self.min_distance, 1e-6),
        )
        lo, hi = self.volume_bounds
        be, bf, bs = bad_e.cpu().numpy(), bad_f.cpu().numpy(), bad_s.cpu().numpy()
        for k in range(state.n_systems):
            if errors[k]:
                reasons[k] = f"model error: {errors[k]}"
            elif be[k] or bf[k] or bs[k]:
                what = [n for n, b in (("energy", be[k]), ("forces", bf[k]), ("stress", bs[k])) if b]
                reasons[k] = f"non-finite {'/'.join(what)}"
            elif not (lo <= ratio[k] <= hi):
                reasons[k] = f"volume per atom {ratio[k]:.3g}x the start, outside [{lo:g}, {hi:g}]"
            elif dmin[k] < self.min_distance:
                reasons[k] = f"atoms {dmin[k]:.3f} A apart, closer than {self.min_distance:g} A"
        return reasons

    def _inputs(self, structures: Sequence[Any], pressure_gpa: float | Sequence[float]
                ) -> tuple[list[Atoms], np.ndarray, InFlightBatcher]:
        """The structures as ``Atoms``, one pressure each, checked against the model's elements,
        and the batcher of the relaxer's atom budget over them."""
        from lamcsp.relax.state import _as_atoms

        atoms_in = [_as_atoms(s) for s in structures]
        pressures = np.broadcast_to(np.asarray(pressure_gpa, dtype=float), (len(atoms_in),)).copy()
        self.potential.check_numbers(np.concatenate([a.numbers for a in atoms_in]))
        budget = self.max_atoms or default_max_atoms(
            self.potential.device, getattr(self.potential, "bytes_per_atom", None)
        )
        return atoms_in, pressures, InFlightBatcher([len(a) for a in atoms_in], budget)

    def _new_states(self, structures: Sequence[Atoms], pressures: np.ndarray) -> RelaxState:
        dev = self.potential.device
        base = from_structures(structures, pressure_gpa=pressures, device=dev, dtype=self.dtype)
        return self.init_fn(self.filter.init(base), **self.optimizer_params)

    # -- the loop -------------------------------------------------------------------------
    def relax(
        self,
        structures: Sequence[Any],
        pressure_gpa: float | Sequence[float] = 0.0,
        on_result: Callable[[int, RelaxResult], None] | None = None,
    ) -> list[RelaxResult]:
        """Relax ``structures`` (ASE ``Atoms`` or pymatgen ``Structure``), in input order.

        Args:
            structures: the structures; any number, any sizes.
            pressure_gpa: one pressure for all, or one per structure, GPa.
            on_result: called as ``on_result(index, result)`` as soon as each structure
                finishes (converged, failed or out of steps), e.g. to store it at once.
        """
        if len(structures) == 0:
            return []
        atoms_in, pressures, batcher = self._inputs(structures, pressure_gpa)
        n = len(atoms_in)
        results: list[RelaxResult | None] = [None] * n
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="relax", unit="struct", file=sys.stderr)

        state: RelaxState | None = None
        ids: list[int] = []
        frames: dict[int, list[Atoms]] = {}
        while True:
            t0 = time.perf_counter()
            running = 0 if state is None else state.n_atoms
            join = batcher.take(running)
            if join:
                new = self._new_states([atoms_in[i] for i in join], pressures[join])
                state = new if state is None else concatenate([state, new])
                ids.extend(join)
            if state is None:
                break
            t0 = self._tick("batching", t0)
            out = self.potential(state)
            self.n_model_calls += 1
            t0 = self._tick("model", t0)
            state = self.filter.apply(state, out)
            fmax = state.fmax()
            reasons = self._failures(state, out)
            failed = torch.tensor([r is not None for r in reasons], device=state.device)
            converged = (fmax < self.fmax) & ~failed
            exhausted = (state.n_steps >= self.max_steps) & ~converged & ~failed
            finished = (converged | exhausted | failed).cpu().numpy()
            t0 = self._tick("checks", t0)
            if self.snapshot_every > 0:
                self._snapshot(state, ids, finished, frames)
            if finished.any():
                idx = np.nonzero(finished)[0]
                done = select(state, idx.tolist())
                self._record(done, [ids[k] for k in idx], [reasons[k] for k in idx],
                             converged.cpu().numpy()[idx], fmax.cpu().numpy()[idx], pressures, results)
                for k in idx:
                    results[ids[k]].frames = frames.pop(ids[k], [])  # type: ignore[union-attr]
                if on_result is not None:
                    for k in idx:
                        on_result(ids[k], results[ids[k]])  # type: ignore[arg-type]
                keep = np.nonzero(~finished)[0]
                ids = [ids[k] for k in keep]
                state = select(state, keep.tolist()) if len(keep) else None
                if bar is not None:
                    bar.update(len(idx))
            t0 = self._tick("batching", t0)
            if state is not None:
                state = self.step_fn(state, self.filter)
                self._tick("optimizer", t0)
        if bar is not None:
            bar.close()
        return results  # type: ignore[return-value]

    def evaluate(self, structures: Sequence[Any], pressure_gpa: float | Sequence[float] = 0.0,
                 on_result: Callable[[int, SinglePoint], None] | None = None) -> list[SinglePoint]:
        """Single points: the model once at each of ``structures`` (in batches of the relaxer's
        atom budget), with the same failure checks as :meth:`relax`; in input order."""
        from lamcsp.relax.state import EV_PER_A3_PER_GPA

        if len(structures) == 0:
            return []
        atoms_in, pressures, batcher = self._inputs(structures, pressure_gpa)
        results: list[SinglePoint | None] = [None] * len(atoms_in)
        while True:
            join = batcher.take(0)
            if not join:
                break
            state = self._new_states([atoms_in[i] for i in join], pressures[join])
            out = self.potential(state)
            self.n_model_calls += 1
            reasons = self._failures(state, out)
            energy = out["energy"].detach().cpu().numpy()
            forces = out["forces"].detach().cpu().numpy()
            stress = out["stress"].detach().cpu().numpy()
            counts = state.n_atoms_per_system.cpu().numpy()
            bounds = np.concatenate([[0], np.cumsum(counts)])
            for k, i in enumerate(join):
                pv = float(pressures[i]) * EV_PER_A3_PER_GPA * float(atoms_in[i].get_volume())
                results[i] = SinglePoint(
                    n_atoms=int(counts[k]), energy=float(energy[k]), enthalpy=float(energy[k]) + pv,
                    pressure_gpa=float(pressures[i]), forces=forces[bounds[k] : bounds[k + 1]],
                    stress=stress[k], status="ok" if reasons[k] is None else f"failed: {reasons[k]}")
                if on_result is not None:
                    on_result(i, results[i])  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def _snapshot(self, state: RelaxState, ids: list[int], finished: np.ndarray,
                  frames: dict[int, list[Atoms]]) -> None:
        """Keep the geometry of every running system whose step count is a positive multiple
        of ``snapshot_every`` (the start and the end are the candidate and the result)."""
        from lamcsp.relax.state import to_atoms

        steps = state.n_steps.cpu().numpy()
        take = [k for k in range(len(ids)) if not finished[k] and steps[k] > 0
                and steps[k] % self.snapshot_every == 0]
        if take:
            for k, a in zip(take, to_atoms(select(state, take))):
                frames.setdefault(ids[k], []).append(a)

    def _record(self, done, ids, reasons, conv, fmax, pressures, results) -> None:
        from lamcsp.relax.state import to_atoms

        atoms_list = to_atoms(done)
        energy = done.energy.detach().cpu().numpy()
        enthalpy = done.enthalpy.detach().cpu().numpy()
        steps = done.n_steps.cpu().numpy()
        forces = done.forces.detach().cpu().numpy()
        stress = done.stress.detach().cpu().numpy()
        counts = done.n_atoms_per_system.cpu().numpy()
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for k, i in enumerate(ids):
            if reasons[k] is not None:
                status = f"failed: {reasons[k]}"
            elif conv[k]:
                status = "converged"
            else:
                status = "max_steps"
            results[i] = RelaxResult(
                atoms=atoms_list[k],
                energy=float(energy[k]),
                enthalpy=float(enthalpy[k]),
                pressure_gpa=float(pressures[i]),
                converged=bool(conv[k]),
                steps=int(steps[k]),
                status=status,
                fmax=float(fmax[k]),
                forces=forces[bounds[k] : bounds[k + 1]],
                stress=stress[k],
            )


def relax(structures: Sequence[Any], potential: Potential, **kwargs: Any) -> list[RelaxResult]:
    """Shortcut: ``Relaxer(potential, **kwargs).relax(structures, pressure_gpa)``."""
    pressure = kwargs.pop("pressure_gpa", 0.0)
    return Relaxer(potential, **kwargs).relax(structures, pressure)


__all__ = ["EV_PER_A3_PER_GPA", "BatchedState", "RelaxResult", "Relaxer", "atoms_from_dict", "atoms_to_dict",
           "relax"]
