"""The search's sections of a campaign: what to search (``system``), who proposes
(``generators``), the potential (``model``), relaxation, duplicate removal, stopping, the
report and MPI sharing. Each key's default is written here once; code elsewhere reads it
(:meth:`~lamcsp.campaign.base.Section.default_of`)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationInfo, field_validator, model_validator

from lamcsp.campaign import forms
from lamcsp.campaign.base import Int, Section, field, invalid, type_name

PRESSURE_RANGE_GPA = (-50.0, 1000.0)
#: limits of what a campaign may ask for, checked up front: a larger value is a typo, or a cell
#: that lamcsp cannot build (spglib and the generators work on cells of this size at most)
MAX_CELL_ATOMS = 1000
#: elements of a fixed composition at most (a cell of that many species is already beyond what
#: random symmetric generation fills sensibly, and every species is a model call's element row)
MAX_SPECIES = 10
#: elements of a variable composition at most: its convex hull is pymatgen's phase diagram in
#: (elements - 1) dimensions, whose qhull cost grows steeply beyond a quinary
MAX_VARIABLE_SPECIES = 6
#: atom-count combinations a variable composition may span (the product of its ranges), which
#: are enumerated to find its reduced compositions
MAX_COMPOSITION_GRID = 10_000_000
MAX_VOLUME_FACTOR = 10.0
MAX_DISTANCE_FACTOR = 5.0
MAX_STEPS = 1_000_000
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def _base_dir(info: ValidationInfo) -> str | None:
    """What relative paths are relative to: the campaign file's directory when a campaign is
    parsed (:func:`~lamcsp.campaign.parse.parse_campaign` passes it as context); None when a
    section is built in code, whose paths are taken as given."""
    return (info.context or {}).get("base_dir")


def _resolve(path: str, base_dir: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


class SystemSpec(Section):
    """What to search: a fixed composition (``composition`` + ``formula_units``) or a variable
    one (``variable`` + ``max_atoms``), at one or several pressures."""

    composition: dict[str, int] | None = field(
        type="formula or {element: count}",
        doc="fixed composition of one formula unit, e.g. `MgSiO3` or `{Mg: 1, Si: 1, O: 3}`; "
            "give this or `variable`")
    formula_units: tuple[int, ...] = field(
        factory=lambda: (1,), type="int, list of ints, or range `\"1-4\"`",
        doc="formula units per cell (positive, ascending)")
    variable: dict[str, tuple[int, int]] | None = field(
        type="{element: [min, max]}",
        doc="variable composition: atoms of each element per cell, e.g. `{Mg: [1, 2], O: [1, 3]}`; "
            "needs `max_atoms`")
    max_atoms: Int | None = field(
        type=f"int in [1, {MAX_CELL_ATOMS}] or null", doc="largest cell, in atoms (required with `variable`)",
        ge=1, le=MAX_CELL_ATOMS)
    pressures: tuple[float, ...] = field(
        factory=lambda: (0.0,), type="number or list of numbers",
        doc=f"pressure(s) of the search, GPa, each in [{PRESSURE_RANGE_GPA[0]:g}, "
            f"{PRESSURE_RANGE_GPA[1]:g}]; one search per pressure")
    spacegroups: tuple[int, ...] = field(
        factory=lambda: tuple(range(2, 231)), type="list or ranges `\"2-230\"`",
        doc="space groups random structures are drawn from (1-230)")
    distance_factor: float = field(
        0.7, type=f"number in (0, {MAX_DISTANCE_FACTOR:g}]", gt=0, le=MAX_DISTANCE_FACTOR,
        doc="minimum interatomic distance of generated structures, as a fraction of the sum of "
            "covalent radii (AIRSS MINSEP, CALYPSO DistanceOfIon)")
    volume_factor: float = field(
        1.0, type=f"number in (0, {MAX_VOLUME_FACTOR:g}]", gt=0, le=MAX_VOLUME_FACTOR,
        doc="target volume of generated structures, as a multiple of the sum of the elements' volumes")
    references: dict[str, str] = field(
        factory=dict, type="{element: structure file}",
        doc="elemental reference structures (CIF, POSCAR, extxyz; relative to the campaign file), "
            "relaxed at every pressure, for formation enthalpies; elements without one are "
            "searched as end members of a variable composition")

    # the YAML forms (formula text, "1-4" ranges, a scalar pressure) become the schema's types
    # before pydantic's strict check of them
    @field_validator("composition", mode="before")
    @classmethod
    def _composition(cls, value: Any) -> Any:
        return None if value is None else forms.composition(value)

    @field_validator("variable", mode="before")
    @classmethod
    def _variable(cls, value: Any) -> Any:
        return None if value is None else forms.element_ranges(value)

    @field_validator("formula_units", mode="before")
    @classmethod
    def _formula_units(cls, value: Any) -> tuple[int, ...]:
        return forms.int_ranges(value, 1, 10_000, "1-4")

    @field_validator("spacegroups", mode="before")
    @classmethod
    def _spacegroups(cls, value: Any) -> tuple[int, ...]:
        return forms.int_ranges(value, 1, 230, "2-230")

    @field_validator("pressures", mode="before")
    @classmethod
    def _pressures(cls, value: Any) -> tuple[float, ...]:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise invalid("must not be empty; give a number or a list, GPa")
        lo, hi = PRESSURE_RANGE_GPA
        out = tuple(forms.number(v) for v in values)
        for x in out:
            if not lo <= x <= hi:
                raise invalid(f"{x:g} GPa is outside the allowed range [{lo:g}, {hi:g}] GPa")
        return out

    @field_validator("references", mode="before")
    @classmethod
    def _references(cls, value: Any, info: ValidationInfo) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise invalid(f"must be a mapping {{element: structure file}}, got {type_name(value)} {value!r}")
        elements = list(info.data.get("composition") or info.data.get("variable") or {})
        base_dir = _base_dir(info)
        out: dict[str, str] = {}
        for symbol, path in value.items():
            sub = str(symbol)
            forms.element(symbol, sub)
            if symbol not in elements:
                raise invalid(f"{symbol} is not an element of the system ({', '.join(elements)})", sub)
            if not isinstance(path, str) or not path:
                raise invalid(f"must be a structure file path, got {type_name(path)} {path!r}", sub)
            if base_dir is not None:
                path = _resolve(path, base_dir)
                if not os.path.isfile(path):
                    raise invalid(f"structure file {path} does not exist (paths are relative to the "
                                  "campaign file)", sub)
            out[symbol] = path
        return out

    @model_validator(mode="after")
    def _one_system(self) -> SystemSpec:
        # no composition at all is the schema's default (Campaign()); parse_campaign requires one
        if self.composition is not None and self.variable is not None:
            raise invalid("give either system.composition (fixed) or system.variable (variable "
                          "composition), not both", "variable")
        if self.composition is not None and len(self.composition) > MAX_SPECIES:
            raise invalid(f"{len(self.composition)} elements; lamcsp searches at most {MAX_SPECIES} in a "
                          "fixed composition", "composition")
        if self.variable is not None:
            if len(self.variable) > MAX_VARIABLE_SPECIES:
                raise invalid(f"{len(self.variable)} elements; a variable composition spans at most "
                              f"{MAX_VARIABLE_SPECIES} (its convex hull is a phase diagram in one dimension "
                              "fewer)", "variable")
            grid = math.prod(hi - lo + 1 for lo, hi in self.variable.values())
            if grid > MAX_COMPOSITION_GRID:
                raise invalid(f"the ranges span {grid:.3g} atom-count combinations, above the limit of "
                              f"{MAX_COMPOSITION_GRID:.0e}; narrow them (with max_atoms they are what the "
                              "search enumerates)", "variable")
            if self.max_atoms is None:
                raise invalid("required with system.variable: the largest cell, in atoms (an integer "
                              ">= 1)", "max_atoms")
            smallest = max(1, sum(lo for lo, _ in self.variable.values()))
            if smallest > self.max_atoms:
                raise invalid(f"{self.max_atoms} is below the {smallest} atoms the minimum counts of "
                              "system.variable need", "max_atoms")
        elif self.composition is not None:
            largest = sum(self.composition.values()) * self.formula_units[-1]
            if largest > MAX_CELL_ATOMS:
                raise invalid(f"{self.formula_units[-1]} formula unit(s) of {sum(self.composition.values())} "
                              f"atoms make a cell of {largest} atoms, above the limit of {MAX_CELL_ATOMS}",
                              "formula_units")
        if self.max_atoms is not None and self.composition is not None:
            smallest = sum(self.composition.values()) * self.formula_units[0]
            if smallest > self.max_atoms:
                raise invalid(f"{self.max_atoms} is below the {smallest} atoms of {self.formula_units[0]} "
                              "formula unit(s); raise it or lower system.formula_units", "max_atoms")
        return self

    @property
    def elements(self) -> list[str]:
        """The system's elements, in the order written."""
        return list(self.composition or self.variable or {})


