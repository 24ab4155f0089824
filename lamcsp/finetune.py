"""The DP-GEN-style fine-tune loop's parts: committee, selection, labelling, data.

One iteration, for one chemical system (``FinetuneLoop`` ties them together)::

    candidates (relaxed hits and relaxation frames)
      -> committee: K models in one batched pass each -> max_devi_f, devi_e per structure
      -> classify: accurate (< lo), candidate ([lo, hi)), failed (>= hi)
      -> select: candidates + lowest-enthalpy hits in a window, cleaned, at most max_labels,
         diverse by fingerprint (farthest-point order)
      -> label (oracle: an ASE calculator by name, or a command whose output dpdata reads),
         through the executor's ``map`` (in parallel, under MPI too); a failure is retried once
      -> data (dpdata deepmd/npy + extxyz with provenance, per system and iteration)
      -> fine-tune K models (the backend's trainer) -> registry -> the search goes on

DP-GEN's deviation: for each atom the root-mean-square distance of the K force vectors from
their mean, ``sqrt(mean_k |f_k - <f>|^2)``; ``max_devi_f`` is its maximum over atoms. The energy
deviation is the standard deviation over models of the energy per atom.
"""

from __future__ import annotations

import dataclasses
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

from lamcsp.errors import SetupError

# -------------------------------------------------------------------------------- committee


@dataclasses.dataclass
class Deviation:
    """Committee statistics of S structures: ``max_devi_f`` (S,) eV/Å, ``devi_e`` (S,) eV/atom,
    ``energy`` (S,) the committee's mean energy per atom, ``forces`` per structure (mean)."""

    max_devi_f: np.ndarray
    devi_e: np.ndarray
    energy: np.ndarray
    forces: list[np.ndarray]


def force_deviation(forces: np.ndarray) -> np.ndarray:
    """DP-GEN's per-atom force deviation of ``forces`` (K models, n atoms, 3):
    ``sqrt(mean_k |f_k - <f>|^2)``, shape (n,)."""
    f = np.asarray(forces, dtype=float)
    return np.sqrt(((f - f.mean(axis=0)) ** 2).sum(axis=-1).mean(axis=0))


class Committee:
    """K potentials evaluated on the same structures, one batched call per model.

    Args:
        potentials: the members (fine-tuned copies with different seeds, or several heads of
            one model); any :class:`~lamcsp.potentials.base.Potential`.
    """

    def __init__(self, potentials: Sequence[Any]):
        if len(potentials) < 2:
            raise SetupError(
                "finetune.committee", f"a committee needs at least 2 models, got {len(potentials)}"
            )
        self.potentials = list(potentials)

    def __len__(self) -> int:
        return len(self.potentials)

    def evaluate(self, structures: Sequence[Any]) -> Deviation:
        import torch

        from lamcsp.relax.state import from_structures

        if not structures:
            z = np.zeros(0)
            return Deviation(z, z, z, [])
        counts = np.array([len(a) for a in structures])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        energies, forces = [], []
        for pot in self.potentials:
            state = from_structures(list(structures), dtype=torch.float64, device=pot.device)
            out = pot(state)
            energies.append(out["energy"].detach().cpu().numpy() / counts)
            forces.append(out["forces"].detach().cpu().numpy())
        E = np.stack(energies)  # (K, S)
        F = np.stack(forces)  # (K, N, 3)
        per_atom = force_deviation(F)
        max_devi = np.array([per_atom[s : s + n].max() for s, n in zip(starts, counts)])
        mean_f = F.mean(axis=0)
        return Deviation(
            max_devi, E.std(axis=0), E.mean(axis=0), [mean_f[s : s + n] for s, n in zip(starts, counts)]
        )


