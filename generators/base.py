"""The one representation every generator emits, the generator protocol and its registry.

* :class:`Candidate`: atomic numbers, fractional coordinates and lattice, and where known the
  space group and the Wyckoff assignment (the symmetry-reduced free parameters), convertible to
  the relaxer's batch, ASE ``Atoms`` and pymatgen ``Structure``; plain data (``to_dict`` /
  ``from_dict``) so it can be checkpointed and sent between MPI ranks.
* :class:`GenerationContext`: what a generator may know about the search (composition,
  formula units, space groups, distance matrix, target volume, and for evolutionary
  generators the relaxed population so far).
* :class:`Generator`: ``propose(n, rng, context) -> list[Candidate]``, ``tell(outcomes)``
  (what became of its candidates: :class:`Outcome`), ``state_dict()`` / ``load_state_dict()``
  (what it carries between generations, checkpointed as plain data); :class:`GeneratorBase`
  gives the three for a generator that carries nothing. Registered by name with
  :func:`register`, and also found through the ``lamcsp.generators`` entry-point group so an
  installed package can add one that a campaign file names (:func:`get_generator`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from lamcsp.errors import SetupError

if TYPE_CHECKING:
    from ase import Atoms
    from lamcsp.relax.state import BatchedState
    from pymatgen.core import Structure


@dataclasses.dataclass
class WyckoffSite:
    """One occupied Wyckoff orbit of a candidate.

    Attributes:
        number: atomic number of the species on the orbit.
        index: index of the Wyckoff position in PyXtal's list for the space group
            (0 is the general position).
        label: multiplicity and letter, e.g. ``"4a"``.
        free: the generating point, fractional ``(3,)``; only the position's free
            coordinates matter (the others are fixed by the orbit).
    """

    number: int
    index: int
    label: str
    free: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"number": int(self.number), "index": int(self.index), "label": self.label,
                "free": [float(x) for x in self.free]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WyckoffSite:
        return cls(int(d["number"]), int(d["index"]), str(d["label"]), np.asarray(d["free"], dtype=float))


@dataclasses.dataclass
class Candidate:
    """A proposed structure.

    Attributes:
        numbers: atomic numbers ``(n,)``.
        frac: fractional coordinates ``(n, 3)``.
        lattice: lattice vectors as rows ``(3, 3)``, Å.
        spacegroup: the space group it was built in, if any.
        wyckoffs: the occupied Wyckoff orbits (symmetry-reduced representation), if known.
        generator: name of the generator that made it.
        origin: provenance (parents, particle id, operator...), plain data.
    """

    numbers: np.ndarray
    frac: np.ndarray
    lattice: np.ndarray
    spacegroup: int | None = None
    wyckoffs: list[WyckoffSite] | None = None
    generator: str = ""
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64)
        self.frac = np.asarray(self.frac, dtype=float).reshape(-1, 3)
        self.lattice = np.asarray(self.lattice, dtype=float).reshape(3, 3)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def positions(self) -> np.ndarray:
        """Cartesian positions ``(n, 3)``, Å."""
        return self.frac @ self.lattice

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    def formula(self) -> str:
        from ase.data import chemical_symbols
        from ase.formula import Formula

        return str(Formula("".join(chemical_symbols[z] for z in self.numbers)).format("hill"))

    def to_atoms(self) -> Atoms:
        from ase import Atoms

        atoms = Atoms(numbers=self.numbers, scaled_positions=self.frac, cell=self.lattice, pbc=True)
        atoms.info.update(generator=self.generator)
        if self.spacegroup is not None:
            atoms.info["spacegroup"] = int(self.spacegroup)
        return atoms

    def to_structure(self) -> Structure:
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), self.numbers.tolist(), self.frac)

    @classmethod
    def from_atoms(cls, atoms: Atoms, generator: str = "", **kw: Any) -> Candidate:
        return cls(atoms.numbers.copy(), atoms.get_scaled_positions(wrap=False), np.asarray(atoms.cell),
                   generator=generator, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "numbers": self.numbers.tolist(),
            "frac": self.frac.tolist(),
            "lattice": self.lattice.tolist(),
            "spacegroup": self.spacegroup,
            "wyckoffs": None if self.wyckoffs is None else [w.to_dict() for w in self.wyckoffs],
            "generator": self.generator,
            "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        wy = d.get("wyckoffs")
        return cls(
            np.asarray(d["numbers"]), np.asarray(d["frac"]), np.asarray(d["lattice"]),
            spacegroup=d.get("spacegroup"),
            wyckoffs=None if wy is None else [WyckoffSite.from_dict(w) for w in wy],
            generator=d.get("generator", ""),
            origin=dict(d.get("origin") or {}),
        )


def candidates_to_state(
    candidates: Sequence[Candidate], pressure_gpa: float | Sequence[float] = 0.0, **kw: Any
) -> BatchedState:
    """The relaxer's batch for a list of candidates."""
    from lamcsp.relax.state import from_structures

    return from_structures([c.to_atoms() for c in candidates], pressure_gpa=pressure_gpa, **kw)


