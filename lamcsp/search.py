"""The campaign loop: ``lamcsp search campaign.yaml [--resume]``.

The campaign's search units (one per composition and pressure) are :mod:`lamcsp.units`; one
generation is the stages of :mod:`lamcsp.stages`, for all active units together::

    propose -> screen (minimum distances; similarity to what the unit has seen, topped up)
    -> prescreen (oversampling generators: single points or the funnel's quench)
    -> relax (through the executor, lamcsp.parallel; results stored as they arrive)
    -> dedupe (per unit; the flags of all units in one transaction)
    -> tell (populations, counters, seen structures, best enthalpies and patience)
    -> checkpoint (atomic)

:class:`Search` strings them together (:meth:`Search.run_generation`), and runs the steps
around the loop: the reference structures, the fine-tune iterations, the verification, the
pressure scan and the report.

A unit stops when its best enthalpy per atom has not dropped by more than
``stop.min_improvement`` for ``stop.patience`` generations; the campaign stops when every unit
has stopped, after ``generations``, or when ``max_relaxations`` is spent.

Determinism and resume. The RNG of generator *i* of unit *u* in generation *g* is derived from
the campaign seed as ``SeedSequence(seed, spawn_key=(u, i, g))``, so no RNG state needs saving.
The checkpoint (``checkpoint.json``, written atomically after every generation) holds the next
generation, the relaxations spent, and per unit the best-enthalpy history, the patience counter,
the generators' ``state_dict()`` and the database ids of its stored representatives. Rows are
keyed ``u{unit}-g{generation}-c{candidate}``. ``--resume`` reads the checkpoint, rebuilds the
populations and representatives from the database, and re-runs the generation that was
interrupted: the same candidates are proposed again; those already in the database are read
back, not relaxed again (so no stored relaxation is lost and none is stored twice); the rest
are relaxed; deduplication is recomputed (idempotent). A kill between the dedupe transaction
and the checkpoint leaves rows whose flags the rerun writes again, unchanged.

After the loop: with ``verify`` on (by default whenever the fine-tune loop runs), the oracle
verifies the model's best structures of every unit (:mod:`lamcsp.verify`, rows ``role=verify``);
with two or more pressures, the ``report.scan_top`` best polymorphs of every composition at every
pressure are re-relaxed on a grid of ``report.scan_points`` pressures (rows with ``role=scan``)
for the enthalpy-vs-pressure report; then the report is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from lamcsp import stages
from lamcsp.errors import SetupError
from lamcsp.faults import fault
from lamcsp.parallel import SerialExecutor
from lamcsp.stages import RowBuffer, SimilarityScreen, UnitState, candidate_key, oversample_of, screen
from lamcsp.store import RunDir, h_now, result_ok
from lamcsp.units import SearchUnit, generator_counts, search_units, unit_rng, variable_compositions

if TYPE_CHECKING:

    from lamcsp.campaign import Campaign
    from lamcsp.generators.base import Candidate
    from lamcsp.generators.dedupe import Deduper
    from lamcsp.potentials.base import Potential
    from lamcsp.relax.relaxer import RelaxResult
    from lamcsp.store import ResultStore

CHECKPOINT_NAME = RunDir.CHECKPOINT
CAMPAIGN_COPY = RunDir.CAMPAIGN
#: campaign fields that may change between a run and its ``--resume`` (budget and reporting)
RESUMABLE_CHANGES = ("generations", "max_relaxations", "stop", "report", "parallel")


# --------------------------------------------------------------------------------- progress


@dataclasses.dataclass
class Progress:
    """One line per unit and generation, to a stream (stderr by default)."""

    stream: TextIO | None = None
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def write(self, text: str) -> None:
        out = self.stream if self.stream is not None else sys.stderr
        print(text, file=out, flush=True)

    def generation(self, g: int, total: int | None, units: list[UnitState], n_unique: dict[int, int],
                   spent: int) -> None:
        head = f"generation {g + 1}" + (f"/{total}" if total else "")
        self.write(f"{head}  ({spent} relaxations, {time.perf_counter() - self.start:.0f} s)")
        for u in units:
            best = f"{u.best:.4f} eV/atom" if math.isfinite(u.best) else "-"
            state = "" if u.active else f"  [stopped{': ' + u.note if u.note else ''}]"
            unique = n_unique.get(u.unit.index, 0)
            screened = f"  screened {u.screened:4d}" if u.screened else ""
            screened += f"  prescreened {u.prescreened:4d}" if u.prescreened else ""
            self.write(f"  {u.unit.label:<24} relaxed {u.relaxed:5d}  unique {unique:5d}"
                       f"  failed {u.failed:4d}{screened}  best H {best}{state}")


# --------------------------------------------------------------------------------- the search


class Search:
    """A campaign run in ``run_dir`` (see the module docstring).

    Args:
        campaign: the validated campaign.
        run_dir: output directory (default ``campaign.output_dir``).
        potential: the model; loaded from ``campaign.model`` when ``None``.
        resume: continue the run in ``run_dir`` from its checkpoint.
        progress: where progress lines go (``None``: stderr; ``False``: nowhere).
        executor: relaxes structures (default: :class:`SerialExecutor`).
        db_url: a database URL instead of ``run_dir/results.db``.
    """

    def __init__(self, campaign: Campaign, run_dir: str | Path | None = None, *,
                 potential: Potential | None = None, resume: bool = False,
                 progress: TextIO | bool | None = None, executor: Any = None,
                 db_url: str | None = None):
        from lamcsp.extras import check_campaign

        check_campaign(campaign)  # a missing package stops it here, before the run directory exists
        self.campaign = campaign
        self.run_dir = Path(run_dir if run_dir is not None else campaign.output_dir)
        self.paths = RunDir(self.run_dir)
        self.resume = resume
        self._check_run_dir(db_url)
        self.seed = campaign.seed
        if resume:
            self._check_same_campaign()
        else:
            if self.seed is None:
                self.seed = int(np.random.SeedSequence().entropy % (2**63))
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_campaign_copy()
        from lamcsp.store import ResultStore

        self.store: ResultStore = ResultStore(self.run_dir, url=db_url)
        self._potential = potential
        self._executor = executor
        stream = None if progress in (None, True, False) else progress
        self.progress = None if progress is False else Progress(stream)
        self.units = search_units(campaign)
        self.generation = 0
        self.spent = 0
        self.done = False
        self.warned: set[tuple[int, str]] = set()

    # -- setup ----------------------------------------------------------------------------
    def _check_run_dir(self, db_url: str | None) -> None:
        if self.paths.holds_run(db_url) and not self.resume:
            raise SetupError("output", f"{self.run_dir} already holds a run; pass --resume to continue "
                                       "it, or choose another output directory (nothing was changed)")
        if self.resume and not self.paths.campaign.exists():
            raise SetupError("--resume", f"{self.run_dir} holds no run to resume ({CAMPAIGN_COPY} "
                                         "missing); start it without --resume")

    @property
    def potential(self) -> Potential:
        if self._potential is None:
            from lamcsp.potentials.registry import load_model

            self._potential = load_model(self.model)
        return self._potential

    @property
    def model(self) -> Any:
        """The model section in use: the campaign's, or the fine-tune loop's latest model."""
        return getattr(self, "_model", None) or self.campaign.model

    def use_model(self, model: Any) -> None:
        """Go on with another model (a campaign ``model`` section): relaxations from here on,
        on every rank, use it."""
        from lamcsp.potentials.registry import load_model

        self._model = model
        self._potential = load_model(model)
        if self._executor is not None:  # MPI: the workers load it for their next batch
            self._executor.set_model(model, self._potential)

    @property
    def executor(self) -> Any:
        if self._executor is None:
            from lamcsp.parallel import make_executor

            self._executor = make_executor(self.campaign, self.potential)
        return self._executor

    def _deduper(self) -> Deduper:
        from lamcsp.generators.dedupe import Deduper

        d = self.campaign.dedupe
        return Deduper(sim_threshold=d.sim_threshold, fingerprint=d.fingerprint, use_matcher=d.use_matcher,
                       ltol=d.ltol, stol=d.stol, angle_tol=d.angle_tol, energy_tol=d.energy_tol)

    def _new_unit_state(self, unit: SearchUnit) -> UnitState:
        from lamcsp.generators import get_generator
        from lamcsp.generators.base import GenerationContext

        gens = [(g.name, g.share, get_generator(g.name, **g.options)) for g in self.campaign.generators]
        ctx = GenerationContext(composition=dict(unit.composition), formula_units=list(unit.formula_units),
                                spacegroups=list(self.campaign.system.spacegroups),
                                pressure_gpa=unit.pressure_gpa,
                                distance_factor=self.campaign.system.distance_factor,
                                volume_factor=self.campaign.system.volume_factor)
        seen = self.deduper.new_store() if self.campaign.dedupe.before_relax else None
        return UnitState(unit, gens, ctx, self.deduper.new_store(), seen=seen)

    def _write_campaign_copy(self) -> None:
        import yaml

        data = self.campaign.to_dict()
        data["seed"] = self.seed
        text = "# the campaign of this run (seed filled in); lamcsp search --resume checks it\n"
        text += yaml.safe_dump(data, sort_keys=False)
        tmp = self.run_dir / f".{CAMPAIGN_COPY}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.paths.campaign)

    def _check_same_campaign(self) -> None:
        import yaml

        with open(self.paths.campaign, encoding="utf-8") as fh:
            old = yaml.safe_load(fh)
        new = self.campaign.to_dict()
        new["seed"] = self.seed if self.seed is not None else old.get("seed")
        for key in new:
            if key in RESUMABLE_CHANGES:
                continue
            if _canonical(old.get(key)) != _canonical(new[key]):
                raise SetupError(key, f"differs from the run being resumed in {self.run_dir} "
                                      f"(was {old.get(key)!r}); only {', '.join(RESUMABLE_CHANGES)} may "
                                      "change on --resume")
        self.seed = int(old["seed"])

    # -- the loop -------------------------------------------------------------------------
    def run(self, *, until: Callable[[Search], bool] | None = None, report: bool = True) -> dict[str, Any]:
        """Run (or resume) the campaign to its end; write the report. Returns the final
        checkpoint state.

        Args:
            until: called after every generation (once its checkpoint is written); a true
                answer ends the search there, as a spent budget would (the CSP benchmark
                stops a run once the target is found).
            report: run the pressure scan and write the report at the end.
        """
        from ase.data import atomic_numbers

        from lamcsp.store import read_checkpoint

        elements = sorted({el for u in self.units for el in u.composition})
        self.potential.check_numbers([atomic_numbers[el] for el in elements], field="model")
        self.deduper = self._deduper()
        self.similarity = SimilarityScreen(self.deduper)
        self.unit_states = [self._new_unit_state(u) for u in self.units]
        state = read_checkpoint(self.paths.checkpoint) if self.resume else None
        if state is not None:
            self._restore(state)
            self.done = not self._budget_left()
        if self.progress and not self.done:
            self.progress.write(self.campaign.summary().replace(
                "seed: fresh", f"seed: {self.seed} (fresh)") + f"\n  units: {len(self.units)}; run "
                f"directory: {self.run_dir}" + (f"; resuming at generation {self.generation + 1}"
                                               if state is not None else ""))
        if not self.done:
            self._relax_references()
        self._finetune_setup()
        self._maybe_finetune()  # an iteration a kill interrupted
        while not self.done and self._budget_left():
            self.run_generation(self.generation)
            self.generation += 1
            self.done = not self._budget_left() or bool(until is not None and until(self))
            self._checkpoint()
            self._maybe_finetune()
        if not self.done:
            self.done = True
            self._checkpoint()
        if self.campaign.verify_enabled:  # the answer, checked by the oracle (nothing twice on --resume)
            self._verify("end")
        if report:
            self.pressure_scan()
            self.write_report()
        return self.state_dict()

    def _budget_left(self) -> bool:
        c = self.campaign
        if c.generations is not None and self.generation >= c.generations:
            return False
        if c.max_relaxations is not None and self.spent >= c.max_relaxations:
            return False
        return any(u.active for u in self.unit_states)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "generation": self.generation, "spent": self.spent, "done": self.done,
                "units": [u.to_dict() for u in self.unit_states]}

    def _checkpoint(self) -> None:
        from lamcsp.store import write_checkpoint

        write_checkpoint(self.paths.checkpoint, self.state_dict())

    def _restore(self, state: dict[str, Any]) -> None:
        """Back to the state after the last completed generation (see the module docstring)."""
        from lamcsp.generators.base import Candidate, Evaluated

        if len(state.get("units", [])) != len(self.unit_states):
            raise SetupError("checkpoint", "the checkpoint does not match this campaign's units")
        self.generation = int(state["generation"])
        self.spent = int(state["spent"])
        self.done = bool(state.get("done", False))
        by_unit: dict[int, list[Any]] = {}
        for row in self.store.rows(role="search"):
            if row.generation < self.generation:
                by_unit.setdefault(int(row.unit), []).append(row)
        for us, d in zip(self.unit_states, state["units"]):
            us.best = math.inf if d["best"] is None else float(d["best"])
            us.history = [math.inf if h is None else float(h) for h in d["history"]]
            us.stagnant, us.active = int(d["stagnant"]), bool(d["active"])
            us.relaxed, us.failed = int(d["relaxed"]), int(d["failed"])
            for (_, _, gen), gs in zip(us.generators, d["generators"]):
                if gs is not None:
                    gen.load_state_dict(gs)
            rows = sorted(by_unit.get(us.unit.index, []), key=lambda r: (r.generation, r.candidate))
            for row in rows:
                ok = result_ok(row)
                h = h_now(row) if ok else math.inf
                us.context.population.append(Evaluated(
                    Candidate.from_dict(row.data["candidate"]), Candidate.from_atoms(row.toatoms()), h, ok))
            self.similarity.remember(us, [e.candidate for e in us.context.population]
                           + [e.relaxed for e in us.context.population if e.ok])
            us.screened, us.note = int(d.get("screened", 0)), str(d.get("note", ""))
            us.prescreened = int(d.get("prescreened", 0))
            us.stored_rows = [int(i) for i in d["stored_rows"]]
            if us.stored_rows:
                rows = self._rows_by_id(us.stored_rows)
                hs = [h_now(r) for r in rows]
                us.stored.extend(self.deduper.describe([r.toatoms() for r in rows], hs))

    # -- one generation -------------------------------------------------------------------
    def propose(self, g: int) -> list[tuple[UnitState, int, Candidate]]:
        """Generation ``g``'s candidates to relax (:func:`lamcsp.stages.propose`)."""
        return stages.propose(self.unit_states, g, self.campaign, self.seed, spent=self.spent,
                              executor=self.executor, similarity=self.similarity, warn=self._warn)

    def _warn(self, us: UnitState, name: str, exc: SetupError, g: int) -> None:
        if (us.unit.index, name) not in self.warned:
            self.warned.add((us.unit.index, name))
            if self.progress:
                self.progress.write(f"  warning: {name} built nothing for {us.unit.label} in generation "
                                    f"{g + 1} ({exc.field}: {exc.message})")

    def run_generation(self, g: int) -> None:
        """One generation: propose (screens, prescreen) -> relax and store -> dedupe -> tell
        (:mod:`lamcsp.stages`); the dedupe flags of all units in one transaction."""
        todo = self.propose(g)
        results, row_ids = stages.relax_and_store(todo, g, self.store, self.executor, self._row_item)
        self.spent += len(todo)
        updates: dict[int, dict[str, Any]] = {}
        for us in self.unit_states:
            idx = [i for i in range(len(todo)) if todo[i][0] is us]
            if not idx:
                if us.active:
                    stages.update_best(us, [], self.campaign)
                continue
            mine = [results[i] for i in idx]
            stages.dedupe(us, mine, [row_ids[i] for i in idx], updates, self.deduper, self.store)
            stages.tell(us, [(todo[i][1], todo[i][2]) for i in idx], mine, self.similarity, self.campaign)
        with self.store.transaction():
            for rid, kv in sorted(updates.items()):
                self.store.update(rid, **kv)
                fault("dedupe-write")
        if self.progress:
            n_unique = {us.unit.index: len(us.stored_rows) for us in self.unit_states}
            self.progress.generation(g, self.campaign.generations, self.unit_states, n_unique, self.spent)

    def _row_item(self, result: RelaxResult, key: str, *, role: str, generation: int, generator: str,
                  unit: int, candidate: int = -1, unique: bool = False, deduped: bool = True,
                  extra: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """The arguments of :meth:`ResultStore.add` for one relaxation by the model in use
        (:func:`lamcsp.store.row_item`)."""
        from lamcsp.store import row_item

        return row_item(result, key, role=role, generation=generation, generator=generator, unit=unit,
                        model_id=self.potential.model_id, symprec=self.campaign.report.symprec,
                        candidate=candidate, unique=unique, deduped=deduped, extra=extra, data=data)

    def _add_row(self, result: RelaxResult, key: str, **kw: Any) -> int:
        """Store one relaxation now (one transaction); its row id."""
        return self.store.add(**self._row_item(result, key, **kw))

    def _rows_by_id(self, ids: Sequence[int]) -> list[Any]:
        """Rows by id, in the order given (primary-key lookups)."""
        return [self.store.db.get(id=int(i)) for i in ids]

    # -- fine-tune loop -------------------------------------------------------------------

    def _finetune_setup(self) -> None:
        """The fine-tune loop of ``campaign.finetune`` (``run/finetune``); on ``--resume`` its
        data, models and iterations are read back and the model of its last finished iteration
        is used."""
        spec = self.campaign.finetune
        self.finetune: Any = None
        if not spec.enabled:
            return
        from lamcsp.campaign import ModelSpec
        from lamcsp.finetune import FinetuneLoop
        from lamcsp.oracle import check_oracle
        from lamcsp.trainers import CHGNetTrainer, DeePMDTrainer

        m = self.campaign.model
        if m.backend == "chgnet":
            trainer: Any = CHGNetTrainer(m.path or m.options.get("version", "0.3.0"), epochs=spec.epochs,
                                         learning_rate=spec.learning_rate, diversity=spec.diversity)
        elif m.backend == "deepmd":  # a .pt checkpoint: parse_campaign checks it
            trainer = DeePMDTrainer(m.path, m.head, steps=spec.steps, diversity=spec.diversity,
                                    learning_rate=(spec.learning_rate, spec.learning_rate / 100))
        else:
            raise SetupError("finetune.enabled", f"the fine-tune loop trains chgnet or deepmd models, not "
                                                 f"{m.backend}")
        check_oracle(spec.oracle, "finetune.oracle")  # a wrong name or option fails now
        elements = sorted({el for u in self.units for el in u.composition})

        def member(path: str) -> Any:  # a model section: the executor evaluates it (on the workers)
            return ModelSpec(**{**dataclasses.asdict(m), **trainer.spec(path), "options": {}})

        self.finetune = FinetuneLoop(
            self.paths.finetune, elements, self.executor, spec.oracle, trainer, member,
            members=spec.committee, lo=spec.trust_lo, hi=spec.trust_hi, window=spec.window,
            max_labels=spec.max_labels, conv_accuracy=spec.conv_accuracy,
            max_iterations=spec.max_iterations or 10**9, max_energy=spec.max_energy)
        latest = self.finetune.registry.latest(before=self.finetune.iteration)
        if latest:
            self.use_model(ModelSpec(**{**dataclasses.asdict(m), **trainer.spec(latest["models"][0]),
                                        "options": {}}))
            self.finetune.executor = self.executor

    def _maybe_finetune(self) -> None:
        ft = getattr(self, "finetune", None)
        if ft is None or ft.done:
            return
        due = self.generation // self.campaign.finetune.every
        while ft.iteration < due and not ft.done:
            self._finetune_iteration()

    def _finetune_iteration(self) -> None:
        """One iteration. With ``verify.each_iteration``, the oracle first verifies the best
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
        from lamcsp.campaign import ModelSpec
        from lamcsp.verify import ranking_stable

        ft = self.finetune
        it = ft.iteration
        verifying = self.campaign.verify_enabled and self.campaign.verify.each_iteration
        verification = self._verify(f"iter-{it}") if verifying else None
        stable = None
        if verifying:
            stable = bool(ranking_stable([e.get("verification") for e in ft.log] + [verification]))
        structures, enthalpy, sources, pressures, near = self._finetune_candidates()
        free = self._verification_frames() if verifying and self.campaign.verify_oracle == \
            self.campaign.finetune.oracle else []
        if self.progress:
            self.progress.write(f"fine-tune iteration {it}: rating {len(structures)} structures")
        fps = [e.fingerprint for e in self.deduper.describe(structures)]
        width = max((len(f) for f in fps), default=0)
        fingerprints = np.array([np.pad(f, (0, width - len(f))) for f in fps]) if fps else None
        result = ft.step(structures, enthalpy, sources, fingerprints=fingerprints, pressures=pressures,
                         near_minimum=near, free=free, ranking_stable=stable)
        if self.progress:
            self.progress.write(
                f"fine-tune iteration {result.iteration}: accurate {result.fractions['accurate']:.2f}, "
                f"labelled {result.labelled} (failed {result.failed_labels}; {result.oracle_calls} oracle "
                f"calls, {result.free_labels} frames from the verification), "
                + (f"converged: {result.stop_reason}" if result.converged
                   else f"{len(result.models)} models trained"))
        if result.models:
            m = self.campaign.model
            self.use_model(ModelSpec(**{**dataclasses.asdict(m), **ft.trainer.spec(result.models[0]),
                                        "options": {}}))
            ft.executor = self.executor
            self._rescore(result.iteration)
        ft.finish(result, verification=verification)
        if result.models:
            self._checkpoint()  # the units' best and patience under the new model

    def _finetune_candidates(self) -> tuple[list[Any], list[float], list[str], list[float], list[int]]:
        """What the committee rates: every unit's unique hits (``enthalpy``: per atom above the
        unit's lowest, by the model in use), the model in use's re-relaxed best hits (its own
        minima), the relaxation frames of the last ``every`` generations and of the hits within
        ``finetune.window`` (NaN), their sources (row keys), pressures, and the indices of the
        structures near a minimum that are labelled whatever the committee says (the re-relaxed
        hits, and the last ``finetune.minimum_frames`` frames of each low hit)."""
        from lamcsp.generators.base import Candidate
        from lamcsp.relax.relaxer import atoms_from_dict

        spec = self.campaign.finetune
        structures: list[Any] = []
        enthalpy: list[float] = []
        sources: list[str] = []
        pressures: list[float] = []
        low: set[int] = set()
        for us in self.unit_states:
            hits = [r for r in self._rows_by_id(us.stored_rows) if result_ok(r)]
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
        rerelaxed: list[Any] = self.store.rows(role="rerelax", iteration=self.finetune.iteration - 1)
        for row in rerelaxed:
            if result_ok(row):
                near.append(len(structures))
                structures.append(row.toatoms())
                enthalpy.append(math.nan)
                sources.append(row.key)
                pressures.append(float(row.pressure_gpa))
        first = max(0, self.generation - spec.every)
        rows = {int(r.id): r for r in self.store.rows(f"generation>={first}", role="search")}
        rows.update({i: self.store.db.get(id=i) for i in low if i not in rows})
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

    # -- verification ---------------------------------------------------------------------------

    def _hits(self) -> list[Any]:
        """Every unit's unique hits as :class:`lamcsp.verify.Hit` (the model in use's enthalpies)."""
        from lamcsp.verify import hits_of

        pairs = [(us.unit, row) for us in self.unit_states for row in self._rows_by_id(us.stored_rows)]
        return hits_of(pairs, self.campaign.system.elements)

    def verify_settings(self) -> Any:
        """The campaign's verification settings (:class:`lamcsp.verify.VerifySettings`)."""
        from lamcsp.verify import VerifySettings

        v = self.campaign.verify
        return VerifySettings(oracle=self.campaign.verify_oracle, mode=v.mode, optimizer=v.optimizer,
                              fmax=v.fmax, max_steps=v.max_steps, top_k=v.top_k, window=v.window)

    def _verify(self, stage: str) -> dict[str, Any]:
        """Verify the model in use's best structures with the oracle (:mod:`lamcsp.verify`);
        the verification record per unit (comparison and verified ranking)."""
        from lamcsp.verify import ranking_record, run_verification

        settings = self.verify_settings()
        comparisons = run_verification(
            self._hits(), settings, store=self.store, executor=self.executor, run_dir=self.run_dir,
            stage=stage, model_id=self.potential.model_id, symprec=self.campaign.report.symprec,
            progress=self.progress.write if self.progress else None)
        record = ranking_record(comparisons, settings.top_k)
        if self.progress:
            for label, c in record.items():
                tau = "-" if c["kendall_tau"] is None else f"{c['kendall_tau']:.2f}"
                agrees = "agrees" if c["top1_agree"] else "DISAGREES"
                self.progress.write(f"  {label}: top-1 {agrees} with the oracle (tau {tau}, largest error "
                                    f"{1000 * c['max_error']:.0f} meV/atom); answer #{c['answer']}")
        return record

    def _verification_frames(self) -> list[tuple[str, Any]]:
        """The oracle frames of every verification so far (``verify.train_frames`` of each: its
        first, the model's structure, its last, the oracle's minimum, then evenly between), as
        ``(source, labelled atoms)`` for the fine-tune data."""
        from lamcsp.oracle import Journal, record_atoms

        n = self.campaign.verify.train_frames
        oid = self.verify_settings().oracle_id
        out = []
        for row in self.store.rows(role="verify", oracle=oid, include_data=False):
            source = self.store.db.get(id=int(row.get("of")))
            recs = [r for r in Journal(self.paths.journal(oid, source.key)).read()
                    if r.get("stress") is not None]
            if not recs or n == 0:
                continue
            picks = sorted({0, len(recs) - 1} | {int(round(x)) for x in np.linspace(0, len(recs) - 1, n)})
            picks = ([0, len(recs) - 1] + [j for j in picks if j not in (0, len(recs) - 1)])[:n]
            for j in sorted(set(picks)):
                out.append((f"verify:{oid}:{source.key}:{j}", record_atoms(recs[j])))
        return out

    def _rescore(self, iteration: int) -> None:
        """After a model switch, the enthalpies the search compares come from the new model:
        every unit's relaxed population and unique hits are evaluated with it (single points at
        the stored structures, batched), the ``finetune.rerelax`` lowest of each unit are
        re-relaxed with it (rows ``role=rerelax``: a single point at the old model's minimum is
        not the new model's enthalpy of that structure, and rankings by single points mislead),
        and the units' best, dedupe entries and the swarm's and GA's fitness take those values
        (the re-relaxed one where it is lower). Rows keep the enthalpy of their own relaxation
        and gain ``enthalpy_now`` (per atom, by ``model_now``), which ``--resume``, the
        verification and the report read."""
        every = list(self.store.rows(role="search"))  # one read: the ok ones to score, all for the units
        rows = [row for row in every if result_ok(row)]
        if not rows:
            return
        points = self.executor.evaluate([row.toatoms() for row in rows],
                                        [float(row.pressure_gpa) for row in rows],
                                        labels=[f"{row.key} (rescore)" for row in rows])
        now = {int(row.id): float(p.enthalpy_per_atom) for row, p in zip(rows, points)}
        for rid, x in self._rerelax_best(iteration, now).items():
            now[rid] = min(now[rid], x)
        with self.store.transaction():
            for rid, x in now.items():
                self.store.update(rid, enthalpy_now=x, model_now=self.potential.model_id)
        by_unit: dict[int, list[Any]] = {}
        for row in every:
            by_unit.setdefault(int(row.unit), []).append(row)
        for us in self.unit_states:
            self._apply_now(us, now, sorted(by_unit.get(us.unit.index, []),
                                            key=lambda r: (r.generation, r.candidate)))

    def _apply_now(self, us: UnitState, now: dict[int, float], rows: list[Any]) -> None:
        """A unit's enthalpies from ``now`` (row id -> enthalpy per atom): its unique hits, its
        population (one entry per row of the unit, by generation and candidate) and its best;
        patience starts again."""
        from lamcsp.generators.dedupe import StoredStructures

        entries = self.deduper.describe(list(us.stored.entries), [now.get(int(i)) for i in us.stored_rows])
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

    def _rerelax_best(self, iteration: int, now: dict[int, float]) -> dict[int, float]:
        """The ``finetune.rerelax`` best unique hits of every unit by ``now`` (row id -> the new
        model's single-point enthalpy per atom), re-relaxed with the new model (rows
        ``role=rerelax``, ``iteration``, ``of``: the row re-relaxed; read back, not relaxed
        again, on ``--resume``); their enthalpies per atom by the row re-relaxed (ok results)."""
        n = self.campaign.finetune.rerelax
        todo, out = [], {}
        for us in self.unit_states:
            ids = sorted((int(i) for i in us.stored_rows if int(i) in now), key=lambda i: now[i])[:n]
            for row in self._rows_by_id(ids):
                key = f"ft{iteration}-{row.key}"
                done = self.store.row_id(key)
                if done is None:
                    todo.append((key, row, us))
                    continue
                old = self.store.db.get(id=done)
                if result_ok(old):
                    out[int(row.id)] = float(old.enthalpy_per_atom)

        def store_one(i: int, result: RelaxResult) -> None:
            key, row, us = todo[i]
            self._add_row(result, key, role="rerelax", generation=-3, generator="rerelax", unit=us.unit.index,
                          extra={"iteration": iteration, "of": int(row.id)})
            if result_ok(result):
                out[int(row.id)] = float(result.enthalpy_per_atom)

        if todo:
            self.executor.relax([r.toatoms() for _, r, _ in todo], [us.unit.pressure_gpa for *_, us in todo],
                                on_result=store_one)
        return out

    # -- references, pressure scan, report ---------------------------------------------------
    def _relax_references(self) -> None:
        refs = self.campaign.system.references
        if not refs:
            return
        from lamcsp.io import read_structures

        todo = []
        for el, path in refs.items():
            atoms = read_structures([path], field=f"system.references.{el}")[0]
            if set(atoms.get_chemical_symbols()) != {el}:
                raise SetupError(f"system.references.{el}", f"{path} holds {atoms.get_chemical_formula()}, "
                                                            f"not pure {el}")
            for j, p in enumerate(self.campaign.system.pressures):
                key = f"ref-{el}-p{j}"
                if self.store.row_id(key) is None:
                    todo.append((key, atoms, float(p)))
        if not todo:
            return

        def store_one(i: int, result: RelaxResult) -> None:
            self._add_row(result, todo[i][0], role="reference", generation=-1, generator="reference",
                          unit=-1, unique=True)

        self.executor.relax([a for _, a, _ in todo], [p for *_, p in todo], on_result=store_one)

    def pressure_scan(self) -> int:
        """Re-relax the best polymorphs over a pressure grid (two or more pressures only);
        returns the number of scan rows written."""
        pressures = self.campaign.system.pressures
        if len(pressures) < 2:
            return 0
        spec = self.campaign.report
        grid = sorted(set(np.round(np.linspace(min(pressures), max(pressures), spec.scan_points), 6).tolist())
                      | {round(float(p), 6) for p in pressures})
        picked: dict[tuple[str, int], Any] = {}
        for us in self.unit_states:
            rows = sorted(self._rows_by_id(us.stored_rows), key=h_now)
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
                if self.store.row_id(key) is None:
                    todo.append((key, row, p))
        if not todo:
            return 0
        if self.progress:
            self.progress.write(f"pressure scan: {len(picked)} polymorphs x {len(grid)} pressures")

        def store_one(i: int, result: RelaxResult) -> None:
            key, row, _ = todo[i]
            self._add_row(result, key, role="scan", generation=-2, generator="scan", unit=int(row.unit),
                          extra={"polymorph": int(row.id)})

        self.executor.relax([r.toatoms() for _, r, _ in todo], [p for *_, p in todo], on_result=store_one)
        return len(todo)

    def write_report(self) -> Path | None:
        from lamcsp.report import write_report

        path = write_report(self.run_dir, spec=self.campaign.report)
        if self.progress:
            self.progress.write(f"report: {path}")
        return path


# --------------------------------------------------------------------------------- helpers


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def run_search(campaign: Campaign, run_dir: str | Path | None = None, **kwargs: Any) -> Search:
    """Run a campaign to its end (see :class:`Search`); returns the finished search."""
    s = Search(campaign, run_dir, **kwargs)
    s.run()
    return s


# re-exported: the units (lamcsp.units) and the stages' helpers (lamcsp.stages) lived here before
__all__ = ["RowBuffer", "Search", "SearchUnit", "SerialExecutor", "UnitState", "candidate_key",
           "generator_counts", "oversample_of", "run_search", "screen", "search_units", "unit_rng",
           "variable_compositions"]
