"""Does a second model agree that the structures the benchmark's model puts below a reference
really lie below it?

For each stored run of ``benchmarks/csp_success.py`` that failed as ``model_prefers_other``
(at least 5 unique structures below the model's own relaxed reference, so no search with that
model can put the reference in its top 5), relax the reference and the 5 lowest of the distinct
structures the benchmark counted below it (its own ``distinct_lowest``) again with SevenNet-0
(its weights ship in the ``sevenn`` wheel; lamcsp's relaxer with the run's relax settings,
through the ``ase:`` backend), and count those that still lie more than 1 meV/atom below
SevenNet's relaxed reference without matching it (the benchmark's ``Reference.matches``).
Where both models agree, the miss is not the search's and not one model's quirk: the reference
is not the low-enthalpy structure of either universal potential.

``sevenn`` is not a lamcsp dependency; install it beside, e.g.::

    python -m venv --system-site-packages /tmp/sv && /tmp/sv/bin/pip install -c constraints.txt sevenn
    OMP_NUM_THREADS=1 /tmp/sv/bin/python benchmarks/model_agreement.py

Prints a line per run and writes ``model_agreement.json`` beside the runs. Needs the runs'
``results.db`` (not tracked in git; made by the benchmark run on this machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import csp_success as bench  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(HERE / "results" / "csp_success_cpu"),
                    help="the benchmark's output folder (its runs/)")
    ap.add_argument("--targets", nargs="+", default=[str(bench.DEFAULT_TARGETS)])
    ap.add_argument("--methods", default="lamcsp", help="comma-separated methods whose runs to check")
    ap.add_argument("--model", default="7net-0", help="SevenNet model name (default 7net-0)")
    args = ap.parse_args(argv)
    try:
        import sevenn  # noqa: F401
    except ImportError:
        print("model_agreement needs the sevenn package (see this script's docstring)", file=sys.stderr)
        return 2
    from lamcsp.relax import Relaxer
    from pymatgen.io.ase import AseAtomsAdaptor

    from lamcsp.campaign import load_campaign
    from lamcsp.potentials.registry import load_potential
    from lamcsp.store import ResultStore, result_ok

    potential = load_potential("ase:sevenn.calculator:SevenNetCalculator", device="cpu", model=args.model)
    targets = {t.id: t for t in bench.load_targets(args.targets)}
    results = Path(args.results)
    refs = results / f"refs_{args.model}"  # the references relaxed with the second model, kept
    refs.mkdir(parents=True, exist_ok=True)
    out = []
    for method in args.methods.split(","):
        for path in sorted((results / "runs").glob(f"*/{method}-s*/bench_record.json")):
            rec = json.loads(path.read_text())
            if rec["reason"] != "model_prefers_other" or not (path.parent / "results.db").exists():
                continue
            t0 = time.time()
            relax = load_campaign(path.parent / "campaign.yaml").relax
            ref = bench.relax_reference(targets[rec["target"]], potential, relax,
                                        refs / f"{rec['target']}.json")
            # the distinct structures the benchmark counted below the run's own reference
            own_ref = rec["best_enthalpy_per_atom"] - rec["energy_distance"]
            rows = sorted((r for r in ResultStore(path.parent).rows(role="search", include_data=False)
                           if result_ok(r)),
                          key=lambda r: r.enthalpy_per_atom)
            reps, n_below = bench.distinct_lowest(
                rows, lambda r: bench.symmetrized(AseAtomsAdaptor.get_structure(r.toatoms())),
                own_ref - bench.BELOW_TOL)
            below = reps[:min(n_below, bench.TOP_K)]
            relaxer = Relaxer(potential, optimizer=relax.optimizer, fmax=relax.fmax,
                              max_steps=relax.max_steps, max_atoms=relax.max_atoms, progress=False)
            pairs = []
            for row, res in zip(below, relaxer.relax([r.toatoms() for r in below], [0.0] * len(below))):
                pairs.append({"db_id": row.id, "own_mev": 1000 * (row.enthalpy_per_atom - own_ref),
                              "second_mev": 1000 * (res.enthalpy_per_atom - ref.enthalpy_per_atom),
                              "matches_reference": ref.matches(AseAtomsAdaptor.get_structure(res.atoms))})
            still = sum(1 for p in pairs if p["second_mev"] < -1.0 and not p["matches_reference"])
            out.append({"target": rec["target"], "formula": rec["formula"], "method": method,
                        "seed": rec["seed"], "checked": len(pairs), "still_below": still,
                        "structures": pairs})
            shifts = ", ".join(f"{p['own_mev']:.0f}->{p['second_mev']:.0f}" for p in pairs)
            print(f"{rec['formula']:10s} {method}-s{rec['seed']}: {still}/{len(pairs)} still below with "
                  f"{args.model} (meV/atom, own -> second: {shifts}) {time.time() - t0:.0f} s", flush=True)
    agreed = sorted({r["formula"] for r in out if r["still_below"] >= bench.TOP_K})
    print(f"{len(out)} runs checked; targets with {bench.TOP_K} structures below the reference in both "
          f"models: {len(agreed)} ({', '.join(agreed)})")
    bench._write_json(results / "model_agreement.json", {"model": args.model, "runs": out,
                                                          "agreed_targets": agreed})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
