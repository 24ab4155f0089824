"""Executors: where batches of work run. Serial in this process, or across MPI ranks.

The seam is the :class:`Executor` protocol, which both :class:`SerialExecutor` and
:class:`MPIExecutor` implement whole, and :func:`make_executor` the one factory; the search
never asks which it has:

* ``relax(structures, pressures, on_result, labels, max_steps, then)``: relaxations with the
  model in use (``max_steps``: other than the campaign's, e.g. the funnel's quench); ``then``:
  :class:`Job` s dealt out after the relaxations' batches, to the workers they leave idle (the
  search draws the next generation's random share so, while this one relaxes); ``meanwhile``:
  the caller's own work, run once in its process while the workers relax (under MPI once the
  first batches are out; serially before the relaxations): the search writes the last
  generation's rows then;
* ``evaluate(structures, pressures, labels, model)``: single points
  (:class:`~lamcsp.relax.relaxer.SinglePoint`) with the model in use or another ``model``
  section (a committee member): the energy prescreen, the fine-tune loop's rescoring and its
  committee;
* ``map(task, items, on_result, labels)``: any :class:`Task` (an importable factory and its
  plain-data spec) over plain-data items, ``on_result(index, result)`` as each result arrives
  (oracle labels, verification);
* ``set_model(model, potential)``: go on with another model (the fine-tune loop's);
* ``workers``: the processes beside the caller's that run ``map``'s tasks (0: they run in
  the calling process), which tells a caller whether farming work out frees it (dedupe's
  matcher questions, :mod:`lamcsp.matching`);
* ``close()``.

``relax`` and ``evaluate`` are tasks on top of ``map`` (:class:`RelaxTask`,
:class:`EvaluateTask`).

MPI (``mpiexec -n N lamcsp search campaign.yaml``, or ``srun``):

* Rank 0 is the coordinator. It runs the campaign loop (generation, dedupe, database,
  checkpoint); nothing else writes files.
* Every rank, rank 0 too unless ``parallel.coordinator_relaxes`` is false, runs one *relax
  worker* in a child process (multiprocessing ``spawn``; the child never touches MPI). So the
  coordinator keeps serving other ranks while its own worker relaxes, and a worker that dies
  (killed, out of memory, a crash in native code) leaves its rank alive to report it.
* Work goes out in batches (``parallel.batch_size``; default: about two per worker and
  call). Each worker holds at most two batches (one running, one waiting), and gets the next
  when it finishes one, so fast workers take more and a slow one never stalls the others.
* Results stream back one structure at a time; the search journals each as it arrives.
* A worker that raises, or dies, stops the campaign with :class:`~lamcsp.errors.WorkerError`
  naming the rank and the structures it held; every result stored so far stays, and
  ``--resume`` (under MPI or not) continues from the last checkpoint.
* A worker binds GPU ``local_rank % n_gpus`` when GPUs exist; on CPUs it uses
  ``parallel.threads`` torch threads, else ``OMP_NUM_THREADS``, else the cores it may run on
  divided by the ranks on its node (all of them when the launcher bound it to fewer cores).

Without mpi4py, or on one rank, :class:`SerialExecutor` runs: the campaign file is the same.

This module holds the protocol, the tasks, the serial executor and the factory; the MPI side
(:class:`MPIExecutor`, :func:`worker_main`, the child process) is :mod:`lamcsp.mpi`, its names
importable from here too.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from lamcsp.errors import SetupError
from lamcsp.faults import fault

if TYPE_CHECKING:
    from ase import Atoms

    from lamcsp.potentials.base import Potential
    from lamcsp.relax.relaxer import RelaxResult, SinglePoint

#: batches a worker holds at once (one running, the rest waiting)
PREFETCH = 2
#: batches per worker in one ``map`` call, when ``batch_size`` is not set
BATCHES_PER_WORKER = 2
#: how long an idle loop waits for a message, seconds
POLL = 0.002
_TAG = 11
#: tasks a worker keeps built (their models loaded); the least recently used goes first
MAX_TASKS = 6
#: environment variables that say this process was started by an MPI launcher, and the world size
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE",
                       "SLURM_STEP_NUM_TASKS")


# --------------------------------------------------------------------------------- protocol


@runtime_checkable
class Executor(Protocol):
    """Where batched work runs (see the module docstring)."""

    def relax(self, structures: Sequence[Atoms], pressures: Sequence[float],
              on_result: Callable[[int, RelaxResult], None] | None = None,
              labels: Sequence[str] | None = None, max_steps: int | None = None,
              then: Sequence[Job] = (), meanwhile: Callable[[], None] | None = None) -> list[RelaxResult]: ...

    def evaluate(self, structures: Sequence[Atoms], pressures: Sequence[float],
                 labels: Sequence[str] | None = None, model: Any = None) -> list[SinglePoint]: ...

    def map(self, task: Task, items: Sequence[Any], on_result: Callable[[int, Any], None] | None = None,
            labels: Sequence[str] | None = None) -> list[Any]: ...

    def set_model(self, model: Any, potential: Potential | None = None) -> None: ...

    @property
    def workers(self) -> int: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True)
class Task:
    """A kind of work, as plain data: ``target`` names an importable factory
    (``"package.module:name"``); ``factory(spec, worker)`` returns a callable
    ``run(items, emit)`` that calls ``emit(j, result)`` for each of its items (plain data in,
    plain data out). Workers build it once and keep it (a loaded model) for later batches."""

    target: str
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.target + json.dumps(self.spec, sort_keys=True, default=str)


@dataclasses.dataclass
class Job:
    """A :class:`Task` over plain-data items, run after a ``relax`` call's own batches (its
    ``then``): under MPI the workers that finish relaxing take its batches while the others
    still relax; serially it runs after the relaxations. ``results`` holds the task's results
    in item order once ``relax`` returns."""

    task: Task
    items: list[Any]
    labels: list[str] | None = None
    results: list[Any] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """Where a worker runs: its MPI rank, its rank on its node, and the ranks on its node."""

    rank: int = 0
    local_rank: int = 0
    local_size: int = 1


def _load_target(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SetupError("task", f"cannot import the task factory {target!r} ({exc})") from None


def cpu_threads(requested: int | None, local_size: int) -> int:
    """Torch threads for one CPU worker: ``requested``, else ``OMP_NUM_THREADS``, else the
    cores this process may use over the ranks on its node (all of them when the launcher has
    bound it to a subset of the node)."""
    if requested:
        return int(requested)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if allowed < (os.cpu_count() or allowed):
        return max(1, allowed)
    return max(1, allowed // max(1, local_size))


def worker_device(requested: str, worker: WorkerInfo) -> str:
    """The device of a worker: ``cuda:(local_rank % n_gpus)`` for ``auto``/``cuda`` where GPUs
    exist; else what was asked."""
    if requested in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{worker.local_rank % torch.cuda.device_count()}"
        return "cpu" if requested == "auto" else requested
    return requested


#: models a worker process keeps loaded, by spec (:func:`cached_model`)
_MODELS: dict[str, Any] = {}


def cached_model(model: Any) -> Potential:
    """The potential of ``model`` (a campaign ``model`` section), loaded once per process and
    kept (the ``MAX_TASKS`` most recently used): a relaxation task and a single-point task of
    the same model share it, and a campaign set's workers, which go from one campaign's model
    (head) to another's every generation, load each once."""
    from lamcsp.potentials.registry import load_model

    key = json.dumps(model.model_dump(), sort_keys=True, default=str)
    potential = _MODELS.pop(key, None)
    if potential is None:
        potential = load_model(model)
    _MODELS[key] = potential  # the most recently used last
    while len(_MODELS) > MAX_TASKS:
        del _MODELS[next(iter(_MODELS))]
    return potential


