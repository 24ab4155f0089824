"""The oracle: the expensive reference (DFT through ASE, or an external code) that labels
structures for the fine-tune loop and verifies a campaign's answer.

An oracle is a plain-data spec: ``{"calculator": NAME, "options": {...}}`` (any ASE calculator by
name, as the ``ase`` model backend takes it: emt, gpaw, vasp, espresso, abacus, cp2k, or a
``module:Class`` path), or ``{"command": "mpirun -n 8 vasp_std", "input": "vasp", "output":
"vasp/outcar", "output_file": "OUTCAR"}`` (the structure written with ASE in the ``input`` format
in a fresh folder, the command run there, its output read with dpdata's ``output`` format).

Two executor tasks use it (:mod:`lamcsp.parallel`; in parallel under MPI):

* :class:`LabelTask`: one single point (energy, forces, stress) per structure, for training data.
* :class:`OracleTask`: the verification of a structure: a relaxation with the oracle (cell and
  atoms, ASE's optimizer through ``FrechetCellFilter`` at the structure's pressure) or one
  single point.

Oracle work is never lost. Labels stream back to the coordinator one structure at a time and
are appended to a :class:`Journal` the moment they arrive (the fine-tune loop's
``finetune/labels.jsonl``). Every oracle call of a relaxation is appended to that structure's own
journal (``verify/<oracle id>/<key>.jsonl``, written by the process that runs the oracle, as DFT
codes write their own files) the moment it returns; a relaxation interrupted by a kill is
replayed from its journal on ``--resume`` (:class:`JournaledCalculator`): the deterministic
optimizer retraces its steps from the stored results without calling the oracle, then goes on,
so the resumed relaxation makes exactly the calls the uninterrupted one would have made and ends
in the same structure.

Trust: an oracle ``command`` runs in a shell and a ``module:Class`` calculator is imported; a
campaign that names one is trusted like a script.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator

from lamcsp.errors import SetupError
from lamcsp.faults import fault

#: oracle optimizers (ASE's, run through FrechetCellFilter)
OPTIMIZERS = ("bfgs", "fire", "lbfgs")


def oracle_name(spec: dict[str, Any]) -> str:
    """A short readable name of an oracle spec (``emt``, ``gpaw``, ``command``)."""
    if "calculator" in spec:
        return str(spec["calculator"]).split(":")[-1].lower()
    return "command"


def oracle_id(spec: dict[str, Any], mode: str | None = None) -> str:
    """The identity of an oracle (and verification mode): its name and a hash of its settings,
    e.g. ``gpaw-1a2b3c4d``. Rows verified by one oracle are keyed by it, so verifying a run
    again with another oracle (or other settings) makes new rows."""
    text = json.dumps({"spec": spec, "mode": mode}, sort_keys=True, default=str)
    return f"{oracle_name(spec)}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def make_calculator(spec: dict[str, Any], field: str = "oracle") -> Any:
    """The ASE calculator of a ``calculator`` oracle spec (GPAW writes no text log unless its
    ``txt`` option says where)."""
    from lamcsp.potentials.ase_calc import make_ase_calculator

    options = dict(spec.get("options") or {})
    name = str(spec["calculator"])
    if name.lower() == "gpaw":
        options.setdefault("txt", None)
    return make_ase_calculator(name, field=field, **options)


def check_oracle(spec: dict[str, Any], field: str) -> None:
    """Fail now, naming ``field``, if the oracle cannot be built here (an unknown calculator, a
    missing package, options it refuses); a command oracle is checked when it runs."""
    if "calculator" in spec:
        from lamcsp.parallel import launcher_size

        if launcher_size() > 1:
            # under MPI the workers build it (serially, each in its own process): here, where
            # mpi4py runs, a code such as GPAW refuses to be built; its class is looked up only
            from lamcsp.potentials.ase_calc import ase_calculator_factory

            ase_calculator_factory(str(spec["calculator"]), field=field)
        else:
            make_calculator(spec, field=field)
    elif "command" not in spec:
        raise SetupError(field, "an oracle needs `calculator: NAME` or `command: ...`")


# -------------------------------------------------------------------------------- journal


class Journal:
    """An append-only file of JSON records, one per line, each on disk (flushed and fsynced)
    before :meth:`append` returns. A kill while writing leaves at most a partial last line,
    which :meth:`read` ignores and the next :meth:`append` cuts off."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._repaired = False

    def read(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.split("\n")[:-1]:  # the part after the last newline is not complete
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def append(self, record: dict[str, Any]) -> None:
        from lamcsp.store import plain

        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._repaired:
            self._repair()
        line = json.dumps(plain(record), allow_nan=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def _repair(self) -> None:
        """Cut a partial last line (a write killed half-way) so the next record starts a line."""
        self._repaired = True
        try:
            with open(self.path, "rb+") as fh:
                data = fh.read()
                if data and not data.endswith(b"\n"):
                    fh.truncate(data.rfind(b"\n") + 1)
        except FileNotFoundError:
            pass


def frame_record(atoms: Any, energy: float, forces: np.ndarray, stress: np.ndarray | None,
                 **extra: Any) -> dict[str, Any]:
    """One oracle evaluation as plain data: the structure and its energy (eV), forces (eV/Å)
    and stress (3x3, eV/Å³, ASE's sign; ``None`` when the oracle gives none)."""
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist(), "energy": float(energy),
            "forces": np.asarray(forces, dtype=float).tolist(),
            "stress": None if stress is None else np.asarray(stress, dtype=float).reshape(3, 3).tolist(),
            **extra}


def record_atoms(rec: dict[str, Any]) -> Any:
    """The labelled ``Atoms`` of a :func:`frame_record` (energy, forces, stress as single-point
    results)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    a = Atoms(numbers=rec["numbers"], positions=rec["positions"], cell=rec["cell"], pbc=rec["pbc"])
    results: dict[str, Any] = {"energy": float(rec["energy"]), "forces": np.asarray(rec["forces"])}
    if rec.get("stress") is not None:
        results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(rec["stress"]))
    a.calc = SinglePointCalculator(a, **results)
    return a


# -------------------------------------------------------------------------------- calculators


def _evaluate(calc: Any, atoms: Any, stress: bool = True) -> tuple[float, np.ndarray, np.ndarray | None]:
    a = atoms.copy()
    a.calc = calc
    e = float(a.get_potential_energy())
    f = np.asarray(a.get_forces(), dtype=float)
    s = np.asarray(a.get_stress(voigt=False), dtype=float) if stress else None
    if not (np.isfinite(e) and np.all(np.isfinite(f)) and (s is None or np.all(np.isfinite(s)))):
        raise ValueError("non-finite energy, forces or stress")
    return e, f, s


def _same_structure(rec: dict[str, Any], atoms: Any, tol: float = 1e-9) -> bool:
    return (list(rec["numbers"]) == atoms.numbers.tolist()
            and np.allclose(rec["cell"], atoms.cell.array, rtol=0.0, atol=tol)
            and np.allclose(rec["positions"], atoms.positions, rtol=0.0, atol=tol))


class JournaledCalculator(Calculator):
    """An oracle calculator whose every call is appended to a :class:`Journal`, and which
    first replays what an earlier, interrupted run journaled: while the structure asked for is
    the next one in the replay (same numbers, cell and positions to 1e-9 Å), the stored result
    is returned without calling the oracle; from the first difference on, the oracle is called.

    Attributes:
        calls: oracle calls made by this object; ``replayed``: results taken from the journal.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, oracle: Any, journal: Journal | None, replay: Sequence[dict[str, Any]] = ()):
        super().__init__()
        self.oracle = oracle
        self.journal = journal
        self.replay = list(replay)
        self.calls = 0
        self.replayed = 0

    def calculate(self, atoms: Any = None, properties: Any = ("energy",), system_changes: Any = None) -> None:
        from ase.calculators.calculator import all_changes
        from ase.stress import full_3x3_to_voigt_6_stress

        super().calculate(atoms, properties, system_changes if system_changes is not None else all_changes)
        atoms = self.atoms
        if self.replay and _same_structure(self.replay[0], atoms):
            rec = self.replay.pop(0)
            self.replayed += 1
        else:
            self.replay = []
            e, f, s = _evaluate(self.oracle, atoms)
            rec = frame_record(atoms, e, f, s)
            self.calls += 1
            if self.journal is not None:
                self.journal.append(rec)
                fault("oracle-step")
        self.results = {"energy": rec["energy"], "free_energy": rec["energy"],
                        "forces": np.asarray(rec["forces"]),
                        "stress": full_3x3_to_voigt_6_stress(np.asarray(rec["stress"]))}


