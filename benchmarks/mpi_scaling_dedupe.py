"""Part 4 of ``benchmarks/mpi_scaling.py`` (see its docstring): the coordinator's dedupe stage
alone, in-process, through an executor's ``map`` and under ``mpiexec``. Run through
``python benchmarks/mpi_scaling.py --part dedupe``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: the script that runs this part (its ``--dedupe-mpi-part`` under mpiexec)
SCRIPT = Path(__file__).with_name("mpi_scaling.py")


def _dedupe_data(args: argparse.Namespace) -> tuple[list[Any], list[float], list[Any], list[float], int]:
    """Part dedupe's structures (seeded): stored ones and their enthalpies, the new results and
    theirs, and how many of the new are copies."""
    from mpi_scaling import candidates

    pop, seen = args.dedupe_population, args.seen
    pool = candidates(args.system, seen + pop, seed=7)
    rng = np.random.default_rng(11)
    stored_atoms, new_atoms = pool[:seen], pool[seen:]
    e_stored = rng.normal(-3.0, 0.3, seen)
    e_new = rng.normal(-3.0, 0.3, pop)
    copies = rng.choice(seen, pop // 5, replace=False)
    for j, i in enumerate(copies):  # a fifth: stored structures strained by 1 %, 0-3 meV/atom apart
        a = stored_atoms[i].copy()
        a.set_cell(a.cell.array @ (np.eye(3) + 0.01 * rng.uniform(-1, 1, (3, 3))), scale_atoms=True)
        new_atoms[j] = a
        e_new[j] = e_stored[i] + rng.uniform(0, 0.003)
    return stored_atoms, list(e_stored), new_atoms, list(e_new), len(copies)


class TimedMap:
    """A serial executor whose ``map`` (the tasks the workers run under MPI) is timed apart:
    what is left is rank 0's part."""

    def __init__(self) -> None:
        from lamcsp.parallel import SerialExecutor

        self.inner = SerialExecutor(None)
        self.seconds = 0.0
        self.items = 0

    def map(self, task: Any, items: Any, on_result: Any = None, labels: Any = None) -> list[Any]:
        t0 = time.perf_counter()
        try:
            return self.inner.map(task, items, on_result, labels)
        finally:
            self.seconds += time.perf_counter() - t0
            self.items += len(items)


def _dedupe_once(d: Any, data: tuple[Any, ...], confirm: Any = None
                 ) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """``lamcsp.stages.dedupe``'s calls on part dedupe's data: timings and answers."""
    stored_atoms, e_stored, new_atoms, e_new, _ = data
    store = d.new_store()
    store.extend(d.describe(stored_atoms, e_stored))
    t0 = time.perf_counter()
    entries = d.describe(new_atoms, e_new)
    t1 = time.perf_counter()
    reps, dup = d.unique(entries, confirm=confirm)
    t2 = time.perf_counter()
    match = d.against([entries[r] for r in reps], store, confirm=confirm)
    t3 = time.perf_counter()
    row = {"describe_s": t1 - t0, "unique_s": t2 - t1, "against_s": t3 - t2, "total_s": t3 - t0,
           "matcher_calls": d.n_matcher_calls, "unique": int(len(reps)), "new": int((match < 0).sum())}
    return row, (reps.tolist(), dup.tolist(), match.tolist())


def dedupe_mpi_part(args: argparse.Namespace) -> None:
    """Part dedupe's questions answered by ``MPIExecutor`` workers (under mpiexec); rank 0 prints
    one JSON line."""
    from lamcsp.generators.dedupe import Deduper

    from lamcsp.matching import ExecutorConfirm
    from lamcsp.parallel import MPIExecutor, mpi_world, worker_main

    comm = mpi_world()
    if comm is not None and comm.Get_rank() != 0:
        sys.exit(worker_main(comm))
    data = _dedupe_data(args)
    ex = MPIExecutor(comm)
    try:
        d = Deduper()
        e = d.describe(data[2][:2])  # warm-up: every worker builds the task before the clock
        ExecutorConfirm(ex, d, pairs_per_task=1)([(e[0], [e[1]])] * 4 * ex.workers)
        row, answers = _dedupe_once(d, data, ExecutorConfirm(ex, d))
    finally:
        ex.close()
    print("RESULT " + json.dumps({"row": row, "answers": answers}), flush=True)


def dedupe_part(args: argparse.Namespace) -> dict[str, Any]:
    from lamcsp.generators.dedupe import Deduper

    from lamcsp.matching import ExecutorConfirm

    class PlainFit(Deduper):
        """The reference: pymatgen's fit on the plain structures (it reduces both every call)."""

        def matches(self, a: Any, b: Any) -> bool:
            return bool(self._get_matcher().fit(a.structure(), b.structure()))

    data = _dedupe_data(args)
    rows = []
    answers = []
    for name, cls in (("pymatgen fit (reference)", PlainFit), ("reduced once, in-process", Deduper)):
        row, ans = _dedupe_once(cls(), data)
        rows.append({"method": name, **row})
        answers.append(ans)
    # the questions through an executor's map (speculative rounds), the map timed apart: rank 0's part
    d, timed = Deduper(), TimedMap()
    row, ans = _dedupe_once(d, data, ExecutorConfirm(timed, d))
    rows.append({"method": "via map: rank 0's part", **row, "map_s": timed.seconds, "map_items": timed.items,
                 "rank0_s": row["total_s"] - timed.seconds})
    answers.append(ans)
    if args.dedupe_ranks > 1:
        mpiexec = str(Path(sys.executable).parent / "mpiexec")
        if not os.path.exists(mpiexec):
            mpiexec = shutil.which("mpiexec") or "mpiexec"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        cmd = [mpiexec, "-n", str(args.dedupe_ranks), sys.executable, str(SCRIPT), "--dedupe-mpi-part",
               "--system", args.system, "--seen", str(args.seen),
               "--dedupe-population", str(args.dedupe_population)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
        got = json.loads(line[0][7:])
        rows.append({"method": f"mpiexec -n {args.dedupe_ranks} (wall)", **got["row"]})
        answers.append(tuple(got["answers"]))
    same = all(list(a) == list(answers[0]) for a in answers)
    print(f"\ndedupe of {args.dedupe_population} results ({args.system}) against {args.seen} stored, "
          f"{data[4]} of them copies")
    print(f"{'method':<28} {'describe':>9} {'unique':>8} {'against':>8} {'total':>8} {'fit calls':>9} "
          f"{'unique':>7} {'new':>5} {'map*':>7}")
    for r in rows:
        print(f"{r['method']:<28} {r['describe_s']:>9.2f} {r['unique_s']:>8.2f} {r['against_s']:>8.2f} "
              f"{r['total_s']:>8.2f} {r['matcher_calls']:>9} {r['unique']:>7} {r['new']:>5} "
              f"{r.get('map_s', float('nan')):>7.2f}")
    print("(*the matcher's answers, which the workers give under MPI; rank 0's part is total - map)")
    print(f"same answers: {same}; reduced once vs pymatgen fit "
          f"{rows[0]['total_s'] / rows[1]['total_s']:.1f}x; "
          f"rank 0's part {rows[2]['rank0_s']:.2f} s of the in-process {rows[1]['total_s']:.2f} s")
    if not same:
        raise SystemExit("the dedupers disagree")
    return {"system": args.system, "population": args.dedupe_population, "seen": args.seen,
            "copies": data[4], "rows": rows, "same_answers": same}
