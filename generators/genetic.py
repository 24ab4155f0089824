"""Genetic operators: a second evolutionary generator beside the particle swarm.

:class:`GeneticGenerator` (registered as ``"ga"``) breeds the next generation from the relaxed
population with the three variation operators of USPEX [1]_ [3]_:

* **heredity** (cut-and-splice [2]_): a slab of one parent and the complementary slab of
  another, cut by a plane parallel to two lattice vectors at a random fraction of the third,
  with both parents shifted at random; the child's lattice is a random weighted average of
  the parents' (Niggli-reduced) lattices;
* **lattice mutation**: the cell deformed by ``I + ε`` with ``ε`` a symmetric strain matrix of
  Gaussian components, atoms kept at their fractional coordinates, volume restored;
* **permutation**: pairs of atoms of unlike species swap their identities.

A small fraction of every generation (``fraction_random``) comes from the symmetric random
generator, to keep diversity; the whole generation does, while the population holds fewer than
``min_population`` usable parents (the first generation).

Parent selection is a *tournament* among the best ``parent_fraction`` of the usable population:
``tournament_size`` entries are drawn uniformly from that pool and the one of lowest enthalpy per
atom wins. Like USPEX's rank-based selection of the best fraction [1]_ [3]_ it depends only on
the ranking, so no fitness "temperature" has to be tuned for each chemical system, and the
tournament size sets the selection pressure (1: uniform among the pool; larger: greedier).

Every child has the target composition and atom count and passes the minimum-distance screen
(``context.min_distance`` overrides, else ``context.distance_factor`` × the sum of covalent
radii); an overlapping child is first repaired by pushing apart the pairs that are too close
and, if overlaps remain, by a small isotropic expansion (``max_expansion``), then, if that
fails, bred again (up to ``max_attempts`` times), and finally replaced by a random structure.

The target composition, the minimum distances, the screen and the repair live in
:mod:`lamcsp.generators.overlap` (the particle swarm uses them too); their names stay
importable from here.

References:
    .. [1] A. R. Oganov and C. W. Glass, "Crystal structure prediction using ab initio
       evolutionary techniques: principles and applications", J. Chem. Phys. 124, 244704 (2006).
    .. [2] D. M. Deaven and K. M. Ho, "Molecular geometry optimization with a genetic
       algorithm", Phys. Rev. Lett. 75, 288 (1995).
    .. [3] A. O. Lyakhov, A. R. Oganov, H. T. Stokes and Q. Zhu, "New developments in
       evolutionary structure prediction algorithm USPEX", Comput. Phys. Commun. 184, 1172 (2013).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from lamcsp.generators.base import (
    Candidate,
    Evaluated,
    GenerationContext,
    Generator,
    GeneratorBase,
    get_generator,
    register,
)
from lamcsp.generators.overlap import (  # noqa: F401  (the names that lived here before the split)
    _distances,
    min_distance_matrix,
    passes_screen,
    repair,
    target_numbers,
)

from lamcsp.errors import SetupError

OPERATORS = ("heredity", "lattice_mutation", "permutation")

# heredity: the slab taken from the first parent spans this range of fractions of the cut axis,
# so that both parents contribute a real part of the child
_SLAB_RANGE = (0.25, 0.75)


def _niggli(lattice: np.ndarray, frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Niggli-reduced cell in ASE's standard orientation and the coordinates in it."""
    from ase.build.tools import niggli_reduce_cell

    cell, op = niggli_reduce_cell(lattice)
    new = np.linalg.solve(op, np.asarray(frac).T).T % 1.0
    return np.asarray(cell, dtype=float), new


