"""Random symmetric structure generation: lamcsp's ``random`` generator against PyXtal's
``pyxtal().from_random``, side by side on the same compositions.

Compositions (atoms in the conventional cell): Si8; MgSiO3 with Z=4 (20 atoms); Li2MnSiO4
with Z=2 (16 atoms); Al2SiO5 with Z=2 (a 16-atom ternary, the kyanite/andalusite/sillimanite
formula).

Both sides use the same space-group policy: a group drawn uniformly from those of 2-230 whose
Wyckoff multiplicities can hold the composition (``lamcsp.generators.wyckoff.can_hold``, which
agrees with PyXtal's ``Group.check_compatible``), from a generator seeded with ``--seed``.
PyXtal gets the groups drawn here; lamcsp draws its own with the same policy inside
``propose`` (it also moves on to another group after 10 Wyckoff assignments that only give
structures of a larger group: Si8 in Im-3m, say). Both use the same minimum-distance matrix,
0.7 × (sum of ASE covalent radii) for every pair (PyXtal through a ``Tol_matrix``), and the same
mean volume (PyXtal's default factor 1.1 over its element volumes; lamcsp ``volume_factor=1.1``
over the same element volumes, without PyXtal's random spread).

Measured per side, after an untimed warm-up (numba compilation, group tables):

* structures/s: structures emitted per second of wall time; PyXtal's failures (an exception or
  ``valid == False``) count as time spent with no structure;
* validity: the fraction of emitted structures that keep the distance matrix (checked with the
  plain NumPy reference :func:`lamcsp.kernels.distances.orbit_clear_reference`) and whose
  space group by spglib (``symprec=0.01``) is the one requested;
* valid structures/s = structures/s × validity.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/generate.py              # 100 PyXtal tries per composition
    OMP_NUM_THREADS=1 python benchmarks/generate.py --quick      # 20
    OMP_NUM_THREADS=1 python benchmarks/generate.py --n 200 --seed 1

lamcsp is timed on at least 500 structures per composition (``--n-lamcsp``) so that its clock
reading is not noise; rates are per structure either way. Results go to ``--out`` (default
``benchmarks/results/generate.json``, ``generate_quick.json`` with ``--quick``). The machine's
load average is stored: other jobs on a small machine skew wall times.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

COMPOSITIONS: list[tuple[str, dict[str, int], int]] = [
    ("Si8", {"Si": 8}, 1),
    ("MgSiO3 Z=4", {"Mg": 1, "Si": 1, "O": 3}, 4),
    ("Li2MnSiO4 Z=2", {"Li": 2, "Mn": 1, "Si": 1, "O": 4}, 2),
    ("Al2SiO5 Z=2", {"Al": 2, "Si": 1, "O": 5}, 2),
]
DISTANCE_FACTOR = 0.7
SYMPREC = 0.01
PYXTAL_FACTOR = 1.1


def _cut2(symbols: list[str]) -> np.ndarray:
    from ase.data import atomic_numbers, covalent_radii

    r = np.array([covalent_radii[atomic_numbers[s]] for s in symbols])
    return (DISTANCE_FACTOR * (r[:, None] + r[None, :])) ** 2


def validate(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, sg: int, zs: list[int],
             cut2: np.ndarray) -> tuple[bool, bool]:
    """(keeps the distance matrix, spglib finds ``sg``)."""
    import spglib
    from lamcsp.kernels.distances import orbit_clear_reference

    species = np.array([zs.index(int(z)) for z in numbers])
    dist_ok = orbit_clear_reference(frac, species, 0, len(frac), lattice, cut2)
    try:
        cell: Any = (lattice, frac, numbers)
        data = spglib.get_symmetry_dataset(cell, symprec=SYMPREC)
        number = 0 if data is None else int(data.number)
    except Exception:  # spglib raises on degenerate input (atoms on top of each other)
        number = 0
    return bool(dist_ok), number == sg


def run_pyxtal(symbols: list[str], counts: list[int], groups: list[int], n: int, seed: int) -> dict[str, Any]:
    from ase.data import atomic_numbers, covalent_radii
    from pyxtal import pyxtal
    from pyxtal.tolerance import Tol_matrix

    def tol(a: str, b: str) -> float:
        return DISTANCE_FACTOR * (covalent_radii[atomic_numbers[a]] + covalent_radii[atomic_numbers[b]])

    tm = Tol_matrix(*[(a, b, tol(a, b)) for a, b in itertools.combinations_with_replacement(symbols, 2)])
    rng = np.random.default_rng(seed)
    draws = [int(groups[int(rng.integers(len(groups)))]) for _ in range(n)]

    def one(sg: int):
        c = pyxtal()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                c.from_random(3, sg, symbols, counts, factor=PYXTAL_FACTOR, tm=tm, random_state=rng)
        except Exception:  # PyXtal signals "could not place" by raising or by valid=False
            return None
        return c if c.valid else None

    for sg in draws[:5]:  # warm-up: group tables, imports
        one(sg)
    out = []
    t0 = time.perf_counter()
    for sg in draws:
        out.append((sg, one(sg)))
    wall = time.perf_counter() - t0
    zs = [atomic_numbers[s] for s in symbols]
    cut2 = _cut2(symbols)
    dist = sym = both = emitted = 0
    for sg, c in out:
        if c is None:
            continue
        emitted += 1
        atoms = c.to_ase()
        d, s = validate(np.asarray(atoms.cell), atoms.get_scaled_positions(), atoms.numbers, sg, zs, cut2)
        dist += d
        sym += s
        both += d and s
    return _summary("pyxtal", n, emitted, wall, dist, sym, both)


def run_lamcsp(per_fu: dict[str, int], fu: int, n: int, seed: int) -> dict[str, Any]:
    from ase.data import atomic_numbers
    from lamcsp.generators import GenerationContext
    from lamcsp.generators.symmetric import SymmetricRandom

    ctx = GenerationContext(composition=per_fu, formula_units=[fu], spacegroups=list(range(2, 231)),
                            distance_factor=DISTANCE_FACTOR)
    SymmetricRandom(volume_factor=PYXTAL_FACTOR, cell="conventional").propose(  # warm-up
        50, np.random.default_rng(seed + 1), ctx)
    gen = SymmetricRandom(volume_factor=PYXTAL_FACTOR, cell="conventional")
    t0 = time.perf_counter()
    cands = gen.propose(n, np.random.default_rng(seed), ctx)
    wall = time.perf_counter() - t0
    symbols = list(per_fu)
    zs = [atomic_numbers[s] for s in symbols]
    cut2 = _cut2(symbols)
    dist = sym = both = 0
    for c in cands:
        d, s = validate(c.lattice, c.frac, c.numbers, int(c.spacegroup), zs, cut2)
        dist += d
        sym += s
        both += d and s
    res = _summary("lamcsp", n, len(cands), wall, dist, sym, both)
    res["generator_stats"] = dict(gen.stats)
    res["distinct_spacegroups"] = len({c.spacegroup for c in cands})
    return res


def _summary(method: str, tried: int, emitted: int, wall: float, dist: int, sym: int,
             both: int) -> dict[str, Any]:
    rate = emitted / wall if wall > 0 else float("nan")
    valid = both / emitted if emitted else 0.0
    return {
        "method": method, "tried": tried, "emitted": emitted, "wall_s": wall,
        "structures_per_s": rate, "distance_ok": dist / emitted if emitted else 0.0,
        "spacegroup_ok": sym / emitted if emitted else 0.0, "valid_fraction": valid,
        "valid_per_s": rate * valid,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="PyXtal tries per composition")
    ap.add_argument("--n-lamcsp", type=int, default=500,
                    help="lamcsp structures per composition (at least --n)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="20 PyXtal tries, 200 lamcsp structures")
    ap.add_argument("--out", default=None,
                    help="JSON results (default benchmarks/results/generate[_quick].json)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    n_py = 20 if args.quick else args.n
    n_ours = max(n_py, 200 if args.quick else args.n_lamcsp)
    out_path = Path(args.out or Path(__file__).parent / "results" / ("generate_quick.json" if args.quick
                                                                     else "generate.json"))

    from lamcsp.generators.wyckoff import can_hold

    rows: list[dict[str, Any]] = []
    for label, per_fu, fu in COMPOSITIONS:
        symbols = list(per_fu)
        counts = [per_fu[s] * fu for s in symbols]
        groups = [sg for sg in range(2, 231) if can_hold(sg, counts)]
        print(f"{label}: {sum(counts)} atoms, {len(groups)} space groups of 2-230 can hold it", flush=True)
        ours = run_lamcsp(per_fu, fu, n_ours, args.seed)
        theirs = run_pyxtal(symbols, counts, groups, n_py, args.seed)
        rows.append({"composition": label, "atoms": sum(counts), "spacegroups": len(groups),
                     "lamcsp": ours, "pyxtal": theirs,
                     "speedup": ours["structures_per_s"] / theirs["structures_per_s"]
                     if theirs["structures_per_s"] > 0 else float("inf"),
                     "valid_speedup": ours["valid_per_s"] / theirs["valid_per_s"]
                     if theirs["valid_per_s"] > 0 else float("inf")})

    head = (f"{'composition':<15}{'atoms':>6}{'groups':>7} | {'PyXtal /s':>10}{'emitted':>9}{'valid':>8} | "
            f"{'lamcsp /s':>10}{'valid':>8} | {'speedup':>8}{'valid-speedup':>14}")
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        p, o = r["pyxtal"], r["lamcsp"]
        print(f"{r['composition']:<15}{r['atoms']:>6}{r['spacegroups']:>7} | {p['structures_per_s']:>10.1f}"
              f"{p['emitted']:>5}/{p['tried']:<3}{100 * p['valid_fraction']:>7.1f}% | "
              f"{o['structures_per_s']:>10.1f}{100 * o['valid_fraction']:>7.1f}% | "
              f"{r['speedup']:>7.1f}x{r['valid_speedup']:>13.1f}x")
    target = all(r["speedup"] >= 10 and r["lamcsp"]["valid_fraction"] >= 0.99 for r in rows)
    print(f"\ntarget (>= 10x PyXtal structures/s, >= 99% valid): {'met' if target else 'NOT met'}")

    import pyxtal
    import spglib

    cli = argv if argv is not None else sys.argv[1:]
    result = {
        "config": {"n_pyxtal": n_py, "n_lamcsp": n_ours, "seed": args.seed, "quick": args.quick,
                   "distance_factor": DISTANCE_FACTOR, "symprec": SYMPREC, "volume_factor": PYXTAL_FACTOR,
                   "command": " ".join(["benchmarks/generate.py", *cli])},
        "python": platform.python_version(), "pyxtal": pyxtal.__version__, "spglib": spglib.__version__,
        "numpy": np.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average": os.getloadavg(),
        "target_met": target, "rows": rows,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