def classify(max_devi_f: np.ndarray, lo: float, hi: float) -> dict[str, float]:
    """Fractions of structures that are accurate (< lo), candidates ([lo, hi)) and failed (>= hi)."""
    d = np.asarray(max_devi_f, dtype=float)
    n = max(1, len(d))
    return {
        "accurate": float((d < lo).sum() / n),
        "candidate": float(((d >= lo) & (d < hi)).sum() / n),
        "failed": float((d >= hi).sum() / n),
    }


# -------------------------------------------------------------------------------- selection


def sane(
    atoms: Any, min_distance: float = 0.6, volume_per_atom: tuple[float, float] = (2.0, 200.0)
) -> str | None:
    """Why a frame must not go to the oracle (too-close atoms, a broken cell), or ``None``."""
    cell = np.asarray(atoms.cell.array, dtype=float)
    if not np.all(np.isfinite(cell)) or not np.all(np.isfinite(atoms.positions)):
        return "non-finite cell or positions"
    vol = abs(float(np.linalg.det(cell)))
    v = vol / max(1, len(atoms))
    if not volume_per_atom[0] <= v <= volume_per_atom[1]:
        return f"volume {v:.2f} Å^3/atom outside {volume_per_atom[0]}-{volume_per_atom[1]}"
    lengths = np.linalg.norm(cell, axis=1)
    if lengths.min() < 1.0 or vol / np.prod(lengths) < 0.05:
        return "degenerate cell"
    dmin = float(lengths.min())  # an atom and its own periodic image
    if len(atoms) > 1:
        d = atoms.get_all_distances(mic=True)
        np.fill_diagonal(d, np.inf)
        dmin = min(dmin, float(d.min()))
    if dmin < min_distance:
        return f"atoms {dmin:.2f} Å apart (< {min_distance})"
    return None


def farthest_point_order(fingerprints: np.ndarray, first: int = 0) -> list[int]:
    """Indices in farthest-point order (each next one the farthest from those taken)."""
    X = np.asarray(fingerprints, dtype=float)
    n = len(X)
    if n == 0:
        return []
    order = [first]
    dist = np.linalg.norm(X - X[first], axis=1)
    while len(order) < n:
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0 and nxt in order:
            rest = [i for i in range(n) if i not in order]
            order.extend(rest)
            break
        order.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(X - X[nxt], axis=1))
        dist[order] = -1.0
    return order


@dataclasses.dataclass
class Selection:
    """What one iteration sends to the oracle, and why the rest was not sent."""

    chosen: list[int]  # indices into the candidates, in selection order
    reasons: dict[int, str]  # index -> why it was left out
    fractions: dict[str, float]  # accurate / candidate / failed over all candidates


