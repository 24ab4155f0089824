"""The campaign loop: ``lamcsp search campaign.yaml [--resume]``.

The campaign's search units (one per composition and pressure) are :mod:`lamcsp.units`; one
generation is the stages of :mod:`lamcsp.stages`, for all active units together::

    propose -> screen (minimum distances; similarity to what the unit has seen, topped up)
    -> prescreen (oversampling generators: single points or the funnel's quench)
    -> relax (through the executor, lamcsp.parallel; each result journaled as it arrives,
       lamcsp.inflight; the next generation's random share drawn meanwhile)
    -> dedupe (per unit)
    -> tell (populations, counters, seen structures, best enthalpies and patience)
    -> write (the generation's rows, each with its dedupe flags, in one transaction; while the
       next generation relaxes, Search.flush_rows)
    -> checkpoint (atomic, after the rows)

:class:`Search` strings them together (:meth:`Search.run_generation`), and runs the steps
around the loop: the reference structures, the fine-tune iterations, the verification, the
pressure scan and the report.

A unit stops when its best enthalpy per atom has not dropped by more than
``stop.min_improvement`` for ``stop.patience`` generations; the campaign stops when every unit
has stopped, after ``generations``, or when ``max_relaxations`` is spent.

Determinism and resume. The RNG of generator *i* of unit *u* in generation *g* is derived from
the campaign seed as ``SeedSequence(seed, spawn_key=(u, i, g))``, and that of a random
generator's candidate *k* as ``SeedSequence(seed, spawn_key=(u, i, g, k))`` (drawn on the
workers under MPI, :mod:`lamcsp.draws`), so no RNG state needs saving and the candidates do not
depend on the number of ranks.
The checkpoint (``checkpoint.json``, written atomically after every generation) holds the next
generation, the relaxations spent, and per unit the best-enthalpy history, the patience counter,
the generators' ``state_dict()`` and the database ids of its stored representatives. Rows are
keyed ``u{unit}-g{generation}-c{candidate}``. ``--resume`` reads the checkpoint, rebuilds the
populations and representatives from the database, and re-runs the generation that was
interrupted: the same candidates are proposed again; those already in the database or in the
generation's journal are read back, not relaxed again (so no relaxation that arrived is lost
and none is stored twice); the rest are relaxed; deduplication is recomputed (idempotent). A
kill between the generation's transaction and the checkpoint leaves rows that the rerun reads
back, with the flags it computes again.

After the loop: with ``verify`` on (by default whenever the fine-tune loop runs), the oracle
verifies the model's best structures of every unit (:mod:`lamcsp.verify`, rows ``role=verify``);
with two or more pressures, the ``report.scan_top`` best polymorphs of every composition at every
pressure are re-relaxed on a grid of ``report.scan_points`` pressures (rows with ``role=scan``)
for the enthalpy-vs-pressure report; then the report is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from lamcsp import stages, steps
from lamcsp.campaign.schema import comparable
from lamcsp.errors import SetupError
from lamcsp.inflight import GenerationJournal
from lamcsp.matching import confirm_for
from lamcsp.parallel import SerialExecutor
from lamcsp.resume import restore
from lamcsp.stages import SimilarityScreen, UnitState, candidate_key, oversample_of, screen
from lamcsp.store import RunDir, plain
from lamcsp.units import SearchUnit, generator_counts, search_units, unit_rng, variable_compositions

if TYPE_CHECKING:

    from lamcsp.campaign import Campaign
    from lamcsp.draws import Ahead
    from lamcsp.generators.base import Candidate
    from lamcsp.potentials.base import Potential
    from lamcsp.relax.relaxer import RelaxResult
    from lamcsp.store import ResultStore

log = logging.getLogger(__name__)

CHECKPOINT_NAME = RunDir.CHECKPOINT
CAMPAIGN_COPY = RunDir.CAMPAIGN
#: campaign fields that may change between a run and its ``--resume`` (budget and reporting)
RESUMABLE_CHANGES = ("generations", "max_relaxations", "stop", "report", "parallel")


# --------------------------------------------------------------------------------- progress


@dataclasses.dataclass
class Progress:
    """One line per unit and generation: ``INFO`` on this module's logger (the CLI shows it
    unless ``--quiet``; :mod:`lamcsp.log`), or to ``stream`` when one is given."""

    stream: TextIO | None = None
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def write(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)
        else:
            log.info(text)

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

    Its length (under 400 lines) is the run's wiring, not its work: it owns the parts of a run
    (store, executor, model in use, units, the generation waiting to be written, the
    checkpoint) and the order of the steps. Every stage of a generation is a function of
    :mod:`lamcsp.stages` (and :mod:`lamcsp.draws`, :mod:`lamcsp.screens`), every step around
    the loop one of :mod:`lamcsp.steps`, resuming :func:`lamcsp.resume.restore`; a change to
    any of them leaves this class alone.

    Args:
        campaign: the validated campaign.
        run_dir: output directory (default ``campaign.output_dir``).
        potential: the model; loaded from ``campaign.model`` when ``None``.
        resume: continue the run in ``run_dir`` from its checkpoint.
        progress: where progress lines go (``None``: the ``lamcsp.search`` logger, shown by the
            CLI; a stream: there; ``False``: nowhere). Warnings always go to the logger.
        executor: relaxes structures (default: :class:`SerialExecutor`).
        db_url: a database URL instead of ``run_dir/results.db``.
        trainer: the fine-tune loop's trainer instead of the one ``campaign.model`` implies (a
            campaign set's view of its shared training, :mod:`lamcsp.campaign_set`).
    """

    def __init__(self, campaign: Campaign, run_dir: str | Path | None = None, *,
                 potential: Potential | None = None, resume: bool = False,
                 progress: TextIO | bool | None = None, executor: Any = None,
                 db_url: str | None = None, trainer: Any = None):
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
        from lamcsp.store import ResultStore

        # the database first: one that cannot be reached stops the search before the run exists
        self.store: ResultStore = ResultStore(self.run_dir, url=db_url, fresh=not resume)
        if not resume:
            if self.seed is None:
                self.seed = int(np.random.SeedSequence().entropy % (2**63))
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_campaign_copy()
        self._potential = potential
        self._executor = executor
        stream = None if progress in (None, True, False) else progress
        self.progress = None if progress is False else Progress(stream)
        self.units = search_units(campaign)
        self.generation = 0
        self.spent = 0
        self.done = False
        #: the cascade's rescore stage runs at the end (off where the default model cannot run the system)
        self.cascade = campaign.rescore_model is not None
        self.warned: set[tuple[int, str]] = set()
        #: the next generation's random share, drawn while this one relaxes (stages.draw_ahead)
        self.ahead: Ahead | None = None
        #: the last generation's results, dedupe flags and journal, until flush_rows writes them
        self.unwritten: tuple[stages.Relaxed, dict[int, dict[str, Any]], GenerationJournal] | None = None
        #: the checkpoint state after the last generation, until its rows are written
        self._unsaved: dict[str, Any] | None = None
        self.finetune = steps.FinetuneStep(self, trainer)
        self.verification = steps.Verification(self)

    def say(self, text: str) -> None:
        """A progress line (nowhere when the search was built with ``progress=False``)."""
        if self.progress:
            self.progress.write(text)

    # -- setup ----------------------------------------------------------------------------
    def _check_run_dir(self, db_url: str | None) -> None:
        from lamcsp.io import check_output_path

        check_output_path(self.run_dir, "output", directory=True)
        if self.paths.holds_run(db_url) and not self.resume:
            raise SetupError("output", f"{self.run_dir} already holds a run; pass --resume to continue "
                                       "it, or choose another output directory (nothing was changed)")
        if self.resume and not self.paths.campaign.exists():
            raise SetupError("--resume", f"{self.run_dir} holds no run to resume ({CAMPAIGN_COPY} "
                                         "missing); start it without --resume")
        if self.resume:  # everything a resume reads, checked before anything is opened for writing
            from lamcsp.store import check_database, read_checkpoint, read_database_file, run_holder

            holder = run_holder(self.paths)
            if holder is not None and holder["alive"] and holder["pid"] != os.getpid():
                raise SetupError("--resume", f"{self.run_dir} is held by a running search "
                                             f"(pid {holder['pid']} since {holder['started']}); wait for it "
                                             "or stop it first (nothing was changed)")
            if read_database_file(self.paths) is not None:
                pass  # the rows are in the database it names: ResultStore checks it
            elif db_url is None and not self.paths.db.exists():
                if self.paths.checkpoint.exists():  # generations were stored there: their results are gone
                    raise SetupError("--resume", f"{self.paths.db} is missing: the results of the run are "
                                                 "gone, so it cannot be resumed (nothing was changed)")
            elif db_url is None:  # (none and no checkpoint: killed before its first generation ended)
                check_database(self.paths.db)
            read_checkpoint(self.paths.checkpoint)

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

    def prepare(self) -> None:
        """The deduper, the similarity screen and a fresh state per unit (what :meth:`run`
        starts from; a benchmark that runs single generations calls it)."""
        self.deduper = stages.deduper_for(self.campaign)
        self.similarity = SimilarityScreen(self.deduper)
        self.unit_states = [stages.new_unit_state(u, self.campaign, self.deduper) for u in self.units]

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
        from lamcsp.campaign.parse import read_yaml

        old = read_yaml(self.paths.campaign, what="campaign copy of the run")
        if not isinstance(old, dict) or "seed" not in old:
            raise SetupError(str(self.paths.campaign), "not the campaign copy lamcsp writes (no seed); the "
                                                       "run cannot be resumed")
        new = self.campaign.to_dict()
        new["seed"] = self.seed if self.seed is not None else old.get("seed")
        for key in new:
            if key in RESUMABLE_CHANGES:
                continue
            if comparable(old.get(key), key) != comparable(new[key], key):
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
        from lamcsp.store import hold_run

        with hold_run(self.paths):  # `lamcsp status` sees a process holding the run
            try:
                return self._run(until, report)
            except BaseException:  # a worker failed, or a kill signal: what was deduped goes in
                try:
                    self.flush_rows()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    log.debug("rows of the last generation left in its journal", exc_info=True)
                raise

    def _run(self, until: Callable[[Search], bool] | None, report: bool) -> dict[str, Any]:
        self.begin()
        self.finetune.catch_up()  # an iteration a kill interrupted
        while not self.done and self.budget_left():
            self.step_generation(until)
            self.finetune.catch_up()
        return self.finish(report)

    def begin(self) -> None:
        """Everything before the first generation (or the next one, on ``--resume``): model
        checks, the state (restored from the checkpoint), the references, the fine-tune loop.
        :meth:`run` is ``begin``, :meth:`step_generation` with the fine-tune iterations due,
        then :meth:`finish`; a campaign set (:mod:`lamcsp.campaign_set`) interleaves those of
        several searches."""
        from ase.data import atomic_numbers

        from lamcsp.store import read_checkpoint

        elements = sorted({el for u in self.units for el in u.composition})
        self.potential.check_numbers([atomic_numbers[el] for el in elements], field="model")
        if self.cascade:  # the cascade's model runs this system: before any work
            try:
                self.verification.rescore_potential().check_numbers([atomic_numbers[el] for el in elements],
                                                                    field="rescore.model")
            except Exception as exc:  # noqa: BLE001 - the default cascade steps aside, a named model stops
                if not self.campaign.rescore_is_default:
                    raise
                self.cascade = False  # the default cascade steps aside where its model cannot go
                why = ("the sevenn package is missing; install lamcsp[sevennet] for it"
                       if isinstance(exc, ImportError) else str(exc))
                note = f"no rescore stage: the default rescore model (SevenNet-0) cannot run ({why})"
                log.warning(note)
                self.say(f"  {note}")
        self.prepare()
        state = read_checkpoint(self.paths.checkpoint) if self.resume else None
        if state is not None:
            try:
                restore(self, state)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise SetupError(str(self.paths.checkpoint), f"the checkpoint does not hold a search "
                                 f"state this campaign can resume ({type(exc).__name__}: {exc})") from None
            self.done = not self.budget_left()
        if self.progress and not self.done:
            self.progress.write(self.campaign.summary().replace(
                "seed: fresh", f"seed: {self.seed} (fresh)") + f"\n  units: {len(self.units)}; run "
                f"directory: {self.run_dir}" + (f"; resuming at generation {self.generation + 1}"
                                               if state is not None else ""))
        if not self.done:
            steps.relax_references(self)
        self.finetune.setup()

    def step_generation(self, until: Callable[[Search], bool] | None = None) -> None:
        """One generation, then its checkpoint; ``done`` when the budget is spent or ``until``
        says so. The generation's rows and the checkpoint are written while the next generation
        relaxes (:meth:`flush_rows`), or now where nothing follows that could: the last
        generation, a fine-tune iteration due, or ``until`` (which reads the store)."""
        self.run_generation(self.generation)
        self.generation += 1
        if until is not None:
            self._write_rows()
        self.done = not self.budget_left() or bool(until is not None and until(self))
        self._unsaved = json.loads(json.dumps(plain(self.state_dict())))  # as it is now
        if self.unwritten is None or self.done or self.finetune.due():
            self.flush_rows()

    def flush_rows(self) -> None:
        """Write the last generation's rows, each with its dedupe flags, then its checkpoint,
        where they wait (:func:`lamcsp.stages.write_rows`; the next generation's relax call
        does it while the workers relax)."""
        from lamcsp.store import write_checkpoint

        ids = self._write_rows()
        state, self._unsaved = self._unsaved, None
        if state is not None:
            for d in state["units"]:
                d["stored_rows"] = [ids.get(r, r) for r in d["stored_rows"]]
            write_checkpoint(self.paths.checkpoint, state)

    def _write_rows(self) -> dict[int, int]:
        """The rows of the generation that waits, written; placeholder -> row id."""
        if self.unwritten is None:
            return {}
        relaxed, updates, journal = self.unwritten
        ids = stages.write_rows(self.store, relaxed, updates, self.unit_states)
        self.unwritten = None  # only now: a failed write leaves them waiting (and no checkpoint)
        journal.clear()
        return ids

    def finish(self, report: bool = True) -> dict[str, Any]:
        """After the last generation: the cascade's rescore, the verification, the pressure
        scan and the report; returns the final checkpoint state."""
        self.flush_rows()
        if not self.done:
            self.done = True
            self.checkpoint()
        if self.cascade:  # a second model re-ranks the best (nothing twice on --resume)
            self.verification.rescore()
        if self.campaign.verify_enabled:  # the answer, checked by the oracle (nothing twice on --resume)
            self.verification.run("end", after_rescore=self.cascade)
        if report:
            steps.pressure_scan(self)
            self.write_report()
        return self.state_dict()

    def budget_left(self) -> bool:
        """Generations and relaxations are left and a unit is still active."""
        c = self.campaign
        if c.generations is not None and self.generation >= c.generations:
            return False
        if c.max_relaxations is not None and self.spent >= c.max_relaxations:
            return False
        return any(u.active for u in self.unit_states)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "generation": self.generation, "spent": self.spent, "done": self.done,
                "units": [u.to_dict() for u in self.unit_states]}

    def checkpoint(self) -> None:
        """Write the rows that wait and the checkpoint of the state now (atomically)."""
        from lamcsp.store import write_checkpoint

        self.flush_rows()
        write_checkpoint(self.paths.checkpoint, self.state_dict())

    # -- one generation -------------------------------------------------------------------
    def propose(self, g: int) -> list[tuple[UnitState, int, Candidate]]:
        """Generation ``g``'s candidates to relax (:func:`lamcsp.stages.propose`)."""
        ahead, self.ahead = self.ahead, None
        return stages.propose(self.unit_states, g, self.campaign, self.seed, spent=self.spent,
                              executor=self.executor, similarity=self.similarity, warn=self._warn,
                              ahead=ahead)

    def _warn(self, us: UnitState, name: str, exc: SetupError, g: int) -> None:
        if (us.unit.index, name) not in self.warned:
            self.warned.add((us.unit.index, name))
            log.warning(f"{name} built nothing for {us.unit.label} in generation {g + 1} "
                        f"({exc.field}: {exc.message})")

    def run_generation(self, g: int) -> None:
        """One generation: propose (screens, prescreen) -> relax, each result journaled as it
        arrives, the next generation's random share drawn and the last generation's rows
        written meanwhile -> dedupe -> tell (:mod:`lamcsp.stages`). Its own rows wait, with
        their dedupe flags, for :meth:`flush_rows`."""
        todo = self.propose(g)
        ahead = stages.draw_ahead(self.unit_states, g + 1, self.campaign, self.seed,
                                  spent=self.spent + len(todo))
        journal = GenerationJournal(self.paths.inflight(g), g)
        relaxed = stages.relax_and_store(todo, g, self.store, self.executor, self.row_item, journal,
                                         then=ahead.jobs if ahead is not None else (),
                                         meanwhile=self.flush_rows)
        self.ahead = ahead
        self.spent += len(todo)
        updates: dict[int, dict[str, Any]] = {}
        confirm = confirm_for(self.executor, self.deduper)  # the matcher on the workers, if any
        for us in self.unit_states:
            idx = [i for i in range(len(todo)) if todo[i][0] is us]
            if not idx:
                if us.active:
                    stages.update_best(us, [], self.campaign)
                continue
            mine = [relaxed.results[i] for i in idx]
            rows = [relaxed.rows[i] for i in idx]
            stages.dedupe(us, mine, rows, updates, self.deduper, self.store, confirm)
            stages.tell(us, [(todo[i][1], todo[i][2]) for i in idx], mine, self.similarity, self.campaign)
        self.unwritten = (relaxed, updates, journal)  # written by flush_rows
        if self.progress:
            n_unique = {us.unit.index: len(us.stored_rows) for us in self.unit_states}
            self.progress.generation(g, self.campaign.generations, self.unit_states, n_unique, self.spent)

    def row_item(self, result: RelaxResult, key: str, *, role: str, generation: int, generator: str,
                 unit: int, candidate: int = -1, unique: bool = False, deduped: bool = True,
                 extra: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """The arguments of :meth:`ResultStore.add` for one relaxation by the model in use
        (:func:`lamcsp.store.row_item`)."""
        from lamcsp.store import row_item

        return row_item(result, key, role=role, generation=generation, generator=generator, unit=unit,
                        model_id=self.potential.model_id, symprec=self.campaign.report.symprec,
                        candidate=candidate, unique=unique, deduped=deduped, extra=extra, data=data)

    def add_row(self, result: RelaxResult, key: str, **kw: Any) -> int:
        """Store one relaxation now (one transaction); its row id."""
        return self.store.add(**self.row_item(result, key, **kw))

    def rows_by_id(self, ids: Sequence[int]) -> list[Any]:
        """Rows by id, in the order given (primary-key lookups)."""
        return [self.store.db.get(id=int(i)) for i in ids]

    def write_report(self) -> Path | None:
        from lamcsp.report import write_report

        path = write_report(self.run_dir, spec=self.campaign.report)
        if self.progress:
            self.progress.write(f"report: {path}")
        return path


# --------------------------------------------------------------------------------- helpers


def run_search(campaign: Campaign, run_dir: str | Path | None = None, **kwargs: Any) -> Search:
    """Run a campaign to its end (see :class:`Search`); returns the finished search."""
    s = Search(campaign, run_dir, **kwargs)
    s.run()
    return s


# re-exported: the units (lamcsp.units) and the stages' helpers (lamcsp.stages) lived here before
__all__ = ["Search", "SearchUnit", "SerialExecutor", "UnitState", "candidate_key",
           "generator_counts", "oversample_of", "run_search", "screen", "search_units", "unit_rng",
           "variable_compositions"]
