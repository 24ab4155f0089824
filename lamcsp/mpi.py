"""MPI: the coordinator, the workers on every rank, and the child process that relaxes.

:class:`MPIExecutor` implements :class:`lamcsp.parallel.Executor` across MPI ranks (see
:mod:`lamcsp.parallel` for how work is dealt out, results stream back and failures are
reported); :func:`worker_main` is what every rank but 0 runs; :class:`LocalWorker` is the child
process in which each rank runs its tasks (it never touches MPI, so a crash in it leaves its rank
alive to report it). Everything here only moves plain data and runs :class:`~lamcsp.parallel.Task`
s; what the tasks do lives with them.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from lamcsp.errors import SetupError, WorkerError
from lamcsp.parallel import (
    _LAUNCHER_SIZE_VARS,
    _TAG,
    BATCHES_PER_WORKER,
    POLL,
    PREFETCH,
    Job,
    Task,
    TaskCache,
    WorkerInfo,
    _items,
    evaluate_task,
    relax_task,
)

if TYPE_CHECKING:
    from ase import Atoms

    from lamcsp.potentials.base import Potential
    from lamcsp.relax.relaxer import RelaxResult, SinglePoint


# --------------------------------------------------------------------------------- workers


#: environment variables by which an MPI launcher announces itself (and codes such as GPAW
#: detect one): a worker process never touches MPI, so it runs its tasks without them
LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "OMPI_COMM_WORLD_", "MV2_COMM_WORLD_", "I_MPI_", "HYDRA_")


def hide_launcher(environ: Any = None) -> dict[str, str]:
    """Remove the MPI launcher's variables from ``environ`` (default ``os.environ``), so that an
    oracle code that checks for a launcher (GPAW refuses to run serially under one) runs as
    the serial calculation each worker makes of it; returns what was removed."""
    env = os.environ if environ is None else environ
    removed = {k: env[k] for k in list(env) if k.startswith(LAUNCHER_PREFIXES)}
    for k in removed:
        del env[k]
    return removed


def _child_main(conn: Any, worker: WorkerInfo) -> None:
    """The relax worker process: runs batches sent by its rank, one at a time."""
    hide_launcher()
    os.environ["LAMCSP_RANK"] = str(worker.rank)
    tasks = TaskCache(worker)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        _, bid, target, spec, items = msg
        try:
            run = tasks.get(Task(target, spec))
            run(items, lambda j, result, bid=bid: conn.send(("result", bid, j, result)))
            conn.send(("done", bid))
        except BaseException as exc:  # noqa: BLE001 - reported to the coordinator, which stops
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            conn.send(("error", bid, text, traceback.format_exc()))


class LocalWorker:
    """One relax worker process and the batches waiting for it (at most one is in the child at a
    time, so neither side of the pipe can block the other)."""

    def __init__(self, worker: WorkerInfo):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_child_main, args=(child, worker), daemon=True,
                                   name=f"lamcsp-worker-{worker.rank}")
        self.process.start()
        child.close()
        self.queue: deque[tuple[Any, ...]] = deque()
        self.running: int | None = None

    def submit(self, msg: tuple[Any, ...]) -> None:
        self.queue.append(msg)
        self._feed()

    def _feed(self) -> None:
        if self.running is None and self.queue:
            msg = self.queue.popleft()
            self.running = msg[1]
            self.conn.send(msg)

    def poll(self, timeout: float = 0.0) -> list[tuple[Any, ...]]:
        """Messages from the child (``result``, ``done``, ``error``; ``died`` when it is gone)."""
        out: list[tuple[Any, ...]] = []
        try:
            ready = self.conn.poll(timeout)
            while ready:
                msg = self.conn.recv()
                out.append(msg)
                if msg[0] in ("done", "error"):
                    self.running = None
                ready = self.conn.poll()
        except (EOFError, OSError):
            pass
        if not self.process.is_alive() and not any(m[0] in ("error", "died") for m in out):
            self.process.join(1.0)
            out.append(("died", self.running, _exit_text(self.process.exitcode)))
            self.running = None
            self.queue.clear()
            return out
        self._feed()
        return out

    def close(self) -> None:
        if self.process.is_alive():
            if self.running is None:
                try:
                    self.conn.send(("stop",))
                except OSError:
                    pass
                self.process.join(10.0)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(5.0)
        self.conn.close()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        import signal

        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


# --------------------------------------------------------------------------------- MPI


def launcher_size() -> int:
    """The number of ranks an MPI launcher (mpiexec, srun) started, from its environment; 1
    when there is none. Nothing is imported."""
    for var in _LAUNCHER_SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def launcher_rank() -> int:
    """This process's rank according to its MPI launcher's environment (0 without one)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def mpi_world() -> Any:
    """``MPI.COMM_WORLD`` when this process is one of two or more MPI ranks; ``None`` when it
    runs alone (no launcher, or one rank), so the serial executor runs.

    Raises:
        SetupError: a launcher started several ranks but mpi4py is not installed (each rank
            would run the whole campaign in the same directory).
    """
    size = launcher_size()
    if size <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise SetupError("mpi", f"this process is one of {size} MPI ranks, but mpi4py is not installed, "
                                "so every rank would run the whole campaign; install it with "
                                "`pip install lamcsp[mpi]` (or mpi4py built against your cluster's "
                                "MPI), or run without mpiexec") from None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def _local(comm: Any) -> WorkerInfo:
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    info = WorkerInfo(comm.Get_rank(), node.Get_rank(), node.Get_size())
    node.Free()
    return info


