"""Run ``MPIExecutor.map`` over the Square task under ``mpiexec``; rank 0 writes the results (or the
error) as JSON to argv[1]. argv[2] is the task spec as JSON, argv[3] the batch size (0: auto)."""

from __future__ import annotations

import json
import sys

from lamcsp.errors import WorkerError
from lamcsp.parallel import MPIExecutor, Task, mpi_world, worker_main

if __name__ == "__main__":
    comm = mpi_world()
    if comm.Get_rank() != 0:
        sys.exit(worker_main(comm))
    ex = MPIExecutor(comm, batch_size=int(sys.argv[3]) or None)
    seen: list[int] = []
    try:
        out = ex.map(Task("mpi_tasks:Square", json.loads(sys.argv[2])), [{"x": x} for x in range(40)],
                     lambda i, r: seen.append(i), labels=[f"x={x}" for x in range(40)])
        result = {"out": out, "seen": seen}
    except WorkerError as exc:
        result = {"error": exc.message, "rank": exc.rank, "held": exc.held, "detail": exc.detail}
    finally:
        ex.close()
    with open(sys.argv[1], "w") as fh:
        json.dump(result, fh)
