"""Replay of the energy prescreen on stored CSP-benchmark runs: how much sooner symmetric random
search meets its target when it draws K candidates per relaxation and relaxes those whose start
has the lowest enthalpy (the random generator's ``oversample``; see ``lamcsp.search``).

It reads the ``random-s1`` and ``random-s2`` databases that ``csp_success.py`` left under
``--runs`` (each relaxed row keeps its start; whether its relaxed structure is the target is
judged by the benchmark's own rule against the cached relaxed reference). For each target it
evaluates every start with the model after ``s`` steps of the campaign's relaxer (``s = 0``: one
model call, what the search does), then replays the search on the two seeds' starts joined into
one sequence, in both orders: blocks of ``K x population`` starts in drawn order, the
``population`` lowest of each kept and relaxed in drawn order. Per ``(K, s)`` it reports
relaxations until the first match and their cost in model steps (prescreen steps included,
counted in mean relaxations of the run), against plain random search (``K = 1``) on the same
starts. The replay assumes a prescreened start relaxes to what its full relaxation gave, exact
for ``s = 0``.

Usage::

    python benchmarks/csp_success.py --subset "nsites<=6" --budget 300 --seeds 2 --methods random \\
        --out benchmarks/results/csp_success_cpu           # the runs it replays
    python benchmarks/prescreen_replay.py [--targets mp-10184,...] [--steps 0,8,20] [--oversample 2,4]

The model evaluations are cached per target in ``--cache`` (resumable); the table goes to stdout
and the summary to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RUNS = ("random-s1", "random-s2")


def evaluate_target(run_root: Path, target: str, steps: list[int], potential: Any,
                    relax: Any) -> dict[str, Any]:
    """Match flags, step counts and the starts' enthalpies after each of ``steps`` for the
    target's stored random runs."""
    import csp_success as cs
    from ase.db import connect
    from lamcsp.generators.base import Candidate
    from lamcsp.relax import Relaxer
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from lamcsp.store import result_ok

    d = json.loads((run_root / "refs" / f"{target}.json").read_text())
    ref = cs.Reference(Structure.from_dict(d["structure"]), d["enthalpy_per_atom"], d["spacegroup"])
    entry: dict[str, Any] = {"runs": {}}
    for run in RUNS:
        db = connect(run_root / "runs" / target / run / "results.db")
        rows = sorted(db.select(role="search"), key=lambda r: (r.generation, r.unit, r.candidate))
        starts, match = [], []
        for r in rows:
            starts.append(Candidate.from_dict(r.data["candidate"]).to_atoms())
            ok = result_ok(r)
            match.append(bool(ok and ref.matches(AseAtomsAdaptor.get_structure(r.toatoms()),
                                                 float(r.enthalpy_per_atom))))
        early = {}
        for s in steps:
            rx = Relaxer(potential, optimizer=relax.optimizer, fmax=relax.fmax, max_steps=s,
                         max_atoms=relax.max_atoms, progress=False)
            early[str(s)] = [None if o.failed else float(o.enthalpy_per_atom) for o in rx.relax(starts, 0.0)]
        entry["runs"][run] = {"match": match, "early": early, "steps": [int(r.steps) for r in rows]}
    return entry