class GeneratorSpec(Section):
    """One structure generator and its share of each generation."""

    name: str = field(
        "random", type="str",
        doc="a registered generator (built-ins: `random`, `pso`, `ga`; plug-ins by entry point)")
    share: float = field(1.0, type="number in (0, 1]",
                         doc="fraction of each generation it proposes; shares sum to 1")
    options: dict[str, Any] = field(
        factory=dict, type="mapping",
        doc="keyword options of the generator (checked by constructing it), e.g. `{mode: local}` for `pso`")

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        import lamcsp.generators  # noqa: F401  (the built-in generators register on import)
        from lamcsp.generators import available_generators

        known = available_generators()
        if name not in known:
            raise invalid(f"unknown generator {name!r}; known: {', '.join(sorted(known))}")
        return name

    @field_validator("share")
    @classmethod
    def _share(cls, share: float) -> float:
        if not 0 < share <= 1:
            raise invalid(f"must be a number in (0, 1], got {share:g}")
        return share

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> dict[str, Any]:
        return forms.options(value)

    @model_validator(mode="after")
    def _constructs(self) -> GeneratorSpec:
        from lamcsp.errors import SetupError
        from lamcsp.generators import get_generator

        try:  # the generator checks its own options (constructing one does no work)
            get_generator(self.name, **self.options)
        except SetupError as exc:
            raise invalid(exc.message, "options" + (f".{exc.field}" if exc.field in self.options else "")) \
                from None
        return self


