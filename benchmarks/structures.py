"""The benchmark structure set: known crystals, rattled and strained, and random symmetric
candidates, 2-24 atoms each, deterministic from a seed.

About half are known crystals (Si diamond, NaCl rocksalt, MgO rocksalt, rutile TiO2, in
primitive, conventional and supercells), each given a random cell strain of 3-5 % and a
rattle of 0.05-0.1 Å; these relax in tens of steps. The other half are random symmetric
candidates from PyXtal (a random space group per draw, retried deterministically when the
composition does not fit the group); these start far from a minimum and relax for hundreds of
steps, as in a structure search.

    python benchmarks/structures.py [--n 64] [--seed 0]

prints the set and its size histogram.
"""

from __future__ import annotations

import argparse
import warnings
from collections import Counter

import numpy as np
from ase import Atoms
from ase.build import bulk

# (name, builder) of the known crystals; supercells keep every size within 2..24 atoms.
_A_SI, _A_NACL, _A_MGO = 5.43, 5.64, 4.21


def _rutile() -> Atoms:
    a, c, u = 4.594, 2.959, 0.3053
    frac = [
        (0, 0, 0),
        (0.5, 0.5, 0.5),
        (u, u, 0),
        (1 - u, 1 - u, 0),
        (0.5 + u, 0.5 - u, 0.5),
        (0.5 - u, 0.5 + u, 0.5),
    ]
    return Atoms("Ti2O4", scaled_positions=frac, cell=[a, a, c], pbc=True)


KNOWN_CRYSTALS: list[tuple[str, object]] = [
    ("Si diamond (prim)", lambda: bulk("Si", "diamond", a=_A_SI)),
    ("Si diamond (conv)", lambda: bulk("Si", "diamond", a=_A_SI, cubic=True)),
    ("Si diamond (prim 2x2x2)", lambda: bulk("Si", "diamond", a=_A_SI).repeat((2, 2, 2))),
    ("Si diamond (conv 2x1x1)", lambda: bulk("Si", "diamond", a=_A_SI, cubic=True).repeat((2, 1, 1))),
    ("NaCl rocksalt (prim)", lambda: bulk("NaCl", "rocksalt", a=_A_NACL)),
    ("NaCl rocksalt (conv)", lambda: bulk("NaCl", "rocksalt", a=_A_NACL, cubic=True)),
    ("NaCl rocksalt (conv 2x1x1)",
     lambda: bulk("NaCl", "rocksalt", a=_A_NACL, cubic=True).repeat((2, 1, 1))),
    ("MgO rocksalt (prim)", lambda: bulk("MgO", "rocksalt", a=_A_MGO)),
    ("MgO rocksalt (conv)", lambda: bulk("MgO", "rocksalt", a=_A_MGO, cubic=True)),
    ("MgO rocksalt (prim 2x2x1)", lambda: bulk("MgO", "rocksalt", a=_A_MGO).repeat((2, 2, 1))),
    ("TiO2 rutile", _rutile),
    ("TiO2 rutile (1x1x2)", lambda: _rutile().repeat((1, 1, 2))),
    ("TiO2 rutile (1x1x4)", lambda: _rutile().repeat((1, 1, 4))),
    ("TiO2 rutile (2x2x1)", lambda: _rutile().repeat((2, 2, 1))),
]

#: compositions of the random symmetric candidates: (species, counts)
RANDOM_COMPOSITIONS: list[tuple[list[str], list[int]]] = [
    (["Si"], [4]),
    (["Si"], [6]),
    (["Si"], [8]),
    (["Na", "Cl"], [2, 2]),
    (["Na", "Cl"], [4, 4]),
    (["Mg", "O"], [4, 4]),
    (["Ti", "O"], [2, 4]),
    (["Ti", "O"], [4, 8]),
]


