"""The whole campaign: the top-level keys, the sections, and the rules that tie sections
together (a budget, shares summing to 1, a model the fine-tune loop can train)."""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import field_validator, model_validator

from lamcsp.campaign.base import Int, Section, field, invalid
from lamcsp.campaign.loop import FinetuneSpec, RescoreSpec, VerifySpec
from lamcsp.campaign.sections import (
    DedupeSpec,
    GeneratorSpec,
    ModelSpec,
    ParallelSpec,
    RelaxSpec,
    ReportSpec,
    StopSpec,
    SystemSpec,
)

SHARE_TOLERANCE = 1e-6
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

#: the default campaign's generators (``random`` and the swarm's new particles) draw this many
#: candidates per structure they relax and relax the lowest-enthalpy starts (see README,
#: "Generators"); the generators themselves default to 1
DEFAULT_OVERSAMPLE = 4
#: budget limits, checked up front (a larger value is a typo; `population: 1e308` would
#: propose forever)
MAX_POPULATION = 100_000
MAX_GENERATIONS = 1_000_000
MAX_RELAXATIONS = 100_000_000
#: the rescore model of a campaign that names none and searches with a pretrained CHGNet without
#: the fine-tune loop: the cascade measured on the CSP benchmark (README, "Model cascade")
DEFAULT_RESCORE_MODEL = {"backend": "sevennet", "name": "7net-0"}


def _default_generators() -> tuple[GeneratorSpec, ...]:
    return (GeneratorSpec(name="random", share=0.5, options={"oversample": DEFAULT_OVERSAMPLE}),
            GeneratorSpec(name="pso", share=0.5, options={"oversample": DEFAULT_OVERSAMPLE}))