class ModelSpec(Section):
    """The machine-learned (or classical) potential that relaxes every structure."""

    backend: str = field("chgnet", type="str",
                         doc="model backend: `chgnet`, `deepmd`, `sevennet`, `mace`, `ase`, `emt`, `lj` or "
                             "`morse`")
    name: str | None = field(
        type="str or null", min_length=1,
        doc="a pretrained SevenNet model shipped in the sevenn package (`sevennet`): `7net-0`, "
            "`7net-mf-0` or `7net-l3i5`; null: `7net-0` (or `path`); give `name` or `path`, not both")
    path: str | None = field(
        type="path or null", min_length=1,
        doc="model file (must exist; relative to the campaign file); null: the backend's "
            "default weights")
    head: str | None = field(type="str or null", min_length=1,
                             doc="model head of a multi-head DeePMD-kit checkpoint (`deepmd`) or MACE "
                                 "model (`mace`)")
    modal: str | None = field(type="str or null", min_length=1,
                              doc="fidelity of a multi-fidelity SevenNet model (`sevennet`; `7net-mf-0`: "
                                  "`PBE` or `R2SCAN`), required there")
    device: str = field("auto", type="`auto`, `cpu`, `cuda` or `cuda:N`", doc="where the model runs")
    options: dict[str, Any] = field(
        factory=dict, type="mapping",
        doc="keyword arguments of the backend, e.g. `{epsilon: {Ar: 0.0104}, sigma: {Ar: 3.4}}` "
            "for `lj`; `{calculator: NAME}` names the ASE calculator of `ase`")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, backend: str) -> str:
        from lamcsp.potentials.registry import BACKENDS

        if backend not in BACKENDS:
            raise invalid(f"unknown model backend {backend!r}; known: {', '.join(sorted(BACKENDS))}")
        return backend

    @field_validator("path")
    @classmethod
    def _existing(cls, path: str | None, info: ValidationInfo) -> str | None:
        base_dir = _base_dir(info)
        if path is None or base_dir is None:
            return path
        full = _resolve(path, base_dir)
        if not os.path.isfile(full):
            raise invalid(f"model file {full} does not exist; give an existing file (relative to the "
                          "campaign file) or null")
        return full

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, device: Any) -> Any:
        if not isinstance(device, str) or not _DEVICE_RE.match(device):
            raise invalid(f"{device!r} is not allowed; allowed: auto, cpu, cuda, cuda:N")
        return device

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> dict[str, Any]:
        return forms.options(value)

    @model_validator(mode="after")
    def _name_or_path(self) -> ModelSpec:
        from lamcsp.potentials.sevennet import KNOWN_MODELS

        if self.name is not None and self.backend != "sevennet":
            raise invalid(f"the {self.backend} backend has no pretrained models by name; model.name is for "
                          "sevennet (a chgnet version is model.options.version)", "name")
        if self.modal is not None and self.backend != "sevennet":
            raise invalid(f"the {self.backend} backend has no modals; model.modal is the fidelity of a "
                          "multi-fidelity SevenNet model (backend: sevennet)", "modal")
        if self.name is not None and self.name.lower() not in KNOWN_MODELS:
            raise invalid(f"unknown pretrained SevenNet model {self.name!r}; the sevenn package ships "
                          f"{', '.join(KNOWN_MODELS)} (loaded offline); give another checkpoint file as "
                          "model.path", "name")
        if self.name is not None and self.path is not None:
            raise invalid(f"give model.name (a pretrained model, {self.name!r}) or model.path (a model "
                          "file), not both", "name")
        return self

    @model_validator(mode="after")
    def _known_options(self) -> ModelSpec:
        from lamcsp.potentials.registry import backend_options

        allowed = backend_options(self.backend)
        if allowed is None:  # the ase backend: its calculator's options, where they can be told
            from lamcsp.potentials.ase_calc import ase_calculator_options

            name = self.options.get("calculator")
            options = ase_calculator_options(name) if isinstance(name, str) else None
            if options is None:
                return self  # checked when the calculator is built
            allowed = ["calculator", *options]
        for key in self.options:
            if key not in allowed:
                raise invalid(f"unknown option {key!r} of the {self.backend} backend; allowed: "
                              f"{', '.join(allowed) or 'none'}", f"options.{key}")
        return self


