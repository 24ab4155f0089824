"""The DP-GEN-style fine-tune loop's parts: committee, selection, labelling, data.

One iteration, for one chemical system (``FinetuneLoop`` ties them together)::

    candidates (relaxed hits and relaxation frames)
      -> committee: K models in one batched pass each -> max_devi_f, devi_e per structure
      -> classify: accurate (< lo), candidate ([lo, hi)), failed (>= hi)
      -> select: candidates + lowest-enthalpy hits in a window, cleaned, at most max_labels,
         diverse by fingerprint (farthest-point order)
      -> label (lamcsp.oracle: an ASE calculator by name, or a command whose output dpdata
         reads), through the executor's ``map`` (in parallel, under MPI too); a failure is
         retried once; each label journaled (labels.jsonl) the moment it returns
      -> data (dpdata deepmd/npy + extxyz with provenance, per system and iteration), with the
         verification's oracle frames (free labels)
      -> fine-tune K models (lamcsp.trainers) -> registry -> the search goes on

DP-GEN's deviation: for each atom the root-mean-square distance of the K force vectors from
their mean, ``sqrt(mean_k |f_k - <f>|^2)``; ``max_devi_f`` is its maximum over atoms. The energy
deviation is the standard deviation over models of the energy per atom.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lamcsp.campaign.loop import FinetuneSpec
from lamcsp.errors import SetupError
from lamcsp.faults import fault

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
    """K models evaluated on the same structures, one batched pass per model.

    Args:
        potentials: the members (fine-tuned copies with different seeds, or several heads of
            one model): each a :class:`~lamcsp.potentials.base.Potential` (evaluated in this
            process) or, with an ``executor``, a campaign ``model`` section evaluated through
            its ``evaluate`` (on the workers under MPI).
        executor: the executor (:class:`lamcsp.parallel.Executor`) for members given as
            ``model`` sections.
    """

    def __init__(self, potentials: Sequence[Any], executor: Any = None):
        if len(potentials) < 2:
            raise SetupError(
                "finetune.committee", f"a committee needs at least 2 models, got {len(potentials)}"
            )
        self.potentials = list(potentials)
        self.executor = executor

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
            if callable(pot):  # a Potential, here
                state = from_structures(list(structures), dtype=torch.float64, device=pot.device)
                out = pot(state)
                energies.append(out["energy"].detach().cpu().numpy() / counts)
                forces.append(out["forces"].detach().cpu().numpy())
                continue
            if self.executor is None:
                raise TypeError("a committee member given as a model section needs an executor")
            points = self.executor.evaluate(list(structures), [0.0] * len(structures), model=pot)
            energies.append(np.array([p.energy for p in points]) / counts)
            forces.append(np.concatenate([p.forces for p in points]))
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
    near_minimum: set[int] | None = None,
) -> Selection:
    """DP-GEN's selection plus CSP's low-enthalpy hits.

    A structure is selected when ``lo <= max_devi_f < hi``, or when its ``enthalpy`` per atom
    (NaN for a frame that is not a relaxed hit) is within ``window`` eV/atom of the lowest (the
    hits a search must get right, whatever the committee says; give the energy above the hull
    for a variable-composition search). ``already`` (indices labelled in an earlier iteration)
    are not labelled again; an uncertain frame whose ``excess`` (enthalpy per atom above the
    best hit of its composition and pressure, by the committee) is over ``max_energy`` is left
    out: far up the slope of a random start, it says little about the basins the search keeps.
    ``near_minimum`` (relaxation frames close to a low-enthalpy hit's minimum) are selected with
    the low-enthalpy hits, whatever the committee says: the energy differences between the
    competitors decide the ranking. Without a committee (the first iteration) every relaxed hit
    may be selected (the initial data), the low-enthalpy ones first. Frames that fail
    :func:`sane` are cleaned out first. If more than ``max_labels`` remain, the low-enthalpy hits
    come first, then the rest in farthest-point order of ``fingerprints`` (diverse), else by
    decreasing deviation.
    """
    n = len(structures)
    reasons: dict[int, str] = {}
    H = np.asarray(enthalpy, dtype=float)
    hmin = np.nanmin(H) if n else 0.0
    low = [i for i in range(n) if np.isfinite(H[i]) and H[i] <= hmin + window]
    low += sorted(set(near_minimum or ()) - set(low))
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
    for i in sorted(set(low) | set(uncertain),
                    key=lambda i: (i not in low, np.isnan(H[i]), np.nan_to_num(H[i]), i)):
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


# -------------------------------------------------------------------------------- data


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
        import shutil

        import ase.io

        from lamcsp.potentials.deepmd import write_frames

        d = self.iteration_dir(it)
        d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(d / "npy", ignore_errors=True)  # an interrupted earlier write of this iteration
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
    oracle on that iteration's labels. Paths are stored relative to the registry's folder (a
    moved run folder resumes) and returned absolute."""

    PATHS = ("models", "parent", "data")

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.root = self.path.parent.absolute()
        self.entries: list[dict[str, Any]] = json.loads(self.path.read_text()) if self.path.is_file() else []

    def _map(self, entry: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
        out = dict(entry)
        for key in self.PATHS:
            if out.get(key) is not None:
                out[key] = [fn(str(p)) for p in out[key]]
        return out

    def _relative(self, path: str) -> str:
        p = Path(path)
        try:
            return p.absolute().relative_to(self.root).as_posix() if p.is_absolute() else path
        except ValueError:  # outside the run (a user's model): kept as given
            return path

    def _absolute(self, path: str) -> str:
        return path if Path(path).is_absolute() else str(self.root / path)

    def add(self, entry: dict[str, Any]) -> None:
        entry = self._map(entry, self._relative)
        self.entries = [e for e in self.entries if e["iteration"] != entry["iteration"]] + [entry]
        self.entries.sort(key=lambda e: e["iteration"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, default=str))
        os.replace(tmp, self.path)

    def latest(self, before: int | None = None) -> dict[str, Any] | None:
        """The last entry (with absolute paths), or the last of the iterations before ``before``."""
        entries = [e for e in self.entries if before is None or e["iteration"] < before]
        return self._map(entries[-1], self._absolute) if entries else None


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


# -------------------------------------------------------------------------------- one iteration


@dataclasses.dataclass
class IterationResult:
    """One iteration of the loop.

    Attributes:
        iteration: its number (0 first).
        selected: structures selected for the oracle; ``labelled`` of them labelled (with the
            ones journaled before a kill), ``failed_labels`` not; ``oracle_calls`` labels asked
            of the oracle in this run of the iteration (0 when a resume found them journaled).
        free_labels: oracle frames of the verification that joined the data (no oracle calls).
        fractions: the committee's accurate / candidate / failed fractions.
        errors_before: the committee in use against this iteration's labels (force and energy
            RMSE).
        committee_vs_error: the committee's deviation against its actual error on those labels
            (:func:`deviation_against_error`).
        models: the members trained (none when converged or nothing was labelled).
        converged: the loop stops here.
        stop_reason: why it stops (or ``""``).
        failed: the labels that failed, with their reasons.
    """

    iteration: int
    selected: int
    labelled: int
    failed_labels: int
    fractions: dict[str, float]
    errors_before: dict[str, float]
    models: list[str]
    converged: bool
    oracle_calls: int = 0
    free_labels: int = 0
    committee_vs_error: dict[str, float] = dataclasses.field(default_factory=dict)
    stop_reason: str = ""
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)


def deviation_against_error(devi_f: np.ndarray, error_f: np.ndarray, devi_e: np.ndarray, error_e: np.ndarray,
                            lo: float) -> dict[str, float]:
    """How well the committee's deviation tells its actual error, on oracle labels.

    Args:
        devi_f: DP-GEN's max force deviation per structure (eV/Å); ``error_f`` the committee's
            actual max force error per structure against the oracle (eV/Å, mean force of the
            members).
        devi_e: energy deviation per atom (eV/atom); ``error_e`` the actual energy error per
            atom (eV/atom).
        lo: ``trust_lo``.

    Returns:
        ``n``; the means of each; ``spearman_f``, the rank correlation of deviation and error
        (NaN for fewer than 3); ``error_over_devi_f``, the median of error / deviation (how much
        the committee underestimates its error); ``agreed_while_wrong``, the fraction the
        committee trusts (deviation < ``lo``) whose actual error is above ``lo``.
    """
    from scipy.stats import spearmanr

    n = len(devi_f)
    if n == 0:
        return {"n": 0}
    rho = float(spearmanr(devi_f, error_f).statistic) if n >= 3 else float("nan")
    trusted = devi_f < lo
    return {
        "n": n, "mean_devi_f": float(np.mean(devi_f)), "mean_error_f": float(np.mean(error_f)),
        "mean_devi_e": float(np.mean(devi_e)), "mean_error_e": float(np.mean(error_e)),
        "spearman_f": rho if np.isfinite(rho) else float("nan"),
        "error_over_devi_f": float(np.median(error_f / np.maximum(devi_f, 1e-12))),
        "agreed_while_wrong": float(np.sum(trusted & (error_f > lo)) / n),
    }


class FinetuneLoop:
    """The fine-tune loop of one chemical system: iterations of select -> label -> train.

    Every oracle label is appended to ``labels.jsonl`` (:class:`~lamcsp.oracle.Journal`) the
    moment it returns; an iteration interrupted by a kill is run again on ``--resume``: the
    labels it journaled are reused (not asked again), the members it saved are not trained
    again (:mod:`lamcsp.trainers`). The iteration's log entry (``iterations.json``) is written
    last, by :meth:`finish`.

    Args:
        root: its folder (``run/finetune``; a campaign is one chemical system): ``data/``,
            ``models/iter-NNN/``, ``models.json``, ``labels.jsonl``, ``iterations.json``.
        type_map: the elements of the system (the data's type map).
        executor: runs the labelling (``map``): serial, or MPI ranks.
        oracle: the oracle spec (:mod:`lamcsp.oracle`).
        trainer: a trainer of :mod:`lamcsp.trainers` (``train``, ``backend``, ``spec``).
        make_potential: model path -> the committee member: a campaign ``model`` section
            (evaluated through ``executor``) or a Potential (here).
        members: committee size K.
        lo, hi, window, max_labels, conv_accuracy, max_iterations, max_energy: as the
            campaign's ``finetune`` section (``committee``, ``trust_lo``...), whose defaults
            they take.
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
        members: int = FinetuneSpec.default_of("committee"),
        lo: float = FinetuneSpec.default_of("trust_lo"),
        hi: float = FinetuneSpec.default_of("trust_hi"),
        window: float = FinetuneSpec.default_of("window"),
        max_labels: int | None = FinetuneSpec.default_of("max_labels"),
        conv_accuracy: float = FinetuneSpec.default_of("conv_accuracy"),
        max_iterations: int = FinetuneSpec.default_of("max_iterations"),
        max_energy: float | None = FinetuneSpec.default_of("max_energy"),
    ):
        from lamcsp.oracle import Journal, oracle_id

        self.root = Path(root).absolute()
        self.data = Dataset(self.root / "data", type_map)
        self.registry = ModelRegistry(self.root / "models.json")
        self.labels = Journal(self.root / "labels.jsonl")
        self.executor = executor
        self.oracle = dict(oracle)
        self.oracle_id = oracle_id(self.oracle)
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

    def committee(self, before: int | None = None) -> Committee | None:
        """The committee of the last iteration before ``before`` (default: the next one)."""
        latest = self.registry.latest(before=self.iteration if before is None else before)
        if not latest:
            return None
        return Committee([self.make_potential(p) for p in latest["models"]], executor=self.executor)

    def journaled(self) -> dict[str, dict[str, Any]]:
        """The labels journaled so far by this loop's oracle, by source."""
        return {str(r["source"]): r for r in self.labels.read() if r.get("oracle") == self.oracle_id}

    def step(
        self,
        structures: Sequence[Any],
        enthalpy: Sequence[float],
        sources: Sequence[str],
        fingerprints: np.ndarray | None = None,
        pressures: Sequence[float] | None = None,
        *,
        near_minimum: Sequence[int] = (),
        free: Sequence[tuple[str, Any]] = (),
        ranking_stable: bool | None = None,
    ) -> IterationResult:
        """One iteration on the search's candidates (relaxed hits, ``enthalpy`` finite, and
        relaxation frames, NaN; ``sources`` name them, ``pressures`` in GPa): select, label
        through the executor (each label journaled as it returns), store the data, train the
        committee, register it. The log entry is written by :meth:`finish`.

        Args:
            near_minimum: frames near a low-enthalpy hit's minimum, selected with the hits.
            free: ``(source, labelled atoms)`` already labelled by this oracle elsewhere (the
                verification's oracle frames): they join this iteration's data at no cost.
            ranking_stable: the verified answer is the last iteration's and the model's top-1
                is it (:func:`lamcsp.verify.ranking_stable`; ``None``: no verification, the
                committee alone decides). The loop
                converges when the committee is accurate on ``conv_accuracy`` of the candidates
                and this is not ``False``.
        """
        from lamcsp.oracle import frame_record, label_task
        from lamcsp.relax.relaxer import atoms_to_dict

        it = self.iteration
        committee = self.committee(before=it)
        deviation = committee.evaluate(structures) if committee is not None else None
        journal = self.journaled()
        earlier = {src for src, r in journal.items() if int(r["iteration"]) < it}
        excess = None
        if deviation is not None:
            excess = _excess(structures, deviation.energy, enthalpy, pressures)
        sel = select(structures, deviation, enthalpy, lo=self.lo, hi=self.hi, window=self.window,
                     max_labels=self.max_labels, fingerprints=fingerprints,
                     already={i for i, src in enumerate(sources) if src in earlier}, excess=excess,
                     max_energy=self.max_energy, near_minimum=set(near_minimum))
        agree = committee is not None and sel.fractions["accurate"] >= self.conv_accuracy
        converged = agree and ranking_stable is not False
        reason = ""
        if converged:
            settled = " and the verified answer is settled" if ranking_stable else ""
            reason = "the committee agrees" + settled
        chosen = [] if converged else sel.chosen
        todo = [i for i in chosen if sources[i] not in journal]

        def got(j: int, lab: dict[str, Any]) -> None:
            i = todo[j]
            rec = {"source": sources[i], "iteration": it, "oracle": self.oracle_id, "kind": "select",
                   "ok": bool(lab and lab.get("ok"))}
            if rec["ok"]:
                rec.update(frame_record(structures[i], lab["energy"], np.asarray(lab["forces"]),
                                        lab.get("stress")))
                rec["seconds"] = lab.get("seconds")
            else:
                rec["error"] = (lab or {}).get("error", "no result")
            self.labels.append(rec)
            fault("label-stored")

        if todo:
            self.executor.map(label_task(self.oracle),
                              [{"atoms": atoms_to_dict(structures[i])} for i in todo], got,
                              labels=[sources[i] for i in todo])
        if not converged:
            known = self.journaled()
            for src, atoms in free:
                if src not in known:
                    self.labels.append({"source": src, "iteration": it, "oracle": self.oracle_id,
                                        "kind": "verify", "ok": True,
                                        **frame_record(atoms, atoms.get_potential_energy(),
                                                       atoms.get_forces(), atoms.get_stress(voigt=False))})
        mine = [r for r in self.journaled().values() if int(r["iteration"]) == it]
        from lamcsp.oracle import record_atoms

        oracle_text = json.dumps(self.oracle, sort_keys=True, default=str)
        frames, failed, kinds = [], [], []
        for r in mine:
            if r["ok"]:
                a = record_atoms(r)
                a.info = {"iteration": it, "source": r["source"], "oracle": oracle_text, "kind": r["kind"]}
                frames.append(a)
                kinds.append(r["kind"])
            else:
                failed.append({"source": r["source"], "error": r.get("error", "")})
        errors_before, vs_error = self._errors(committee, frames)
        models: list[str] = []
        if frames:
            self.data.add(it, frames)
            parent = self.registry.latest(before=it)
            workdir = self.root / "models" / f"iter-{it:03d}"
            data = self.data.systems() if self.trainer.backend == "deepmd" else self.data.frames()
            models = self.trainer.train(data, workdir, self.members, parent["models"] if parent else None)
            self.registry.add({"iteration": it, "models": models,
                               "parent": parent["models"] if parent else None,
                               "data": [str(p) for p in self.data.systems()],
                               "n_frames": len(self.data.frames()), "errors_before": errors_before,
                               "backend": self.trainer.backend})
        return IterationResult(
            iteration=it, selected=len(chosen), labelled=kinds.count("select"), failed_labels=len(failed),
            fractions=sel.fractions, errors_before=errors_before, models=models, converged=converged,
            oracle_calls=len(todo), free_labels=kinds.count("verify"), committee_vs_error=vs_error,
            stop_reason=reason, failed=failed)

    def _errors(self, committee: Committee | None,
                frames: list[Any]) -> tuple[dict[str, float], dict[str, float]]:
        """The committee in use against this iteration's labels: force and energy RMSE, and its
        deviation against its actual error (:func:`deviation_against_error`)."""
        if committee is None or not frames:
            return {}, {}
        d = committee.evaluate(frames)
        f_ref = [f.get_forces() for f in frames]
        e_ref = np.array([f.get_potential_energy() / len(f) for f in frames])
        err_f = np.array([np.linalg.norm(p - r, axis=1).max() for p, r in zip(d.forces, f_ref)])
        err_e = np.abs(d.energy - e_ref)
        before = {"force_rmse": force_rmse(d.forces, f_ref),
                  "energy_rmse_per_atom": float(np.sqrt(np.mean((d.energy - e_ref) ** 2)))}
        return before, deviation_against_error(d.max_devi_f, err_f, d.devi_e, err_e, self.lo)

    def finish(self, result: IterationResult, **extra: Any) -> None:
        """Write the iteration's log entry (the last thing an iteration does)."""
        self.log.append({**dataclasses.asdict(result), **extra})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.log_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.log, indent=1, default=float))
        os.replace(tmp, self.log_path)