class Campaign(Section):
    """One structure search: what, with which generators and model, for how long."""

    name: str = field("campaign", type="str (letters, digits, `._-`)",
                      doc="campaign name; names the default output directory")
    seed: Int | None = field(type="int ≥ 0 or null", ge=0,
                             doc="random seed (null: fresh entropy, recorded in the run)")
    system: SystemSpec = field(factory=SystemSpec, type="section", doc="what to search")
    generators: tuple[GeneratorSpec, ...] = field(
        factory=_default_generators,
        type="list of generator entries",
        doc="structure generators and their shares (default: symmetric random and the particle "
            "swarm, half each; the swarm draws 40% of its share as new random structures (all of "
            f"it in the first generation); both draw {DEFAULT_OVERSAMPLE} new random structures per "
            "one they relax and relax those with the lowest enthalpy at the start, lowest first "
            "(`oversample`))")
    population: Int = field(12, type=f"int in [1, {MAX_POPULATION}]", ge=1, le=MAX_POPULATION,
                            doc="structures relaxed per generation")
    generations: Int | None = field(
        10, type=f"int in [1, {MAX_GENERATIONS}] or null", ge=1, le=MAX_GENERATIONS,
        doc="generations at most (give this or `max_relaxations`)")
    max_relaxations: Int | None = field(
        type=f"int in [1, {MAX_RELAXATIONS}] or null", ge=1, le=MAX_RELAXATIONS,
        doc="relaxations at most, over all generations")
    stop: StopSpec = field(factory=StopSpec, type="section", doc="early stopping rule")
    model: ModelSpec = field(factory=ModelSpec, type="section", doc="the potential")
    relax: RelaxSpec = field(factory=RelaxSpec, type="section", doc="relaxation settings")
    dedupe: DedupeSpec = field(factory=DedupeSpec, type="section", doc="duplicate removal")
    output: str | None = field(type="path or null", min_length=1,
                               doc="output directory (null: `runs/<name>`)")
    report: ReportSpec = field(factory=ReportSpec, type="section", doc="report options")
    parallel: ParallelSpec = field(factory=ParallelSpec, type="section",
                                   doc="MPI runs: who relaxes, batch size, threads")
    finetune: FinetuneSpec = field(factory=FinetuneSpec, type="section",
                                   doc="the DP-GEN-style fine-tune loop")
    rescore: RescoreSpec = field(factory=RescoreSpec, type="section",
                                 doc="the model cascade: a second model re-relaxes the best")
    verify: VerifySpec = field(factory=VerifySpec, type="section",
                               doc="oracle verification of the answer")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME_RE.match(name):
            raise invalid(f"{name!r} is not allowed; use letters, digits, '.', '_' and '-' (it names "
                          "the output directory)")
        return name

    @field_validator("generators", mode="before")
    @classmethod
    def _generator_list(cls, value: Any) -> Any:
        if value is None:
            return cls.default_of("generators")
        # strictness relaxed: YAML has lists, the schema keeps a tuple (frozen all the way down)
        if not isinstance(value, (list, tuple)) or not value:
            raise invalid("must be a non-empty list of entries such as {name: random, share: 0.4}")
        return tuple(value)

    @field_validator("generators")
    @classmethod
    def _generator_mix(cls, gens: tuple[GeneratorSpec, ...]) -> tuple[GeneratorSpec, ...]:
        names = [g.name for g in gens]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise invalid(f"generator {n!r} is listed twice; merge the entries", f"[{i}].name")
        total = sum(g.share for g in gens)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise invalid(f"shares must sum to 1, they sum to {total:g} "
                          f"({' + '.join(f'{g.share:g}' for g in gens)})", "[].share")
        return gens

    @model_validator(mode="after")
    def _consistent(self) -> Campaign:
        if self.generations is None and self.max_relaxations is None:
            raise invalid("give generations or max_relaxations (an integer >= 1): the search needs "
                          "a budget", "generations")
        if self.finetune.enabled and self.model.backend not in ("chgnet", "deepmd"):
            raise invalid(f"the fine-tune loop trains chgnet or deepmd models, not {self.model.backend}; "
                          "set model.backend, or finetune.enabled: false", "finetune.enabled")
        if self.verify.enabled and self.verify.oracle is None and not self.finetune.enabled \
                and "oracle" not in self.finetune.model_fields_set:
            raise invalid("verification needs an oracle: give verify.oracle (e.g. {calculator: gpaw, "
                          "options: {...}}), or set verify.enabled: false", "verify.oracle")
        if self.finetune.enabled and self.model.backend == "deepmd" \
                and not str(self.model.path).endswith(".pt"):
            raise invalid(f"fine-tuning a deepmd model starts from its .pt checkpoint, not {self.model.path}",
                          "model.path")
        return self

    @property
    def rescore_is_default(self) -> bool:
        """The campaign names no ``rescore.model`` and its search model is a pretrained CHGNet
        without the fine-tune loop, so the cascade's rescore model is
        :data:`DEFAULT_RESCORE_MODEL`. A model of the user's own (a file, another backend, a
        fine-tuned one) ranks alone unless ``rescore.model`` names a second one."""
        return ("model" not in self.rescore.model_fields_set and self.model.backend == "chgnet"
                and self.model.path is None and not self.finetune.enabled)

    @property
    def rescore_model(self) -> ModelSpec | None:
        """The cascade's rescore model: ``rescore.model``, else the default one
        (:attr:`rescore_is_default`), else None (no rescore stage)."""
        if self.rescore_is_default:
            return ModelSpec(**DEFAULT_RESCORE_MODEL)
        return self.rescore.model

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
        """The run directory: ``output``, else ``runs/<name>``."""
        return self.output if self.output is not None else os.path.join("runs", self.name)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML-ready) that :func:`~lamcsp.campaign.parse_campaign` reads back into an
        equal campaign."""
        d = _plain(self.model_dump())
        if self.rescore_is_default:  # left out, as in the file: read back, it is the default again
            del d["rescore"]["model"]
        return d

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
        model = _model_text(self.model)
        return "\n".join([
            f"campaign {self.name!r}: {what}",
            f"  pressures: {', '.join(f'{p:g}' for p in s.pressures)} GPa",
            f"  generators: {gens}; population {self.population}; at most {' or '.join(budget)}",
            f"  model: {model} on {self.model.device}; relax {self.relax.optimizer} "
            f"fmax {self.relax.fmax:g} eV/Å, {self.relax.max_steps} steps",
            f"  seed: {self.seed if self.seed is not None else 'fresh'}; output: {self.output_dir}",
            *([self._finetune_line()] if self.finetune.enabled else []),
            *([self._rescore_line()] if self.rescore_model is not None else []),
            *([self._verify_line()] if self.verify_enabled else []),
        ])

    def _rescore_line(self) -> str:
        r = self.rescore
        return (f"  rescore: the top {r.top_k} per composition and pressure (and all within {r.window:g} "
                f"eV/atom of the hull) re-relaxed by {_model_text(self.rescore_model)} at the end"
                + (" (the default cascade; `rescore: {model: null}` turns it off)" if self.rescore_is_default
                   else "")
                + (", then verified from its ranking" if self.verify_enabled else ""))

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


def _model_text(model: ModelSpec) -> str:
    where = model.path or model.name
    return model.backend + (f":{where}" if where else "") + (f"@{model.modal}" if model.modal else "")


#: every section by its key (``generators[]``: one entry of the list), in the reference's order
SECTIONS: dict[str, type[Section]] = {
    "system": SystemSpec, "generators[]": GeneratorSpec, "model": ModelSpec, "relax": RelaxSpec,
    "dedupe": DedupeSpec, "stop": StopSpec, "report": ReportSpec, "parallel": ParallelSpec,
    "finetune": FinetuneSpec, "rescore": RescoreSpec, "verify": VerifySpec,
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


def comparable(value: Any, key: str | None = None) -> Any:
    """A campaign key's plain value as ``--resume`` compares it (``key``: the top-level key):
    integral floats as ints, and a rescore section without a model as just that."""
    if key == "rescore" and isinstance(value, dict) and "model" in value and value["model"] is None:
        return {"model": None}  # no rescore stage: its other settings change nothing
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