class RelaxSpec(Section):
    """Relaxation of every candidate (cell and atoms) under the search pressure."""

    fmax: float = field(0.05, type="number > 0", doc="force convergence threshold, eV/Å", gt=0)
    max_steps: Int = field(500, type=f"int in [1, {MAX_STEPS}]", doc="optimizer steps per structure at most",
                           ge=1, le=MAX_STEPS)
    optimizer: Literal["fire", "lbfgs"] = field("fire", doc="optimizer")
    max_atoms: Int | None = field(
        type="int ≥ 1 or null", ge=1,
        doc="atoms per model call (null: from GPU memory, or a measured CPU default)")
    quench_steps: Int = field(
        0, type=f"int in [0, {MAX_STEPS}]", ge=0, le=MAX_STEPS,
        doc="the energy prescreen of oversampling generators ranks their candidates after this many "
            "optimizer steps (a funnel: all quenched in one batch, the lowest relaxed on from where "
            "the quench left them; with `dedupe.before_relax`, a quenched candidate that duplicates "
            "a structure already relaxed, or a lower quenched one, is not relaxed); 0: by the "
            "enthalpy at the start (one model call each)")


class DedupeSpec(Section):
    """Removal of duplicate structures (fingerprint distance, then StructureMatcher)."""

    fingerprint: Literal["bcm", "ov"] = field(
        "bcm", doc="fingerprint: bond characterization matrix or Oganov–Valle")
    sim_threshold: float | None = field(
        type="number > 0 or null", gt=0,
        doc="fingerprint distance under which two structures may be duplicates (null: the "
            "fingerprint's default)")
    use_matcher: bool = field(True, type="bool",
                              doc="confirm candidate duplicates with pymatgen's StructureMatcher")
    ltol: float = field(0.2, type="number > 0", doc="StructureMatcher fractional length tolerance", gt=0)
    stol: float = field(0.3, type="number > 0", doc="StructureMatcher site tolerance", gt=0)
    angle_tol: float = field(5.0, type="number > 0", doc="StructureMatcher angle tolerance, degrees", gt=0)
    energy_tol: float | None = field(
        0.01, type="number > 0 or null", gt=0,
        doc="duplicates differ by less than this enthalpy, eV/atom (null: no energy test); relaxed "
            "pairs within it go to the matcher whatever their fingerprint distance")
    before_relax: bool = field(
        True, type="bool",
        doc="CALYPSO's similarity screen: a new candidate that duplicates (at equal volume per "
            "atom) a structure already relaxed, or the start of one, is not relaxed but replaced "
            "by a new symmetric random structure")