Frame = tuple[Any, float, np.ndarray, "np.ndarray | None"]


def _run_command(spec: dict[str, Any], atoms: Any, all_frames: bool = False) -> list[Frame]:
    """Run a command oracle on ``atoms`` in a fresh folder; its output's last frame (or every
    frame, for a command that relaxes) as ``(atoms, energy, forces, stress)``."""
    import ase.io
    import dpdata

    base = spec.get("workdir")
    with tempfile.TemporaryDirectory(prefix="lamcsp-oracle-", dir=base) as tmp:
        fmt = spec.get("input", "vasp")
        name = {"vasp": "POSCAR", "espresso-in": "pw.in", "cif": "input.cif"}.get(fmt, "input")
        ase.io.write(os.path.join(tmp, spec.get("input_file", name)), atoms, format=fmt)
        rc = subprocess.run(
            spec["command"] if spec.get("shell", True) else shlex.split(spec["command"]),
            shell=spec.get("shell", True), cwd=tmp, capture_output=True, text=True,
            timeout=spec.get("timeout"),
        )
        if rc.returncode:
            raise RuntimeError(f"exit {rc.returncode}: {rc.stderr.strip()[-300:]}")
        out = os.path.join(tmp, spec.get("output_file", "OUTCAR"))
        system = dpdata.LabeledSystem(out, fmt=spec.get("output", "vasp/outcar"))
        structures: Any = system.to("ase/structure")
        frames = range(len(system)) if all_frames else [len(system) - 1]
        result = []
        for k in frames:
            a = structures[k]
            a.calc = None
            e = float(system["energies"][k])
            f = np.asarray(system["forces"][k], dtype=float)
            s = (-np.asarray(system["virials"][k], dtype=float) / a.get_volume()
                 if "virials" in system.data else None)
            result.append((a, e, f, s))
        return result