def worker_main(comm: Any) -> int:
    """The loop of a rank other than 0: run the batches the coordinator sends, in a child
    process, and stream the results back, until told to stop."""
    from mpi4py import MPI

    info = _local(comm)
    local: LocalWorker | None = None
    sends: list[Any] = []
    gone = False
    status = MPI.Status()
    while True:
        busy = False
        while comm.Iprobe(source=0, tag=_TAG, status=status):
            msg = comm.recv(source=0, tag=_TAG)
            busy = True
            if msg[0] == "stop":
                if local is not None:
                    local.close()
                sends.append(comm.isend(("bye",), dest=0, tag=_TAG))
                MPI.Request.Waitall(sends)
                return 0
            if gone:
                continue
            if local is None:
                local = LocalWorker(info)
            local.submit(msg)
        if local is not None and not gone:
            for m in local.poll(0.0 if busy else POLL):
                sends.append(comm.isend(m, dest=0, tag=_TAG))
                gone = gone or m[0] == "died"
        else:
            time.sleep(POLL)
        sends = [r for r in sends if not r.Test()]


class MPIExecutor:
    """The coordinator's executor (rank 0 of ``comm``); see the module docstring.

    Args:
        comm: the communicator (``mpi_world()``); ranks 1.. run :func:`worker_main`.
        coordinator_relaxes: rank 0 runs a relax worker too.
        batch_size: items per batch (default: about ``BATCHES_PER_WORKER`` per worker and call).
    """

    def __init__(self, comm: Any, *, coordinator_relaxes: bool = True, batch_size: int | None = None):
        self.comm = comm
        self.size = comm.Get_size()
        self.coordinator_relaxes = coordinator_relaxes
        self.batch_size = batch_size
        self.task: Task | None = None
        self._local: LocalWorker | None = None
        self._info = _local(comm)
        self._sends: list[Any] = []
        self._closed = False

    def configure(self, campaign: Any) -> None:
        """Take the campaign's relaxation task and parallel settings (:func:`make_executor`)."""
        self.task = relax_task(campaign)
        self.coordinator_relaxes = campaign.parallel.coordinator_relaxes
        self.batch_size = campaign.parallel.batch_size

    def set_model(self, model: Any, potential: Potential | None = None) -> None:
        """Go on with ``model`` (a campaign ``model`` section): every worker loads it for its
        next batch (``potential``, a model loaded here, is not sent)."""
        if self.task is None:
            raise RuntimeError("MPIExecutor.set_model before configure(campaign)")
        self.task = Task(self.task.target, {**self.task.spec, "model": model.model_dump()})

    def view(self, campaign: Any) -> CampaignExecutor:
        """An executor for one campaign of a set on these ranks (:class:`CampaignExecutor`)."""
        return CampaignExecutor(self, campaign)

    def evaluate(self, structures: Sequence[Atoms], pressures: Sequence[float],
                 labels: Sequence[str] | None = None, model: Any = None) -> list[SinglePoint]:
        from lamcsp.relax.relaxer import SinglePoint

        if self.task is None:
            raise RuntimeError("MPIExecutor.evaluate before configure(campaign)")
        out = self.map(evaluate_task(self.task, model), _items(structures, pressures), labels=labels)
        return [SinglePoint.from_dict(d) for d in out]

    @property
    def slots(self) -> list[int]:
        return ([0] if self.coordinator_relaxes else []) + list(range(1, self.size))

    @property
    def workers(self) -> int:
        """The worker processes (rank 0's runs in a child process, not the coordinator's)."""
        return len(self.slots)

    def relax(self, structures: Sequence[Atoms], pressures: Sequence[float],
              on_result: Callable[[int, RelaxResult], None] | None = None,
              labels: Sequence[str] | None = None, max_steps: int | None = None,
              then: Sequence[Job] = (), meanwhile: Callable[[], None] | None = None) -> list[RelaxResult]:
        from lamcsp.relax.relaxer import RelaxResult

        if self.task is None:
            raise RuntimeError("MPIExecutor.relax before configure(campaign)")
        task = self.task
        if max_steps is not None:  # a task of its own (workers build it once, with its own model)
            relaxer = {**task.spec["relaxer"], "max_steps": int(max_steps), "snapshot_every": 0}
            task = Task(task.target, {**task.spec, "relaxer": relaxer})
        results: list[Any] = [None] * len(structures)

        def got(i: int, d: dict[str, Any]) -> None:
            results[i] = RelaxResult.from_dict(d)
            if on_result is not None:
                on_result(i, results[i])

        outs = self._run([(task, _items(structures, pressures), got, labels)]
                         + [(job.task, job.items, None, job.labels) for job in then], meanwhile)
        for job, out in zip(then, outs[1:]):
            job.results = out
        return results

    def map(self, task: Task, items: Sequence[Any], on_result: Callable[[int, Any], None] | None = None,
            labels: Sequence[str] | None = None) -> list[Any]:
        return self._run([(task, items, on_result, labels)])[0]

    def _run(self, jobs: Sequence[tuple[Task, Sequence[Any], Callable[[int, Any], None] | None,
                                        Sequence[str] | None]],
             meanwhile: Callable[[], None] | None = None) -> list[list[Any]]:
        """Every job's items over the workers, the jobs' batches dealt out in order (a later
        job's go to the workers the earlier ones leave idle); each job's results in item
        order. ``meanwhile`` runs here once the first batches are out."""
        from mpi4py import MPI

        outs: list[list[Any]] = [[None] * len(items) for _, items, _, _ in jobs]
        if not any(outs):
            if meanwhile is not None:
                meanwhile()
            return outs
        slots = self.slots
        if not slots:
            raise SetupError("parallel.coordinator_relaxes", "false on a single rank leaves no worker; "
                                                             "run on two or more ranks, or set it true")
        if 0 in slots and self._local is None:
            self._local = LocalWorker(self._info)
        batches: deque[tuple[int, list[int]]] = deque()
        for jn, (_, items, _, _) in enumerate(jobs):
            n = len(items)
            bs = self.batch_size or max(1, math.ceil(n / (BATCHES_PER_WORKER * len(slots))))
            batches.extend((jn, list(range(s, min(n, s + bs)))) for s in range(0, n, bs))
        index: dict[int, tuple[int, list[int]]] = {}
        held: dict[int, dict[int, set[int]]] = {s: {} for s in slots}
        status = MPI.Status()
        next_bid = 0

        def dispatch(slot: int, hold: int = PREFETCH) -> None:
            nonlocal next_bid
            while batches and len(held[slot]) < hold:
                jn, idx = batches.popleft()
                task, items = jobs[jn][0], jobs[jn][1]
                bid, next_bid = next_bid, next_bid + 1
                index[bid], held[slot][bid] = (jn, idx), set(idx)
                msg = ("run", bid, task.target, task.spec, [items[i] for i in idx])
                if slot == 0:
                    assert self._local is not None
                    self._local.submit(msg)
                else:
                    self._sends.append(self.comm.isend(msg, dest=slot, tag=_TAG))

        def handle(slot: int, msg: tuple[Any, ...]) -> None:
            kind, bid = msg[0], msg[1]
            if kind == "result":
                jn, idx = index[bid]
                i = idx[msg[2]]
                held[slot][bid].discard(i)
                outs[jn][i] = msg[3]
                on_result = jobs[jn][2]
                if on_result is not None:
                    on_result(i, msg[3])
            elif kind == "done":
                held[slot].pop(bid, None)
                dispatch(slot)
            elif kind in ("error", "died"):
                names = []
                for b in sorted(held[slot]):
                    labels = jobs[index[b][0]][3]
                    names += [str(labels[i]) if labels is not None else f"item {i}"
                              for i in sorted(held[slot][b])]
                what = f"raised {msg[2]}" if kind == "error" else f"died ({msg[2]})"
                raise WorkerError(slot, names, f"the relax worker of rank {slot} {what} while it held "
                                  f"{', '.join(names) or 'no structure'}",
                                  detail=msg[3] if kind == "error" else "")

        for hold in range(1, PREFETCH + 1):  # round robin: every worker starts before any holds two
            for s in slots:
                dispatch(s, hold)
        if meanwhile is not None:  # the workers are busy: the caller's own work now
            meanwhile()
        while any(held[s] for s in slots):
            busy = False
            while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG, status=status):
                src = status.Get_source()
                msg = self.comm.recv(source=src, tag=_TAG)
                busy = True
                if msg[0] != "bye" and src in held:
                    handle(src, msg)
            if self._local is not None and 0 in slots:
                msgs = self._local.poll(0.0)
                for msg in msgs:
                    handle(0, msg)
                busy = busy or bool(msgs)
            self._sends = [r for r in self._sends if not r.Test()]
            if busy:
                continue
            if self._local is not None and 0 in slots:
                self._local.conn.poll(POLL)
            else:
                time.sleep(POLL)
        return outs

    def close(self) -> None:
        """Stop every worker (their children too) and wait for them to say goodbye."""
        if self._closed:
            return
        self._closed = True
        from mpi4py import MPI

        if self._local is not None:
            self._local.close()
        for r in range(1, self.size):
            self._sends.append(self.comm.isend(("stop",), dest=r, tag=_TAG))
        waiting = set(range(1, self.size))
        status = MPI.Status()
        deadline = time.monotonic() + 60.0
        while waiting and time.monotonic() < deadline:
            if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG, status=status):
                src = status.Get_source()
                if self.comm.recv(source=src, tag=_TAG)[0] == "bye":
                    waiting.discard(src)
            else:
                time.sleep(POLL)
        # a worker that said goodbye has received everything sent to it; sends to one that did
        # not answer in time are left to MPI_Finalize
        self._sends = [r for r in self._sends if not r.Test()]


