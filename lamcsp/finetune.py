"""The DP-GEN-style fine-tune loop: committee, selection, labelling, data.

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

The parts live beside this module, which holds the loop itself (:class:`FinetuneLoop`,
:class:`IterationResult`): :mod:`lamcsp.committee` (:class:`Committee`, :func:`force_deviation`,
the committee's error statistics), :mod:`lamcsp.finetune_select` (:func:`classify`,
:func:`select` and its helpers) and :mod:`lamcsp.finetune_data` (:class:`Dataset`,
:class:`ModelRegistry`). Their names stay importable from here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lamcsp.campaign.loop import FinetuneSpec
from lamcsp.committee import (  # noqa: F401  (the names that lived here before the split)
    Committee,
    Deviation,
    deviation_against_error,
    force_deviation,
    force_rmse,
)
from lamcsp.faults import fault
from lamcsp.finetune_data import Dataset, ModelRegistry
from lamcsp.finetune_select import (  # noqa: F401  (the names that lived here before the split)
    Selection,
    _excess,
    classify,
    farthest_point_order,
    sane,
    select,
)
from lamcsp.log import stage

log = logging.getLogger(__name__)

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
        progress: a line writer for the labelling's progress (default: ``INFO`` on this
            module's logger).
        base: the outermost folder that moves with the run (:class:`ModelRegistry`; a campaign
            set's folder, whose shared members the registry then stores relative).
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
        progress: Callable[[str], None] | None = None,
        base: str | os.PathLike | None = None,
    ):
        from lamcsp.oracle import Journal, oracle_id

        self.root = Path(root).absolute()
        self.data = Dataset(self.root / "data", type_map)
        self.registry = ModelRegistry(self.root / "models.json", base=base)
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
        self.say = progress if progress is not None else log.info
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
        """One iteration: :meth:`label`, then :meth:`train` (the arguments are :meth:`label`'s)."""
        return self.train(self.label(structures, enthalpy, sources, fingerprints, pressures,
                                     near_minimum=near_minimum, free=free, ranking_stable=ranking_stable))

    def label(
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
        """The first half of an iteration, on the search's candidates (relaxed hits, ``enthalpy`` finite, and
        relaxation frames, NaN; ``sources`` name them, ``pressures`` in GPa): select, label
        through the executor (each label journaled as it returns), store the data
        (``models`` empty: :meth:`train` or, for a campaign set sharing one training,
        :meth:`register` fills it). The log entry is written by :meth:`finish`.

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
            labelling.step(detail=f"{sources[i]} {'ok' if rec['ok'] else 'failed'}")

        labelling = stage(f"  oracle labels ({self.oracle_id})", len(todo), write=self.say)
        if todo:
            self.say(f"fine-tune iteration {it}: labelling {len(todo)} structure(s) with {self.oracle_id}")
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
        if frames:
            self.data.add(it, frames)
        return IterationResult(
            iteration=it, selected=len(chosen), labelled=kinds.count("select"), failed_labels=len(failed),
            fractions=sel.fractions, errors_before=errors_before, models=[], converged=converged,
            oracle_calls=len(todo), free_labels=kinds.count("verify"), committee_vs_error=vs_error,
            stop_reason=reason, failed=failed)

    @property
    def has_new_data(self) -> bool:
        """The iteration under way stored labels (:meth:`label`), so a training is due."""
        return self.iteration in self.data.iterations()

    def train(self, result: IterationResult) -> IterationResult:
        """The second half of an iteration: the committee trained on all data so far (when the
        iteration stored labels) and registered; ``result`` with its ``models``."""
        if not self.has_new_data:
            return result
        parent = self.registry.latest(before=result.iteration)
        workdir = self.root / "models" / f"iter-{result.iteration:03d}"
        data = self.data.systems() if self.trainer.backend == "deepmd" else self.data.frames()
        models = self.trainer.train(data, workdir, self.members, parent["models"] if parent else None)
        return self.register(result, models)

    def register(self, result: IterationResult, models: Sequence[str], **extra: Any) -> IterationResult:
        """Register the committee trained on this loop's data (here, or by a training shared
        with other campaigns: ``extra`` keys such as ``head`` go into its entry)."""
        parent = self.registry.latest(before=result.iteration)
        self.registry.add({"iteration": result.iteration, "models": list(models),
                           "parent": parent["models"] if parent else None,
                           "data": [str(p) for p in self.data.systems()],
                           "n_frames": len(self.data.frames()), "errors_before": result.errors_before,
                           "backend": self.trainer.backend, **extra})
        return dataclasses.replace(result, models=list(models))

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

    def errors_on(self, iteration: int, models: Sequence[Any] | None = None) -> dict[str, float]:
        """Force and energy RMSE against ``iteration``'s own labels of ``models`` (model
        sections, evaluated through the executor; default: the committee registered for
        ``iteration``, whose error there is a training error)."""
        path = self.data.iteration_dir(iteration) / "frames.extxyz"
        committee = (self.committee(before=iteration + 1) if models is None
                     else Committee(list(models), executor=self.executor))
        if committee is None or not path.is_file():
            return {}
        import ase.io

        return self._errors(committee, ase.io.read(path, ":"))[0]

    def finish(self, result: IterationResult, **extra: Any) -> None:
        """Write the iteration's log entry (the last thing an iteration does)."""
        self.log.append({**dataclasses.asdict(result), **extra})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.log_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.log, indent=1, default=float))
        os.replace(tmp, self.log_path)
