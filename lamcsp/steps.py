"""The steps around the generation loop, each with its public name: the reference structures,
the fine-tune iterations (:class:`FinetuneStep`), the oracle's verification
(:class:`Verification`) and the pressure scan.

They work on a :class:`lamcsp.search.Search` (its campaign, store, executor, units and model in
use), which runs them: the references before the first generation, a fine-tune iteration every
``finetune.every`` generations, the verification at the end (and at each iteration with
``verify.each_iteration``), then the pressure scan and the report.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from lamcsp.errors import SetupError
from lamcsp.log import stage
from lamcsp.store import h_now, result_ok

if TYPE_CHECKING:
    from lamcsp.relax.relaxer import RelaxResult
    from lamcsp.search import Search
    from lamcsp.stages import UnitState

__all__ = ["FinetuneStep", "Verification", "pressure_scan", "relax_references"]


# --------------------------------------------------------------------------------- fine-tune


class FinetuneStep:
    """The DP-GEN-style fine-tune loop as a step of the search (``campaign.finetune``; its data,
    models and log in ``run/finetune``, :class:`lamcsp.finetune.FinetuneLoop`): a committee
    rates what the search found, the oracle labels the selection, the model is fine-tuned, and
    the search goes on with it (re-scoring and re-relaxing its best hits)."""

    def __init__(self, search: Search, trainer: Any = None):
        self.s = search
        self.loop: Any = None
        self.trainer = trainer  # None: the one campaign.model implies (setup)
        self._verification: Any = None  # of the iteration under way (begin_iteration)

    def setup(self) -> None:
        """The fine-tune loop of ``campaign.finetune`` (``run/finetune``); on ``--resume`` its
        data, models and iterations are read back and the model of its last finished iteration
        is used."""
        spec = self.s.campaign.finetune
        self.loop = None
        if not spec.enabled:
            return
        from lamcsp.finetune import FinetuneLoop
        from lamcsp.oracle import check_oracle
        from lamcsp.trainers import CHGNetTrainer, DeePMDTrainer

        m = self.s.campaign.model
        if self.trainer is not None:  # a campaign set's shared training (its spec names the head)
            trainer: Any = self.trainer
        elif m.backend == "chgnet":
            trainer = CHGNetTrainer(m.path or m.options.get("version", "0.3.0"), epochs=spec.epochs,
                                         learning_rate=spec.learning_rate, diversity=spec.diversity,
                                         trusted=bool(m.options.get("trusted", False)))
        elif m.backend == "deepmd":  # a .pt checkpoint: parse_campaign checks it
            trainer = DeePMDTrainer(m.path, m.head, steps=spec.steps, diversity=spec.diversity,
                                    learning_rate=(spec.learning_rate, spec.learning_rate / 100))
        else:
            raise SetupError("finetune.enabled", f"the fine-tune loop trains chgnet or deepmd models, not "
                                                 f"{m.backend}")
        check_oracle(spec.oracle, "finetune.oracle")  # a wrong name or option fails now
        elements = sorted({el for u in self.s.units for el in u.composition})

        def member(path: str) -> Any:  # a model section: the executor evaluates it (on the workers)
            return m.replace(**trainer.spec(path), options={})

        self.loop = FinetuneLoop(
            self.s.paths.finetune, elements, self.s.executor, spec.oracle, trainer, member,
            members=spec.committee, lo=spec.trust_lo, hi=spec.trust_hi, window=spec.window,
            max_labels=spec.max_labels, conv_accuracy=spec.conv_accuracy,
            max_iterations=spec.max_iterations or 10**9, max_energy=spec.max_energy, progress=self.s.say,
            base=self.trainer.root if self.trainer is not None else None)
        latest = self.loop.registry.latest(before=self.loop.iteration)
        if latest:
            self.s.use_model(m.replace(**trainer.spec(latest["models"][0]), options={}))
            self.loop.executor = self.s.executor

    def catch_up(self) -> None:
        """Run the iterations due by the search's generation (``finetune.every``), the one a
        kill interrupted first."""
        ft = self.loop
        if ft is None or ft.done:
            return
        due = self.s.generation // self.s.campaign.finetune.every
        while ft.iteration < due and not ft.done:
            self.iteration()

    def due(self) -> bool:
        """An iteration is due by the search's generation (``finetune.every``) and the loop
        has not stopped."""
        ft = self.loop
        every = self.s.campaign.finetune.every
        return ft is not None and not ft.done and ft.iteration < self.s.generation // every

    def iteration(self) -> None:
        """One iteration: :meth:`begin_iteration`, the loop's training, :meth:`end_iteration`."""
        self.end_iteration(self.loop.train(self.begin_iteration()))

    def begin_iteration(self) -> Any:
        """The first half of an iteration (see below): verify, rate, select, label; returns the
        loop's :class:`~lamcsp.finetune.IterationResult` without models (a campaign set trains
        them for all its campaigns at once, then calls :meth:`end_iteration`).

        One iteration. With ``verify.each_iteration``, the oracle first verifies the best
        structures of the model in use (the pretrained model's, at the first); the loop stops
        only when that verification's answer (the oracle's lowest) is the last iteration's and
        the model's top-1 is it (and the committee agrees). Then the committee rates every unit's
        unique hits, the model's own minima of its best, the frames near the minima of the
        low-enthalpy ones and the relaxation-trajectory frames (the start and every
        ``finetune.snapshot_every`` steps) of the last ``every`` generations; the selection is
        labelled, with the verification's oracle frames, and the new model re-scores and
        re-relaxes the best hits. Kill-safe: an interrupted iteration runs again on ``--resume``
        without asking the oracle again (its labels, members and verifications are stored as
        they come) and writes its log last."""
        from lamcsp.verify import ranking_stable

        ft = self.loop
        it = ft.iteration
        verifying = self.s.campaign.verify_enabled and self.s.campaign.verify.each_iteration
        verification = self.s.verification.run(f"iter-{it}") if verifying else None
        stable = None
        if verifying:
            stable = bool(ranking_stable([e.get("verification") for e in ft.log] + [verification]))
        structures, enthalpy, sources, pressures, near = self.candidates()
        free = self.verification_frames() if verifying and self.s.campaign.verify_oracle == \
            self.s.campaign.finetune.oracle else []
        if self.s.progress:
            self.s.progress.write(f"fine-tune iteration {it}: rating {len(structures)} structures")
        fps = [e.fingerprint for e in self.s.deduper.describe(structures)]
        width = max((len(f) for f in fps), default=0)
        fingerprints = np.array([np.pad(f, (0, width - len(f))) for f in fps]) if fps else None
        result = ft.label(structures, enthalpy, sources, fingerprints=fingerprints, pressures=pressures,
                          near_minimum=near, free=free, ranking_stable=stable)
        self._verification = verification
        return result

    def end_iteration(self, result: Any, **extra: Any) -> None:
        """The second half: go on with the models trained (re-score, re-relax), write the
        iteration's log entry (with ``extra``) and the checkpoint."""
        ft = self.loop
        verification = self._verification
        if self.s.progress:
            self.s.progress.write(
                f"fine-tune iteration {result.iteration}: accurate {result.fractions['accurate']:.2f}, "
                f"labelled {result.labelled} (failed {result.failed_labels}; {result.oracle_calls} oracle "
                f"calls, {result.free_labels} frames from the verification), "
                + (f"converged: {result.stop_reason}" if result.converged
                   else f"{len(result.models)} models trained"))
        if result.models:
            m = self.s.campaign.model
            self.s.use_model(m.replace(**ft.trainer.spec(result.models[0]), options={}))
            ft.executor = self.s.executor
            self.rescore(result.iteration)
        ft.finish(result, verification=verification, **extra)
        if result.models:
            self.s.checkpoint()  # the units' best and patience under the new model

    def candidates(self) -> tuple[list[Any], list[float], list[str], list[float], list[int]]:
        """What the committee rates: every unit's unique hits (``enthalpy``: per atom above the
        unit's lowest, by the model in use), the model in use's re-relaxed best hits (its own
        minima), the relaxation frames of the last ``every`` generations and of the hits within
        ``finetune.window`` (NaN), their sources (row keys), pressures, and the indices of the
        structures near a minimum that are labelled whatever the committee says (the re-relaxed
        hits, and the last ``finetune.minimum_frames`` frames of each low hit)."""
        from lamcsp.generators.base import Candidate
        from lamcsp.relax.relaxer import atoms_from_dict

        spec = self.s.campaign.finetune
        structures: list[Any] = []
        enthalpy: list[float] = []
        sources: list[str] = []
        pressures: list[float] = []
        low: set[int] = set()
        for us in self.s.unit_states:
            hits = [r for r in self.s.rows_by_id(us.stored_rows) if result_ok(r)]
            best = min((h_now(r) for r in hits), default=math.nan)
            for row in hits:
                structures.append(row.toatoms())
                enthalpy.append(h_now(row) - best)
                sources.append(row.key)
                pressures.append(float(row.pressure_gpa))
                if h_now(row) - best <= spec.window:
                    low.add(int(row.id))
        near: list[int] = []
        # the model in use's own minima of its best hits (re-relaxed after the last iteration):
        # where it ranks them wrong, these labels correct it
        rerelaxed: list[Any] = self.s.store.rows(role="rerelax", iteration=self.loop.iteration - 1)
        for row in rerelaxed:
            if result_ok(row):
                near.append(len(structures))
                structures.append(row.toatoms())
                enthalpy.append(math.nan)
                sources.append(row.key)
                pressures.append(float(row.pressure_gpa))
        first = max(0, self.s.generation - spec.every)
        rows = {int(r.id): r for r in self.s.store.rows(f"generation>={first}", role="search")}
        rows.update({i: self.s.store.db.get(id=i) for i in low if i not in rows})
        for rid, row in sorted(rows.items()):
            cand = (row.data or {}).get("candidate")
            frames = [Candidate.from_dict(cand).to_atoms()] if cand else []
            traj = [atoms_from_dict(f) for f in (row.data or {}).get("frames", [])]
            if rid in low and spec.minimum_frames:
                near += list(range(len(structures) + len(frames) + max(0, len(traj) - spec.minimum_frames),
                                   len(structures) + len(frames) + len(traj)))
            names = ([f"{row.key}:start"] if cand else []) + [f"{row.key}:frame{j}" for j in range(len(traj))]
            structures += frames + traj
            enthalpy += [math.nan] * len(names)
            sources += names
            pressures += [float(row.pressure_gpa)] * len(names)
        return structures, enthalpy, sources, pressures, near

    def verification_frames(self) -> list[tuple[str, Any]]:
        """The oracle frames of every verification so far (``verify.train_frames`` of each: its
        first, the model's structure, its last, the oracle's minimum, then evenly between), as
        ``(source, labelled atoms)`` for the fine-tune data."""
        from lamcsp.oracle import Journal, record_atoms

        n = self.s.campaign.verify.train_frames
        oid = self.s.verification.settings().oracle_id
        out = []
        for row in self.s.store.rows(role="verify", oracle=oid, include_data=False):
            source = self.s.store.db.get(id=int(row.get("of")))
            recs = [r for r in Journal(self.s.paths.journal(oid, source.key)).read()
                    if r.get("stress") is not None]
            if not recs or n == 0:
                continue
            picks = sorted({0, len(recs) - 1} | {int(round(x)) for x in np.linspace(0, len(recs) - 1, n)})
            picks = ([0, len(recs) - 1] + [j for j in picks if j not in (0, len(recs) - 1)])[:n]
            for j in sorted(set(picks)):
                out.append((f"verify:{oid}:{source.key}:{j}", record_atoms(recs[j])))
        return out

    def rescore(self, iteration: int) -> None:
        """After a model switch, the enthalpies the search compares come from the new model:
        every unit's relaxed population and unique hits are evaluated with it (single points at
        the stored structures, batched), the ``finetune.rerelax`` lowest of each unit are
        re-relaxed with it (rows ``role=rerelax``: a single point at the old model's minimum is
        not the new model's enthalpy of that structure, and rankings by single points mislead),
        and the units' best, dedupe entries and the swarm's and GA's fitness take those values
        (the re-relaxed one where it is lower). Rows keep the enthalpy of their own relaxation
        and gain ``enthalpy_now`` (per atom, by ``model_now``), which ``--resume``, the
        verification and the report read."""
        every = list(self.s.store.rows(role="search"))  # one read: the ok ones to score, all for the units
        rows = [row for row in every if result_ok(row)]
        if not rows:
            return
        points = self.s.executor.evaluate([row.toatoms() for row in rows],
                                          [float(row.pressure_gpa) for row in rows],
                                          labels=[f"{row.key} (rescore)" for row in rows])
        now = {int(row.id): float(p.enthalpy_per_atom) for row, p in zip(rows, points)}
        for rid, x in self.rerelax_best(iteration, now).items():
            now[rid] = min(now[rid], x)
        with self.s.store.transaction():
            for rid, x in now.items():
                self.s.store.update(rid, enthalpy_now=x, model_now=self.s.potential.model_id)
        by_unit: dict[int, list[Any]] = {}
        for row in every:
            by_unit.setdefault(int(row.unit), []).append(row)
        for us in self.s.unit_states:
            self.apply_now(us, now, sorted(by_unit.get(us.unit.index, []),
                                           key=lambda r: (r.generation, r.candidate)))

    def apply_now(self, us: UnitState, now: dict[int, float], rows: list[Any]) -> None:
        """A unit's enthalpies from ``now`` (row id -> enthalpy per atom): its unique hits, its
        population (one entry per row of the unit, by generation and candidate) and its best;
        patience starts again."""
        from lamcsp.generators.dedupe import StoredStructures

        entries = self.s.deduper.describe(list(us.stored.entries), [now.get(int(i)) for i in us.stored_rows])
        us.stored = StoredStructures(us.stored.signature, entries)
        pop = us.context.population
        if len(pop) == len(rows):
            pop[:] = [dataclasses.replace(e, enthalpy_per_atom=now.get(int(r.id), e.enthalpy_per_atom))
                      if e.ok else e for e, r in zip(pop, rows)]
        hs = [now[int(i)] for i in us.stored_rows if int(i) in now]
        if hs:
            us.best = min(hs)
            us.history.append(us.best)
            us.stagnant = 0

    def rerelax_best(self, iteration: int, now: dict[int, float]) -> dict[int, float]:
        """The ``finetune.rerelax`` best unique hits of every unit by ``now`` (row id -> the new
        model's single-point enthalpy per atom), re-relaxed with the new model (rows
        ``role=rerelax``, ``iteration``, ``of``: the row re-relaxed; read back, not relaxed
        again, on ``--resume``); their enthalpies per atom by the row re-relaxed (ok results)."""
        n = self.s.campaign.finetune.rerelax
        todo, out = [], {}
        for us in self.s.unit_states:
            ids = sorted((int(i) for i in us.stored_rows if int(i) in now), key=lambda i: now[i])[:n]
            for row in self.s.rows_by_id(ids):
                key = f"ft{iteration}-{row.key}"
                done = self.s.store.row_id(key)
                if done is None:
                    todo.append((key, row, us))
                    continue
                old = self.s.store.db.get(id=done)
                if result_ok(old):
                    out[int(row.id)] = float(old.enthalpy_per_atom)

        def store_one(i: int, result: RelaxResult) -> None:
            key, row, us = todo[i]
            self.s.add_row(result, key, role="rerelax", generation=-3, generator="rerelax",
                           unit=us.unit.index, extra={"iteration": iteration, "of": int(row.id)})
            if result_ok(result):
                out[int(row.id)] = float(result.enthalpy_per_atom)

        if todo:
            self.s.executor.relax([r.toatoms() for _, r, _ in todo],
                                  [us.unit.pressure_gpa for *_, us in todo], on_result=store_one)
        return out


