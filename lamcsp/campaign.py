"""The campaign schema: one YAML file, validated into a typed, frozen :class:`Campaign`.

``load_campaign(path)`` reads a YAML file, ``parse_campaign(mapping)`` validates a mapping;
both are strict: an unknown key, a wrong type or an impossible value raises
:class:`~lamcsp.errors.SetupError` naming the field by its dotted path
(``generators[1].share``, ``system.pressures``) and what is allowed. Nothing is computed here.

Every field carries its type, default and a one-line description in its dataclass metadata;
:func:`campaign_reference` turns them into the Markdown reference committed as
``docs/campaign_reference.md``::

    python -m lamcsp.campaign --reference > docs/campaign_reference.md
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from lamcsp.errors import SetupError

PRESSURE_RANGE_GPA = (-50.0, 1000.0)
SHARE_TOLERANCE = 1e-6
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def _field(default: Any = None, *, type: str, doc: str, factory: Any = None) -> Any:
    meta = {"type": type, "doc": doc}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --------------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class SystemSpec:
    """What to search: a fixed composition (``composition`` + ``formula_units``) or a variable
    one (``variable`` + ``max_atoms``), at one or several pressures."""

    composition: dict[str, int] | None = _field(
        type="formula or {element: count}",
        doc="fixed composition of one formula unit, e.g. `MgSiO3` or `{Mg: 1, Si: 1, O: 3}`; "
            "give this or `variable`")
    formula_units: tuple[int, ...] = _field(
        factory=lambda: (1,), type="int, list of ints, or range `\"1-4\"`",
        doc="formula units per cell (positive, ascending)")
    variable: dict[str, tuple[int, int]] | None = _field(
        type="{element: [min, max]}",
        doc="variable composition: atoms of each element per cell, e.g. `{Mg: [1, 2], O: [1, 3]}`; "
            "needs `max_atoms`")
    max_atoms: int | None = _field(
        type="int ≥ 1 or null", doc="largest cell, in atoms (required with `variable`)")
    pressures: tuple[float, ...] = _field(
        factory=lambda: (0.0,), type="number or list of numbers",
        doc=f"pressure(s) of the search, GPa, each in [{PRESSURE_RANGE_GPA[0]:g}, "
            f"{PRESSURE_RANGE_GPA[1]:g}]; one search per pressure")
    spacegroups: tuple[int, ...] = _field(
        factory=lambda: tuple(range(2, 231)), type="list or ranges `\"2-230\"`",
        doc="space groups random structures are drawn from (1-230)")
    distance_factor: float = _field(
        0.7, type="number > 0",
        doc="minimum interatomic distance of generated structures, as a fraction of the sum of "
            "covalent radii (AIRSS MINSEP, CALYPSO DistanceOfIon)")
    volume_factor: float = _field(
        1.0, type="number > 0",
        doc="target volume of generated structures, as a multiple of the sum of the elements' volumes")
    references: dict[str, str] = _field(
        factory=dict, type="{element: structure file}",
        doc="elemental reference structures (CIF, POSCAR, extxyz; relative to the campaign file), "
            "relaxed at every pressure, for formation enthalpies; elements without one are "
            "searched as end members of a variable composition")

    @property
    def elements(self) -> list[str]:
        return list(self.composition or self.variable or {})


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
    """One structure generator and its share of each generation."""

    name: str = _field(
        "random", type="str",
        doc="a registered generator (built-ins: `random`, `pso`, `ga`; plug-ins by entry point)")
    share: float = _field(1.0, type="number in (0, 1]",
                          doc="fraction of each generation it proposes; shares sum to 1")
    options: dict[str, Any] = _field(
        factory=dict, type="mapping",
        doc="keyword options of the generator (checked by constructing it), e.g. `{mode: local}` for `pso`")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The machine-learned (or classical) potential that relaxes every structure."""

    backend: str = _field("chgnet", type="str",
                          doc="model backend: `chgnet`, `deepmd`, `ase`, `emt`, `lj` or `morse`")
    path: str | None = _field(
        type="path or null",
        doc="model file (must exist; relative to the campaign file); null: the backend's "
            "default weights")
    head: str | None = _field(type="str or null",
                              doc="model head of a multi-head DeePMD-kit checkpoint (`deepmd`)")
    device: str = _field("auto", type="`auto`, `cpu`, `cuda` or `cuda:N`",
                         doc="where the model runs")
    options: dict[str, Any] = _field(
        factory=dict, type="mapping",
        doc="keyword arguments of the backend, e.g. `{epsilon: {Ar: 0.0104}, sigma: {Ar: 3.4}}` "
            "for `lj`; `{calculator: NAME}` names the ASE calculator of `ase`")


@dataclasses.dataclass(frozen=True)
class RelaxSpec:
    """Relaxation of every candidate (cell and atoms) under the search pressure."""

    fmax: float = _field(0.05, type="number > 0", doc="force convergence threshold, eV/Å")
    max_steps: int = _field(500, type="int ≥ 1", doc="optimizer steps per structure at most")
    optimizer: str = _field("fire", type="`fire` or `lbfgs`", doc="optimizer")
    max_atoms: int | None = _field(
        type="int ≥ 1 or null",
        doc="atoms per model call (null: from GPU memory, or a measured CPU default)")
    quench_steps: int = _field(
        0, type="int ≥ 0",
        doc="the energy prescreen of oversampling generators ranks their candidates after this many "
            "optimizer steps (a funnel: all quenched in one batch, the lowest relaxed on from where "
            "the quench left them; with `dedupe.before_relax`, a quenched candidate that duplicates "
            "a structure already relaxed, or a lower quenched one, is not relaxed); 0: by the "
            "enthalpy at the start (one model call each)")