# -------------------------------------------------------------------------------- label task


class LabelTask:
    """The labelling task of an executor: items ``{"atoms": atoms_to_dict(a)}``, results
    ``{"ok", "energy", "forces", "stress", "error", "attempts", "seconds", "rank"}``.

    Spec: an oracle spec (module docstring), plus ``retries`` (default 1). A label that raises
    (or whose command fails) is retried that many times, then reported failed with its reason.
    """

    def __init__(self, spec: dict[str, Any], worker: Any = None):
        self.spec = dict(spec)
        self.retries = int(spec.get("retries", 1))
        if "calculator" in spec:
            self._calc = make_calculator(spec, field="finetune.oracle")
        elif "command" in spec:
            self._calc = None
        else:
            raise SetupError("finetune.oracle", "an oracle needs `calculator: NAME` or `command: ...`")

    def __call__(self, items: Sequence[dict[str, Any]], emit: Callable[[int, Any], None]) -> None:
        from lamcsp.relax.relaxer import atoms_from_dict

        for j, item in enumerate(items):
            atoms = atoms_from_dict(item["atoms"])
            t0 = time.perf_counter()
            errors = []
            result: dict[str, Any] = {"ok": False}
            for attempt in range(1, self.retries + 2):
                try:
                    e, f, s = self._label(atoms)
                    result = {"ok": True, "energy": e, "forces": f.tolist(),
                              "stress": None if s is None else s.tolist(), "attempts": attempt}
                    break
                except Exception as exc:  # noqa: BLE001 - any oracle failure is recorded
                    errors.append(f"{type(exc).__name__}: {exc}")
            if not result["ok"]:
                result = {"ok": False, "error": " | ".join(errors)[:500], "attempts": self.retries + 1}
            result["seconds"] = time.perf_counter() - t0
            result["rank"] = int(os.environ.get("LAMCSP_RANK", "0"))
            emit(j, result)

    def _label(self, atoms: Any) -> tuple[float, np.ndarray, np.ndarray | None]:
        if self._calc is not None:  # same atoms, same Cartesian frame: the forces are the frame's
            return _evaluate(self._calc, reduced_cell(atoms))
        _, e, f, s = _run_command(self.spec, atoms)[-1]
        return e, f, (np.zeros((3, 3)) if s is None else s)