class StopSpec(Section):
    """When a search stops before its `generations` / `max_relaxations` budget."""

    patience: Int | None = field(
        5, type="int ≥ 1 or null", ge=1,
        doc="stop after this many generations without improving the best enthalpy (null: never)")
    min_improvement: float = field(
        0.001, type="number ≥ 0", ge=0, doc="an improvement is a drop of more than this, eV/atom")


class ReportSpec(Section):
    """What the report lists and writes."""

    top_n: Int = field(10, type="int in [1, 10000]", doc="structures listed (lowest enthalpy first)",
                        ge=1, le=10_000)
    write_cif: bool = field(True, type="bool", doc="write the listed structures as CIF files")
    symprec: float = field(0.1, type="number > 0", doc="spglib tolerance for reported space groups", gt=0)
    scan_points: Int = field(
        7, type="int in [2, 1000]", ge=2, le=1000,
        doc="pressures of the enthalpy-vs-pressure scan of the best polymorphs (evenly spaced over the "
            "campaign's pressures; with 2 or more pressures)")
    scan_top: Int = field(3, type="int in [1, 1000]", ge=1, le=1000,
                          doc="polymorphs per composition and pressure re-relaxed in that scan")
    xrd: str | None = field(
        type="path or null",
        doc="a measured powder XRD pattern (text, two columns: 2θ in degrees and intensity; relative "
            "to the campaign file): overlaid on each listed structure's simulated pattern (Cu Kα1), "
            "which the report ranks by their agreement")

    @field_validator("xrd", mode="before")
    @classmethod
    def _xrd(cls, value: Any, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise invalid(f"must be a pattern file path or null, got {type_name(value)} {value!r}")
        base_dir = _base_dir(info)
        if base_dir is None:
            return value
        from lamcsp.errors import SetupError
        from lamcsp.report_xrd import read_pattern

        path = _resolve(value, base_dir)
        try:
            read_pattern(path)  # read now: a bad file stops the campaign before its work
        except SetupError as exc:
            raise invalid(exc.message) from None
        return path


class ParallelSpec(Section):
    """How `mpiexec -n N lamcsp search` shares the relaxations out (ignored on one rank).
    Rank 0 coordinates (generation, dedupe, database, checkpoint); every rank's relax worker
    runs in a child process and pulls batches; results do not depend on these settings, so
    they may change on `--resume`."""

    coordinator_relaxes: bool = field(
        True, type="bool", doc="rank 0 also relaxes (in its own worker process), beside coordinating")
    batch_size: Int | None = field(
        type="int ≥ 1 or null", ge=1,
        doc="structures per batch sent to a worker (null: the generation split in about four "
            "batches per worker, so that fast workers take more)")
    threads: Int | None = field(
        type="int ≥ 1 or null", ge=1,
        doc="torch threads per CPU worker (null: the node's cores over its ranks; "
            "`OMP_NUM_THREADS` when set)")