def select(
    structures: Sequence[Any],
    deviation: Deviation | None,
    enthalpy: Sequence[float],
    *,
    lo: float,
    hi: float,
    window: float,
    max_labels: int | None,
    fingerprints: np.ndarray | None = None,
    already: set[int] | None = None,
    excess: Sequence[float] | None = None,
    max_energy: float | None = None,
) -> Selection:
    """DP-GEN's selection plus CSP's low-enthalpy hits.

    A structure is selected when ``lo <= max_devi_f < hi``, or when its ``enthalpy`` per atom
    (NaN for a frame that is not a relaxed hit) is within ``window`` eV/atom of the lowest (the
    hits a search must get right, whatever the committee says; give the energy above the hull
    for a variable-composition search). ``already`` (indices labelled in an earlier iteration)
    are not labelled again; an uncertain frame whose ``excess`` (enthalpy per atom above the
    best hit of its composition and pressure, by the committee) is over ``max_energy`` is left
    out: far up the slope of a random start, it says little about the basins the search keeps.
    Without a committee (the first iteration) every relaxed hit may be selected (the initial
    data), the low-enthalpy ones first. Frames that fail :func:`sane` are cleaned
    out first. If more than ``max_labels`` remain, the low-enthalpy hits come first, then the
    rest in farthest-point order of ``fingerprints`` (diverse), else by decreasing deviation.
    """
    n = len(structures)
    reasons: dict[int, str] = {}
    H = np.asarray(enthalpy, dtype=float)
    hmin = np.nanmin(H) if n else 0.0
    low = [i for i in range(n) if np.isfinite(H[i]) and H[i] <= hmin + window]
    if deviation is not None:
        d = deviation.max_devi_f
        uncertain = [i for i in range(n) if lo <= d[i] < hi]
        for i in range(n):
            if d[i] >= hi:
                reasons[i] = f"max_devi_f {d[i]:.3f} >= trust_hi"
        fractions = classify(d, lo, hi)
    else:
        uncertain = []
        fractions = {"accurate": 0.0, "candidate": 1.0, "failed": 0.0}
    if deviation is None:  # the first iteration, no committee yet: every sane hit may go (DP-GEN's
        # initial data), the lowest first, then the most diverse, up to max_labels
        uncertain = [i for i in range(n) if np.isfinite(H[i])]
    picked = []
    for i in sorted(set(low) | set(uncertain), key=lambda i: (i not in low, H[i])):
        if already and i in already:
            reasons[i] = "labelled before"
            continue
        why = sane(structures[i])
        if not why and i not in low and excess is not None and max_energy is not None \
                and np.isfinite(excess[i]) and excess[i] > max_energy:
            why = f"{excess[i]:.2f} eV/atom above the best hit (> max_energy)"
        if why:
            reasons[i] = why
            continue
        picked.append(i)
    if max_labels is not None and len(picked) > max_labels:
        first = [i for i in picked if i in low]
        rest = [i for i in picked if i not in low]
        if fingerprints is not None and rest:
            order = farthest_point_order(np.asarray(fingerprints)[rest])
            rest = [rest[k] for k in order]
        elif deviation is not None:
            rest.sort(key=lambda i: -deviation.max_devi_f[i])
        keep = (first + rest)[:max_labels]
        for i in picked:
            if i not in keep:
                reasons[i] = "over max_labels"
        picked = keep
    for i in range(n):
        if i not in picked and i not in reasons:
            reasons[i] = (
                "accurate" if deviation is not None and deviation.max_devi_f[i] < lo else "not low enough"
            )
    return Selection(picked, reasons, fractions)


# -------------------------------------------------------------------------------- labelling