@dataclasses.dataclass
class Evaluated:
    """A relaxed candidate as evolutionary generators see it: the candidate it came from, the
    relaxed structure (as a candidate, Lamarckian), and its enthalpy per atom (eV)."""

    candidate: Candidate
    relaxed: Candidate
    enthalpy_per_atom: float
    ok: bool = True


@dataclasses.dataclass
class GenerationContext:
    """What a generator may know about the search.

    Attributes:
        composition: atoms per formula unit, e.g. ``{"Mg": 1, "Si": 1, "O": 3}``.
        formula_units: allowed numbers of formula units per cell.
        spacegroups: allowed space groups (2-230 by default).
        pressure_gpa: the pressure of this search, GPa.
        volume_factor: target volume = this × the sum of the elements' volumes.
        min_distance: ``(Za, Zb) -> Å`` overrides of the minimum-distance matrix (default
            ``distance_factor`` × the sum of covalent radii).
        distance_factor: scale of the default minimum distances.
        element_volumes: ``Z -> Å³`` overrides of the volumes per atom.
        population: the relaxed population so far (evolutionary generators).
        generation: the index of the generation being proposed.
        sample: set by the search: ``sample(name, options, n)`` draws ``n`` independent
            candidates of a :class:`Sampler` generator (``name`` with ``options``) where the
            search draws (on the MPI workers, each from its own stream). A generator that needs
            new random structures (the swarm's new particles, the GA's random share) calls it
            rather than drawing them itself; ``None`` outside a search: draw them locally.
    """

    composition: dict[str, int]
    formula_units: list[int] = dataclasses.field(default_factory=lambda: [1])
    spacegroups: list[int] = dataclasses.field(default_factory=lambda: list(range(2, 231)))
    pressure_gpa: float = 0.0
    volume_factor: float = 1.0
    min_distance: dict[tuple[int, int], float] = dataclasses.field(default_factory=dict)
    distance_factor: float = 0.7
    element_volumes: dict[int, float] = dataclasses.field(default_factory=dict)
    population: list[Evaluated] = dataclasses.field(default_factory=list)
    generation: int = 0
    sample: Callable[[str, dict[str, Any], int], list[Candidate]] | None = None


#: what becomes of a candidate: relaxed (``ok``, or ``failed``), or not relaxed because it failed
#: the distance screen (``screened``), repeats a structure the unit has seen or an earlier
#: candidate (``duplicate``, the similarity screen), lost the energy prescreen
#: (``prescreened``), or lies beyond the relaxation budget (``budget``)
OUTCOMES = ("ok", "failed", "screened", "duplicate", "prescreened", "budget")
#: the outcomes of candidates that were not relaxed
NOT_RELAXED = ("screened", "duplicate", "prescreened", "budget")


@dataclasses.dataclass
class Outcome:
    """What became of one proposed candidate (:data:`OUTCOMES`); for a relaxed one, the relaxed
    structure and its enthalpy per atom (``inf`` when it failed)."""

    candidate: Candidate
    status: str
    relaxed: Candidate | None = None
    enthalpy_per_atom: float = math.inf

    @property
    def was_relaxed(self) -> bool:
        return self.status in ("ok", "failed")