def _worker_potential(spec: dict[str, Any], worker: WorkerInfo) -> Potential:
    """The model of a task spec on the worker's device (its ``model``: a campaign ``model``
    section as a dict; ``threads``: torch threads on a CPU, or null), :func:`cached_model`."""
    import torch

    from lamcsp.campaign import ModelSpec

    model = ModelSpec(**spec["model"])
    model = model.replace(device=worker_device(model.device, worker))
    if not model.device.startswith("cuda"):
        torch.set_num_threads(cpu_threads(spec.get("threads"), worker.local_size))
    return cached_model(model)


class RelaxTask:
    """The relaxation task: items ``{"atoms": atoms_to_dict(a), "pressure": GPa}``, results
    ``RelaxResult.to_dict()``. Spec: ``model`` (a campaign ``model`` section as a dict),
    ``relaxer`` (Relaxer options), ``threads`` (torch threads on a CPU, or null)."""

    def __init__(self, spec: dict[str, Any], worker: WorkerInfo):
        from lamcsp.relax import Relaxer

        self.potential: Potential = _worker_potential(spec, worker)
        self.relaxer = Relaxer(self.potential, progress=False, **spec.get("relaxer", {}))

    def __call__(self, items: Sequence[dict[str, Any]], emit: Callable[[int, Any], None]) -> None:
        from lamcsp.relax.relaxer import atoms_from_dict

        def done(j: int, result: RelaxResult) -> None:
            emit(j, result.to_dict())
            fault("worker-relaxed")

        self.relaxer.relax([atoms_from_dict(it["atoms"]) for it in items],
                           [float(it["pressure"]) for it in items], on_result=done)