def reduced_cell(atoms: Any) -> Any:
    """``atoms`` in its Niggli-reduced cell (a copy; the same crystal, atoms in the same order and
    Cartesian frame, so forces and stress are the original's), for the oracle: a search's cells
    can be very oblique (angles of 30-40 degrees after a cell relaxation), where plane-wave codes
    warn that results may be wrong and a k-point density gives a poor grid. Not fully periodic
    structures are returned as they are."""
    from ase.build.tools import niggli_reduce_cell

    a = atoms.copy()
    if not (a.pbc.all() and len(a)):
        return a
    _, op = niggli_reduce_cell(a.cell.array)  # ASE's reduced cell is rotated; op is not
    frac = np.linalg.solve(op, a.get_scaled_positions(wrap=False).T).T % 1.0 % 1.0
    a.set_cell(op.T @ a.cell.array, scale_atoms=False)
    a.set_scaled_positions(frac)
    return a


def label_task(oracle: dict[str, Any]) -> Any:
    """The executor task of an oracle spec (see :class:`LabelTask`)."""
    from lamcsp.parallel import Task

    return Task("lamcsp.oracle:LabelTask", dict(oracle))


# -------------------------------------------------------------------------------- verification task


class OracleTask:
    """The verification task of an executor: items ``{"atoms": atoms_to_dict(a), "pressure":
    GPa, "journal": path or None}``, results ``RelaxResult.to_dict()`` plus ``calls`` (oracle
    calls made), ``replayed`` (calls taken from the journal) and ``seconds``.

    Spec: ``oracle`` (an oracle spec), ``mode`` (``relax``: cell and atoms, ASE's ``optimizer``
    through ``FrechetCellFilter`` under the item's pressure, until ``fmax`` eV/Å or ``max_steps``;
    ``single_point``: one call at the given structure), ``optimizer``, ``fmax``, ``max_steps``
    (all required: :func:`oracle_task` fills them from the campaign's ``verify`` section).
    A command oracle in ``relax`` mode is expected to relax by itself (its own input, e.g. VASP's
    ``IBRION``/``ISIF``): its output's frames are its steps and the last is the result. An oracle
    that raises makes the result ``failed: REASON``; the batch goes on.
    """

    def __init__(self, spec: dict[str, Any], worker: Any = None):
        self.spec = dict(spec)
        self.oracle = dict(spec["oracle"])
        self.mode = str(spec["mode"])
        self._calc = (make_calculator(self.oracle, field="verify.oracle") if "calculator" in self.oracle
                      else None)

    def __call__(self, items: Sequence[dict[str, Any]], emit: Callable[[int, Any], None]) -> None:
        from lamcsp.relax.relaxer import atoms_from_dict

        for j, item in enumerate(items):
            t0 = time.perf_counter()
            atoms = reduced_cell(atoms_from_dict(item["atoms"]))
            journal = Journal(item["journal"]) if item.get("journal") else None
            result = self._verify(atoms, float(item["pressure"]), journal)
            result["seconds"] = time.perf_counter() - t0
            result["rank"] = int(os.environ.get("LAMCSP_RANK", "0"))
            emit(j, result)

    def _verify(self, atoms: Any, pressure: float, journal: Journal | None) -> dict[str, Any]:
        from lamcsp.relax.relaxer import RelaxResult
        from lamcsp.relax.state import EV_PER_A3_PER_GPA

        replay = journal.read() if journal is not None else []
        if self._calc is None:
            return self._command(atoms, pressure, journal, replay)
        calc = JournaledCalculator(self._calculator_for(atoms), journal, replay)
        a = atoms.copy()
        a.calc = calc
        steps, converged, status = 0, False, "single_point"
        try:
            if self.mode == "relax":
                converged, steps = self._relax(a, pressure)
                status = "converged" if converged else "max_steps"
            else:
                a.get_potential_energy()
            e = float(a.get_potential_energy())
            f = np.asarray(a.get_forces())
            s = np.asarray(a.get_stress(voigt=False))
            fmax = float(np.linalg.norm(f, axis=1).max()) if len(a) else 0.0
        except Exception as exc:  # noqa: BLE001 - an oracle failure is this structure's result
            e, f, s, fmax = float("nan"), np.zeros((len(a), 3)), np.zeros((3, 3)), float("nan")
            status = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        a.calc = None
        h = e + pressure * EV_PER_A3_PER_GPA * a.get_volume()
        out = RelaxResult(atoms=a, energy=e, enthalpy=h, pressure_gpa=pressure, converged=converged,
                          steps=steps, status=status, fmax=fmax, forces=f, stress=s).to_dict()
        return {**out, "calls": calc.calls, "replayed": calc.replayed}

    def _calculator_for(self, atoms: Any) -> Any:
        """The oracle for one structure. A k-point density (``kpts: {density: D}``, GPAW's and
        ASE's) is turned into the grid of the starting cell, kept for the whole relaxation: a
        grid that changed with the cell would make the energy surface jump under the optimizer."""
        kpts = (self.oracle.get("options") or {}).get("kpts")
        if self.mode != "relax" or not isinstance(kpts, dict) or "density" not in kpts:
            return self._calc
        from ase.calculators.calculator import kpts2sizeandoffsets

        size, _ = kpts2sizeandoffsets(atoms=atoms, density=float(kpts["density"]), gamma=kpts.get("gamma"),
                                      even=kpts.get("even"))
        fixed = {k: v for k, v in kpts.items() if k not in ("density", "even")}
        fixed["size"] = [int(n) for n in size]
        return make_calculator({**self.oracle, "options": {**self.oracle["options"], "kpts": fixed}},
                               field="verify.oracle")

    def _relax(self, atoms: Any, pressure: float) -> tuple[bool, int]:
        from ase.filters import FrechetCellFilter
        from ase.optimize import BFGS, FIRE, LBFGS
        from ase.units import GPa

        opt_cls = {"bfgs": BFGS, "fire": FIRE, "lbfgs": LBFGS}[str(self.spec["optimizer"])]
        filt = FrechetCellFilter(atoms, scalar_pressure=pressure * GPa)
        opt = opt_cls(filt, logfile=None)
        converged = bool(opt.run(fmax=float(self.spec["fmax"]), steps=int(self.spec["max_steps"])))
        return converged, int(opt.nsteps)

    def _command(self, atoms: Any, pressure: float, journal: Journal | None,
                 replay: list[dict[str, Any]]) -> dict[str, Any]:
        """A command oracle: one run (it relaxes by itself in ``relax`` mode); its frames are
        journaled, and a journal that already holds them is read instead of running again."""
        from lamcsp.relax.relaxer import RelaxResult
        from lamcsp.relax.state import EV_PER_A3_PER_GPA

        calls, frames = 0, []
        try:
            if replay and replay[-1].get("final"):
                frames = [(record_atoms(r), r["energy"], np.asarray(r["forces"]),
                           None if r.get("stress") is None else np.asarray(r["stress"])) for r in replay]
            else:
                frames = _run_command(self.oracle, atoms, all_frames=self.mode == "relax")
                calls = 1
                for k, (a, e, f, s) in enumerate(frames):
                    if journal is not None:
                        journal.append(frame_record(a, e, f, s, final=k == len(frames) - 1))
            a, e, f, s = frames[-1]
            a = a.copy()
            a.calc = None
            status = ("converged" if self.mode == "relax" else "single_point")
            fmax = float(np.linalg.norm(f, axis=1).max()) if len(a) else 0.0
        except Exception as exc:  # noqa: BLE001 - an oracle failure is this structure's result
            a, e, f, s, fmax = atoms.copy(), float("nan"), np.zeros((len(atoms), 3)), None, float("nan")
            status = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        s = np.zeros((3, 3)) if s is None else s
        h = e + pressure * EV_PER_A3_PER_GPA * a.get_volume()
        out = RelaxResult(atoms=a, energy=e, enthalpy=h, pressure_gpa=pressure,
                          converged=status == "converged", steps=max(0, len(frames) - 1), status=status,
                          fmax=fmax, forces=f, stress=s).to_dict()
        return {**out, "calls": calls, "replayed": 0 if calls else len(replay)}


def oracle_task(oracle: dict[str, Any], *, mode: str, optimizer: str, fmax: float, max_steps: int) -> Any:
    """The executor task that verifies structures with ``oracle`` (see :class:`OracleTask`); the
    settings have no defaults here: they are the campaign's ``verify`` section's
    (:class:`lamcsp.campaign.VerifySpec`)."""
    from lamcsp.parallel import Task

    return Task("lamcsp.oracle:OracleTask", {"oracle": dict(oracle), "mode": mode, "optimizer": optimizer,
                                              "fmax": float(fmax), "max_steps": int(max_steps)})