# --------------------------------------------------------------------------------- verification


class Verification:
    """The oracle's verification of the model in use's best structures (:mod:`lamcsp.verify`)."""

    def __init__(self, search: Search):
        self.s = search
        self._rescore: Any = None

    def hits(self) -> list[Any]:
        """Every unit's unique hits as :class:`lamcsp.verify.Hit` (the model in use's enthalpies)."""
        from lamcsp.verify import hits_of

        pairs = [(us.unit, row) for us in self.s.unit_states for row in self.s.rows_by_id(us.stored_rows)]
        return hits_of(pairs, self.s.campaign.system.elements)

    def settings(self) -> Any:
        """The campaign's verification settings (:class:`lamcsp.verify.VerifySettings`)."""
        from lamcsp.verify import VerifySettings

        v = self.s.campaign.verify
        return VerifySettings(oracle=self.s.campaign.verify_oracle, mode=v.mode, optimizer=v.optimizer,
                              fmax=v.fmax, max_steps=v.max_steps, top_k=v.top_k, window=v.window)

    def rescore_potential(self) -> Any:
        """The cascade's rescore model (``rescore.model``), loaded once."""
        if self._rescore is None:
            from lamcsp.potentials.registry import load_model

            self._rescore = load_model(self.s.campaign.rescore_model)
        return self._rescore

    def rescore(self) -> None:
        """The cascade's rescore stage (:mod:`lamcsp.rescore`): the rescore model re-relaxes the
        search model's best; per unit, whether the two models' top-1 agree."""
        from lamcsp.rescore import run_rescore

        comparisons = run_rescore(
            self.hits(), self.s.campaign.rescore, self.s.campaign.relax, potential=self.rescore_potential(),
            store=self.s.store, model_id=self.s.potential.model_id, symprec=self.s.campaign.report.symprec,
            progress=self.s.say)
        if self.s.progress:
            for label, c in sorted(comparisons.items()):
                agrees = "agrees" if c.top1_agree else "DISAGREES"
                self.s.progress.write(f"  {label}: the search model's top-1 {agrees} with the rescore "
                                      f"model's (largest error {1000 * c.max_error:.0f} meV/atom); "
                                      f"its lowest #{c.answer}")

    def run(self, stage: str, *, after_rescore: bool = False) -> dict[str, Any]:
        """Verify the model in use's best structures with the oracle (:mod:`lamcsp.verify`);
        the verification record per unit (comparison and verified ranking). ``after_rescore``:
        the cascade's last stage, which picks from the rescore model's ranking instead."""
        from lamcsp.verify import ranking_record, run_verification

        settings = self.settings()
        hits, model_id = self.hits(), self.s.potential.model_id
        if after_rescore:
            from lamcsp.rescore import rescore_id, rescored_hits

            model_id = self.rescore_potential().model_id
            hits = rescored_hits(hits, self.s.store, rescore_id(model_id))
        comparisons = run_verification(
            hits, settings, store=self.s.store, executor=self.s.executor, run_dir=self.s.run_dir,
            stage=stage, model_id=model_id, symprec=self.s.campaign.report.symprec,
            progress=self.s.say)
        record = ranking_record(comparisons, settings.top_k)
        if self.s.progress:
            for label, c in record.items():
                tau = "-" if c["kendall_tau"] is None else f"{c['kendall_tau']:.2f}"
                agrees = "agrees" if c["top1_agree"] else "DISAGREES"
                self.s.progress.write(f"  {label}: top-1 {agrees} with the oracle (tau {tau}, largest error "
                                      f"{1000 * c['max_error']:.0f} meV/atom); answer #{c['answer']}")
        return record