@dataclasses.dataclass(frozen=True)
class DedupeSpec:
    """Removal of duplicate structures (fingerprint distance, then StructureMatcher)."""

    fingerprint: str = _field("bcm", type="`bcm` or `ov`",
                              doc="fingerprint: bond characterization matrix or Oganov–Valle")
    sim_threshold: float | None = _field(
        type="number > 0 or null",
        doc="fingerprint distance under which two structures may be duplicates (null: the "
            "fingerprint's default)")
    use_matcher: bool = _field(True, type="bool",
                               doc="confirm candidate duplicates with pymatgen's StructureMatcher")
    ltol: float = _field(0.2, type="number > 0", doc="StructureMatcher fractional length tolerance")
    stol: float = _field(0.3, type="number > 0", doc="StructureMatcher site tolerance")
    angle_tol: float = _field(5.0, type="number > 0", doc="StructureMatcher angle tolerance, degrees")
    energy_tol: float | None = _field(
        0.01, type="number > 0 or null",
        doc="duplicates differ by less than this enthalpy, eV/atom (null: no energy test); relaxed "
            "pairs within it go to the matcher whatever their fingerprint distance")
    before_relax: bool = _field(
        True, type="bool",
        doc="CALYPSO's similarity screen: a new candidate that duplicates (at equal volume per "
            "atom) a structure already relaxed, or the start of one, is not relaxed but replaced "
            "by a new symmetric random structure")


@dataclasses.dataclass(frozen=True)
class StopSpec:
    """When a search stops before its `generations` / `max_relaxations` budget."""

    patience: int | None = _field(
        5, type="int ≥ 1 or null",
        doc="stop after this many generations without improving the best enthalpy (null: never)")
    min_improvement: float = _field(
        0.001, type="number ≥ 0", doc="an improvement is a drop of more than this, eV/atom")


@dataclasses.dataclass(frozen=True)
class ReportSpec:
    """What the report lists and writes."""

    top_n: int = _field(10, type="int ≥ 1", doc="structures listed (lowest enthalpy first)")
    write_cif: bool = _field(True, type="bool", doc="write the listed structures as CIF files")
    symprec: float = _field(0.1, type="number > 0", doc="spglib tolerance for reported space groups")
    scan_points: int = _field(
        7, type="int ≥ 2", doc="pressures of the enthalpy-vs-pressure scan of the best polymorphs "
                               "(evenly spaced over the campaign's pressures; with 2 or more pressures)")
    scan_top: int = _field(3, type="int ≥ 1",
                           doc="polymorphs per composition and pressure re-relaxed in that scan")


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
    """The DP-GEN-style fine-tune loop: every `every` generations, the committee (K fine-tuned
    copies of the model) rates the unique hits and relaxation frames; uncertain ones
    (`trust_lo` <= max force deviation < `trust_hi`) and the lowest-enthalpy hits (within
    `window`) are labelled by the oracle, the model is fine-tuned on all labels so far, and the
    search goes on with it. Stops when the accurate fraction reaches `conv_accuracy` or after
    `max_iterations`. Needs a `chgnet` or `deepmd` model."""

    enabled: bool = _field(False, type="bool", doc="run the fine-tune loop")
    every: int = _field(2, type="int ≥ 1", doc="generations between fine-tune iterations")
    committee: int = _field(4, type="int ≥ 2", doc="committee size K (fine-tuned copies, seeds 1..K)")
    trust_lo: float = _field(0.05, type="number",
                             doc="max force deviation (eV/Å) under which a prediction is trusted (DP-GEN)")
    trust_hi: float = _field(0.50, type="number",
                             doc="max force deviation (eV/Å) from which a frame is discarded, not labelled")
    window: float = _field(0.05, type="number ≥ 0",
                           doc="hits within this many eV/atom above the hull of the hits (one "
                               "composition: of the lowest) are labelled whatever their deviation")
    max_labels: int | None = _field(20, type="int or null", doc="oracle labels per iteration at most")
    max_energy: float | None = _field(
        1.0, type="number > 0 or null",
        doc="eV/atom: an uncertain frame more than this above the best hit of its composition "
            "(by the committee) is not labelled (the far slopes of random starts; null: no cap)")
    conv_accuracy: float = _field(0.9, type="number",
                                  doc="fraction of trusted predictions at which the loop stops")
    max_iterations: int | None = _field(5, type="int or null", doc="fine-tune iterations at most")
    oracle: dict[str, Any] = _field(
        factory=lambda: {"calculator": "emt"}, type="mapping",
        doc="the labeller: `{calculator: NAME, options: {...}}` (an ASE calculator by name: emt, "
            "gpaw, vasp, espresso, abacus, cp2k, ...) or `{command: ..., input: vasp, output: "
            "vasp/outcar, output_file: OUTCAR}` (an external code whose output dpdata reads)")
    steps: int = _field(1000, type="int ≥ 1", doc="training steps per member (deepmd)")
    epochs: int = _field(30, type="int ≥ 1", doc="training epochs per member (chgnet)")
    learning_rate: float = _field(1e-3, type="number > 0", doc="starting learning rate")
    rerelax: int = _field(5, type="int ≥ 0",
                          doc="best unique hits per unit re-relaxed with each new model")
    snapshot_every: int = _field(20, type="int ≥ 1",
                                 doc="relaxation steps between the trajectory frames kept for the committee "
                                     "to rate")
    minimum_frames: int = _field(
        2, type="int ≥ 0",
        doc="the last trajectory frames of each low-enthalpy hit (within `window`) labelled with it: "
            "the energy differences that decide the ranking, near each competitor's minimum")
    diversity: str = _field(
        "bootstrap", type="`bootstrap`, `seeds` or `fresh_head`",
        doc="how committee members differ: `bootstrap` (member k > 0 trains on a bootstrap resample "
            "of the labels), `seeds` (the same labels, other seeds), `fresh_head` (a freshly "
            "initialised readout / fitting net per member; DeePMD-kit: `--model-branch RANDOM`); "
            "all use seeds 1..K (`benchmarks/committee_diversity.py` measures them)")