class LabelTask:
    """The labelling task of an executor: items ``{"atoms": atoms_to_dict(a)}``, results
    ``{"ok", "energy", "forces", "stress", "error", "attempts", "seconds", "rank"}``.

    Spec: ``{"calculator": NAME, "options": {...}}`` (any ASE calculator by name, as the
    ``ase`` model backend takes it: emt, gpaw, vasp, espresso, abacus, cp2k, ...), or
    ``{"command": "mpirun -n 4 vasp_std", "input": "vasp", "output": "vasp/outcar",
    "output_file": "OUTCAR"}`` (the structure written with ASE in the ``input`` format in a fresh
    folder, the command run there, the output read with dpdata's ``output`` format). A label
    that raises (or whose command fails) is retried once, then reported failed with its reason.
    """

    def __init__(self, spec: dict[str, Any], worker: Any = None):
        self.spec = dict(spec)
        self.retries = int(spec.get("retries", 1))
        if "calculator" in spec:
            from lamcsp.potentials.ase_calc import make_ase_calculator

            self._calc = make_ase_calculator(spec["calculator"], field="finetune.oracle",
                                             **spec.get("options", {}))
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
                    result = {
                        "ok": True,
                        "energy": e,
                        "forces": f.tolist(),
                        "stress": s.tolist(),
                        "attempts": attempt,
                    }
                    break
                except Exception as exc:  # noqa: BLE001 - any oracle failure is recorded
                    errors.append(f"{type(exc).__name__}: {exc}")
            if not result["ok"]:
                result = {"ok": False, "error": " | ".join(errors)[:500], "attempts": self.retries + 1}
            result["seconds"] = time.perf_counter() - t0
            result["rank"] = int(os.environ.get("LAMCSP_RANK", "0"))
            emit(j, result)

    def _label(self, atoms: Any) -> tuple[float, np.ndarray, np.ndarray]:
        if self._calc is not None:
            a = atoms.copy()
            a.calc = self._calc
            e = float(a.get_potential_energy())
            f = np.asarray(a.get_forces(), dtype=float)
            s = np.asarray(a.get_stress(voigt=False), dtype=float)
            if not (np.isfinite(e) and np.all(np.isfinite(f)) and np.all(np.isfinite(s))):
                raise ValueError("non-finite energy, forces or stress")
            return e, f, s
        return self._run_command(atoms)

    def _run_command(self, atoms: Any) -> tuple[float, np.ndarray, np.ndarray]:
        import ase.io
        import dpdata

        spec = self.spec
        base = spec.get("workdir")
        with tempfile.TemporaryDirectory(prefix="lamcsp-label-", dir=base) as tmp:
            fmt = spec.get("input", "vasp")
            name = {"vasp": "POSCAR", "espresso-in": "pw.in", "cif": "input.cif"}.get(fmt, "input")
            ase.io.write(os.path.join(tmp, spec.get("input_file", name)), atoms, format=fmt)
            rc = subprocess.run(
                spec["command"] if spec.get("shell", True) else shlex.split(spec["command"]),
                shell=spec.get("shell", True),
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=spec.get("timeout"),
            )
            if rc.returncode:
                raise RuntimeError(f"exit {rc.returncode}: {rc.stderr.strip()[-300:]}")
            out = os.path.join(tmp, spec.get("output_file", "OUTCAR"))
            system = dpdata.LabeledSystem(out, fmt=spec.get("output", "vasp/outcar"))
            e = float(system["energies"][-1])
            f = np.asarray(system["forces"][-1], dtype=float)
            vir = (
                np.asarray(system["virials"][-1], dtype=float)
                if "virials" in system.data
                else np.zeros((3, 3))
            )
            return e, f, -vir / atoms.get_volume()


def label_task(oracle: dict[str, Any]) -> Any:
    """The executor task of an oracle spec (see :class:`LabelTask`)."""
    from lamcsp.parallel import Task

    return Task("lamcsp.finetune:LabelTask", dict(oracle))


# -------------------------------------------------------------------------------- data


def labelled_atoms(atoms: Any, label: dict[str, Any], **info: Any) -> Any:
    """``atoms`` with the oracle's energy, forces and stress as single-point results and the
    provenance in ``atoms.info``."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    a = atoms.copy()
    a.info = {k: v for k, v in info.items() if v is not None}
    a.calc = SinglePointCalculator(
        a,
        energy=float(label["energy"]),
        forces=np.asarray(label["forces"]),
        stress=full_3x3_to_voigt_6_stress(np.asarray(label["stress"])),
    )
    return a


class Dataset:
    """Labelled frames of one chemical system under ``root`` (``run/finetune/data/<system>``):
    per iteration a dpdata ``deepmd/npy`` folder (``iter-NNN/npy/<formula>``) and an extxyz
    file with provenance (``iter-NNN/frames.extxyz``: iteration, source, oracle); on
    ``--resume`` the earlier iterations are read back, not labelled again."""

    def __init__(self, root: str | os.PathLike, type_map: Sequence[str]):
        self.root = Path(root)
        self.type_map = list(type_map)

    def iteration_dir(self, it: int) -> Path:
        return self.root / f"iter-{it:03d}"

    def add(self, it: int, frames: Sequence[Any]) -> list[Path]:
        import ase.io

        from lamcsp.potentials.deepmd import write_frames

        d = self.iteration_dir(it)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "frames.extxyz.tmp"
        ase.io.write(tmp, list(frames), format="extxyz")
        systems = write_frames(frames, d / "npy", self.type_map) if frames else []
        os.replace(tmp, d / "frames.extxyz")
        return systems

    def iterations(self) -> list[int]:
        return sorted(int(p.name[5:]) for p in self.root.glob("iter-*") if (p / "frames.extxyz").is_file())

    def frames(self, upto: int | None = None) -> list[Any]:
        import ase.io

        out = []
        for it in self.iterations():
            if upto is None or it <= upto:
                out += ase.io.read(self.iteration_dir(it) / "frames.extxyz", ":")
        return out

    def systems(self, upto: int | None = None) -> list[Path]:
        out = []
        for it in self.iterations():
            if upto is None or it <= upto:
                out += sorted(
                    p for p in (self.iteration_dir(it) / "npy").glob("*") if (p / "type.raw").is_file()
                )
        return out


# -------------------------------------------------------------------------------- registry


class ModelRegistry:
    """The models of one chemical system (``run/finetune/models.json``): per iteration the
    committee's model files, the parent, the data it was trained on, and its errors against the
    oracle on that iteration's labels."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: list[dict[str, Any]] = json.loads(self.path.read_text()) if self.path.is_file() else []

    def add(self, entry: dict[str, Any]) -> None:
        self.entries = [e for e in self.entries if e["iteration"] != entry["iteration"]] + [entry]
        self.entries.sort(key=lambda e: e["iteration"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, default=str))
        os.replace(tmp, self.path)

    def latest(self) -> dict[str, Any] | None:
        return self.entries[-1] if self.entries else None


