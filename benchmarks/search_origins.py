"""Which generator and operator does a search's progress come from?

Reads the run folders a ``csp_success.py`` benchmark left (``OUT/runs/TARGET/METHOD-sSEED``)
and sorts every relaxation of the chosen methods by its origin: the generator (``random``,
``pso``, ``ga``, ``template``...) and, where it has one, the operator that made it (``pso``
move, ``pso-migrate``, ``pso-clone``, a new particle, GA ``heredity``, ``lattice_mutation``,
``permutation``...). Per origin it counts

* ``relaxations`` and their mean model steps;
* ``records``: relaxations that lowered their unit's best enthalpy so far by more than 1
  meV/atom (in the order the search relaxed them; the first generation's count too);
* ``near_best``: relaxations ending within 5 meV/atom of the run's final best;
* ``duplicates``: relaxations the search found to duplicate a stored structure;
* ``first_match``: the runs whose first match of the target (as the benchmark judged it,
  ``relaxations_to_match``) came from that origin.

A generator whose operators produce few records per relaxation spends the budget without
moving the search; this is what the swarm and GA settings are tuned against::

    python benchmarks/search_origins.py /work/bench26/s1 --methods lamcsp,ga,pso

It prints a table and writes ``OUT/search_origins.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from csp_success import in_search_order  # this folder's benchmark: its search order

RECORD_TOL = 1e-3  # eV/atom
NEAR_TOL = 5e-3  # eV/atom


def origin_of(row: Any) -> str:
    """``generator/operator`` of a stored search row (``pso/new`` for a fresh particle)."""
    cand = (row.data or {}).get("candidate") or {}
    origin = cand.get("origin") or {}
    gen = str(row.get("generator", cand.get("generator", "?")))
    op = origin.get("operator")
    if op is None:
        op = "new" if gen in ("pso", "ga") else None
    if gen == "random" and origin.get("quench_steps"):
        op = "quenched"
    return f"{gen}/{op}" if op else gen


def run_origins(run_dir: Path) -> dict[str, Any] | None:
    """Per-origin counts of one run (``None`` where it has no database)."""
    from lamcsp.store import ResultStore, result_ok

    if not (run_dir / "results.db").exists():
        return None
    rows = in_search_order(ResultStore(run_dir).rows(role="search"))
    ok = {int(r.id) for r in rows if result_ok(r)}
    if not ok:
        return None
    final = min(float(r.enthalpy_per_atom) for r in rows if int(r.id) in ok)
    best: dict[int, float] = {}
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in rows:
        o = out[origin_of(r)]
        o["relaxations"] += 1
        o["steps"] += int(r.steps) + 1
        if int(r.id) not in ok:
            continue
        h, u = float(r.enthalpy_per_atom), int(r.unit)
        if h < best.get(u, math.inf) - RECORD_TOL:
            o["records"] += 1
            best[u] = h
        if h <= final + NEAR_TOL:
            o["near_best"] += 1
        if not r.get("unique", False):
            o["duplicates"] += 1
    rec_path = run_dir / "bench_record.json"
    first = None
    if rec_path.exists():
        rec = json.loads(rec_path.read_text())
        n = rec.get("relaxations_to_match")
        if n:
            first = origin_of(rows[int(n) - 1])
    return {"origins": {k: dict(v) for k, v in out.items()}, "first_match": first}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="a csp_success.py output folder (the one with runs/)")
    ap.add_argument("--methods", default="lamcsp", help="comma-separated methods (default lamcsp)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result: dict[str, Any] = {}
    for method in methods:
        total: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        runs = 0
        for run_dir in sorted(out.glob(f"runs/*/{method}-s*")):
            got = run_origins(run_dir)
            if got is None:
                continue
            runs += 1
            for k, v in got["origins"].items():
                for kk, vv in v.items():
                    total[k][kk] += vv
            if got["first_match"]:
                total[got["first_match"]]["first_match"] += 1
        result[method] = {"runs": runs, "origins": {k: dict(v) for k, v in total.items()}}
        n_all = sum(v["relaxations"] for v in total.values()) or 1
        print(f"\n{method}: {runs} runs")
        print(f"{'origin':24s} {'relax':>7s} {'share':>6s} {'steps/relax':>11s} {'records':>8s} "
              f"{'rec/100':>8s} {'near':>6s} {'near/100':>8s} {'dup/100':>8s} {'1st match':>9s}")
        for k, v in sorted(total.items(), key=lambda kv: -kv[1]["relaxations"]):
            n = v["relaxations"]
            print(f"{k:24s} {int(n):7d} {n / n_all:6.1%} {v['steps'] / n:11.1f} "
                  f"{int(v.get('records', 0)):8d} "
                  f"{100 * v.get('records', 0) / n:8.2f} {int(v.get('near_best', 0)):6d} "
                  f"{100 * v.get('near_best', 0) / n:8.2f} {100 * v.get('duplicates', 0) / n:8.2f} "
                  f"{int(v.get('first_match', 0)):9d}")
    path = out / "search_origins.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