class EvaluateTask:
    """The single-point task: items as :class:`RelaxTask`'s, results ``SinglePoint.to_dict()``.
    Spec: ``model``, ``threads`` as :class:`RelaxTask`'s; ``max_atoms`` (the batch budget)."""

    def __init__(self, spec: dict[str, Any], worker: WorkerInfo):
        from lamcsp.relax import Relaxer

        self.relaxer = Relaxer(_worker_potential(spec, worker), progress=False,
                               max_atoms=spec.get("max_atoms"))

    def __call__(self, items: Sequence[dict[str, Any]], emit: Callable[[int, Any], None]) -> None:
        from lamcsp.relax.relaxer import atoms_from_dict

        self.relaxer.evaluate([atoms_from_dict(it["atoms"]) for it in items],
                              [float(it["pressure"]) for it in items],
                              on_result=lambda j, sp: emit(j, sp.to_dict()))


def evaluate_task(relax: Task, model: Any = None) -> Task:
    """The single-point task beside a relaxation task: its model (or ``model``, a campaign
    ``model`` section), threads and atom budget."""
    spec = relax.spec
    return Task("lamcsp.parallel:EvaluateTask", {
        "model": model.model_dump() if model is not None else spec["model"],
        "threads": spec.get("threads"), "max_atoms": spec.get("relaxer", {}).get("max_atoms")})


def _items(structures: Sequence[Atoms], pressures: Sequence[float]) -> list[dict[str, Any]]:
    from lamcsp.relax.relaxer import atoms_to_dict

    return [{"atoms": atoms_to_dict(a), "pressure": float(p)} for a, p in zip(structures, pressures)]


class TaskCache:
    """Built tasks by key (their models loaded), the ``MAX_TASKS`` most recently used kept:
    a fine-tune loop's old models and committees do not pile up in a worker."""

    def __init__(self, worker: WorkerInfo, size: int = MAX_TASKS):
        self.worker = worker
        self.size = size
        self._tasks: dict[str, Any] = {}

    def get(self, task: Task) -> Any:
        built = self._tasks.pop(task.key, None)
        if built is None:
            built = _load_target(task.target)(task.spec, self.worker)
        self._tasks[task.key] = built  # the most recently used last
        while len(self._tasks) > self.size:
            del self._tasks[next(iter(self._tasks))]
        return built


def relax_task(campaign: Any) -> Task:
    """The relaxation task of a campaign (its model and relax sections)."""
    r = campaign.relax
    return Task("lamcsp.parallel:RelaxTask", {
        "model": campaign.model.model_dump(),
        "relaxer": {"optimizer": r.optimizer, "fmax": r.fmax, "max_steps": r.max_steps,
                    "max_atoms": r.max_atoms, "snapshot_every": snapshot_every(campaign)},
        "threads": campaign.parallel.threads,
    })


# --------------------------------------------------------------------------------- serial