@runtime_checkable
class Generator(Protocol):
    """Proposes candidate structures, and hears what became of them.

    * ``name``: how campaign files refer to it.
    * ``propose(n, rng, context)``: at most ``n`` candidates; randomness only from ``rng``
      (same seed, same candidates); no files, MPI or printing.
    * ``tell(outcomes)``: after each ``propose``, the search tells it what became of its
      candidates (:class:`Outcome`): those not relaxed right after the screens and the
      prescreen (so a generator that waits for results, the swarm, stops waiting), the relaxed
      ones once relaxed. Their relaxed structures also join ``context.population``.
    * ``state_dict()`` / ``load_state_dict(state)``: what it carries from one generation to the
      next, as plain data (JSON); checkpointed after every generation and restored by
      ``--resume``.

    A generator with an ``oversample`` attribute K > 1 is asked for K × its share; the search
    evaluates the model once at the starts of its candidates (except those whose ``origin``
    has ``prescreen: False``) and relaxes the lowest in enthalpy.
    """

    name: str

    def propose(self, n: int, rng: np.random.Generator, context: GenerationContext) -> list[Candidate]: ...

    def tell(self, outcomes: Sequence[Outcome]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Sampler(Protocol):
    """A generator whose candidates are independent draws (symmetric random search): one
    candidate from one RNG stream, reading nothing but the context's composition, cells,
    distances and volumes (never ``context.population``), and changing no state.

    The search gives every candidate of such a generator its own stream
    (:func:`lamcsp.units.candidate_rng`) and draws them wherever it likes, on the MPI workers
    included, so one seed gives the same candidates on any number of ranks; ``propose`` is
    still what a user or a test calls.
    """

    def draw(self, rng: np.random.Generator, context: GenerationContext) -> Candidate | None: ...


def is_sampler(generator: Any) -> bool:
    """Whether the search may draw ``generator``'s candidates one by one with :meth:`Sampler.draw`:
    it has one, from its own class or one below the class whose ``propose`` it uses (a subclass
    that changes ``propose`` but inherits ``draw`` is asked through ``propose``)."""
    if not isinstance(generator, Sampler):
        return False
    mro = type(generator).__mro__

    def owner(name: str) -> type:
        return next((k for k in mro if name in k.__dict__), object)

    return issubclass(owner("draw"), owner("propose"))


class GeneratorBase:
    """A base for generators that carry nothing between generations: ``tell`` ignores the
    outcomes and the state is empty. Subclasses set ``name`` and write ``propose``."""

    name: str = ""

    def propose(self, n: int, rng: np.random.Generator, context: GenerationContext) -> list[Candidate]:
        raise NotImplementedError

    def tell(self, outcomes: Sequence[Outcome]) -> None:
        """Nothing to learn: the outcomes are ignored."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


#: the methods of the protocol (a generator that lacks one is refused by :func:`get_generator`)
PROTOCOL_METHODS = ("propose", "tell", "state_dict", "load_state_dict")


_REGISTRY: dict[str, Callable[..., Generator]] = {}
ENTRY_POINT_GROUP = "lamcsp.generators"


def register(name: str) -> Callable[[Callable[..., Generator]], Callable[..., Generator]]:
    """Class decorator: make a generator available by ``name``."""

    def deco(factory: Callable[..., Generator]) -> Callable[..., Generator]:
        _REGISTRY[name] = factory
        return factory

    return deco


def available_generators() -> dict[str, Any]:
    """Built-in factories and entry points (loaded lazily by :func:`get_generator`) by
    name; entry points do not shadow built-ins."""
    from importlib.metadata import entry_points

    found: dict[str, Any] = dict(_REGISTRY)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            found[ep.name] = ep  # loaded lazily by get_generator
    return found


def get_generator(name: str, **options: Any) -> Generator:
    """A generator instance by name, with its options.

    Raises:
        SetupError: unknown name (the message lists the known ones), an entry point that fails
            to load, bad options, or an object that does not implement the protocol.
    """
    found = available_generators()
    if name not in found:
        raise SetupError("generator", f"unknown generator {name!r}; known: {', '.join(sorted(found))}")
    factory = found[name]
    if hasattr(factory, "load") and not isinstance(factory, type):
        try:
            factory = factory.load()
        except Exception as exc:
            raise SetupError(
                "generator", f"generator {name!r} failed to load from its entry point: {exc}"
            ) from exc
    try:
        gen = factory(**options)
    except TypeError as exc:
        raise SetupError("generator", f"bad options for generator {name!r}: {exc}") from exc
    missing = [m for m in PROTOCOL_METHODS if not callable(getattr(gen, m, None))]
    if missing or not isinstance(getattr(gen, "name", None), str):
        what = ", ".join(f"{m}()" for m in missing) or "a name"
        kind = f"{type(gen).__module__}.{type(gen).__name__}"
        raise SetupError("generator", f"generator {name!r} ({kind}) lacks {what} of the Generator "
                                      "protocol; subclass "
                                      "lamcsp.generators.GeneratorBase (which gives tell, state_dict and "
                                      "load_state_dict for a generator that carries nothing) or write them")
    return gen
