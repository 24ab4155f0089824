"""An example lamcsp generator, installed as a plugin: strained, rattled copies of a prototype.

A generator implements the :class:`lamcsp.generators.Generator` protocol: a ``name``,
``propose(n, rng, context) -> list[Candidate]``, ``tell(outcomes)`` (what became of its
candidates: relaxed, or not and why) and ``state_dict()`` / ``load_state_dict(state)`` (what it
carries between generations, as plain data for the checkpoint). One that carries nothing, as
this one, subclasses :class:`lamcsp.generators.GeneratorBase`, which gives the last three.
This one takes a textbook prototype (rocksalt, CsCl, zincblende, wurtzite for AB
compounds; fcc, bcc, hcp, diamond for elements), puts the target's elements on its sites,
scales it so that the closest contact equals the sum of the covalent radii, makes the supercell
that holds the requested number of formula units, and returns copies with a random symmetric
strain and random atomic displacements, a way to seed a search with "the usual suspects".

The rules every generator follows:

* all randomness comes from ``rng`` (same seed, same structures);
* no files, MPI or printing inside ``propose``; options are checked in ``__init__`` and a bad
  one raises :class:`lamcsp.errors.SetupError` naming the option;
* every structure has the target composition and respects the minimum distances of the
  context; at most ``n`` structures are returned.
"""

from __future__ import annotations

from math import gcd

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, covalent_radii
from ase.neighborlist import neighbor_list
from lamcsp.generators import Candidate, GenerationContext, GeneratorBase

from lamcsp.errors import SetupError

#: prototype -> ASE ``bulk`` arguments (placeholder elements, replaced by the target's)
PROTOTYPES: dict[str, dict] = {
    "rocksalt": {"name": "NaCl", "crystalstructure": "rocksalt", "a": 5.6, "cubic": True},
    "cesiumchloride": {"name": "CsCl", "crystalstructure": "cesiumchloride", "a": 4.1},
    "zincblende": {"name": "ZnS", "crystalstructure": "zincblende", "a": 5.4, "cubic": True},
    "wurtzite": {"name": "ZnO", "crystalstructure": "wurtzite", "a": 3.25, "c": 5.2},
    "fcc": {"name": "Cu", "crystalstructure": "fcc", "a": 3.6, "cubic": True},
    "bcc": {"name": "Fe", "crystalstructure": "bcc", "a": 2.9, "cubic": True},
    "hcp": {"name": "Mg", "crystalstructure": "hcp", "a": 3.2, "c": 5.2},
    "diamond": {"name": "Si", "crystalstructure": "diamond", "a": 5.43, "cubic": True},
}


class StrainedSeeds(GeneratorBase):
    """Strained, rattled copies of a prototype crystal with the target's elements.

    Args:
        prototype: one of :data:`PROTOTYPES`.
        strain: standard deviation of the symmetric strain components.
        rattle: standard deviation of the atomic displacements, Å.
        max_attempts: draws per structure before giving up on it.

    Raises:
        SetupError: an unknown prototype or a negative amplitude.
    """

    name = "strained-seeds"

    def __init__(self, prototype: str = "rocksalt", strain: float = 0.03, rattle: float = 0.05,
                 max_attempts: int = 20):
        if prototype not in PROTOTYPES:
            raise SetupError("prototype", f"unknown prototype {prototype!r}; known: {', '.join(PROTOTYPES)}")
        for field, value in (("strain", strain), ("rattle", rattle)):
            if not 0.0 <= value < 0.5:
                raise SetupError(field, f"must be in [0, 0.5), got {value!r}")
        if max_attempts < 1:
            raise SetupError("max_attempts", f"must be at least 1, got {max_attempts!r}")
        self.prototype = prototype
        self.template = bulk(**PROTOTYPES[prototype])
        self.strain, self.rattle, self.max_attempts = float(strain), float(rattle), int(max_attempts)

    def propose(self, n: int, rng: np.random.Generator, context: GenerationContext) -> list[Candidate]:
        """Up to ``n`` strained, rattled copies of the prototype (see the class docstring)."""
        seed = self._seed(context)
        per_fu = sum(context.composition.values())
        # a supercell (m, 1, 1) of the seed holds m * len(seed) / per_fu formula units
        sizes = [fu for fu in context.formula_units if fu * per_fu % len(seed) == 0]
        if not sizes:
            raise SetupError("formula_units", f"no supercell of the {len(seed)}-atom {self.prototype} "
                             f"cell holds {context.formula_units} formula units")
        out = []
        for _ in range(n):
            fu = int(rng.choice(sizes))
            cell = seed * (fu * per_fu // len(seed), 1, 1)
            for attempt in range(self.max_attempts):
                atoms = self._perturb(cell, rng)
                if self._distances_ok(atoms, context):
                    out.append(Candidate.from_atoms(atoms, generator=self.name, origin={
                        "prototype": self.prototype, "formula_units": fu, "attempts": attempt + 1}))
                    break
        return out

    def _seed(self, context: GenerationContext) -> Atoms:
        """The prototype with the target's elements, scaled."""
        seed = self.template.copy()
        species, counts = np.unique(seed.numbers, return_counts=True)
        target = sorted(context.composition.items(), key=lambda kv: kv[1])
        k, kt = gcd(*counts.tolist()), gcd(*[c for _, c in target])
        if sorted(c // k for c in counts) != [c // kt for _, c in target]:
            raise SetupError("composition", f"the {self.prototype} prototype does not fit "
                             f"{dict(context.composition)}")
        # the least abundant placeholder becomes the least abundant target element, and so on
        mapping = {int(z): atomic_numbers[el] for z, (el, _) in zip(species[np.argsort(counts)], target)}
        seed.numbers = [mapping[int(z)] for z in seed.numbers]
        # closest contact = sum of covalent radii (x volume_factor^(1/3), the campaign's knob)
        i, j, d = neighbor_list("ijd", seed, 6.0)
        ratio = np.min(d / (covalent_radii[seed.numbers[i]] + covalent_radii[seed.numbers[j]]))
        seed.set_cell(seed.cell / ratio * context.volume_factor ** (1 / 3), scale_atoms=True)
        return seed

    def _perturb(self, atoms: Atoms, rng: np.random.Generator) -> Atoms:
        atoms = atoms.copy()
        e = rng.normal(0.0, self.strain, size=(3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + (e + e.T) / 2), scale_atoms=True)
        atoms.positions += rng.normal(0.0, self.rattle, size=atoms.positions.shape)
        atoms.wrap()
        return atoms

    @staticmethod
    def _distances_ok(atoms: Atoms, context: GenerationContext) -> bool:
        """No pair closer than the context's minimum distance (override, else the default)."""
        i, j, d = neighbor_list("ijd", atoms, max([4.0, *context.min_distance.values()]))
        for zi, zj, dij in zip(atoms.numbers[i], atoms.numbers[j], d):
            key = (int(zi), int(zj))
            limit = context.min_distance.get(key, context.min_distance.get(key[::-1]))
            if limit is None:
                limit = context.distance_factor * (covalent_radii[zi] + covalent_radii[zj])
            if dij < limit:
                return False
        return True