def _excess(structures: Sequence[Any], energy: np.ndarray, enthalpy: Sequence[float],
            pressures: Sequence[float] | None) -> np.ndarray:
    """Enthalpy per atom by the committee (mean energy + pV) above the lowest relaxed hit
    (finite ``enthalpy``) of the same composition and pressure; NaN where there is no such hit."""
    from lamcsp.io import reduced_formula
    from lamcsp.relax.state import EV_PER_A3_PER_GPA

    p = np.zeros(len(structures)) if pressures is None else np.asarray(pressures, dtype=float)
    h = np.array([e + pi * EV_PER_A3_PER_GPA * a.get_volume() / len(a)
                  for e, pi, a in zip(energy, p, structures)])
    keys = [(reduced_formula(a.get_chemical_formula()), round(float(pi), 6)) for a, pi in zip(structures, p)]
    best: dict[tuple[str, float], float] = {}
    for k, hi, h0 in zip(keys, h, enthalpy):
        if np.isfinite(h0):
            best[k] = min(best.get(k, np.inf), hi)
    return np.array([hi - best.get(k, np.nan) for k, hi in zip(keys, h)])


def force_rmse(predicted: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Root-mean-square force error over all atoms and components, eV/Å."""
    p = np.concatenate([np.asarray(x).reshape(-1) for x in predicted]) if predicted else np.zeros(0)
    r = np.concatenate([np.asarray(x).reshape(-1) for x in reference]) if reference else np.zeros(0)
    return float(np.sqrt(np.mean((p - r) ** 2))) if len(p) else float("nan")


# -------------------------------------------------------------------------------- trainers


class DeePMDTrainer:
    """Fine-tunes a DeePMD-kit model into K committee members (seeds 1..K), through
    :func:`lamcsp.potentials.deepmd.finetune`: the first iteration fine-tunes the pretrained
    checkpoint (``--finetune``, ``--model-branch HEAD`` for a multi-head model), later ones
    continue each member from its last checkpoint (``--init-model``) on all data so far."""

    backend = "deepmd"

    def __init__(
        self,
        model: str | os.PathLike,
        head: str | None = None,
        *,
        steps: int = 1000,
        learning_rate: tuple[float, float] = (1e-3, 1e-5),
        threads: int | None = None,
    ):
        self.model = Path(model)
        self.head = head
        self.steps = steps
        self.learning_rate = learning_rate
        self.threads = threads

    def train(
        self, systems: Sequence[Path], workdir: Path, members: int, parents: Sequence[str] | None = None
    ) -> list[str]:
        from lamcsp.potentials.deepmd import finetune

        out = []
        for k in range(members):
            work = workdir / f"member-{k}"
            if parents:
                start = Path(parents[k]).parent / "model.ckpt.pt"
                finetune(
                    start,
                    systems,
                    work,
                    init=True,
                    steps=self.steps,
                    seed=k + 1,
                    learning_rate=self.learning_rate,
                    threads=self.threads,
                )
            else:
                finetune(
                    self.model,
                    systems,
                    work,
                    head=self.head,
                    steps=self.steps,
                    seed=k + 1,
                    learning_rate=self.learning_rate,
                    threads=self.threads,
                )
            out.append(str(work / "model.pth"))
        return out

    def spec(self, path: str) -> dict[str, Any]:
        """The campaign ``model`` section of a trained member."""
        return {"backend": "deepmd", "path": path, "head": None}


class CHGNetTrainer:
    """Fine-tunes CHGNet (its own ``chgnet.trainer.Trainer``, energy + forces + stress and the
    composition model, from the pretrained weights each iteration, on all data so far) into K
    members with torch and data seeds 1..K, member k > 0 on a bootstrap resample of the frames;
    each member is saved with ``torch.save(model.as_dict())``, which the ``chgnet``
    backend loads as ``chgnet:PATH``."""

    backend = "chgnet"

    def __init__(self, model: str = "0.3.0", *, epochs: int = 30, learning_rate: float = 3e-4,
                 batch_size: int = 8, stress_loss_ratio: float = 0.1, device: str | None = None):
        self.model = model
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.device = device  # None: CHGNet picks (a GPU when there is one)
        self.stress_loss_ratio = stress_loss_ratio
        self.batch_size = batch_size

    def train(
        self, frames: Sequence[Any], workdir: Path, members: int, parents: Sequence[str] | None = None
    ) -> list[str]:
        import contextlib
        import io

        import torch
        from chgnet.data.dataset import StructureData, collate_graphs
        from chgnet.trainer import Trainer
        from pymatgen.io.ase import AseAtomsAdaptor
        from torch.utils.data import DataLoader

        from lamcsp.potentials.chgnet import GPA_PER_EV_A3, _load_chgnet

        structures = [AseAtomsAdaptor.get_structure(a) for a in frames]
        energies = [a.get_potential_energy() / len(a) for a in frames]
        forces = [a.get_forces().tolist() for a in frames]
        # CHGNet's StructureData takes VASP's stress (kBar, compressive positive) and converts it
        # with x(-0.1) to its own GPa, which is ASE's sign convention: so -10 x ASE's in GPa
        stresses = [(-10.0 * GPA_PER_EV_A3 * a.get_stress(voigt=False)).tolist() for a in frames]
        out = []
        for k in range(members):
            work = workdir / f"member-{k}"
            work.mkdir(parents=True, exist_ok=True)
            net, _ = _load_chgnet(self.model)
            log = io.StringIO()
            with contextlib.redirect_stdout(log):
                data = StructureData(structures, energies, forces, stresses=stresses, shuffle=False)

            # bagging: member k trains on its own bootstrap resample of the frames (member 0 on
            # all of them), so members disagree where the data is thin
            rng = np.random.default_rng(k + 1)
            idx = np.arange(len(frames)) if k == 0 else rng.integers(0, len(frames), len(frames))
            g = torch.Generator().manual_seed(k + 1)
            loader = DataLoader(torch.utils.data.Subset(data, idx.tolist()), batch_size=self.batch_size,
                                shuffle=True, collate_fn=collate_graphs, generator=g)
            trainer = Trainer(
                model=net,
                targets="efs",
                stress_loss_ratio=self.stress_loss_ratio,
                optimizer="Adam",
                scheduler="CosLR",
                criterion="MSE",
                epochs=self.epochs,
                learning_rate=self.learning_rate,
                use_device=self.device,
                torch_seed=k + 1,
                data_seed=k + 1,
                print_freq=10**6,
            )
            with contextlib.redirect_stdout(log):
                _refit_atom_ref(net, structures, energies)
                trainer.train(loader, loader, save_dir=str(work), train_composition_model=False)
            (work / "train.log").write_text(log.getvalue())
            path = work / "model.pt"
            torch.save(trainer.model.as_dict(), path)
            out.append(str(path))
        return out

    def spec(self, path: str) -> dict[str, Any]:
        return {"backend": "chgnet", "path": path, "head": None}


def _refit_atom_ref(net: Any, structures: Sequence[Any], energies: Sequence[float]) -> None:
    """Shift CHGNet's per-element reference energies (its composition model, energy per atom
    linear in the element fractions) by the least-squares fit of the oracle's energies minus
    the model's: the oracle's energy zero is not the pretrained data's (another functional, a
    pseudopotential set, or EMT), and training the network on that offset would wreck it."""
    import torch

    pred = net.predict_structure(list(structures), task="e", batch_size=16)
    pred = pred if isinstance(pred, list) else [pred]
    residual = np.asarray(energies, dtype=float) - np.array([float(p["e"]) for p in pred])
    zs = sorted({site.specie.Z for s in structures for site in s})
    X = np.array([[sum(1 for site in s if site.specie.Z == z) / len(s) for z in zs] for s in structures])
    delta, *_ = np.linalg.lstsq(X, residual, rcond=None)
    with torch.no_grad():
        w = net.composition_model.fc.weight
        for z, d in zip(zs, delta):
            w[0, z - 1] += float(d)


# -------------------------------------------------------------------------------- one iteration


@dataclasses.dataclass
class IterationResult:
    iteration: int
    selected: int
    labelled: int
    failed_labels: int
    fractions: dict[str, float]
    errors_before: dict[str, float]
    models: list[str]
    converged: bool


class FinetuneLoop:
    """The fine-tune loop of one chemical system: iterations of select -> label -> train.

    Args:
        root: its folder (``run/finetune``; a campaign is one chemical system): ``data/``,
            ``models/iter-NNN/``, ``models.json``, ``iterations.json``.
        type_map: the elements of the system (the data's type map).
        executor: runs the labelling (``map``): serial, or MPI ranks.
        oracle: the labeller spec (:class:`LabelTask`).
        trainer: :class:`DeePMDTrainer`, :class:`CHGNetTrainer`, or anything with
            ``train(data, workdir, members, parents) -> [model paths]`` and ``backend``.
        make_potential: model path -> Potential (the committee members).
        members: committee size K.
        lo, hi, window, max_labels, conv_accuracy, max_iterations, max_energy: as the
            campaign's ``finetune`` section.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        type_map: Sequence[str],
        executor: Any,
        oracle: dict[str, Any],
        trainer: Any,
        make_potential: Callable[[str], Any],
        *,
        members: int = 4,
        lo: float = 0.05,
        hi: float = 0.50,
        window: float = 0.1,
        max_labels: int | None = 20,
        conv_accuracy: float = 0.9,
        max_iterations: int = 5,
        max_energy: float | None = 1.0,
    ):
        self.root = Path(root).absolute()  # model paths in the registry are absolute
        self.data = Dataset(self.root / "data", type_map)
        self.registry = ModelRegistry(self.root / "models.json")
        self.executor = executor
        self.oracle = dict(oracle)
        self.trainer = trainer
        self.make_potential = make_potential
        self.members = members
        self.lo, self.hi, self.window = lo, hi, window
        self.max_labels = max_labels
        self.max_energy = max_energy
        self.conv_accuracy = conv_accuracy
        self.max_iterations = max_iterations
        self.log_path = self.root / "iterations.json"
        self.log: list[dict[str, Any]] = (
            json.loads(self.log_path.read_text()) if self.log_path.is_file() else []
        )

    @property
    def iteration(self) -> int:
        return len(self.log)

    @property
    def done(self) -> bool:
        return bool(self.log and self.log[-1]["converged"]) or self.iteration >= self.max_iterations

    def committee(self) -> Committee | None:
        latest = self.registry.latest()
        if not latest:
            return None
        return Committee([self.make_potential(p) for p in latest["models"]])

    def step(
        self,
        structures: Sequence[Any],
        enthalpy: Sequence[float],
        sources: Sequence[str],
        fingerprints: np.ndarray | None = None,
        pressures: Sequence[float] | None = None,
    ) -> IterationResult:
        """One iteration on the search's candidates (relaxed hits, ``enthalpy`` finite, and
        relaxation frames, NaN; ``sources`` name them, ``pressures`` in GPa): select, label
        through the executor, store the data, train the committee, register it. A source
        labelled in an earlier iteration is not labelled again."""
        from lamcsp.relax.relaxer import atoms_to_dict

        it = self.iteration
        committee = self.committee()
        deviation = committee.evaluate(structures) if committee is not None else None
        done = {str(f.info.get("source")) for f in self.data.frames()}
        excess = None
        if deviation is not None:
            excess = _excess(structures, deviation.energy, enthalpy, pressures)
        sel = select(
            structures,
            deviation,
            enthalpy,
            lo=self.lo,
            hi=self.hi,
            window=self.window,
            max_labels=self.max_labels,
            fingerprints=fingerprints,
            already={i for i, src in enumerate(sources) if src in done},
            excess=excess,
            max_energy=self.max_energy,
        )
        converged = committee is not None and sel.fractions["accurate"] >= self.conv_accuracy
        chosen = [] if converged else sel.chosen
        labels = self.executor.map(
            label_task(self.oracle),
            [{"atoms": atoms_to_dict(structures[i])} for i in chosen],
            labels=[sources[i] for i in chosen],
        )
        frames, failed = [], []
        for i, lab in zip(chosen, labels):
            if lab and lab["ok"]:
                frames.append(
                    labelled_atoms(
                        structures[i],
                        lab,
                        iteration=it,
                        source=sources[i],
                        oracle=json.dumps(self.oracle, sort_keys=True, default=str),
                    )
                )
            else:
                failed.append({"source": sources[i], "error": (lab or {}).get("error", "no result")})
        errors_before: dict[str, float] = {}
        if frames and deviation is not None:  # the committee in use, against the oracle's new labels
            pred = [deviation.forces[i] for i, lab in zip(chosen, labels) if lab and lab["ok"]]
            errors_before["force_rmse"] = force_rmse(pred, [f.get_forces() for f in frames])
            e_pred = np.array([deviation.energy[i] for i, lab in zip(chosen, labels) if lab and lab["ok"]])
            e_ref = np.array([f.get_potential_energy() / len(f) for f in frames])
            errors_before["energy_rmse_per_atom"] = float(np.sqrt(np.mean((e_pred - e_ref) ** 2)))
        models: list[str] = []
        if frames:
            self.data.add(it, frames)
            latest = self.registry.latest()
            workdir = self.root / "models" / f"iter-{it:03d}"
            data = self.data.systems() if self.trainer.backend == "deepmd" else self.data.frames()
            models = self.trainer.train(data, workdir, self.members, latest["models"] if latest else None)
            self.registry.add(
                {
                    "iteration": it,
                    "models": models,
                    "parent": latest["models"] if latest else None,
                    "data": [str(p) for p in self.data.systems()],
                    "n_frames": len(self.data.frames()),
                    "errors_before": errors_before,
                    "backend": self.trainer.backend,
                }
            )
        result = IterationResult(
            it, len(chosen), len(frames), len(failed), sel.fractions, errors_before, models, converged
        )
        self.log.append({**dataclasses.asdict(result), "failed": failed})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.log_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.log, indent=1, default=float))
        os.replace(tmp, self.log_path)
        return result
