"""Single points through ``MPIExecutor.evaluate`` under ``mpiexec``: with the campaign's model,
with another model section (a committee member), and after ``set_model``; a relax call with a
job behind it (``then``); through two
campaigns' views of the one executor (a campaign set), each with its own model; rank 0 writes the
results and the structures to argv[1]."""

from __future__ import annotations

import json
import sys

from ase.build import bulk
from lamcsp.relax.relaxer import atoms_to_dict

from lamcsp.campaign import parse_campaign
from lamcsp.parallel import Executor, Job, MPIExecutor, Task, mpi_world, worker_main

CAMPAIGN = {"name": "ar", "system": {"composition": "Ar"},
            "model": {"backend": "lj", "device": "cpu", "options": {"epsilon": 0.0104, "sigma": 3.4}}}
OTHER = {"epsilon": 0.0150, "sigma": 3.3}
THIRD = {"epsilon": 0.0120, "sigma": 3.5}

if __name__ == "__main__":
    comm = mpi_world()
    if comm.Get_rank() != 0:
        sys.exit(worker_main(comm))
    campaign = parse_campaign(CAMPAIGN)
    other = campaign.model.replace(options=OTHER)
    cells = []
    for i in range(10):
        a = bulk("Ar", "fcc", a=5.2 + 0.03 * i).repeat((1 + i % 3, 1, 1))
        a.rattle(0.05, seed=i)
        cells.append(a)
    pressures = [0.5 * i for i in range(10)]
    ex = MPIExecutor(comm, batch_size=2)
    ex.configure(campaign)
    try:
        out = {"protocol": isinstance(ex, Executor),
               "own": [p.to_dict() for p in ex.evaluate(cells, pressures)],
               "member": [p.to_dict() for p in ex.evaluate(cells, pressures, model=other)]}
        ex.set_model(other)
        out["after_set_model"] = [p.to_dict() for p in ex.evaluate(cells, pressures)]
        out["relaxed"] = [r.enthalpy_per_atom for r in ex.relax(cells, pressures, max_steps=0)]
        # other work dealt out behind the relaxations (how the next generation's draws go)
        job = Job(Task("mpi_tasks:Square", {}), [{"x": x} for x in range(40)])
        out["relaxed_then"] = [r.enthalpy_per_atom for r in ex.relax(cells, pressures, max_steps=0, then=[job])]
        out["then"] = job.results
        # a campaign set: one executor, a view per campaign with its own model, interleaved
        a = ex.view(campaign)
        b = ex.view(parse_campaign({**CAMPAIGN, "name": "b", "model": {**CAMPAIGN["model"], "options": OTHER}}))
        out["views"] = [[r.enthalpy_per_atom for r in v.relax(cells, pressures, max_steps=0)] for v in (a, b, a)]
        b.set_model(campaign.model.replace(options=THIRD))  # b's fine-tune: a keeps its own
        out["views_after"] = [[p.enthalpy_per_atom for p in v.evaluate(cells, pressures)] for v in (b, a)]
        out["views_protocol"] = isinstance(a, Executor)
    finally:
        ex.close()
    out["cells"] = [atoms_to_dict(a) for a in cells]
    out["pressures"] = pressures
    with open(sys.argv[1], "w") as fh:
        json.dump(out, fh, default=float)
