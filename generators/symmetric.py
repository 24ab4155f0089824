"""The symmetric random generator (the CALYPSO / AIRSS / PyXtal workhorse).

For each structure :class:`SymmetricRandom` draws

1. a number of formula units ``Z`` uniformly among the allowed ones that at least one allowed
   space group can hold, then a space group among those that hold ``Z`` formula units
   (screened exactly and up front by :func:`lamcsp.generators.wyckoff.can_hold`, never by
   trial and error): uniformly (AIRSS, PyXtal, CALYPSO), or with ``group_weights=
   "point_group"`` in proportion to the order of its point group;
2. a Wyckoff assignment (:func:`lamcsp.generators.wyckoff.random_assignment`), or, with
   probability ``special``, one of the group's assignments with the fewest free coordinates.
   Both are a prior for symmetry (off by default; ``benchmarks/csp_success.py --methods
   random,random_prior`` measures it): most small-cell ground states have every atom on a fixed
   special position in a group of high point-group order, while most of the groups that can
   hold a composition have a low one;
3. a lattice of the group's crystal system at the target volume (below);
4. the free coordinates of each orbit, site by site: an orbit is built with the group's
   compiled operations and checked (within itself and against the atoms placed so far, all
   periodic images) against the minimum-distance matrix
   (:func:`lamcsp.kernels.distances.orbit_clear`); a site is redrawn up to ``SITE_TRIES``
   times, then the lattice is redrawn; after ``LATTICES_PER_ASSIGNMENT`` lattices the Wyckoff
   assignment is redrawn, after ``ASSIGNMENTS_PER_GROUP`` assignments the space group. Sites
   without free coordinates are placed first, then the others by decreasing multiplicity.
   This loop is one numba call.
5. a screen for symmetry beyond the group (:func:`has_extra_symmetry`: extra translations, or
   lattice rotations outside the point group, as spglib would find at ``symprec=0.01``):
   special positions, or a single orbit of one species, often combine into a larger group
   (Si8 on 8c of Im-3m is Pm-3m), and such structures are drawn again. It costs microseconds
   where spglib takes 0.3-20 ms, so rejections stay cheap;
6. spglib (``symprec=0.01``) on the survivor: it must report the requested group, or the
   structure is drawn again (``verify=True``; after the screen this has not been seen to
   reject anything).

``max_attempts`` counts lattices per structure. Space groups whose only arrangements have a
larger group (45 of the 205 that hold Si8 by multiplicity) are left after
``ASSIGNMENTS_PER_GROUP`` draws, so emitted structures are spread over the groups that can
really carry the composition.

Defaults, each overridable through :class:`~lamcsp.generators.base.GenerationContext`:

* minimum distance of a pair: ``distance_factor × (r_cov(a) + r_cov(b))`` with ASE's covalent
  radii (``ase.data.covalent_radii``), or ``context.min_distance[(Za, Zb)]``;
* volume per atom: PyXtal's element volumes, the mean of the covalent-sphere and the van der
  Waals-sphere volumes ``4π/3 (r_cov³ + r_vdW³) / 2`` with PyXtal's radii (the mean of the
  volume PyXtal draws), or ``context.element_volumes[Z]``; the target cell volume is their
  sum times ``volume_factor`` (the generator option, else ``context.volume_factor``). Every
  lattice is drawn at exactly the target volume.

The parts live beside this module, which holds the generator (:class:`SymmetricRandom`):
:mod:`lamcsp.generators.lattice` (lattices, their shapes and parameters; primitive cells of
centred groups), :mod:`lamcsp.generators.placement` (the compiled orbits and the placement
kernel), :mod:`lamcsp.generators.extra_symmetry` (the screen of step 5),
:mod:`lamcsp.generators.symmetric_prior` (the symmetry priors), :mod:`lamcsp.generators.elements`
(element volumes) and :mod:`lamcsp.generators.symmetry_vector` (the symmetry-reduced vector of a
candidate, for the particle swarm). Their names stay importable from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Each import below also keeps the names that lived in this module before it was split
# importable from it (tests, benchmarks, the swarm and plug-ins import them from here).
from lamcsp.generators.base import Candidate, GenerationContext, GeneratorBase, WyckoffSite, register
from lamcsp.generators.elements import _parse_composition, _symbol, default_element_volume  # noqa: F401
from lamcsp.generators.extra_symmetry import (  # noqa: F401
    _UNIT,
    SYMPREC,
    _extra_symmetry,
    _lattice_rotations,
    _maps,
    _point_group,
    _wrapped_norm2,
    has_extra_symmetry,
    has_extra_symmetry_reference,
)
from lamcsp.generators.lattice import (  # noqa: F401
    _CENTRING_POINTS,
    _N_PARAMS,
    _code,
    _draw_params,
    _lattice_letters,
    _matrix,
    _read_params,
    centring_multiplicity,
    centring_transform,
    conventional_lattice,
    is_primitive_cell,
    lattice_from_params,
    lattice_params,
    primitive_indices,
    to_primitive,
)
from lamcsp.generators.placement import _build, _Compiled, _compiled, _orbit, _orbits  # noqa: F401
from lamcsp.generators.symmetric_prior import (  # noqa: F401
    MP_PRIOR,
    MP_PSEUDOCOUNT,
    MP_WYCKOFF_SHARE,
    SMALL_CELL_PRIOR,
    _mp_counts,
    _mp_wyckoff_sets,
    fewest_dof_assignments,
    group_weight,
    mp_assignments,
    mp_group_count,
)
from lamcsp.generators.symmetry_vector import (  # noqa: F401
    _template_compiled,
    from_vector,
    to_vector,
    vector_labels,
    vector_size,
)
from lamcsp.generators.wyckoff import (  # noqa: F401
    LATTICE_TYPES,
    can_hold,
    feasible_assignments,
    random_assignment,
    space_group,
)
from lamcsp.kernels.distances import image_range, orbit_clear  # noqa: F401

from lamcsp.errors import SetupError

#: tries for one site's free coordinates before the lattice is redrawn
SITE_TRIES = 10
#: lattices drawn for one Wyckoff assignment before it is redrawn
LATTICES_PER_ASSIGNMENT = 8
#: Wyckoff assignments drawn for one space group before it is redrawn
ASSIGNMENTS_PER_GROUP = 10
#: extra ``max_attempts`` budgets for the first structure of a call before the request is
#: declared impossible
FIRST_FAILURE_RETRIES = 9
#: densest packing of equal spheres (Kepler): no cell can hold more
_MAX_PACKING = math.pi / math.sqrt(18.0)


# --- the generator ----------------------------------------------------------------------------


def check_oversample(oversample: Any) -> int:
    """``oversample`` (of ``random`` and of the swarm) as an int ≥ 1."""
    if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)) or oversample < 1:
        raise SetupError("oversample", f"must be an integer >= 1, got {oversample!r}")
    return int(oversample)


def check_no_oversample(random_options: dict[str, Any], owner: str, own: bool = False) -> None:
    """``oversample`` is read by the search from the generators of a campaign; in another
    generator's ``random_options`` it would do nothing, so it is an error there (``own``: the
    owner has an ``oversample`` option of its own, named in the message)."""
    if random_options.get("oversample", 1) != 1:
        where = (f"give it as the {owner}'s own option, next to random_options" if own
                 else f"the {owner}'s new structures are not prescreened")
        raise SetupError("random_options", "oversample in random_options would do nothing: the search "
                                           f"prescreens a generator's own draws ({where})")


class _Plan:
    """Everything :meth:`SymmetricRandom.propose` derives from the options and context."""

    def __init__(self, gen: SymmetricRandom, context: GenerationContext):
        from ase.data import covalent_radii

        per_fu = _parse_composition(context.composition)
        self.species = tuple(per_fu)
        fus = gen.formula_units if gen.formula_units is not None else context.formula_units
        if not fus:
            raise SetupError("formula_units", "no formula units given; give e.g. [1, 2, 4]")
        for z in fus:
            if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or z < 1:
                raise SetupError("formula_units", f"formula units are positive integers, got {z!r}")
        sgs = gen.spacegroups if gen.spacegroups is not None else context.spacegroups
        if not sgs:
            raise SetupError("spacegroups", "no space groups given; give numbers 1-230")
        for sg in sgs:
            if isinstance(sg, bool) or not isinstance(sg, (int, np.integer)) or not 1 <= sg <= 230:
                raise SetupError("spacegroups", f"space groups are integers 1-230, got {sg!r}")
        sgs = sorted({int(s) for s in sgs})
        self.all_groups = sgs
        vf = gen.volume_factor if gen.volume_factor is not None else context.volume_factor
        if not (isinstance(vf, (int, float)) and math.isfinite(vf) and vf > 0):
            raise SetupError("volume_factor", f"must be a positive number, got {vf!r}")

        # (Z, [space groups holding Z formula units]); in primitive cells a centred group's
        # conventional cell holds Z x (its lattice points) formula units
        cell = gen.cell
        self.choices: list[tuple[int, list[int]]] = []
        for fu in sorted({int(z) for z in fus}):
            ok = [sg for sg in sgs
                  if can_hold(sg, [n * fu * (centring_multiplicity(sg) if cell == "primitive" else 1)
                                   for n in per_fu.values()])]
            if ok:
                self.choices.append((fu, ok))
        self.cell = cell
        self.per_fu = per_fu
        #: each choice's group weights, normalised (``group_weights`` other than ``"uniform"``)
        self.weights = [w / w.sum() for w in (np.array(
            [group_weight(sg) if gen.group_weights == "point_group"
             else mp_group_count(sg, self._conventional_atoms(fu, sg)) + MP_PSEUDOCOUNT for sg in ok],
            dtype=float) for fu, ok in self.choices)]
        if not self.choices:
            formula = "".join(f"{_symbol(z)}{n}" for z, n in per_fu.items())
            raise SetupError(
                "spacegroups",
                f"no allowed space group can hold composition {formula} x {sorted(set(fus))} formula "
                f"units (space groups {_ranges(sgs)}); the Wyckoff multiplicities of these groups "
                "cannot add up to the atom counts. Allow more space groups or other formula units.",
            )

        # minimum-distance matrix (species order) and volumes
        k = len(self.species)
        cut = np.empty((k, k))
        for i, za in enumerate(self.species):
            for j, zb in enumerate(self.species):
                d = context.min_distance.get((za, zb), context.min_distance.get((zb, za)))
                if d is None:
                    d = context.distance_factor * (covalent_radii[za] + covalent_radii[zb])
                if not (math.isfinite(d) and d >= 0):
                    raise SetupError("min_distance",
                                     f"{_symbol(za)}-{_symbol(zb)}: must be >= 0 Å, got {d!r}")
                cut[i, j] = d
        self.cut = cut
        self.cut2 = np.ascontiguousarray(cut**2)
        self.cutmax = float(cut.max())
        vols = []
        for z in self.species:
            v = context.element_volumes.get(z, default_element_volume(z))
            if not (math.isfinite(v) and v > 0):
                raise SetupError("element_volumes", f"{_symbol(z)}: must be > 0 Å^3, got {v!r}")
            vols.append(v)
        self.volume_per_fu = float(vf * sum(v * n for v, n in zip(vols, per_fu.values())))

        # Kepler bound: spheres of radius min_k d_ik / 2 around the atoms are disjoint
        packed = sum(n * 4.0 / 3.0 * math.pi * (cut[i].min() / 2.0) ** 3
                     for i, n in enumerate(per_fu.values()))
        if packed > _MAX_PACKING * self.volume_per_fu:
            raise SetupError(
                "min_distance",
                f"the minimum distances ({self.describe_distances()}) cannot fit at the target volume "
                f"of {self.volume_per_fu:.1f} Å^3 per formula unit: even the densest sphere packing "
                f"needs {packed / _MAX_PACKING:.1f} Å^3. Lower min_distance/distance_factor or raise "
                "volume_factor/element_volumes.",
            )

    def _conventional_atoms(self, fu: int, sg: int) -> int:
        """Atoms in the conventional cell of ``sg`` holding ``fu`` formula units."""
        lattice_points = centring_multiplicity(sg) if self.cell == "primitive" else 1
        return fu * lattice_points * sum(self.per_fu.values())

    def draw_group(self, rng: np.random.Generator, group_weights: str) -> tuple[int, int]:
        """Formula units (uniformly) and a space group holding them, uniformly or by
        :func:`group_weight` (``group_weights``)."""
        k = int(rng.integers(len(self.choices)))
        fu, sgs = self.choices[k]
        if group_weights == "uniform":
            return fu, sgs[int(rng.integers(len(sgs)))]
        return fu, sgs[int(rng.choice(len(sgs), p=self.weights[k]))]

    def describe_distances(self) -> str:
        parts = []
        for i, za in enumerate(self.species):
            for j in range(i, len(self.species)):
                parts.append(f"{_symbol(za)}-{_symbol(self.species[j])} {self.cut[i, j]:.2f} Å")
        return ", ".join(parts)


def _ranges(values: Sequence[int]) -> str:
    out, vals = [], sorted(values)
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(out)


@register("random")
class SymmetricRandom(GeneratorBase):
    """Random structures with a chosen space group and Wyckoff assignment (module docstring).

    Args:
        spacegroups: allowed space groups (default: ``context.spacegroups``).
        formula_units: allowed formula units per cell (default: ``context.formula_units``).
        volume_factor: target volume = this × the sum of element volumes (default:
            ``context.volume_factor``).
        max_attempts: lattices drawn per structure before giving up on it. When the first
            structure of a call fails ``1 + FIRST_FAILURE_RETRIES`` times, the request is taken
            as impossible and :class:`~lamcsp.errors.SetupError` is raised; later failures are skipped (fewer
            than ``n`` candidates are returned).
        verify: check every structure's space group with spglib (``symprec=0.01``) and
            redraw it when it differs.
        cell: ``"primitive"`` (default): formula units count the primitive cell, so a centred
            group (A, B, C, I: 2 lattice points, R: 3, F: 4) builds its conventional cell with
            that many times the formula units and emits the primitive cell (``origin["cell"] ==
            "primitive"``; rocksalt NaCl is a 2-atom Fm-3m candidate); ``"conventional"``:
            formula units count the conventional cell (PyXtal's ``numIons``), as emitted.
        group_weights: how a space group is drawn among those that hold the formula units:
            ``"uniform"`` (default; AIRSS, PyXtal and CALYPSO draw so), or ``"point_group"``:
            in proportion to the order of its point group (1 for P1 up to 48 for m-3m), a prior
            for the high symmetry of small-cell ground states (see :func:`group_weight`), or
            ``"mp"``: in proportion to how many known crystals (PyXtal's Materials Project
            statistics, :func:`mp_group_count`) have that group with as many atoms in the
            conventional cell, plus ``MP_PSEUDOCOUNT``.
        special: probability that a structure's Wyckoff assignment is drawn among the
            group's assignments with the fewest free coordinates (uniformly among those),
            instead of by :func:`~lamcsp.generators.wyckoff.random_assignment` (default 0).
            Once such a draw comes out with a higher symmetry than its group, the group's
            remaining tries use the usual draw, so the option does not move structures away
            from the groups whose special positions combine into larger ones.
        wyckoff_weights: ``"uniform"`` (default): Wyckoff assignments as above; ``"mp"``:
            ``MP_WYCKOFF_SHARE`` of them drawn among the group's assignments whose Wyckoff set
            (positions, whatever the species) known crystals of that group and conventional-cell
            size have (PyXtal's Materials Project statistics), in proportion to how many
            (:func:`mp_assignments`); where none has, the usual draw.
        oversample: candidates drawn per structure relaxed (default 1: each one drawn is
            relaxed). Above 1 the search evaluates the model once at each start (batched, not
            counted as relaxations) and relaxes those with the lowest enthalpy per atom
            (:func:`lamcsp.stages.prescreen`), lowest first: random starts whose atoms
            sit badly cost a model call instead of a relaxation.
    """

    name = "random"

    def __init__(
        self,
        spacegroups: list[int] | None = None,
        formula_units: list[int] | None = None,
        volume_factor: float | None = None,
        max_attempts: int = 200,
        verify: bool = True,
        cell: str = "primitive",
        group_weights: str = "uniform",
        special: float = 0.0,
        oversample: int = 1,
        wyckoff_weights: str = "uniform",
    ):
        if cell not in ("primitive", "conventional"):
            raise SetupError("cell", f"must be 'primitive' or 'conventional', got {cell!r}")
        if group_weights not in ("uniform", "point_group", "mp"):
            raise SetupError("group_weights",
                             f"must be 'uniform', 'point_group' or 'mp', got {group_weights!r}")
        if (isinstance(special, bool) or not isinstance(special, (int, float))
                or not 0.0 <= float(special) <= 1.0):
            raise SetupError("special", f"must be a probability within [0, 1], got {special!r}")
        self.oversample = check_oversample(oversample)
        self.cell = cell
        self.group_weights = group_weights
        self.special = float(special)
        if wyckoff_weights not in ("uniform", "mp"):
            raise SetupError("wyckoff_weights", f"must be 'uniform' or 'mp', got {wyckoff_weights!r}")
        self.wyckoff_weights = wyckoff_weights
        if (isinstance(max_attempts, bool) or not isinstance(max_attempts, (int, np.integer))
                or max_attempts < 1):
            raise SetupError("max_attempts", f"must be a positive integer, got {max_attempts!r}")
        # validated, with the context's, when a call starts (one error path for both)
        self.spacegroups = None if spacegroups is None else list(spacegroups)
        self.formula_units = None if formula_units is None else list(formula_units)
        self.volume_factor = volume_factor
        self.max_attempts = int(max_attempts)
        self.verify = bool(verify)
        #: counters since construction: structures built, lattices drawn, assignments drawn,
        #: structures rejected by the extra-symmetry screen and by spglib, structures given up
        self.stats: dict[str, int] = dict.fromkeys(
            ("built", "lattices", "assignments", "rejected_symmetry", "rejected_spglib", "failed"), 0)
        self._plans: dict[tuple[Any, ...], _Plan] = {}  # draw()'s plans by context

    def propose(self, n: int, rng: np.random.Generator, context: GenerationContext) -> list[Candidate]:
        """Up to ``n`` random symmetric candidates.

        Args:
            n: number of candidates wanted.
            rng: the only source of randomness (same state, same candidates).
            context: composition, formula units, space groups, distances and volumes.

        Returns:
            Candidates with ``spacegroup``, ``wyckoffs`` and ``origin["formula_units"]``; atoms
            site by site in the order of ``wyckoffs``, species in the order of the composition.

        Raises:
            SetupError: bad options or context; a composition no allowed space group can hold,
                or only in arrangements of higher symmetry (``"spacegroups"``); minimum
                distances that cannot fit (``"min_distance"``).
        """
        plan = _Plan(self, context)
        out: list[Candidate] = []
        for _ in range(int(n)):
            tally = {"lattices": 0, "placed": 0, "symmetry": 0}
            cand = self._one(plan, rng, tally)
            for _ in range(FIRST_FAILURE_RETRIES if not out else 0):
                if cand is not None:
                    break
                # before calling the request impossible, give it more tries: small cells of
                # many species often land in a larger group (AB3 in 4 atoms)
                cand = self._one(plan, rng, tally)
            if cand is not None:
                out.append(cand)
                continue
            self.stats["failed"] += 1
            if out:
                continue  # an unlucky structure; the request itself is possible
            groups = _ranges(plan.all_groups)
            if tally["placed"] * 2 < tally["lattices"]:
                also = (f" (the {tally['placed']} that did had a higher symmetry than their group)"
                        if tally["placed"] else "")
                raise SetupError(
                    "min_distance",
                    f"no structure could be built: in {tally['lattices']} lattices the minimum distances "
                    f"({plan.describe_distances()}) fitted {tally['placed']} times{also}, at the target "
                    f"volume of {plan.volume_per_fu:.1f} Å^3 per formula unit in space groups {groups}. "
                    "Lower min_distance/distance_factor, raise volume_factor, or allow more space groups.",
                )
            raise SetupError(
                "spacegroups",
                f"every structure placed in space groups {groups} ({tally['symmetry']} in "
                f"{tally['lattices']} lattices) had a higher symmetry than its group: the Wyckoff orbits "
                "that hold this composition there only form structures of a larger group. Allow more "
                "space groups or other formula units.",
            )
        return out

    def draw(self, rng: np.random.Generator, context: GenerationContext) -> Candidate | None:
        """One candidate from ``rng`` alone (the :class:`~lamcsp.generators.base.Sampler`
        protocol: the search gives each candidate its own stream and draws them on its
        workers), or ``None`` where ``max_attempts`` lattices held none.

        Raises:
            SetupError: bad options or context (as :meth:`propose`).
        """
        key = (tuple(sorted(context.composition.items())), tuple(context.formula_units),
               tuple(context.spacegroups), context.volume_factor, context.distance_factor,
               tuple(sorted(context.min_distance.items())), tuple(sorted(context.element_volumes.items())))
        plan = self._plans.get(key)
        if plan is None:  # the plan is the same for every draw of a unit: built once per worker
            plan = self._plans[key] = _Plan(self, context)
        cand = self._one(plan, rng, {"lattices": 0, "placed": 0, "symmetry": 0})
        if cand is None:
            self.stats["failed"] += 1
        return cand

    def _one(self, plan: _Plan, rng: np.random.Generator, tally: dict[str, int]) -> Candidate | None:
        import spglib

        left = self.max_attempts
        while left > 0:
            fu, sg = plan.draw_group(rng, self.group_weights)
            lattice_points = centring_multiplicity(sg) if plan.cell == "primitive" else 1
            conv_fu = fu * lattice_points
            counts = {z: n * conv_fu for z, n in plan.per_fu.items()}
            # the fewest-coordinate assignments are left for the group once one of them comes out
            # with a higher symmetry (often all of them do): else ``special`` would move the draw
            # away from the groups whose special positions combine into larger groups
            special = self.special
            for _ in range(ASSIGNMENTS_PER_GROUP):
                if left <= 0:
                    break
                drew_special = special > 0.0 and rng.random() < special
                known: tuple[Any, np.ndarray] = ((), np.empty(0))
                if not drew_special and self.wyckoff_weights == "mp" and rng.random() < MP_WYCKOFF_SHARE:
                    known = mp_assignments(sg, tuple(counts.items()))
                if drew_special:
                    fewest = fewest_dof_assignments(sg, tuple(counts.items()))
                    assignment = fewest[int(rng.integers(len(fewest)))]
                elif known[0]:
                    assignment = known[0][int(rng.choice(len(known[0]), p=known[1]))]
                else:
                    assignment = tuple(random_assignment(sg, counts, rng))
                comp = _compiled(sg, assignment, plan.species)
                self.stats["assignments"] += 1
                frac = np.empty((comp.n_atoms, 3))
                points = np.zeros((len(comp.site_mult), 3))
                params = np.empty(6)
                used = _build(rng, comp.code, plan.volume_per_fu * conv_fu, comp.ops, comp.site_start,
                              comp.site_mult, comp.site_dof, comp.site_species, comp.order, plan.cut2,
                              plan.cutmax, SITE_TRIES, min(LATTICES_PER_ASSIGNMENT, left),
                              frac, points, params)
                left -= abs(used)
                self.stats["lattices"] += abs(used)
                tally["lattices"] += abs(used)
                if used < 0:
                    continue
                tally["placed"] += 1
                lattice = _matrix(comp.code, params[: _N_PARAMS[comp.code]])
                frac = frac[comp.perm]
                if _extra_symmetry(frac, comp.atom_species, lattice, comp.pg_rots, comp.centring, SYMPREC):
                    self.stats["rejected_symmetry"] += 1
                    tally["symmetry"] += 1
                    if drew_special:
                        special = 0.0
                    continue
                if self.verify:
                    cell: Any = (lattice, frac, comp.numbers)
                    data = spglib.get_symmetry_dataset(cell, symprec=SYMPREC)
                    if data is None or int(data.number) != sg:
                        self.stats["rejected_spglib"] += 1
                        tally["symmetry"] += 1
                        continue
                self.stats["built"] += 1
                sites = [WyckoffSite(z, i, lab, points[s].copy())
                         for s, (z, i, lab) in enumerate(zip(comp.site_numbers, comp.indices, comp.labels))]
                origin: dict[str, Any] = {"formula_units": fu}
                numbers = comp.numbers.copy()
                if lattice_points > 1:
                    keep, frac, lattice = to_primitive(frac, lattice, sg)
                    numbers = numbers[keep]
                    origin["cell"] = "primitive"
                return Candidate(numbers, frac, lattice, spacegroup=sg, wyckoffs=sites,
                                 generator=self.name, origin=origin)
        return None