class CampaignExecutor:
    """One campaign's :class:`~lamcsp.parallel.Executor` on an :class:`MPIExecutor` that several
    campaigns share (a campaign set, :mod:`lamcsp.campaign_set`): its own relaxation task (its
    model, or its head of the shared model, and its relax settings) on the shared ranks. Going
    from one campaign to another sends the other task; the workers keep built tasks
    (:class:`~lamcsp.parallel.TaskCache`) and loaded models (:func:`~lamcsp.parallel.cached_model`)
    by spec, so that costs no reload. ``close`` leaves the shared executor to its owner."""

    def __init__(self, shared: MPIExecutor, campaign: Any):
        self.shared = shared
        self.task = relax_task(campaign)

    def _use(self) -> MPIExecutor:
        self.shared.task = self.task
        return self.shared

    def set_model(self, model: Any, potential: Potential | None = None) -> None:
        self._use().set_model(model, potential)
        self.task = self.shared.task

    def relax(self, structures: Sequence[Atoms], pressures: Sequence[float],
              on_result: Callable[[int, RelaxResult], None] | None = None,
              labels: Sequence[str] | None = None, max_steps: int | None = None,
              then: Sequence[Job] = (), meanwhile: Callable[[], None] | None = None) -> list[RelaxResult]:
        return self._use().relax(structures, pressures, on_result, labels, max_steps, then, meanwhile)

    def evaluate(self, structures: Sequence[Atoms], pressures: Sequence[float],
                 labels: Sequence[str] | None = None, model: Any = None) -> list[SinglePoint]:
        return self._use().evaluate(structures, pressures, labels, model)

    def map(self, task: Task, items: Sequence[Any], on_result: Callable[[int, Any], None] | None = None,
            labels: Sequence[str] | None = None) -> list[Any]:
        return self.shared.map(task, items, on_result, labels)

    @property
    def workers(self) -> int:
        return self.shared.workers

    def close(self) -> None:
        pass