class SerialExecutor:
    """Everything in this process (:class:`Executor`): relaxations and single points with one
    batched :class:`~lamcsp.relax.Relaxer` on ``potential``; other tasks built here and kept
    (:class:`TaskCache`). Results come in input order, ``on_result(index, result)`` as each
    one finishes.

    Args:
        potential: the model in use (``None``: an executor for other tasks only, such as
            ``lamcsp verify``'s oracle).
        relaxer_options: the :class:`~lamcsp.relax.Relaxer`'s options.
    """

    def __init__(self, potential: Potential | None, **relaxer_options: Any):
        from lamcsp.relax import Relaxer

        self._options = dict(relaxer_options)
        self.relaxer = Relaxer(potential, **relaxer_options) if potential is not None else None
        self._tasks = TaskCache(WorkerInfo())
        self._members: dict[str, Any] = {}  # single-point relaxers of other models, by model section

    def set_model(self, model: Any, potential: Potential | None = None) -> None:
        """Go on with ``model`` (a campaign ``model`` section), or the ``potential`` already
        loaded from it."""
        from lamcsp.relax import Relaxer

        if potential is None:
            from lamcsp.potentials.registry import load_model

            potential = load_model(model)
        self.relaxer = Relaxer(potential, **self._options)

    def evaluate(self, structures: Sequence[Atoms], pressures: Sequence[float],
                 labels: Sequence[str] | None = None, model: Any = None) -> list[SinglePoint]:
        relaxer = self.relaxer
        if model is not None:
            key = json.dumps(model.model_dump(), sort_keys=True, default=str)
            if key not in self._members:
                from lamcsp.potentials.registry import load_model
                from lamcsp.relax import Relaxer

                if len(self._members) >= MAX_TASKS:
                    del self._members[next(iter(self._members))]
                self._members[key] = Relaxer(load_model(model), **{**self._options, "snapshot_every": 0})
            relaxer = self._members[key]
        if relaxer is None:
            raise RuntimeError("this SerialExecutor has no potential to evaluate with")
        return relaxer.evaluate(list(structures), list(pressures))

    def relax(self, structures: Sequence[Atoms], pressures: Sequence[float],
              on_result: Callable[[int, RelaxResult], None] | None = None,
              labels: Sequence[str] | None = None, max_steps: int | None = None,
              then: Sequence[Job] = (), meanwhile: Callable[[], None] | None = None) -> list[RelaxResult]:
        if meanwhile is not None:  # nothing runs beside the caller here: first
            meanwhile()
        if self.relaxer is None:
            raise RuntimeError("this SerialExecutor has no potential to relax with")
        full = self.relaxer.max_steps
        if max_steps is not None:  # e.g. 0: one model call each, the starts' enthalpies (the prescreen)
            self.relaxer.max_steps = int(max_steps)
        try:
            out = self.relaxer.relax(list(structures), list(pressures), on_result=on_result)
        finally:
            self.relaxer.max_steps = full
        for job in then:  # nothing runs beside the relaxations here: after them
            job.results = self.map(job.task, job.items, labels=job.labels)
        return out

    def map(self, task: Task, items: Sequence[Any], on_result: Callable[[int, Any], None] | None = None,
            labels: Sequence[str] | None = None) -> list[Any]:
        run = self._tasks.get(task)
        out: list[Any] = [None] * len(items)

        def emit(j: int, result: Any) -> None:
            out[j] = result
            if on_result is not None:
                on_result(j, result)

        run(list(items), emit)
        return out

    @property
    def workers(self) -> int:
        """0: tasks run in this process."""
        return 0

    def close(self) -> None:
        pass


#: the MPI side's public names, which live in :mod:`lamcsp.mpi` and stay importable from here
MPI_NAMES = ("LAUNCHER_PREFIXES", "LocalWorker", "MPIExecutor", "hide_launcher", "launcher_rank",
             "launcher_size", "mpi_world", "worker_main")


def __getattr__(name: str) -> Any:
    # lazily: lamcsp.mpi imports this module's tasks and constants
    if name in MPI_NAMES:
        from lamcsp import mpi

        return getattr(mpi, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_executor(campaign: Any, potential: Potential | None = None, comm: Any = None) -> Executor:
    """The executor for a campaign: :class:`MPIExecutor` when ``comm`` has two or more ranks,
    else :class:`SerialExecutor` on ``potential``."""
    if comm is not None and comm.Get_size() > 1:
        from lamcsp.mpi import MPIExecutor

        ex = MPIExecutor(comm)
        ex.configure(campaign)
        return ex
    if potential is None:
        from lamcsp.potentials.registry import load_model

        potential = load_model(campaign.model)
    r = campaign.relax
    return SerialExecutor(potential, optimizer=r.optimizer, fmax=r.fmax, max_steps=r.max_steps,
                          max_atoms=r.max_atoms, progress=False, snapshot_every=snapshot_every(campaign))


def snapshot_every(campaign: Any) -> int:
    """Steps between the relaxation-trajectory frames kept for the fine-tune loop (0: none)."""
    ft = getattr(campaign, "finetune", None)
    return int(ft.snapshot_every) if ft is not None and ft.enabled else 0