@dataclasses.dataclass(frozen=True)
class VerifySpec:
    """Oracle verification of the answer (`lamcsp verify RUN` runs the same stage on a finished
    run): at the end of the search, the `top_k` unique structures of every composition and
    pressure, and every one within `window` of the model's hull, are relaxed with the oracle
    (or given one single point) and stored as rows `role=verify` beside the model's enthalpy;
    the report ranks them by both and names the answer (the oracle's lowest). With the fine-tune
    loop, the best structures of the model in use are verified at the start of every iteration
    (`each_iteration`; the first verifies the pretrained model); the oracle's frames join that
    iteration's training data, and the loop stops only when the verified answer (the oracle's
    lowest) has not changed since the last iteration and the model's top-1 is that answer. Every
    oracle call is journaled, so `--resume` repeats none."""

    enabled: bool | None = _field(
        type="bool or null", doc="verify the answer (null: whenever `finetune.enabled`)")
    oracle: dict[str, Any] | None = _field(
        type="mapping or null",
        doc="the oracle, as `finetune.oracle` (null: `finetune.oracle`; give one when the fine-tune "
            "loop is off)")
    mode: str = _field("relax", type="`relax` or `single_point`",
                       doc="relax each structure with the oracle (cell and atoms, at its pressure), or "
                           "one oracle single point at the model's structure (cheaper, less exact)")
    top_k: int = _field(5, type="int ≥ 1", doc="structures verified per composition and pressure, the "
                                              "model's lowest first")
    window: float = _field(
        0.03, type="number ≥ 0",
        doc="eV/atom: every unique structure this close to the model's hull (one composition: to its "
            "lowest) is verified too")
    optimizer: str = _field("bfgs", type="`bfgs`, `fire` or `lbfgs`",
                            doc="ASE optimizer of the oracle relaxations (through `FrechetCellFilter`)")
    fmax: float = _field(0.05, type="number > 0", doc="oracle relaxations converge at this force, eV/Å")
    max_steps: int = _field(100, type="int ≥ 1", doc="oracle calls per relaxation at most")
    each_iteration: bool = _field(
        True, type="bool",
        doc="with the fine-tune loop: verify the best structures of the model in use at the start of "
            "every iteration (the ranking stop rule needs it)")
    train_frames: int = _field(
        3, type="int ≥ 0",
        doc="oracle frames of each verification that join the next fine-tune iteration's data (its "
            "first, the model's structure, and its last, the oracle's minimum, first; no extra "
            "oracle calls)")


@dataclasses.dataclass(frozen=True)
class ParallelSpec:
    """How `mpiexec -n N lamcsp search` shares the relaxations out (ignored on one rank).
    Rank 0 coordinates (generation, dedupe, database, checkpoint); every rank's relax worker
    runs in a child process and pulls batches; results do not depend on these settings, so
    they may change on `--resume`."""

    coordinator_relaxes: bool = _field(
        True, type="bool", doc="rank 0 also relaxes (in its own worker process), beside coordinating")
    batch_size: int | None = _field(
        type="int ≥ 1 or null",
        doc="structures per batch sent to a worker (null: the generation split in about four "
            "batches per worker, so that fast workers take more)")
    threads: int | None = _field(
        type="int ≥ 1 or null",
        doc="torch threads per CPU worker (null: the node's cores over its ranks; "
            "`OMP_NUM_THREADS` when set)")