def replay(match: list[bool], early: list[float | None], steps: list[int], k: int, s: int,
           population: int, budget: int) -> tuple[int | None, float | None]:
    """Relaxations until the first match within ``budget`` relaxations, and the model steps
    spent by then (prescreen included), when blocks of ``k x population`` starts are
    prescreened after ``s`` steps."""
    chosen: list[int] = []
    cost_at: list[float] = []
    cost = 0.0
    block = k * population
    for b in range(0, len(match) - block + 1, block):
        idx = list(range(b, b + block))
        if k > 1:
            key = [early[i] if early[i] is not None else np.inf for i in idx]
            kept = sorted(idx[j] for j in np.argsort(key, kind="stable")[:population])
            cost += sum(min(max(s, 1), steps[i]) for i in idx)  # s = 0 is still one model call
        else:
            kept = idx
        for i in kept:
            cost += steps[i] - (min(s, steps[i]) if k > 1 else 0)
            chosen.append(i)
            cost_at.append(cost)
    for j, i in enumerate(chosen[:budget]):
        if match[i]:
            return j + 1, cost_at[j]
    return None, None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default=str(HERE / "results" / "csp_success_cpu"),
                    help="a csp_success.py --out folder with random-s1 and random-s2 runs")
    ap.add_argument("--targets", default=None, help="comma list of target ids (default: every one there)")
    ap.add_argument("--steps", default="0,8,20", help="prescreen steps to replay (0: one model call)")
    ap.add_argument("--oversample", default="2,4", help="candidates per relaxation to replay")
    ap.add_argument("--population", type=int, default=12, help="structures relaxed per generation")
    ap.add_argument("--budget", type=int, default=300,
                    help="relaxations per replayed search (K x budget starts are needed: 600 stored "
                         "starts give K = 4 only 150)")
    ap.add_argument("--cache", default=str(HERE / "results" / "prescreen_replay_starts.json.tmp"))
    ap.add_argument("--out", default=str(HERE / "results" / "prescreen_replay.json"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(HERE))

    root = Path(args.runs)
    steps = [int(x) for x in args.steps.split(",")]
    ks = [int(x) for x in args.oversample.split(",")]
    targets = (args.targets.split(",") if args.targets else
               sorted(p.name for p in (root / "runs").iterdir()
                      if all((p / r / "results.db").exists() for r in RUNS)))
    cache_path = Path(args.cache)
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    todo = [t for t in targets if t not in cache or any(str(s) not in cache[t]["runs"][RUNS[0]]["early"]
                                                       for s in steps)]
    if todo:
        from lamcsp.campaign import Campaign
        from lamcsp.potentials.registry import load_model

        camp = Campaign()
        potential = load_model(camp.model)
        for n, t in enumerate(todo, 1):
            t0 = time.time()
            cache[t] = evaluate_target(root, t, steps, potential, camp.relax)
            cache_path.write_text(json.dumps(cache))
            print(f"[{n}/{len(todo)}] {t}: starts evaluated in {time.time() - t0:.0f} s", flush=True)

    configs = [(1, 0)] + [(k, s) for s in steps for k in ks]
    out: dict[tuple[int, int], list[tuple[str, int | None, float | None]]] = {c: [] for c in configs}
    for t in targets:
        runs = cache[t]["runs"]
        for a, b in (RUNS, RUNS[::-1]):
            match = runs[a]["match"] + runs[b]["match"]
            nsteps = runs[a]["steps"] + runs[b]["steps"]
            mean = float(np.mean(nsteps))
            for k, s in configs:
                early = runs[a]["early"][str(s)] + runs[b]["early"][str(s)]
                n, c = replay(match, early, nsteps, k, s, args.population, args.budget)
                out[(k, s)].append((t, n, None if c is None else c / mean))
    base = out[(1, 0)]
    summary = []
    print(f"{len(targets)} targets x 2 sequences; population {args.population}, budget {args.budget}")
    print(f"{'K':>2} {'s':>3} {'found':>6} {'median relax':>13} {'median cost':>12} {'relax ratio':>12} "
          f"{'cost ratio':>11} {'wins':>5} {'losses':>7} {'gained':>7} {'lost':>5}")
    for k, s in configs:
        rows = out[(k, s)]
        both = [(r, b) for r, b in zip(rows, base) if r[1] and b[1]]
        rel = float(np.exp(np.mean([np.log(r[1] / b[1]) for r, b in both]))) if both else None
        cst = float(np.exp(np.mean([np.log(r[2] / b[2]) for r, b in both]))) if both else None
        found = [r for r in rows if r[1] is not None]
        rec = {"oversample": k, "steps": s, "found": len(found),
               "median_relaxations": statistics.median([r[1] for r in found]) if found else None,
               "median_cost": statistics.median([r[2] for r in found]) if found else None,
               "relaxation_ratio_geomean": rel, "cost_ratio_geomean": cst,
               "wins": sum(r[1] < b[1] for r, b in both), "losses": sum(r[1] > b[1] for r, b in both),
               "gained": sum(1 for r, b in zip(rows, base) if r[1] and not b[1]),
               "lost": sum(1 for r, b in zip(rows, base) if b[1] and not r[1])}
        summary.append(rec)
        print(f"{k:>2} {s:>3} {rec['found']:>6} {rec['median_relaxations']:>13} {rec['median_cost']:>12.1f} "
              f"{rel or 1:>12.2f} {cst or 1:>11.2f} {rec['wins']:>5} {rec['losses']:>7} {rec['gained']:>7} "
              f"{rec['lost']:>5}")
    Path(args.out).write_text(json.dumps({
        "config": {"runs": str(root), "targets": targets, "population": args.population,
                   "budget": args.budget, "steps": steps, "oversample": ks},
        "summary": summary,
        "per_target": {f"{k},{s}": out[(k, s)] for k, s in configs},
    }, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
