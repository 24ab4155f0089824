"""MPI scaling: relaxation throughput at 1 and 2 ranks, and the coordinator's own time.

Part 1, throughput. The same candidates (symmetric random structures of ``--system``, seed
fixed) are relaxed with CHGNet on the CPU, one torch thread per rank:

* 1 rank: the serial executor (what ``lamcsp search`` runs on one rank);
* N ranks: ``mpiexec -n N`` with :class:`lamcsp.parallel.MPIExecutor` (rank 0 coordinates and
  relaxes in its own worker process, as a campaign does).

Parallel efficiency = rate(N) / (N * rate(1)). The model is loaded and warmed up before the
clock starts on every rank.

Part 2, the coordinator. One generation of a real :class:`lamcsp.search.Search` with a
population of 10^3 and of 10^4 structures, against a store that already holds ``--store-rows``
rows (default 10^5) and a unit that has already seen ``--seen`` distinct structures. Relaxation
is replaced by an instant stand-in (the candidate with a random energy), so everything timed is
the coordinator's: proposing (generators and the similarity screen), the store writes (one row
per result, as they arrive), dedupe, and the checkpoint. The random structures that the workers
draw under MPI (:mod:`lamcsp.draws`) are drawn here in-process and timed apart (``draw_s``, not
in the serial part). ``docs/mpi_scaling.md`` turns these
times and the measured per-batch relaxation times into a model of a generation at 64 GPU ranks.

Part 3, equality. An analytic-potential campaign with the default generators, serially and on
``--equality-ranks`` ranks (8 by default, oversubscribed on a small machine): the candidates are
drawn from per-candidate RNG streams wherever they are drawn, so the stored unique structures
must be the same.

Part 4, dedupe (``benchmarks/mpi_scaling_dedupe.py``). The coordinator's dedupe stage alone
(``lamcsp.stages.dedupe``'s calls: ``Deduper.unique`` within a population of
``--dedupe-population`` results, then ``Deduper.against`` the ``--seen`` structures stored), on
symmetric random structures with
random enthalpies, a fifth of the population strained 1 % copies of stored ones: lamcsp's
``Deduper`` (each entry's reduced cell computed once) against the same deduper calling
pymatgen's ``StructureMatcher.fit`` on the plain structures (which reduces both on every call),
and the same deduper with its matcher questions sent through an executor's ``map``
(:class:`lamcsp.matching.ExecutorConfirm`): serially with the map timed apart (what is left is
rank 0's part under MPI), and under ``mpiexec -n --dedupe-ranks``; in the same run, with the
same answers required. Part 2's stand-in executor reports ``--workers`` worker processes, so
the search sends dedupe's and the similarity screen's matcher questions through its ``map``
(timed apart, as the workers' under MPI); ``--workers 0`` keeps them in-process.

Usage::

    python benchmarks/mpi_scaling.py                       # both parts, default sizes
    python benchmarks/mpi_scaling.py --part throughput --candidates 64
    python benchmarks/mpi_scaling.py --part coordinator --populations 1000,10000
    python benchmarks/mpi_scaling.py --part equality --equality-ranks 8
    python benchmarks/mpi_scaling.py --part dedupe --dedupe-population 1000 --seen 2000

Writes ``benchmarks/results/mpi_scaling.json`` and prints tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mpi_scaling.json"


def _campaign(system: str, population: int = 12, threads: int = 1, backend: str = "chgnet") -> Any:
    from lamcsp.campaign import parse_campaign

    return parse_campaign({
        "name": "mpi-scaling", "seed": 11,
        "system": {"composition": system, "formula_units": "1-2", "pressures": 0.0},
        "population": population, "generations": 1, "stop": {"patience": None},
        "model": {"backend": backend, "device": "cpu"},
        "parallel": {"threads": threads},
        "rescore": {"model": None},  # the search's own work: no cascade stage
    })


def candidates(system: str, n: int, seed: int = 5) -> list[Any]:
    from lamcsp.generators.base import GenerationContext
    from lamcsp.generators.symmetric import SymmetricRandom

    c = _campaign(system)
    ctx = GenerationContext(composition=dict(c.system.composition), formula_units=[1, 2],
                            spacegroups=list(c.system.spacegroups), pressure_gpa=0.0)
    rng = np.random.default_rng(seed)
    return [cand.to_atoms() for cand in SymmetricRandom().propose(n, rng, ctx)]


# ----------------------------------------------------------------------- part 1: throughput


def relax_part(args: argparse.Namespace) -> None:
    """Runs on every rank (under mpiexec) or alone; rank 0 prints one JSON line."""
    import torch

    from lamcsp.parallel import MPIExecutor, make_executor, mpi_world, worker_main

    comm = mpi_world()
    if comm is not None and comm.Get_rank() != 0:
        sys.exit(worker_main(comm))
    torch.set_num_threads(1)
    campaign = _campaign(args.system, threads=1)
    structs = candidates(args.system, args.candidates)
    warm = candidates(args.system, 4, seed=99)
    if comm is None:
        ex = make_executor(campaign)
        ranks = 1
    else:
        ex = MPIExecutor(comm)
        ex.configure(campaign)
        ranks = comm.Get_size()
    try:
        # warm-up: every worker loads the model and relaxes something before the clock starts
        for _ in range(2):
            ex.relax(warm * max(1, ranks), [0.0] * (len(warm) * max(1, ranks)))
        t0 = time.perf_counter()
        res = ex.relax(structs, [0.0] * len(structs))
        dt = time.perf_counter() - t0
    finally:
        ex.close()
    steps = int(sum(r.steps for r in res))
    print("RESULT " + json.dumps({"ranks": ranks, "structures": len(structs), "seconds": dt,
                                  "relaxations_per_s": len(structs) / dt, "steps": steps,
                                  "converged": int(sum(r.converged for r in res))}), flush=True)


def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = shutil.which("mpiexec") or "mpiexec"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    rows = []
    for ranks in args.ranks:
        cmd = [sys.executable, __file__, "--relax-part", "--system", args.system,
               "--candidates", str(args.candidates)]
        if ranks > 1:
            cmd = [mpiexec, "-n", str(ranks), *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
        rows.append(json.loads(line[0][7:]))
    base = rows[0]["relaxations_per_s"]
    print(f"\nthroughput: {args.candidates} {args.system} candidates, CHGNet on the CPU, "
          "1 torch thread per rank")
    print(f"{'ranks':>5} {'seconds':>9} {'relax/s':>9} {'speed-up':>9} {'efficiency':>10}")
    for r in rows:
        r["speedup"] = r["relaxations_per_s"] / base
        r["efficiency"] = r["speedup"] / r["ranks"]
        print(f"{r['ranks']:>5} {r['seconds']:>9.1f} {r['relaxations_per_s']:>9.2f} {r['speedup']:>9.2f} "
              f"{r['efficiency']:>10.1%}")
    return rows


# ----------------------------------------------------------------------- part 3: equality

#: an analytic-potential campaign with the default generators (random + swarm, oversampled,
#: similarity screen): every stage that draws, screens or prescreens runs
EQUALITY_CAMPAIGN = {
    "name": "mpi-equality", "seed": 23,
    "system": {"composition": "ArKr", "formula_units": "1-3", "pressures": [0.0, 5.0]},
    "population": 12, "generations": 4, "stop": {"patience": None},
    "model": {"backend": "lj", "device": "cpu",
              "options": {"epsilon": {"Ar-Ar": 0.0104, "Kr-Kr": 0.014, "Ar-Kr": 0.012},
                          "sigma": {"Ar-Ar": 3.4, "Kr-Kr": 3.6, "Ar-Kr": 3.5}}},
    "relax": {"fmax": 0.01, "max_steps": 300},
}


def _unique_rows(run: Path) -> list[tuple[str, float, int]]:
    import ase.db

    db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
    return sorted((r.key, round(r.enthalpy_per_atom, 7), r.spacegroup) for r in db.select(role="search")
                  if r.unique)


def equality(args: argparse.Namespace) -> dict[str, Any]:
    """The same campaign serially and on ``--equality-ranks`` ranks (oversubscribed on this
    machine): the same stored unique structures (key, enthalpy per atom to 1e-7 eV, space
    group)."""
    import yaml

    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = shutil.which("mpiexec") or "mpiexec"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    tmp = Path(tempfile.mkdtemp(prefix="lamcsp-equality-"))
    out: dict[str, Any] = {"campaign": EQUALITY_CAMPAIGN, "ranks": args.equality_ranks}
    try:
        camp = tmp / "c.yaml"
        camp.write_text(yaml.safe_dump(EQUALITY_CAMPAIGN))
        uniques = {}
        for ranks in (1, args.equality_ranks):
            run = tmp / f"r{ranks}"
            cmd = [sys.executable, "-m", "lamcsp", "search", str(camp), "-o", str(run), "--quiet"]
            if ranks > 1:
                cmd = [mpiexec, "-n", str(ranks), *cmd]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
            out[f"seconds_{ranks}"] = time.perf_counter() - t0
            uniques[ranks] = _unique_rows(tmp / f"r{ranks}")
        a, b = uniques[1], uniques[args.equality_ranks]
        out.update(unique_serial=len(a), unique_mpi=len(b), equal=a == b,
                   only_serial=len(set(a) - set(b)), only_mpi=len(set(b) - set(a)))
        print(f"\nequality: {len(a)} unique structures serially, {len(b)} on {args.equality_ranks} ranks; "
              f"the same: {a == b} ({out['only_serial']} only serial, {out['only_mpi']} only MPI)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ----------------------------------------------------------------------- part 2: coordinator


def _stand_in(atoms: Any, energy: float, pressure: float) -> Any:
    """A converged RelaxResult of ``atoms`` as it is, with ``energy`` (no model call)."""
    from lamcsp.relax.relaxer import RelaxResult

    return RelaxResult(atoms, energy, energy, float(pressure), True, 10, "converged", 0.01,
                       np.zeros((len(atoms), 3)), np.zeros((3, 3)))


class InstantExecutor:
    """An executor (lamcsp.parallel.Executor) whose relaxation is the candidate itself with a
    random energy, and whose single points are random energies (coordinator timing)."""

    def __init__(self, seed: int = 0, workers: int = 64):
        self.rng = np.random.default_rng(seed)
        self.seconds = 0.0
        self.task_seconds = 0.0  # in map(): work the workers do under MPI
        self.matcher_seconds = 0.0  # of which dedupe's matcher questions (lamcsp.matching)
        self.ahead_seconds = 0.0  # of which the next generation's draws, behind the relaxations
        self.meanwhile_seconds = 0.0  # the caller's work while the workers relax (the last rows)
        self._tasks: Any = None
        self._workers = workers

    @property
    def workers(self) -> int:
        """As many as the modelled cluster's (0: map's tasks count as the coordinator's,
        and dedupe asks its matcher in-process)."""
        return self._workers

    def evaluate(self, structures: Any, pressures: Any, labels: Any = None, model: Any = None) -> list[Any]:
        from lamcsp.relax.relaxer import SinglePoint

        t0 = time.perf_counter()
        out = [SinglePoint(len(a), e, e, float(p), np.zeros((len(a), 3)), np.zeros((3, 3)))
               for a, p in zip(structures, pressures) for e in [float(self.rng.normal(-3.0, 0.3)) * len(a)]]
        self.seconds += time.perf_counter() - t0
        return out

    def map(self, task: Any, items: Any, on_result: Any = None, labels: Any = None) -> list[Any]:
        """Other tasks (the draws of lamcsp.draws) run here, timed apart: under MPI the
        workers run them, not the coordinator."""
        from lamcsp.parallel import SerialExecutor

        if self._tasks is None:
            self._tasks = SerialExecutor(None)
        t0 = time.perf_counter()
        try:
            return self._tasks.map(task, items, on_result, labels)
        finally:
            self.task_seconds += time.perf_counter() - t0
            if task.target.startswith("lamcsp.matching:"):
                self.matcher_seconds += time.perf_counter() - t0

    def _tasks_map(self, job: Any) -> list[Any]:
        """A job run untimed (what an earlier generation's relaxations hid)."""
        from lamcsp.parallel import SerialExecutor

        if self._tasks is None:
            self._tasks = SerialExecutor(None)
        return self._tasks.map(job.task, job.items, labels=job.labels)

    def set_model(self, model: Any, potential: Any = None) -> None:
        pass

    def close(self) -> None:
        pass

    def relax(self, structures: Any, pressures: Any, on_result: Any = None, labels: Any = None,
              max_steps: Any = None, then: Any = (), meanwhile: Any = None) -> list[Any]:
        """Instant stand-in relaxations; ``then``'s jobs (the next generation's draws) are
        timed as the workers' (:meth:`map`), timed apart as ``ahead_seconds`` too;
        ``meanwhile`` (the coordinator's work while the workers relax) as
        ``meanwhile_seconds``."""
        if meanwhile is not None:
            t0 = time.perf_counter()
            meanwhile()
            self.meanwhile_seconds += time.perf_counter() - t0
        out = self._relax(structures, pressures, on_result)
        t0 = time.perf_counter()
        for job in then:
            job.results = self.map(job.task, job.items, labels=job.labels)
        self.ahead_seconds += time.perf_counter() - t0
        return out

    def _relax(self, structures: Any, pressures: Any, on_result: Any) -> list[Any]:
        out = []
        for i, (a, p) in enumerate(zip(structures, pressures)):
            t0 = time.perf_counter()
            e = float(self.rng.normal(-3.0, 0.3)) * len(a)
            r = _stand_in(a.copy(), e, p)
            self.seconds += time.perf_counter() - t0
            out.append(r)
            if on_result is not None:
                on_result(i, r)
        return out


def _prefill(db_path: Path, rows: int, pool: list[Any]) -> float:

    from lamcsp.store import ResultStore

    store = ResultStore(db_path.parent, url=str(db_path))
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    with store.transaction():
        for i in range(rows):
            a = pool[i % len(pool)]
            e = float(rng.normal(-3.0, 0.3)) * len(a)
            r = _stand_in(a, e, 0.0)
            # earlier generations' rows (generation -1: the timed generation 0 reads back its own)
            store.add(r, key=f"old-{i}", generation=-1, generator="random", model_id="prefill", spacegroup=1,
                      unique=False, duplicate_of=None, extra={"role": "search", "unit": 0})
    return time.perf_counter() - t0


WARM_UP = 50  # the population of an untimed first generation


def _warm_caches() -> None:
    """Load the Wyckoff data of all 230 space groups (cached per process, ~3 s once per run, not
    per generation) so the first timed generation does not pay it."""
    from lamcsp.generators.wyckoff import space_group

    for sg in range(1, 231):
        space_group(sg)


def coordinator(args: argparse.Namespace) -> list[dict[str, Any]]:
    from lamcsp import stages
    from lamcsp.inflight import GenerationJournal
    from lamcsp.potentials.registry import load_potential
    from lamcsp.search import Search

    tmp = Path(tempfile.mkdtemp(prefix="lamcsp-coord-"))
    rows: list[dict[str, Any]] = []
    try:
        pool = candidates(args.system, args.seen, seed=3)
        db = tmp / "store.db"
        t_fill = _prefill(db, args.store_rows, pool)
        print(f"\nprefilled a store of {args.store_rows} rows in {t_fill:.0f} s; the unit has seen "
              f"{len(pool)} "
              "structures")
        _warm_caches()
        for n, pop in enumerate([WARM_UP, *args.populations]):  # n = 0: per-process caches, not recorded
            shutil.copy(db, tmp / f"store-{n}.db")
            camp = _campaign(args.system, population=pop, backend="lj")
            lj = load_potential("lj", device="cpu", epsilon=0.01, sigma=3.0)
            stand_in = InstantExecutor(workers=args.workers)
            search = Search(camp, tmp / f"run-{n}", potential=lj, executor=stand_in,
                            progress=False, db_url=str(tmp / f"store-{n}.db"))
            search.prepare()
            for us in search.unit_states:  # what the unit has seen and stored before
                search.similarity.remember(us, pool)
                us.stored.extend(search.deduper.describe(pool))
            # generation 0's random share drawn ahead, as while the generation before relaxed
            search.ahead = stages.draw_ahead(search.unit_states, 0, camp, search.seed, spent=0)
            for job in search.ahead.jobs if search.ahead is not None else ():
                job.results = stand_in._tasks_map(job)
            timers: dict[str, float] = {"propose": 0.0, "store": 0.0, "dedupe": 0.0}

            def timed(name: str, fn: Any, timers: dict[str, float] = timers) -> Any:
                def wrapper(*a: Any, **kw: Any) -> Any:
                    t0 = time.perf_counter()
                    try:
                        return fn(*a, **kw)
                    finally:
                        timers[name] += time.perf_counter() - t0
                return wrapper

            search.propose = timed("propose", search.propose)  # type: ignore[method-assign]
            # the rows made and journaled as results arrive (overlapping the relaxations)
            search.row_item = timed("store", search.row_item)  # type: ignore[method-assign]
            journal_add = GenerationJournal.add
            GenerationJournal.add = timed("store", journal_add)  # type: ignore[method-assign]
            dedupe = stages.dedupe
            ex = search.executor

            def dedupe_timed(*a: Any, dedupe: Any = dedupe, ex: Any = ex, timers: Any = timers,
                             **kw: Any) -> Any:
                t0, m0 = time.perf_counter(), ex.task_seconds
                try:
                    return dedupe(*a, **kw)
                finally:  # its matcher questions answered by map: the workers' under MPI
                    timers["dedupe_tasks"] = timers.get("dedupe_tasks", 0.0) + ex.task_seconds - m0
                    timers["dedupe"] += time.perf_counter() - t0 - (ex.task_seconds - m0)

            stages.dedupe = dedupe_timed  # the stage, as run_generation calls it
            calls0 = search.deduper.n_matcher_calls
            t0 = time.perf_counter()
            try:
                search.run_generation(0)
            finally:
                stages.dedupe = dedupe
                GenerationJournal.add = journal_add  # type: ignore[method-assign]
            total = time.perf_counter() - t0
            # its rows, each with its dedupe flags, and the checkpoint: written by the next
            # generation's relax call while its workers relax (Search.flush_rows)
            search.generation = 1
            t1 = time.perf_counter()
            search._write_rows()
            timers["write"] = time.perf_counter() - t1
            search._unsaved = search.state_dict()
            t1 = time.perf_counter()
            search.flush_rows()
            timers["checkpoint"] = time.perf_counter() - t1
            relax_stub = search.executor.seconds
            matched = timers.pop("dedupe_tasks", 0.0)
            # in propose, the workers' under MPI: the draws, and the similarity screen's matcher
            screened = search.executor.matcher_seconds - matched
            ahead = search.executor.ahead_seconds  # the next generation's draws, behind the relaxations
            drawn = search.executor.task_seconds - matched - screened - ahead
            timers["propose"] -= drawn + screened
            row = {"population": pop, "store_rows": args.store_rows, "seen": len(pool),
                   "workers": args.workers,
                   "total_s": (total - relax_stub - drawn - matched - screened - ahead + timers["write"]
                               + timers["checkpoint"]),
                   **{f"{k}_s": v for k, v in timers.items()}, "draw_s": drawn, "ahead_draw_s": ahead,
                   "dedupe_matcher_s": matched, "screen_matcher_s": screened,
                   "matcher_calls": search.deduper.n_matcher_calls - calls0}
            row["other_s"] = row["total_s"] - sum(timers.values())
            # rows made and journaled as results arrive, and the last generation's rows and
            # checkpoint written while the next relaxes, overlap the relaxations
            row["serial_s"] = row["total_s"] - timers["store"] - timers["write"] - timers["checkpoint"]
            if n:
                rows.append(row)
                print(f"  P = {pop}: " + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in row.items()
                                                  if k.endswith("_s")), flush=True)
            search.store.close() if hasattr(search.store, "close") else None
        print(f"\ncoordinator time per generation ({args.system}, store of {args.store_rows} rows)")
        print(f"{'population':>10} {'propose':>8} {'rows+':>8} {'dedupe':>8} {'write+':>8} {'ckpt+':>6} "
              f"{'other':>6} {'total':>8} {'serial':>8} {'draws*':>8} {'ahead*':>8} {'screen*':>8} "
              f"{'dedupe*':>8} {'fits':>6}")
        print(f"(seconds; +overlapping the relaxations: rows made and journaled as results arrive, the "
              f"generation's rows and checkpoint written while the next relaxes; *on the workers under MPI: "
              f"the draws (ahead: the next generation's, behind the relaxations), the matcher of the "
              f"similarity screen and of dedupe; stand-in workers {args.workers}; fits: dedupe's and the "
              f"screen's)")
        for r in rows:
            print(f"{r['population']:>10} {r['propose_s']:>8.2f} {r['store_s']:>8.2f} {r['dedupe_s']:>8.2f} "
                  f"{r['write_s']:>8.2f} {r['checkpoint_s']:>6.2f} {r['other_s']:>6.2f} {r['total_s']:>8.2f} "
                  f"{r['serial_s']:>8.2f} {r['draw_s']:>8.2f} {r['ahead_draw_s']:>8.2f} "
                  f"{r['screen_matcher_s']:>8.2f} {r['dedupe_matcher_s']:>8.2f} "
                  f"{r['matcher_calls']:>6}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default="all",
                    choices=("all", "throughput", "coordinator", "equality", "dedupe"))
    ap.add_argument("--equality-ranks", type=int, default=8, help="ranks of the equality run (default 8)")
    ap.add_argument("--system", default="MgSiO3", help="composition of the candidates (default MgSiO3)")
    ap.add_argument("--candidates", type=int, default=64, help="structures relaxed per throughput run")
    ap.add_argument("--ranks", default="1,2", help="rank counts to time (the first is the reference)")
    ap.add_argument("--populations", default="1000,10000")
    ap.add_argument("--store-rows", type=int, default=100_000)
    ap.add_argument("--seen", type=int, default=2000, help="structures the unit has seen before")
    ap.add_argument("--dedupe-population", type=int, default=1000,
                    help="results deduped (part dedupe)")
    ap.add_argument("--workers", type=int, default=64,
                    help="workers the coordinator's stand-in executor reports "
                         "(0: dedupe's matcher in-process)")
    ap.add_argument("--dedupe-ranks", type=int, default=2,
                    help="ranks of part dedupe's mpiexec run (0: none)")
    ap.add_argument("--relax-part", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dedupe-mpi-part", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--coordinator-key", default="coordinator",
                    help="the JSON key of part coordinator's rows (default coordinator)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    args.ranks = [int(x) for x in args.ranks.split(",")]
    args.populations = [int(x) for x in args.populations.split(",")]
    if args.relax_part:
        relax_part(args)
        return
    if args.dedupe_mpi_part:
        from mpi_scaling_dedupe import dedupe_mpi_part

        dedupe_mpi_part(args)
        return
    out = Path(args.out)
    data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    data["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version()}
    if args.part in ("all", "throughput"):
        data["throughput"] = {"system": args.system, "candidates": args.candidates, "rows": throughput(args)}
    if args.part in ("all", "coordinator"):
        data[args.coordinator_key] = {"system": args.system, "rows": coordinator(args)}
    if args.part in ("all", "equality"):
        data["equality"] = equality(args)
    if args.part in ("all", "dedupe"):
        from mpi_scaling_dedupe import dedupe_part

        data["dedupe"] = dedupe_part(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