#: the default campaign's generators (``random`` and the swarm's new particles) draw this many
#: candidates per structure they relax and relax the lowest-enthalpy starts (see README,
#: "Generators"); the generators themselves default to 1
DEFAULT_OVERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class Campaign:
    """One structure search: what, with which generators and model, for how long."""

    name: str = _field("campaign", type="str (letters, digits, `._-`)",
                       doc="campaign name; names the default output directory")
    seed: int | None = _field(type="int ≥ 0 or null",
                              doc="random seed (null: fresh entropy, recorded in the run)")
    system: SystemSpec = _field(factory=SystemSpec, type="section", doc="what to search")
    generators: tuple[GeneratorSpec, ...] = _field(
        factory=lambda: (GeneratorSpec("random", 0.5, {"oversample": DEFAULT_OVERSAMPLE}),
                         GeneratorSpec("pso", 0.5, {"oversample": DEFAULT_OVERSAMPLE})),
        type="list of generator entries",
        doc="structure generators and their shares (default: symmetric random and the particle "
            "swarm, half each; the swarm draws 40% of its share as new random structures (all of "
            f"it in the first generation); both draw {DEFAULT_OVERSAMPLE} new random structures per "
            "one they relax and relax those with the lowest enthalpy at the start, lowest first "
            "(`oversample`))")
    population: int = _field(12, type="int ≥ 1", doc="structures relaxed per generation")
    generations: int | None = _field(
        10, type="int ≥ 1 or null", doc="generations at most (give this or `max_relaxations`)")
    max_relaxations: int | None = _field(
        type="int ≥ 1 or null", doc="relaxations at most, over all generations")
    stop: StopSpec = _field(factory=StopSpec, type="section", doc="early stopping rule")
    model: ModelSpec = _field(factory=ModelSpec, type="section", doc="the potential")
    relax: RelaxSpec = _field(factory=RelaxSpec, type="section", doc="relaxation settings")
    dedupe: DedupeSpec = _field(factory=DedupeSpec, type="section", doc="duplicate removal")
    output: str | None = _field(type="path or null",
                                doc="output directory (null: `runs/<name>`)")
    report: ReportSpec = _field(factory=ReportSpec, type="section", doc="report options")
    parallel: ParallelSpec = _field(factory=ParallelSpec, type="section",
                                    doc="MPI runs: who relaxes, batch size, threads")
    finetune: FinetuneSpec = _field(factory=FinetuneSpec, type="section",
                                    doc="the DP-GEN-style fine-tune loop")
    verify: VerifySpec = _field(factory=VerifySpec, type="section",
                                doc="oracle verification of the answer")

    @property
    def verify_enabled(self) -> bool:
        """Whether the answer is verified (``verify.enabled``, or by default with the loop)."""
        return self.finetune.enabled if self.verify.enabled is None else self.verify.enabled

    @property
    def verify_oracle(self) -> dict[str, Any]:
        """The oracle that verifies the answer (``verify.oracle``, else ``finetune.oracle``)."""
        return dict(self.verify.oracle if self.verify.oracle is not None else self.finetune.oracle)

    @property
    def output_dir(self) -> str:
        return self.output if self.output is not None else os.path.join("runs", self.name)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML-ready) that :func:`parse_campaign` reads back into an equal campaign."""
        return _plain(dataclasses.asdict(self))

    def summary(self) -> str:
        """A few lines saying what the campaign will do."""
        s = self.system
        if s.composition is not None:
            what = "".join(f"{el}{n if n != 1 else ''}" for el, n in s.composition.items())
            what += f" x {_int_text(s.formula_units)} formula units"
        else:
            ranges = ", ".join(f"{el} {lo}-{hi}" for el, (lo, hi) in (s.variable or {}).items())
            what = f"variable composition ({ranges}), at most {s.max_atoms} atoms"
        gens = ", ".join(f"{g.name} {g.share:g}" for g in self.generators)
        budget = []
        if self.generations is not None:
            budget.append(f"{self.generations} generations")
        if self.max_relaxations is not None:
            budget.append(f"{self.max_relaxations} relaxations")
        model = self.model.backend + (f":{self.model.path}" if self.model.path else "")
        return "\n".join([
            f"campaign {self.name!r}: {what}",
            f"  pressures: {', '.join(f'{p:g}' for p in s.pressures)} GPa",
            f"  generators: {gens}; population {self.population}; at most {' or '.join(budget)}",
            f"  model: {model} on {self.model.device}; relax {self.relax.optimizer} "
            f"fmax {self.relax.fmax:g} eV/Å, {self.relax.max_steps} steps",
            f"  seed: {self.seed if self.seed is not None else 'fresh'}; output: {self.output_dir}",
            *([self._finetune_line()] if self.finetune.enabled else []),
            *([self._verify_line()] if self.verify_enabled else []),
        ])

    def _verify_line(self) -> str:
        v, oracle = self.verify, self.verify_oracle
        name = oracle.get("calculator") or f"command {oracle.get('command')!r}"
        return (f"  verify: the top {v.top_k} per composition and pressure (and all within {v.window:g} "
                f"eV/atom of the hull) by {name}, {v.mode.replace('_', ' ')}"
                + (", at every fine-tune iteration" if self.finetune.enabled and v.each_iteration
                   else "") + ", and at the end")

    def _finetune_line(self) -> str:
        f = self.finetune
        oracle = f.oracle.get("calculator") or f"command {f.oracle.get('command')!r}"
        return (f"  fine-tune: every {f.every} generation(s), committee {f.committee}, trust "
                f"{f.trust_lo:g}-{f.trust_hi:g} eV/Å, at most {f.max_labels} labels per iteration by "
                f"{oracle}, "
                f"until {f.conv_accuracy:g} accurate"
                + (" and the verified answer settled"
                   if self.verify_enabled and self.verify.each_iteration else "")
                + f", at most {f.max_iterations} iterations")


SECTIONS: dict[str, type] = {
    "system": SystemSpec, "generators[]": GeneratorSpec, "model": ModelSpec, "relax": RelaxSpec,
    "dedupe": DedupeSpec, "stop": StopSpec, "report": ReportSpec, "parallel": ParallelSpec,
    "finetune": FinetuneSpec, "verify": VerifySpec,
}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _int_text(values: tuple[int, ...]) -> str:
    if len(values) > 2 and list(values) == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ",".join(str(v) for v in values)


# --------------------------------------------------------------------------------- checks


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _keys(raw: Any, cls: type, path: str) -> dict[str, Any]:
    """``raw`` as a mapping with only the keys ``cls`` has (else a SetupError naming the key)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SetupError(path or "campaign",
                         f"must be a mapping of keys to values, got {_type_name(raw)} {raw!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise SetupError(where, f"unknown key {key!r}; allowed keys here: {', '.join(allowed)}")
    return dict(raw)


def _opt_int(value: Any, field: str, lo: int | None = None) -> int | None:
    return None if value is None else _int(value, field, lo, null=True)


def _opt_float(value: Any, field: str, *, positive: bool = False) -> float | None:
    return None if value is None else _float(value, field, positive=positive, null=True)


def _opt_str(value: Any, field: str) -> str | None:
    return None if value is None else _str(value, field, null=True)


def _int(value: Any, field: str, lo: int | None = None, *, null: bool = False) -> int:
    """``value`` as an int >= ``lo`` (``null``: the message says null is allowed too)."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            allowed = "an integer" + (" or null" if null else "")
            raise SetupError(field, f"must be {allowed}, got {_type_name(value)} {value!r}")
    if lo is not None and value < lo:
        raise SetupError(field, f"must be an integer >= {lo}, got {value}")
    return int(value)


def _float(value: Any, field: str, *, positive: bool = False, nonneg: bool = False,
           null: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        allowed = "a finite number" + (" or null" if null else "")
        raise SetupError(field, f"must be {allowed}, got {_type_name(value)} {value!r}")
    if positive and value <= 0:
        raise SetupError(field, f"must be a number > 0, got {value}")
    if nonneg and value < 0:
        raise SetupError(field, f"must be a number >= 0, got {value}")
    return float(value)


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise SetupError(field, f"must be true or false, got {_type_name(value)} {value!r}")
    return value


def _str(value: Any, field: str, *, null: bool = False, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(value, str) or not value:
        allowed = f"one of {', '.join(choices)}" if choices else "a non-empty string"
        raise SetupError(field, f"must be {allowed}{' or null' if null else ''}, got "
                                f"{_type_name(value)} {value!r}")
    if choices and value not in choices:
        raise SetupError(field, f"{value!r} is not allowed; allowed: {', '.join(choices)}")
    return value


def _element(symbol: Any, field: str) -> str:
    from ase.data import chemical_symbols

    if not isinstance(symbol, str) or symbol not in chemical_symbols[1:]:
        raise SetupError(field, f"unknown element {symbol!r}; use chemical symbols such as Si, Mg, O")
    return symbol


def _int_ranges(value: Any, field: str, lo: int, hi: int, example: str) -> tuple[int, ...]:
    """An int, a list of ints, or text of ranges ``"1-4"`` / ``"1,2,8-10"``: ascending, in range."""
    if isinstance(value, str):
        out: list[int] = []
        for part in value.replace(" ", "").split(","):
            if not part:
                continue
            try:
                a, _, b = part.partition("-")
                first, last = int(a), int(b or a)
            except ValueError:
                raise SetupError(field, f"cannot read {part!r}; give an integer, a list, or ranges "
                                        f"such as {example!r}") from None
            if first > last:
                raise SetupError(field, f"impossible range {part!r}: the first number must not "
                                        f"exceed the second, e.g. {example!r}")
            out.extend(range(first, last + 1))
        values: list[Any] = out
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        values = [value]
    if not values:
        raise SetupError(field, f"must not be empty; give an integer, a list, or a range such as {example!r}")
    ints = [_int(v, field) for v in values]
    for v in ints:
        if not lo <= v <= hi:
            raise SetupError(field, f"{v} is outside the allowed {lo}-{hi}")
    if any(b <= a for a, b in zip(ints, ints[1:])):
        raise SetupError(field, f"values must be ascending without repeats, got {ints}")
    return tuple(ints)


# --------------------------------------------------------------------------------- parsers


def _parse_composition(value: Any, field: str) -> dict[str, int]:
    if isinstance(value, str):
        from ase.formula import Formula

        text = value.strip()
        try:
            counts = Formula(text).count()
        except Exception as exc:  # ase raises ValueError and others on malformed formulas
            raise SetupError(
                field, f"cannot read formula {value!r} ({exc}); write e.g. Si or MgSiO3") from None
        for symbol in counts:
            _element(symbol, field)
        if not re.fullmatch(r"([A-Z][a-z]?\d*)+", text):
            raise SetupError(field, f"cannot read formula {value!r}; write e.g. Si or MgSiO3 "
                                    "(no brackets), or a mapping {element: count}")
        value = dict(counts)
    if not isinstance(value, Mapping) or not value:
        raise SetupError(field, f"must be a formula such as MgSiO3 or a mapping {{element: count}}, "
                                f"got {_type_name(value)} {value!r}")
    out: dict[str, int] = {}
    for symbol, n in value.items():
        _element(symbol, f"{field}.{symbol}")
        count = _int(n, f"{field}.{symbol}")
        if count is None or count < 1:
            raise SetupError(f"{field}.{symbol}", f"counts must be positive integers, got {n!r}")
        out[symbol] = count
    return out


def _parse_variable(value: Any, field: str) -> dict[str, tuple[int, int]]:
    if not isinstance(value, Mapping) or not value:
        raise SetupError(field, "must be a mapping {element: [min, max]} such as "
                                f"{{Mg: [1, 2], O: [1, 3]}}, got {_type_name(value)} {value!r}")
    out: dict[str, tuple[int, int]] = {}
    for symbol, rng in value.items():
        where = f"{field}.{symbol}"
        _element(symbol, where)
        if isinstance(rng, (list, tuple)) and len(rng) == 2:
            lo, hi = _int(rng[0], where), _int(rng[1], where)
        else:
            raise SetupError(where, f"must be a range [min, max] of atoms per cell, got {rng!r}")
        if lo < 0 or hi < 1:
            raise SetupError(where, f"counts must be >= 0 (min) and >= 1 (max), got [{lo}, {hi}]")
        if lo > hi:
            raise SetupError(where, f"impossible range [{lo}, {hi}]: min must not exceed max")
        out[symbol] = (lo, hi)
    return out


def _parse_references(value: Any, elements: list[str], base_dir: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SetupError("system.references", "must be a mapping {element: structure file}, got "
                                              f"{_type_name(value)} {value!r}")
    out: dict[str, str] = {}
    for symbol, path in value.items():
        where = f"system.references.{symbol}"
        _element(symbol, where)
        if symbol not in elements:
            raise SetupError(where, f"{symbol} is not an element of the system ({', '.join(elements)})")
        if not isinstance(path, str) or not path:
            raise SetupError(where, f"must be a structure file path, got {_type_name(path)} {path!r}")
        full = os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))
        if not os.path.isfile(full):
            raise SetupError(where, f"structure file {full} does not exist (paths are relative to "
                                    "the campaign file)")
        out[symbol] = full
    return out


def _parse_system(raw: Any, base_dir: str = ".") -> SystemSpec:
    d = _keys(raw, SystemSpec, "system")
    composition = variable = None
    if d.get("composition") is not None and d.get("variable") is not None:
        raise SetupError("system.variable", "give either system.composition (fixed) or "
                                            "system.variable (variable composition), not both")
    if d.get("composition") is None and d.get("variable") is None:
        raise SetupError("system.composition", "missing; give system.composition (e.g. Si or "
                         "MgSiO3) or system.variable (e.g. {Mg: [1, 2], O: [1, 3]})")
    if d.get("composition") is not None:
        composition = _parse_composition(d["composition"], "system.composition")
    else:
        variable = _parse_variable(d["variable"], "system.variable")
    fus = _int_ranges(d.get("formula_units", 1), "system.formula_units", 1, 10_000, "1-4")
    max_atoms = _opt_int(d.get("max_atoms"), "system.max_atoms", 1)
    if variable is not None:
        if max_atoms is None:
            raise SetupError("system.max_atoms", "required with system.variable: the largest "
                                                 "cell, in atoms (an integer >= 1)")
        smallest = max(1, sum(lo for lo, _ in variable.values()))
        if smallest > max_atoms:
            raise SetupError("system.max_atoms", f"{max_atoms} is below the {smallest} atoms the "
                                                 "minimum counts of system.variable need")
    elif max_atoms is not None and composition is not None:
        smallest = sum(composition.values()) * fus[0]
        if smallest > max_atoms:
            raise SetupError("system.max_atoms", f"{max_atoms} is below the {smallest} atoms of "
                             f"{fus[0]} formula unit(s); raise it or lower system.formula_units")
    p = d.get("pressures", 0.0)
    values = list(p) if isinstance(p, (list, tuple)) else [p]
    if not values:
        raise SetupError("system.pressures", "must not be empty; give a number or a list, GPa")
    pressures = []
    for v in values:
        x = _float(v, "system.pressures")
        lo, hi = PRESSURE_RANGE_GPA
        if not lo <= x <= hi:
            raise SetupError("system.pressures", f"{x:g} GPa is outside the allowed range "
                                                 f"[{lo:g}, {hi:g}] GPa")
        pressures.append(x)
    sgs = _int_ranges(d.get("spacegroups", "2-230"), "system.spacegroups", 1, 230, "2-230")
    elements = list(composition or variable or {})
    references = _parse_references(d.get("references"), elements, base_dir)
    return SystemSpec(composition=composition, formula_units=fus, variable=variable,
                      max_atoms=max_atoms, pressures=tuple(pressures), spacegroups=sgs,
                      distance_factor=_float(d.get("distance_factor", 0.7), "system.distance_factor",
                                             positive=True),
                      volume_factor=_float(d.get("volume_factor", 1.0), "system.volume_factor",
                                           positive=True),
                      references=references)


def _parse_generators(raw: Any) -> tuple[GeneratorSpec, ...]:
    import lamcsp.generators  # noqa: F401  (the built-in generators register on import)
    from lamcsp.generators import available_generators, get_generator

    if raw is None:
        return Campaign().generators
    if not isinstance(raw, (list, tuple)) or not raw:
        raise SetupError("generators", "must be a non-empty list of entries such as "
                                       "{name: random, share: 0.4}")
    known = available_generators()
    out = []
    for i, entry in enumerate(raw):
        path = f"generators[{i}]"
        d = _keys(entry, GeneratorSpec, path)
        name = _str(d.get("name", "random"), f"{path}.name")
        if name not in known:
            raise SetupError(f"{path}.name", f"unknown generator {name!r}; known: {', '.join(sorted(known))}")
        share = _float(d.get("share", 1.0), f"{path}.share")
        if not 0 < share <= 1:
            raise SetupError(f"{path}.share", f"must be a number in (0, 1], got {share:g}")
        options = d.get("options") or {}
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise SetupError(f"{path}.options",
                             f"must be a mapping of option names to values, got {options!r}")
        try:  # the generator checks its own options (constructing one does no work)
            get_generator(name, **options)
        except SetupError as exc:
            where = f"{path}.options" + (f".{exc.field}" if exc.field in options else "")
            raise SetupError(where, exc.message) from None
        out.append(GeneratorSpec(name=str(name), share=share, options=dict(options)))
    names = [g.name for g in out]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise SetupError(f"generators[{i}].name", f"generator {n!r} is listed twice; merge the entries")
    total = sum(g.share for g in out)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise SetupError("generators[].share", f"shares must sum to 1, they sum to {total:g} "
                         f"({' + '.join(f'{g.share:g}' for g in out)})")
    return tuple(out)


def _parse_model(raw: Any, base_dir: str) -> ModelSpec:
    from lamcsp.potentials.registry import BACKENDS

    d = _keys(raw, ModelSpec, "model")
    backend = _str(d.get("backend", "chgnet"), "model.backend")
    if backend not in BACKENDS:
        raise SetupError("model.backend", f"unknown model backend {backend!r}; known: "
                                          f"{', '.join(sorted(BACKENDS))}")
    path = _opt_str(d.get("path"), "model.path")
    if path is not None:
        full = os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))
        if not os.path.isfile(full):
            raise SetupError("model.path", f"model file {full} does not exist; give an existing "
                                           "file (relative to the campaign file) or null")
        path = full
    head = _opt_str(d.get("head"), "model.head")
    device = d.get("device", "auto")
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise SetupError("model.device", f"{device!r} is not allowed; allowed: auto, cpu, cuda, cuda:N")
    options = d.get("options") or {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise SetupError("model.options", f"must be a mapping of option names to values, got {options!r}")
    return ModelSpec(backend=str(backend), path=path, head=head, device=device, options=dict(options))


def _parse_relax(raw: Any) -> RelaxSpec:
    d = _keys(raw, RelaxSpec, "relax")
    default = RelaxSpec()
    return RelaxSpec(
        fmax=_float(d.get("fmax", default.fmax), "relax.fmax", positive=True),
        max_steps=_int(d.get("max_steps", default.max_steps), "relax.max_steps", 1),
        optimizer=_str(d.get("optimizer", default.optimizer), "relax.optimizer",
                       choices=("fire", "lbfgs")),
        max_atoms=_opt_int(d.get("max_atoms"), "relax.max_atoms", 1),
        quench_steps=_int(d.get("quench_steps", default.quench_steps), "relax.quench_steps", 0),
    )


def _parse_dedupe(raw: Any) -> DedupeSpec:
    d = _keys(raw, DedupeSpec, "dedupe")
    dd = DedupeSpec()
    return DedupeSpec(
        fingerprint=_str(d.get("fingerprint", dd.fingerprint), "dedupe.fingerprint",
                         choices=("bcm", "ov")),
        sim_threshold=_opt_float(d.get("sim_threshold"), "dedupe.sim_threshold", positive=True),
        use_matcher=_bool(d.get("use_matcher", dd.use_matcher), "dedupe.use_matcher"),
        ltol=_float(d.get("ltol", dd.ltol), "dedupe.ltol", positive=True),
        stol=_float(d.get("stol", dd.stol), "dedupe.stol", positive=True),
        angle_tol=_float(d.get("angle_tol", dd.angle_tol), "dedupe.angle_tol", positive=True),
        energy_tol=_opt_float(d.get("energy_tol", dd.energy_tol), "dedupe.energy_tol",
                               positive=True),
        before_relax=_bool(d.get("before_relax", dd.before_relax), "dedupe.before_relax"),
    )


def _parse_stop(raw: Any) -> StopSpec:
    d = _keys(raw, StopSpec, "stop")
    sd = StopSpec()
    return StopSpec(
        patience=_opt_int(d.get("patience", sd.patience), "stop.patience", 1),
        min_improvement=_float(d.get("min_improvement", sd.min_improvement),
                               "stop.min_improvement", nonneg=True),
    )


def _parse_report(raw: Any) -> ReportSpec:
    d = _keys(raw, ReportSpec, "report")
    rd = ReportSpec()
    return ReportSpec(
        top_n=_int(d.get("top_n", rd.top_n), "report.top_n", 1),
        write_cif=_bool(d.get("write_cif", rd.write_cif), "report.write_cif"),
        symprec=_float(d.get("symprec", rd.symprec), "report.symprec", positive=True),
        scan_points=_int(d.get("scan_points", rd.scan_points), "report.scan_points", 2),
        scan_top=_int(d.get("scan_top", rd.scan_top), "report.scan_top", 1),
    )


def _parse_parallel(raw: Any) -> ParallelSpec:
    d = _keys(raw, ParallelSpec, "parallel")
    return ParallelSpec(
        coordinator_relaxes=_bool(d.get("coordinator_relaxes", True), "parallel.coordinator_relaxes"),
        batch_size=_opt_int(d.get("batch_size"), "parallel.batch_size", 1),
        threads=_opt_int(d.get("threads"), "parallel.threads", 1),
    )


def parse_oracle(oracle: Any, field: str) -> dict[str, Any]:
    """An oracle spec (a calculator name, ``{calculator: NAME, options: {...}}`` or ``{command:
    ...}``) as a mapping; a :class:`SetupError` naming ``field`` if it is neither."""
    if isinstance(oracle, str):  # a calculator name
        oracle = {"calculator": oracle}
    if not isinstance(oracle, Mapping) or not ({"calculator", "command"} & set(oracle)):
        raise SetupError(field, f"give {{calculator: NAME, options: {{...}}}} or {{command: ..., "
                                f"output: FORMAT}}, got {oracle!r}")
    if "options" in oracle and not isinstance(oracle["options"], Mapping):
        raise SetupError(f"{field}.options", f"must be a mapping of option names to values, got "
                                             f"{oracle['options']!r}")
    return dict(oracle)


def _parse_verify(raw: Any) -> VerifySpec:
    d = _keys(raw, VerifySpec, "verify")
    vd = VerifySpec()
    enabled = d.get("enabled")
    oracle = d.get("oracle")
    return VerifySpec(
        enabled=None if enabled is None else _bool(enabled, "verify.enabled"),
        oracle=None if oracle is None else parse_oracle(oracle, "verify.oracle"),
        mode=_str(d.get("mode", vd.mode), "verify.mode", choices=("relax", "single_point")),
        top_k=_int(d.get("top_k", vd.top_k), "verify.top_k", 1),
        window=_float(d.get("window", vd.window), "verify.window", nonneg=True),
        optimizer=_str(d.get("optimizer", vd.optimizer), "verify.optimizer",
                       choices=("bfgs", "fire", "lbfgs")),
        fmax=_float(d.get("fmax", vd.fmax), "verify.fmax", positive=True),
        max_steps=_int(d.get("max_steps", vd.max_steps), "verify.max_steps", 1),
        each_iteration=_bool(d.get("each_iteration", vd.each_iteration), "verify.each_iteration"),
        train_frames=_int(d.get("train_frames", vd.train_frames), "verify.train_frames", 0),
    )


def _parse_finetune(raw: Any) -> FinetuneSpec:
    d = _keys(raw, FinetuneSpec, "finetune")
    fd = FinetuneSpec()
    oracle = parse_oracle(d.get("oracle", fd.oracle), "finetune.oracle")
    ft = FinetuneSpec(
        enabled=_bool(d.get("enabled", fd.enabled), "finetune.enabled"),
        every=_int(d.get("every", fd.every), "finetune.every", 1),
        committee=_int(d.get("committee", fd.committee), "finetune.committee", 2),
        trust_lo=_float(d.get("trust_lo", fd.trust_lo), "finetune.trust_lo", nonneg=True),
        trust_hi=_float(d.get("trust_hi", fd.trust_hi), "finetune.trust_hi", positive=True),
        window=_float(d.get("window", fd.window), "finetune.window", nonneg=True),
        max_labels=_opt_int(d.get("max_labels", fd.max_labels), "finetune.max_labels", 1),
        max_energy=_opt_float(d.get("max_energy", fd.max_energy), "finetune.max_energy", positive=True),
        conv_accuracy=_float(d.get("conv_accuracy", fd.conv_accuracy), "finetune.conv_accuracy", nonneg=True),
        max_iterations=_opt_int(d.get("max_iterations", fd.max_iterations), "finetune.max_iterations", 1),
        oracle=dict(oracle),
        steps=_int(d.get("steps", fd.steps), "finetune.steps", 1),
        epochs=_int(d.get("epochs", fd.epochs), "finetune.epochs", 1),
        learning_rate=_float(d.get("learning_rate", fd.learning_rate), "finetune.learning_rate",
                             positive=True),
        rerelax=_int(d.get("rerelax", fd.rerelax), "finetune.rerelax", 0),
        snapshot_every=_int(d.get("snapshot_every", fd.snapshot_every), "finetune.snapshot_every", 1),
        minimum_frames=_int(d.get("minimum_frames", fd.minimum_frames), "finetune.minimum_frames", 0),
        diversity=_str(d.get("diversity", fd.diversity), "finetune.diversity",
                       choices=("bootstrap", "seeds", "fresh_head")),
    )
    if ft.trust_hi <= ft.trust_lo:
        raise SetupError("finetune.trust_hi", f"must be above trust_lo ({ft.trust_lo}), got {ft.trust_hi}")
    if ft.conv_accuracy > 1:
        raise SetupError("finetune.conv_accuracy", f"is a fraction (0-1), got {ft.conv_accuracy}")
    return ft


def parse_campaign(raw: Any, source: str = "<campaign>", base_dir: str | None = None) -> Campaign:
    """A validated :class:`Campaign` from a mapping (e.g. loaded YAML).

    Args:
        raw: the campaign as plain data.
        source: where it came from (a file name), for messages.
        base_dir: what relative ``model.path`` values are relative to (default: the directory
            of ``source`` when that is a file, else the working directory).

    Raises:
        SetupError: the first bad field, named by its dotted path, with what is allowed.
    """
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source)) if os.path.isfile(source) else os.getcwd()
    if raw is None:
        raise SetupError(source, "the campaign is empty; give at least system.composition")
    d = _keys(raw, Campaign, "")
    name = _str(d.get("name", "campaign"), "name")
    if not _NAME_RE.match(name):
        raise SetupError("name", f"{name!r} is not allowed; use letters, digits, '.', '_' and '-' "
                                 "(it names the output directory)")
    generations = _opt_int(d.get("generations", 10), "generations", 1)
    max_relaxations = _opt_int(d.get("max_relaxations"), "max_relaxations", 1)
    if generations is None and max_relaxations is None:
        raise SetupError("generations", "give generations or max_relaxations (an integer >= 1): "
                                        "the search needs a budget")
    output = d.get("output")
    if output is not None and (not isinstance(output, str) or not output):
        raise SetupError("output", f"must be a directory path or null, got {_type_name(output)} {output!r}")
    camp = Campaign(
        name=name,
        seed=_opt_int(d.get("seed"), "seed", 0),
        system=_parse_system(d.get("system"), base_dir),
        generators=_parse_generators(d.get("generators")),
        population=_int(d.get("population", 12), "population", 1),
        generations=generations,
        max_relaxations=max_relaxations,
        stop=_parse_stop(d.get("stop")),
        model=_parse_model(d.get("model"), base_dir),
        relax=_parse_relax(d.get("relax")),
        dedupe=_parse_dedupe(d.get("dedupe")),
        output=output,
        report=_parse_report(d.get("report")),
        parallel=_parse_parallel(d.get("parallel")),
        finetune=_parse_finetune(d.get("finetune")),
        verify=_parse_verify(d.get("verify")),
    )
    if camp.finetune.enabled and camp.model.backend not in ("chgnet", "deepmd"):
        raise SetupError("finetune.enabled", f"the fine-tune loop trains chgnet or deepmd models, not "
                                             f"{camp.model.backend}; set model.backend, or finetune.enabled: "
                                             "false")
    if camp.verify.enabled and camp.verify.oracle is None and not camp.finetune.enabled \
            and "oracle" not in (d.get("finetune") or {}):
        raise SetupError("verify.oracle", "verification needs an oracle: give verify.oracle (e.g. "
                                          "{calculator: gpaw, options: {...}}), or set verify.enabled: false")
    if camp.finetune.enabled and camp.model.backend == "deepmd" and not str(camp.model.path).endswith(".pt"):
        raise SetupError("model.path", "fine-tuning a deepmd model starts from its .pt checkpoint, "
                                       f"not {camp.model.path}")
    return camp


def load_campaign(path: str | os.PathLike[str]) -> Campaign:
    """Read and validate a campaign YAML file.

    Raises:
        SetupError: unreadable file, YAML syntax error (names the file and line), or a bad
            field (named by its dotted path).
    """
    import yaml

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise SetupError(path, f"cannot read the campaign file: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SetupError(where, f"YAML syntax error: {problem}") from None
    return parse_campaign(raw, source=path)


# --------------------------------------------------------------------------------- reference


def _default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("type") == "section":
        return "(section)"
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:  # pragma: no cover - every field has a default
        return ""
    if isinstance(value, tuple) and value and all(isinstance(v, GeneratorSpec) for v in value):
        def entry(g: GeneratorSpec) -> str:
            opts = ", ".join(f"{k}: {v}" for k, v in g.options.items())
            return f"{{name: {g.name}, share: {g.share:g}" + (f", options: {{{opts}}}" if opts else "") + "}"

        return "`[" + ", ".join(entry(g) for g in value) + "]`"
    if isinstance(value, tuple) and len(value) > 2 and all(isinstance(v, int) for v in value) \
            and list(value) == list(range(value[0], value[-1] + 1)):
        return f'`"{value[0]}-{value[-1]}"`'
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (tuple, list)):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`"
    return f"`{value}`"


def _table(cls: type) -> list[str]:
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        lines.append(f"| `{f.name}` | {f.metadata['type']} | {_default_text(f)} | "
                     f"{f.metadata['doc']} |")
    return lines


def campaign_reference() -> str:
    """The Markdown reference of the campaign schema, generated from the dataclass metadata."""
    doc = (Campaign.__doc__ or "").strip()
    lines = [
        "# Campaign file reference",
        "",
        "<!-- generated by `python -m lamcsp.campaign --reference`; do not edit by hand -->",
        "",
        "A campaign is one YAML file; `lamcsp validate CAMPAIGN.yaml` checks it. Every key is "
        "optional (the defaults are below) but `system.composition` or `system.variable`. An "
        "unknown key, a wrong type or an impossible value is an error naming the key by its "
        "dotted path (`generators[1].share`). Example: `campaigns/quickstart.yaml`.",
        "",
        "## Top level",
        "",
        doc,
        "",
        *_table(Campaign),
    ]
    for key, cls in SECTIONS.items():
        title = "`generators`: each entry" if key == "generators[]" else f"`{key}`"
        lines += ["", f"## {title}", "", " ".join((cls.__doc__ or "").split()), "", *_table(cls)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lamcsp.campaign",
                                     description="The campaign schema.")
    parser.add_argument("--reference", action="store_true",
                        help="print the Markdown reference of the schema")
    args = parser.parse_args(argv)
    if args.reference:
        sys.stdout.write(campaign_reference())
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
