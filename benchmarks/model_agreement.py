"""Does a second model agree that the structures the benchmark's model puts below a reference
really lie below it?

For each stored run of ``benchmarks/csp_success.py`` that failed as ``model_prefers_other``
(at least 5 unique structures below the model's own relaxed reference, so no search with that
model can put the reference in its top 5), relax the reference and the run's lowest unique
structures below it (5 at most) again with SevenNet-0 (its weights ship in the ``sevenn`` wheel;
ASE FIRE with ``FrechetCellFilter``, fmax 0.02 eV/A, 600 steps), and count those that still lie
more than 1 meV/atom below SevenNet's relaxed reference without matching it (the benchmark's
matcher, both symmetrised at symprec 0.1). Where both models agree, the miss is not the search's
and not one model's quirk: the reference is not the low-enthalpy structure of either universal
potential.

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

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(HERE / "results" / "csp_success_cpu"),
                    help="the benchmark's output folder (its runs/ and targets)")
    ap.add_argument("--targets", default=str(HERE / "data" / "mp20_small.json"))
    ap.add_argument("--methods", default="lamcsp", help="comma-separated methods whose runs to check")
    ap.add_argument("--model", default="7net-0", help="SevenNet model name (default 7net-0)")
    args = ap.parse_args(argv)
    try:
        from sevenn.calculator import SevenNetCalculator
    except ImportError:
        print("model_agreement needs the sevenn package (see this script's docstring)", file=sys.stderr)
        return 2
    import ase.db
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    calc = SevenNetCalculator(args.model, device="cpu")
    targets = {t["material_id"]: t for t in json.loads(Path(args.targets).read_text())}
    matcher = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)

    def symmetrised(atoms):
        s = AseAtomsAdaptor.get_structure(atoms)
        try:
            return SpacegroupAnalyzer(s, symprec=0.1).get_refined_structure()
        except Exception:  # spglib gives up on a few distorted cells: judge them as they are
            return s

    def relax(atoms):
        a = atoms.copy()
        a.calc = calc
        FIRE(FrechetCellFilter(a), logfile=None).run(fmax=0.02, steps=600)
        return a, a.get_potential_energy() / len(a)

    out = []
    root = Path(args.results) / "runs"
    for method in args.methods.split(","):
        for path in sorted(root.glob(f"*/{method}-s*/bench_record.json")):
            rec = json.loads(path.read_text())
            if rec["reason"] != "model_prefers_other" or not (path.parent / "results.db").exists():
                continue
            t0 = time.time()
            ref, ref_e = relax(AseAtomsAdaptor.get_atoms(Structure.from_str(targets[rec["target"]]["cif"],
                                                                            fmt="cif")))
            ref_sym = symmetrised(ref)
            own_ref = rec["best_enthalpy_per_atom"] - rec["energy_distance"]
            db = ase.db.connect(str(path.parent / "results.db"))
            rows = sorted((r for r in db.select(role="search", unique=True)
                           if np.isfinite(r.enthalpy_per_atom)), key=lambda r: r.enthalpy_per_atom)
            pairs = []
            for row in [r for r in rows if r.enthalpy_per_atom < own_ref - 1e-4][:5]:
                a, e = relax(row.toatoms())
                pairs.append({"db_id": row.id, "own_mev": 1000 * (row.enthalpy_per_atom - own_ref),
                              "second_mev": 1000 * (e - ref_e),
                              "matches_reference": matcher.fit(symmetrised(a), ref_sym)})
            below = sum(1 for p in pairs if p["second_mev"] < -1.0 and not p["matches_reference"])
            out.append({"target": rec["target"], "formula": rec["formula"], "method": method,
                        "seed": rec["seed"], "checked": len(pairs), "still_below": below,
                        "structures": pairs})
            shifts = ", ".join(f"{p['own_mev']:.0f}->{p['second_mev']:.0f}" for p in pairs)
            print(f"{rec['formula']:10s} {method}-s{rec['seed']}: {below}/{len(pairs)} still below with "
                  f"{args.model} (meV/atom, own -> second: {shifts}) {time.time() - t0:.0f} s", flush=True)
    all5 = sorted({r["formula"] for r in out if r["still_below"] >= 5})
    print(f"{len(out)} runs checked; targets with 5 structures below the reference in both models: "
          f"{len(all5)} ({', '.join(all5)})")
    (Path(args.results) / "model_agreement.json").write_text(json.dumps(
        {"model": args.model, "runs": out, "agreed_targets": all5}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