# --- the generator ---------------------------------------------------------------------------


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise SetupError(name, f"must be a number in [0, 1], got {value!r}")
    return float(value)


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SetupError(name, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


@register("ga")
class GeneticGenerator(GeneratorBase):
    """Evolutionary generator with heredity, lattice mutation and permutation (USPEX-like).

    Of the ``n`` structures asked for, ``round(fraction_random * n)`` come from the random
    generator and the rest are children; each child's operator is drawn with the probabilities
    ``heredity``, ``lattice_mutation``, ``permutation`` (for a one-element composition
    permutation is impossible and its share goes to the other two, in proportion).

    One class of about 370 lines, over the house's ~300, for a reason: a third of it is this
    docstring and the checks of its fifteen options, and the three operators are its methods
    because each reads several of those options; the geometry they share is in
    :mod:`lamcsp.generators.overlap`.

    Args:
        heredity: share of the children made by heredity (cut-and-splice of two parents).
        lattice_mutation: share made by lattice mutation of one parent.
        permutation: share made by swapping unlike atoms of one parent. The three shares must
            sum to 1.
        tournament_size: entries per selection tournament (the selection pressure).
        parent_fraction: parents come from this best fraction of the usable population
            (at least two entries).
        fraction_random: share of every generation taken from the random generator.
        strain_sigma: standard deviation of the diagonal strain components of lattice mutation
            (the off-diagonal ones have half of it, as in Oganov & Glass); components are
            clipped to [-1, 1] as in USPEX. USPEX's ``mutationRate`` default is 0.5; larger
            values distort more and fail the distance screen more often.
        preserve_volume: rescale a lattice-mutation child to its parent's volume, and a
            heredity child to the weighted mean of its parents' volumes.
        max_swaps: most swaps per permutation (``None``: a quarter of the atoms, at least 1);
            the number of swaps is uniform in ``[1, max_swaps]``.
        max_attempts: tries (each with fresh parents and random draws) per child before it is
            replaced by a random structure.
        repair_steps: soft-sphere sweeps of the overlap repair per try.
        max_expansion: the overlap repair may then scale a heredity or lattice-mutation child's
            lattice up by at most this factor (1: never); permutation children keep their
            parent's lattice exactly.
        min_population: usable entries (relaxed, same composition and atom count) needed
            before the generator breeds; below it every structure comes from the random
            generator.
        random_generator: name of the generator for the random share, the first generation
            and the failed children.
        random_options: options of that generator.

    Raises:
        SetupError: an option out of range (the message names it).
    """

    name = "ga"

    def __init__(
        self,
        heredity: float = 0.5,
        lattice_mutation: float = 0.3,
        permutation: float = 0.2,
        tournament_size: int = 2,
        parent_fraction: float = 0.6,
        fraction_random: float = 0.1,
        strain_sigma: float = 0.25,
        preserve_volume: bool = True,
        max_swaps: int | None = None,
        max_attempts: int = 20,
        repair_steps: int = 20,
        max_expansion: float = 1.1,
        min_population: int = 3,
        random_generator: str = "random",
        random_options: Mapping[str, Any] | None = None,
    ):
        shares = {
            "heredity": _fraction("heredity", heredity),
            "lattice_mutation": _fraction("lattice_mutation", lattice_mutation),
            "permutation": _fraction("permutation", permutation),
        }
        total = sum(shares.values())
        if abs(total - 1.0) > 1e-6:
            listed = " + ".join(f"{k}={v:g}" for k, v in shares.items())
            raise SetupError(
                "heredity/lattice_mutation/permutation",
                f"the operator fractions must sum to 1, got {listed} = {total:g}",
            )
        self.shares = shares
        self.tournament_size = _positive_int("tournament_size", tournament_size)
        self.parent_fraction = _fraction("parent_fraction", parent_fraction)
        if self.parent_fraction == 0.0:
            raise SetupError("parent_fraction", "must be greater than 0")
        self.fraction_random = _fraction("fraction_random", fraction_random)
        if isinstance(strain_sigma, bool) or not isinstance(strain_sigma, (int, float)) or not (
            0.0 < strain_sigma <= 1.0
        ):
            raise SetupError("strain_sigma", f"must be a number in (0, 1], got {strain_sigma!r}")
        self.strain_sigma = float(strain_sigma)
        self.preserve_volume = bool(preserve_volume)
        self.max_swaps = None if max_swaps is None else _positive_int("max_swaps", max_swaps)
        self.max_attempts = _positive_int("max_attempts", max_attempts)
        self.repair_steps = _positive_int("repair_steps", repair_steps, minimum=0)
        if isinstance(max_expansion, bool) or not isinstance(max_expansion, (int, float)) or not (
            1.0 <= max_expansion <= 2.0
        ):
            raise SetupError("max_expansion", f"must be a number in [1, 2], got {max_expansion!r}")
        self.max_expansion = float(max_expansion)
        self.min_population = _positive_int("min_population", min_population, minimum=2)
        if random_generator == self.name:
            raise SetupError("random_generator", "must name another generator than 'ga', e.g. 'random'")
        self.random_generator = str(random_generator)
        self.random_options = dict(random_options or {})
        from lamcsp.generators.symmetric import check_no_oversample

        check_no_oversample(self.random_options, "genetic generator")
        self._random: Generator | None = None

    # -- public ---------------------------------------------------------------------------

    def propose(self, n: int, rng: np.random.Generator, context: GenerationContext) -> list[Candidate]:
        """``n`` children of the population (plus the random share), or random structures.

        Args:
            n: number of structures wanted.
            rng: the only source of randomness.
            context: composition, formula units, distance overrides and the relaxed population.

        Returns:
            At most ``n`` candidates; the children have ``generator="ga"``, ``spacegroup=None``
            and ``origin`` with ``operator``, ``parents`` (indices into ``context.population``),
            ``parent_ids`` (the parents' ``origin["id"]`` where they have one), ``generation``
            and the operator's draws; random ones keep their generator's name and get
            ``origin["operator"] = "random"``.
        """
        if n <= 0:
            return []
        groups = self._parent_groups(context)
        if not groups:
            return self._random_candidates(n, rng, context)
        n_random = int(round(self.fraction_random * n))
        ops, probs = self._operator_probabilities(context)
        children: list[Candidate] = []
        n_failed = 0
        for _ in range(n - n_random):
            target, pool = groups[int(rng.integers(len(groups)))]
            op = ops[int(rng.choice(len(ops), p=probs))]
            child = self._breed(op, target, pool, rng, context)
            if child is None:
                n_failed += 1
            else:
                children.append(child)
        if n_random + n_failed:
            children += self._random_candidates(n_random + n_failed, rng, context)
        return children

    def heredity_child(self, a: Evaluated, b: Evaluated, target: np.ndarray, rng: np.random.Generator,
                       context: GenerationContext) -> Candidate | None:
        """One heredity child of the relaxed structures of ``a`` and ``b``, or ``None``.

        Composition is restored after the splice: for a species in excess, the atom with the
        closest neighbour (relative to the minimum distance) is removed; for a missing one,
        the atom of that species from the parents' discarded parts that lies farthest from the
        child's atoms (relative to the minimum distance) is added. The discarded parts always
        hold enough atoms of each species, because both parents have the target composition.
        ``None`` when a parent contributes no atom or the overlaps cannot be repaired.
        """
        la, fa = _niggli(a.relaxed.lattice, a.relaxed.frac)
        lb, fb = _niggli(b.relaxed.lattice, b.relaxed.frac)
        za, zb = a.relaxed.numbers, b.relaxed.numbers
        axis = int(rng.integers(3))
        thickness = float(rng.uniform(*_SLAB_RANGE))
        shift_a, shift_b = rng.random(3), rng.random(3)
        ga = (fa - shift_a) % 1.0
        gb = (fb - shift_b) % 1.0
        weight = float(rng.random())
        lattice = weight * la + (1.0 - weight) * lb
        if self.preserve_volume:
            volume = weight * abs(np.linalg.det(la)) + (1.0 - weight) * abs(np.linalg.det(lb))
            lattice = lattice * (volume / abs(np.linalg.det(lattice))) ** (1.0 / 3.0)
        in_a = ga[:, axis] < thickness
        in_b = gb[:, axis] >= thickness
        frac = np.concatenate([ga[in_a], gb[in_b]])
        numbers = np.concatenate([za[in_a], zb[in_b]])
        source = np.concatenate([np.zeros(in_a.sum(), int), np.ones(in_b.sum(), int)])
        spare_frac = np.concatenate([ga[~in_a], gb[~in_b]])
        spare_numbers = np.concatenate([za[~in_a], zb[~in_b]])
        spare_source = np.concatenate([np.zeros((~in_a).sum(), int), np.ones((~in_b).sum(), int)])

        species, want = np.unique(target, return_counts=True)
        for z, count in zip(species, want):  # too many: drop the most crowded
            while (numbers == z).sum() > count:
                ratio = self._crowding(frac, numbers, lattice, context)
                ratio[numbers != z] = np.inf
                keep = np.arange(len(numbers)) != int(np.argmin(ratio))
                frac, numbers, source = frac[keep], numbers[keep], source[keep]
        for z, count in zip(species, want):  # too few: add the most spacious spare site
            while (numbers == z).sum() < count:
                options = np.flatnonzero(spare_numbers == z)
                ratio = self._clearance(spare_frac[options], z, frac, numbers, lattice, context)
                pick = int(options[int(np.argmax(ratio))])
                frac = np.concatenate([frac, spare_frac[pick : pick + 1]])
                numbers = np.append(numbers, z)
                source = np.append(source, spare_source[pick])
                spare_numbers[pick] = -1  # used
        if not (source == 0).any() or not (source == 1).any():
            return None
        order = np.argsort(numbers, kind="stable")
        frac, numbers, source = frac[order], numbers[order], source[order]
        fixed = repair(frac, lattice, min_distance_matrix(numbers, context), rng, self.repair_steps,
                       self.max_expansion)
        if fixed is None:
            return None
        frac, lattice, info = fixed
        origin = {
            "operator": "heredity",
            "axis": axis,
            "slab_fraction": thickness,
            "lattice_weight": weight,
            "shifts": [shift_a.tolist(), shift_b.tolist()],
            "from_parents": [int((source == 0).sum()), int((source == 1).sum())],
            "atom_sources": source.tolist(),
            **info,
        }
        return Candidate(numbers, frac, lattice, spacegroup=None, generator=self.name, origin=origin)

    def lattice_mutation_child(self, a: Evaluated, rng: np.random.Generator,
                               context: GenerationContext) -> Candidate | None:
        """The relaxed structure of ``a`` in the cell ``L (I + ε)`` (rows of ``L`` are the lattice
        vectors; fractional coordinates kept), rescaled to the parent's volume when
        ``preserve_volume``; ``None`` when the overlaps cannot be repaired."""
        e = np.clip(rng.normal(0.0, self.strain_sigma, size=(3, 3)), -1.0, 1.0)
        upper = np.triu(e, 1) / 2.0
        strain = np.diag(np.diag(e)) + upper + upper.T
        parent = a.relaxed
        stretch = float(np.linalg.det(np.eye(3) + strain))
        if stretch <= 0.05:  # inverted or collapsed cell
            return None
        lattice = parent.lattice @ (np.eye(3) + strain)
        scale = stretch ** (-1.0 / 3.0) if self.preserve_volume else 1.0
        lattice = lattice * scale
        fixed = repair(parent.frac, lattice, min_distance_matrix(parent.numbers, context), rng,
                       self.repair_steps, self.max_expansion)
        if fixed is None:
            return None
        frac, lattice, info = fixed
        origin = {"operator": "lattice_mutation", "strain": strain.tolist(), "volume_scale": float(scale),
                  **info}
        return Candidate(parent.numbers.copy(), frac, lattice, spacegroup=None, generator=self.name,
                         origin=origin)

    def permutation_child(self, a: Evaluated, rng: np.random.Generator,
                          context: GenerationContext) -> Candidate | None:
        """The relaxed structure of ``a`` with pairs of unlike atoms swapped (each atom in at most
        one swap; lattice kept); ``None`` for a one-element structure or unrepairable overlaps."""
        parent = a.relaxed
        numbers = parent.numbers.copy()
        if len(np.unique(numbers)) < 2:
            return None
        limit = self.max_swaps if self.max_swaps is not None else max(1, len(numbers) // 4)
        n_swaps = int(rng.integers(1, limit + 1))
        free = np.ones(len(numbers), bool)
        swaps: list[list[int]] = []
        for _ in range(n_swaps):
            has_partner = np.array([free[i] and (free & (parent.numbers != parent.numbers[i])).any()
                                    for i in range(len(numbers))])
            if not has_partner.any():
                break
            i = int(rng.choice(np.flatnonzero(has_partner)))
            j = int(rng.choice(np.flatnonzero(free & (parent.numbers != parent.numbers[i]))))
            numbers[i], numbers[j] = parent.numbers[j], parent.numbers[i]
            free[[i, j]] = False
            swaps.append([i, j])
        # no expansion: a permutation keeps its parent's lattice
        fixed = repair(parent.frac, parent.lattice, min_distance_matrix(numbers, context), rng,
                       self.repair_steps)
        if fixed is None:
            return None
        frac, _, info = fixed
        origin = {"operator": "permutation", "swaps": swaps, **info}
        return Candidate(numbers, frac, parent.lattice.copy(), spacegroup=None, generator=self.name,
                         origin=origin)

    # -- internals ------------------------------------------------------------------------

    def _parent_groups(self, context: GenerationContext) -> list[tuple[np.ndarray, list[int]]]:
        """Per allowed cell size with enough usable entries: the target numbers and the
        selection pool (indices into the population, best first)."""
        groups = []
        for fu in context.formula_units:
            target = target_numbers(context.composition, fu)
            usable = [
                i for i, e in enumerate(context.population)
                if e.ok and np.isfinite(e.enthalpy_per_atom) and e.relaxed.n_atoms == len(target)
                and np.array_equal(np.sort(e.relaxed.numbers), target)
            ]
            if len(usable) < self.min_population:
                continue
            usable.sort(key=lambda i: context.population[i].enthalpy_per_atom)
            n_pool = max(2, int(np.ceil(self.parent_fraction * len(usable))))
            groups.append((target, usable[:n_pool]))
        return groups

    def _operator_probabilities(self, context: GenerationContext) -> tuple[list[str], np.ndarray]:
        shares = dict(self.shares)
        if len(context.composition) < 2:
            shares["permutation"] = 0.0
        if sum(shares.values()) == 0.0:  # permutation only, on one element
            shares = {"heredity": 0.5, "lattice_mutation": 0.5, "permutation": 0.0}
        ops = [k for k in OPERATORS if shares[k] > 0.0]
        probs = np.array([shares[k] for k in ops])
        return ops, probs / probs.sum()

    def _select(self, pool: Sequence[int], rng: np.random.Generator, exclude: int | None = None) -> int:
        """Tournament: the lowest enthalpy of ``tournament_size`` entries drawn from the pool
        (``pool`` is sorted best first, so the winner is the smallest position drawn)."""
        choices = [i for i in pool if i != exclude]
        k = min(self.tournament_size, len(choices))
        drawn = rng.choice(len(choices), size=k, replace=False)
        return choices[int(np.min(drawn))]

    def _breed(self, op: str, target: np.ndarray, pool: list[int], rng: np.random.Generator,
               context: GenerationContext) -> Candidate | None:
        population = context.population
        for attempt in range(1, self.max_attempts + 1):
            first = self._select(pool, rng)
            parents = [first]
            if op == "heredity":
                parents.append(self._select(pool, rng, exclude=first))
                child = self.heredity_child(population[parents[0]], population[parents[1]], target, rng,
                                            context)
            elif op == "lattice_mutation":
                child = self.lattice_mutation_child(population[first], rng, context)
            else:
                child = self.permutation_child(population[first], rng, context)
            if child is None:
                continue
            ids = [_entry_id(population[i]) for i in parents]
            child.origin = {
                "operator": op,
                "parents": parents,
                **({"parent_ids": ids} if any(x is not None for x in ids) else {}),
                "generation": int(context.generation),
                "attempts": attempt,
                **{k: v for k, v in child.origin.items() if k != "operator"},
            }
            return child
        return None

    def _crowding(self, frac: np.ndarray, numbers: np.ndarray, lattice: np.ndarray,
                  context: GenerationContext) -> np.ndarray:
        """Per atom, the smallest (distance / minimum distance) to any atom or image, ``(n,)``."""
        dmin = min_distance_matrix(numbers, context)
        r, _ = _distances(frac, frac, lattice, 2.0 * float(dmin.max()), same=True)
        return np.min(r / dmin, axis=1)

    def _clearance(self, points: np.ndarray, z: int, frac: np.ndarray, numbers: np.ndarray,
                   lattice: np.ndarray, context: GenerationContext) -> np.ndarray:
        """Per point (an atom of species ``z``), the smallest (distance / minimum distance) to
        the atoms ``frac``, capped at 2, ``(n_points,)``."""
        if len(frac) == 0:
            return np.full(len(points), 2.0)
        dmin = min_distance_matrix(np.append(numbers, z), context)[-1, :-1]
        r, _ = _distances(points, frac, lattice, 2.0 * float(dmin.max()), same=False)
        return np.minimum(np.min(r / dmin[None, :], axis=1), 2.0)

    def _seed_generator(self) -> Generator:
        if self._random is None:
            if self.random_generator == "random":
                # the symmetric generator registers itself when its module is imported
                try:
                    importlib.import_module("lamcsp.generators.symmetric")
                except ModuleNotFoundError as exc:
                    if exc.name != "lamcsp.generators.symmetric":
                        raise
            self._random = get_generator(self.random_generator, **self.random_options)
        return self._random

    def _random_candidates(self, n: int, rng: np.random.Generator,
                           context: GenerationContext) -> list[Candidate]:
        from lamcsp.generators.base import is_sampler

        gen = self._seed_generator()
        if context.sample is not None and is_sampler(gen):  # drawn by the search
            out = context.sample(self.random_generator, self.random_options, n)
        else:
            out = gen.propose(n, rng, context)
        for c in out:
            c.origin = {**c.origin, "operator": "random"}
        return out


def _entry_id(entry: Evaluated) -> Any:
    for c in (entry.relaxed, entry.candidate):
        if "id" in c.origin:
            return c.origin["id"]
    return None