# --------------------------------------------------------------------------------- references, scan


def relax_references(s: Search) -> None:
    """Relax the campaign's reference structures (``system.references``) at every pressure
    (rows ``role=reference``); those already stored are not relaxed again."""
    refs = s.campaign.system.references
    if not refs:
        return
    from lamcsp.io import read_structures

    todo = []
    for el, path in refs.items():
        atoms = read_structures([path], field=f"system.references.{el}")[0]
        if set(atoms.get_chemical_symbols()) != {el}:
            raise SetupError(f"system.references.{el}", f"{path} holds {atoms.get_chemical_formula()}, "
                                                        f"not pure {el}")
        for j, p in enumerate(s.campaign.system.pressures):
            key = f"ref-{el}-p{j}"
            if s.store.row_id(key) is None:
                todo.append((key, atoms, float(p)))
    if not todo:
        return

    def store_one(i: int, result: RelaxResult) -> None:
        s.add_row(result, todo[i][0], role="reference", generation=-1, generator="reference",
                  unit=-1, unique=True)

    s.executor.relax([a for _, a, _ in todo], [p for *_, p in todo], on_result=store_one)

def pressure_scan(s: Search) -> int:
    """Re-relax the best polymorphs over a pressure grid (two or more pressures only);
    returns the number of scan rows written."""
    pressures = s.campaign.system.pressures
    if len(pressures) < 2:
        return 0
    spec = s.campaign.report
    grid = sorted(set(np.round(np.linspace(min(pressures), max(pressures), spec.scan_points), 6).tolist())
                  | {round(float(p), 6) for p in pressures})
    picked: dict[tuple[str, int], Any] = {}
    for us in s.unit_states:
        rows = sorted(s.rows_by_id(us.stored_rows), key=h_now)
        taken = 0
        for row in rows:
            if taken == spec.scan_top:
                break
            tag = (row.reduced_formula, int(row.spacegroup))
            if tag in picked:  # the same polymorph, found at another pressure
                continue
            picked[tag] = row
            taken += 1
    todo = []
    for row in sorted(picked.values(), key=lambda r: r.id):
        for j, p in enumerate(grid):
            key = f"scan-{row.key}-p{j}"
            if s.store.row_id(key) is None:
                todo.append((key, row, p))
    if not todo:
        return 0
    s.say(f"pressure scan: {len(picked)} polymorphs x {len(grid)} pressures, {len(todo)} relaxations")
    progress = stage("  pressure scan", len(todo), write=s.say)

    def store_one(i: int, result: RelaxResult) -> None:
        key, row, _ = todo[i]
        s.add_row(result, key, role="scan", generation=-2, generator="scan", unit=int(row.unit),
                  extra={"polymorph": int(row.id)})
        progress.step()

    s.executor.relax([r.toatoms() for _, r, _ in todo], [p for *_, p in todo], on_result=store_one)
    return len(todo)
