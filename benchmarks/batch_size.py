"""How many atoms per model call on this device? Throughput of one batched CHGNet call
(energy, forces, stress) against the batch's atom count, to set the relaxer's default atom
budget (``lamcsp.relax.batching.CPU_MAX_ATOMS``).

    python benchmarks/batch_size.py [--device cpu] [--threads 2] [--out FILE]

Prints a table (atoms per call, seconds per call, atoms per second, relative to the best) and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="32,64,128,256,512,1024,2048")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/batch_size_{device}.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lamcsp.relax.state import from_structures
    from structures import benchmark_structures

    from lamcsp.potentials import load_potential

    pot = load_potential("chgnet", device=args.device)
    pool = benchmark_structures(64, seed=0)
    # the same mixture at every size: a seeded shuffle, then cycle through it
    order = np.random.default_rng(0).permutation(len(pool))
    pool = [pool[i] for i in order]
    rows = []
    for target in [int(s) for s in args.sizes.split(",")]:
        chosen, n = [], 0
        k = 0
        while n < target:
            a = pool[k % len(pool)]
            chosen.append(a)
            n += len(a)
            k += 1
        state = from_structures(chosen, device=pot.device)
        pot(state)  # warm-up at this size
        if pot.device.type == "cuda":
            torch.cuda.synchronize()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pot(state)
            if pot.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        t = float(np.median(times))
        rows.append({"atoms": state.n_atoms, "structures": state.n_systems, "s_per_call": t,
                     "atoms_per_s": state.n_atoms / t})
    best = max(r["atoms_per_s"] for r in rows)
    print(f"{'atoms':>6} {'structs':>7} {'s/call':>8} {'atoms/s':>9} {'rel':>5}")
    for r in rows:
        r["relative"] = r["atoms_per_s"] / best
        print(f"{r['atoms']:>6} {r['structures']:>7} {r['s_per_call']:>8.3f} "
              f"{r['atoms_per_s']:>9.0f} {r['relative']:>5.2f}")
    out = args.out.format(device=args.device)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"device": args.device, "threads": args.threads, "torch": torch.__version__,
                   "machine": platform.machine(), "cpu_count": os.cpu_count(),
                   "loadavg": os.getloadavg(), "rows": rows}, fh, indent=1)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
