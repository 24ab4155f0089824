"""Dedupe a population with known duplicates (``test_dedupe.relaxed_population``) with the
matcher's questions answered through ``MPIExecutor.map`` under ``mpiexec``; rank 0 writes the
answers as JSON to argv[1]."""

from __future__ import annotations

import json
import sys

from lamcsp.parallel import MPIExecutor, mpi_world, worker_main

if __name__ == "__main__":
    comm = mpi_world()
    if comm.Get_rank() != 0:
        sys.exit(worker_main(comm))
    from test_dedupe import dedupe_answers

    from lamcsp.matching import ExecutorConfirm

    ex = MPIExecutor(comm)
    try:
        result = dedupe_answers(lambda d: ExecutorConfirm(ex, d, pairs_per_task=16))
    finally:
        ex.close()
    with open(sys.argv[1], "w") as fh:
        json.dump(result, fh)
