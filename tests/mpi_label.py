"""Label structures with EMT through ``MPIExecutor.map`` (the fine-tune loop's oracle task)
under ``mpiexec``; rank 0 writes the labels and the ranks that computed them to argv[1]."""

from __future__ import annotations

import json
import sys

from ase.build import bulk
from lamcsp.relax.relaxer import atoms_to_dict

from lamcsp.oracle import label_task
from lamcsp.parallel import MPIExecutor, mpi_world, worker_main

if __name__ == "__main__":
    comm = mpi_world()
    if comm.Get_rank() != 0:
        sys.exit(worker_main(comm))
    cells = []
    for i in range(8):
        a = bulk("Cu", "fcc", a=3.55 + 0.02 * i).repeat((1 + i % 2, 1, 1))
        a.rattle(0.05, seed=i)
        cells.append(a)
    ex = MPIExecutor(comm, batch_size=1)
    try:
        out = ex.map(label_task({"calculator": "emt"}), [{"atoms": atoms_to_dict(a)} for a in cells],
                     labels=[f"cell-{i}" for i in range(8)])
    finally:
        ex.close()
    with open(sys.argv[1], "w") as fh:
        json.dump({"labels": out, "cells": [atoms_to_dict(a) for a in cells]}, fh, default=float)