def perturbed_crystal(base: Atoms, rng: np.random.Generator) -> Atoms:
    """``base`` with a random symmetric cell strain (largest component 3-5 %, random signs)
    and every atom displaced by 0.05-0.1 Å (one amplitude per structure) in a random
    direction."""
    atoms = base.copy()
    mag = rng.uniform(0.03, 0.05)
    e = rng.normal(size=(3, 3))
    e = 0.5 * (e + e.T)
    e *= mag / np.abs(e).max()
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + e), scale_atoms=True)
    amp = rng.uniform(0.05, 0.1)
    d = rng.normal(size=(len(atoms), 3))
    d *= amp / np.linalg.norm(d, axis=1, keepdims=True)
    atoms.positions += d
    atoms.info["kind"] = "crystal"
    atoms.info["strain"] = float(mag)
    atoms.info["rattle"] = float(amp)
    return atoms


def random_candidate(
    species: list[str], counts: list[int], rng: np.random.Generator, max_tries: int = 200
) -> Atoms:
    """A random symmetric crystal from PyXtal in a random space group (2-230); groups the
    composition does not fit, and failed draws, are retried with the next draw of ``rng``."""
    from pyxtal import pyxtal

    last = None
    for _ in range(max_tries):
        sg = int(rng.integers(2, 231))
        state = int(rng.integers(0, 2**31 - 1))
        crystal = pyxtal()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal.from_random(3, sg, species, counts, random_state=state)
        except Exception as exc:  # noqa: BLE001 - pyxtal raises several types
            last = exc
            continue
        if not crystal.valid:
            continue
        atoms = crystal.to_ase()
        if len(atoms) != sum(counts):
            continue
        atoms.info["kind"] = "random"
        atoms.info["spacegroup"] = sg
        return atoms
    raise RuntimeError(f"no random {species}{counts} crystal in {max_tries} draws: {last}")


def benchmark_structures(n: int = 64, seed: int = 0) -> list[Atoms]:
    """``n`` structures of 2-24 atoms: the first ``n // 2`` are perturbed known crystals
    (cycling through :data:`KNOWN_CRYSTALS`), the rest random PyXtal candidates (cycling
    through :data:`RANDOM_COMPOSITIONS`); deterministic from ``seed``.

    Each structure carries ``info["name"]``, ``info["kind"]`` (``crystal`` or ``random``)
    and ``info["index"]``.
    """
    rng = np.random.default_rng(seed)
    out: list[Atoms] = []
    n_known = n // 2
    for i in range(n_known):
        name, build = KNOWN_CRYSTALS[i % len(KNOWN_CRYSTALS)]
        atoms = perturbed_crystal(build(), rng)
        atoms.info["name"] = name
        out.append(atoms)
    for i in range(n - n_known):
        species, counts = RANDOM_COMPOSITIONS[i % len(RANDOM_COMPOSITIONS)]
        atoms = random_candidate(species, counts, rng)
        atoms.info["name"] = f"random {atoms.get_chemical_formula()} sg{atoms.info['spacegroup']}"
        out.append(atoms)
    for i, atoms in enumerate(out):
        atoms.info["index"] = i
        atoms.wrap()
    return out


def size_histogram(structures: list[Atoms]) -> str:
    """A text histogram of atom counts, split by kind."""
    by_size: dict[int, Counter] = {}
    for a in structures:
        by_size.setdefault(len(a), Counter())[a.info.get("kind", "?")] += 1
    lines = ["atoms  crystal  random  total"]
    for size in sorted(by_size):
        c = by_size[size]
        tot = sum(c.values())
        lines.append(f"{size:5d}  {c['crystal']:7d}  {c['random']:6d}  {tot:5d}  {'#' * tot}")
    total_atoms = sum(len(a) for a in structures)
    lines.append(f"{len(structures)} structures, {total_atoms} atoms")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    structures = benchmark_structures(args.n, args.seed)
    for a in structures:
        print(f"{a.info['index']:3d}  {len(a):3d}  {a.get_volume() / len(a):6.2f} A^3/atom  "
              f"{a.info['name']}")
    print(size_histogram(structures))


if __name__ == "__main__":
    main()
