"""Control for the energy comparison of ``relax_throughput.py``: how many relaxations end in a
different minimum when the SAME relaxer starts from positions perturbed by 1e-6 Å?

Random symmetric candidates start near saddle points, so float-level differences (another
implementation's summation order, a perturbation of 1e-6 Å) send some of them to other minima.
This measures that sensitivity with lamcsp alone; the fraction within 2 meV/atom here is the
ceiling for any two implementations of the same optimizer on the same structures.

    python benchmarks/relax_sensitivity.py [--out benchmarks/results/relax_sensitivity_cpu.json]
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--perturbation", type=float, default=1e-6, help="Å, Gaussian")
    ap.add_argument("--out", default="benchmarks/results/relax_sensitivity_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lamcsp.relax import Relaxer
    from structures import benchmark_structures

    from lamcsp.potentials import load_potential

    structs = benchmark_structures(args.n, seed=0)
    pot = load_potential("chgnet", device="cpu")
    r0 = Relaxer(pot, fmax=0.05, max_steps=500).relax(structs)
    rng = np.random.default_rng(1)
    pert = []
    for a in structs:
        b = a.copy()
        b.positions += rng.normal(0, args.perturbation, b.positions.shape)
        pert.append(b)
    r1 = Relaxer(pot, fmax=0.05, max_steps=500).relax(pert)
    d = np.array([abs(x.energy / len(x.atoms) - y.energy / len(y.atoms)) * 1000 for x, y in zip(r0, r1)])
    kinds = np.array([a.info.get("kind", "") for a in structs])
    rows = {}
    for kind in ("crystal", "random"):
        sel = kinds == kind
        rows[kind] = {"n": int(sel.sum()), "within_2mev": float((d[sel] < 2).mean()),
                      "n_off": int((d[sel] >= 2).sum()), "max_mev": float(d[sel].max())}
        print(f"{kind:8s} n={rows[kind]['n']:3d}  within 2 meV/atom: {rows[kind]['within_2mev']:.1%}"
              f"  ({rows[kind]['n_off']} off, max {rows[kind]['max_mev']:.1f} meV/atom)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        record = {"perturbation_A": args.perturbation, "rows": rows, "per_structure_mev": d.tolist()}
        json.dump(record, fh, indent=1)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
