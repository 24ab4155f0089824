"""The sections of the model-improvement loop: ``finetune`` (DP-GEN-style fine-tuning),
``rescore`` (a second, slower model re-relaxing the best: the model cascade) and ``verify`` (the
oracle's check of the answer, the cascade's last stage)."""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import ValidationInfo, field_validator, model_validator

from lamcsp.campaign import forms
from lamcsp.campaign.base import Int, Section, field, invalid
from lamcsp.campaign.sections import ModelSpec

#: what a head may be called (a key of DeePMD-kit's input and of ``@HEAD``; RANDOM is reserved)
_HEAD_RE = re.compile(r"^[A-Za-z0-9_]+$")


class KeepPretrainedSpec(Section):
    """A campaign set's extra head kept on pretraining data (DeePMD-kit's recipe against
    forgetting): trained with the campaigns' heads on `data` (a piece of the pretraining set),
    so the shared descriptor does not drift away from what it knew. DeePMD-kit only; give the
    same section in every campaign of the set that gives one."""

    head: str = field("pretrained", type="name (letters, digits, _)",
                      doc="the kept head's name: for a multi-head model, the pretrained head it continues; "
                          "for a single-head model any name (it starts from the model's only head)")
    data: tuple[str, ...] = field(type="list of folders (required)",
                                  doc="`deepmd/npy` system folders of pretraining data (relative to the "
                                      "campaign file); at least one")
    weight: float | None = field(type="number > 0 or null", gt=0,
                                 doc="its share of the training steps, as `finetune.shared.weight` (null: "
                                     "the mean of the campaigns' weights, or of their label counts)")

    @field_validator("head")
    @classmethod
    def _head(cls, head: str) -> str:
        if not _HEAD_RE.match(head) or head == "RANDOM":
            raise invalid(f"{head!r} cannot name a head; use letters, digits and _ (not RANDOM)")
        return head

    @field_validator("data", mode="before")
    @classmethod
    def _folders(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value \
                or not all(isinstance(v, str) and v for v in value):
            raise invalid(f"must be a non-empty list of deepmd/npy folders, got {value!r}")
        base_dir = (info.context or {}).get("base_dir")
        if base_dir is None:
            return tuple(value)
        out = []
        for v in value:
            full = os.path.normpath(os.path.join(base_dir, os.path.expanduser(v)))
            if not os.path.isfile(os.path.join(full, "type.raw")):
                raise invalid(f"{full} is not a deepmd/npy system folder (no type.raw); give folders "
                              "relative to the campaign file")
            out.append(full)
        return tuple(out)

    @model_validator(mode="before")
    @classmethod
    def _needs_data(cls, data: Any) -> Any:
        if isinstance(data, dict) and "data" not in data:
            raise invalid("missing; give the deepmd/npy folders the kept head trains on", "data")
        return data


class SharedSpec(Section):
    """A campaign's options as one of a campaign set (`lamcsp search A.yaml B.yaml
    --shared-finetune`); an error in a campaign run alone. The
    set reads them from all its campaigns: values that must be one for the set (the kept
    pretrained head) must agree where given, and weights are given by every campaign or by
    none."""

    weight: float | None = field(type="number > 0 or null", gt=0,
                                 doc="this campaign's head's share of the shared training's steps "
                                     "(DeePMD-kit `model_prob`, normalised over the set; null in every "
                                     "campaign: from the label counts, so every frame is seen about equally "
                                     "often)")
    keep_pretrained: KeepPretrainedSpec | None = field(
        type="section or null", doc="a head kept on pretraining data against forgetting (null: none)")


class FinetuneSpec(Section):
    """The DP-GEN-style fine-tune loop: every `every` generations, the committee (K fine-tuned
    copies of the model) rates the unique hits and relaxation frames; uncertain ones
    (`trust_lo` <= max force deviation < `trust_hi`) and the lowest-enthalpy hits (within
    `window`) are labelled by the oracle, the model is fine-tuned on all labels so far, and the
    search goes on with it. Stops when the accurate fraction reaches `conv_accuracy` or after
    `max_iterations`. Needs a `chgnet` or `deepmd` model."""

    enabled: bool = field(False, type="bool", doc="run the fine-tune loop")
    every: Int = field(2, type="int ≥ 1", ge=1, doc="generations between fine-tune iterations")
    committee: Int = field(4, type="int in [2, 64]", ge=2, le=64,
                           doc="committee size K (fine-tuned copies, seeds 1..K)")
    trust_lo: float = field(0.05, type="number", ge=0,
                            doc="max force deviation (eV/Å) under which a prediction is trusted (DP-GEN)")
    trust_hi: float = field(0.50, type="number", gt=0,
                            doc="max force deviation (eV/Å) from which a frame is discarded, not labelled")
    window: float = field(0.05, type="number ≥ 0", ge=0,
                          doc="hits within this many eV/atom above the hull of the hits (one "
                              "composition: of the lowest) are labelled whatever their deviation")
    max_labels: Int | None = field(20, type="int or null", ge=1, doc="oracle labels per iteration at most")
    max_energy: float | None = field(
        1.0, type="number > 0 or null", gt=0,
        doc="eV/atom: an uncertain frame more than this above the best hit of its composition "
            "(by the committee) is not labelled (the far slopes of random starts; null: no cap)")
    conv_accuracy: float = field(0.9, type="number", ge=0,
                                 doc="fraction of trusted predictions at which the loop stops")
    max_iterations: Int | None = field(5, type="int or null", ge=1, doc="fine-tune iterations at most")
    oracle: dict[str, Any] = field(
        factory=lambda: {"calculator": "emt"}, type="mapping",
        doc="the labeller: `{calculator: NAME, options: {...}}` (an ASE calculator by name: emt, "
            "gpaw, vasp, espresso, abacus, cp2k, ...) or `{command: ..., input: vasp, output: "
            "vasp/outcar, output_file: OUTCAR}` (an external code whose output dpdata reads)")
    steps: Int = field(1000, type="int ≥ 1", ge=1, doc="training steps per member (deepmd)")
    epochs: Int = field(30, type="int ≥ 1", ge=1, doc="training epochs per member (chgnet)")
    learning_rate: float = field(1e-3, type="number > 0", gt=0, doc="starting learning rate")
    rerelax: Int = field(5, type="int ≥ 0", ge=0,
                         doc="best unique hits per unit re-relaxed with each new model")
    snapshot_every: Int = field(20, type="int ≥ 1", ge=1,
                                doc="relaxation steps between the trajectory frames kept for the committee "
                                    "to rate")
    minimum_frames: Int = field(
        2, type="int ≥ 0", ge=0,
        doc="the last trajectory frames of each low-enthalpy hit (within `window`) labelled with it: "
            "the energy differences that decide the ranking, near each competitor's minimum")
    diversity: Literal["bootstrap", "seeds", "fresh_head"] = field(
        "bootstrap",
        doc="how committee members differ: `bootstrap` (member k > 0 trains on a bootstrap resample "
            "of the labels), `seeds` (the same labels, other seeds), `fresh_head` (a freshly "
            "initialised readout / fitting net per member; DeePMD-kit: `--model-branch RANDOM`); "
            "all use seeds 1..K (`benchmarks/committee_diversity.py` measures them)")
    shared: SharedSpec | None = field(
        type="section or null",
        doc="options of a campaign set sharing its fine-tune iterations (`--shared-finetune`): "
            "`weight`, `keep_pretrained`; an error in a campaign run alone (null: the set's defaults)")

    @field_validator("oracle", mode="before")
    @classmethod
    def _oracle(cls, value: Any) -> dict[str, Any]:
        return forms.oracle(value)

    @model_validator(mode="after")
    def _trust_range(self) -> FinetuneSpec:
        if self.trust_hi <= self.trust_lo:
            raise invalid(f"must be above trust_lo ({self.trust_lo}), got {self.trust_hi}", "trust_hi")
        if self.conv_accuracy > 1:
            raise invalid(f"is a fraction (0-1), got {self.conv_accuracy}", "conv_accuracy")
        return self


class RescoreSpec(Section):
    """The model cascade: after the search, a second model (a slower, more accurate LAM) re-relaxes
    the `top_k` unique structures of every composition and pressure, and every one within
    `window` of the search model's hull, in one batched relaxation. Its rows are stored beside the
    search's (`role=verify`, `stage=rescore`, `oracle=lam-<model id>`) and the report ranks them
    by both models. With `verify`, the oracle then checks the rescore model's best (its own
    `top_k` and `window`, by the rescore model's enthalpies): each stage ranks what the one
    before it picked, and the answer is the last stage's lowest."""

    model: ModelSpec | None = field(type="section or null",
                                    doc="the rescore model, as `model` (null: no rescore stage). Not "
                                        "given: SevenNet-0 (`{backend: sevennet, name: 7net-0}`) when "
                                        "the search model is a pretrained CHGNet (no `model.path`) and "
                                        "the fine-tune loop is off, the cascade measured best on the "
                                        "CSP benchmark (README, \"Model cascade\"); else none")
    top_k: Int = field(10, type="int ≥ 1", ge=1,
                       doc="structures re-relaxed per composition and pressure, the search model's "
                           "lowest first")
    window: float = field(0.05, type="number ≥ 0", ge=0,
                          doc="eV/atom: every unique structure this close to the search model's hull (one "
                              "composition: to its lowest) is re-relaxed too (0.03 lost one of 29 "
                              "benchmark hits and saved 17% of the rescored structures)")
    fmax: float | None = field(type="number > 0 or null", gt=0, doc="eV/Å (null: `relax.fmax`)")
    max_steps: Int | None = field(type="int ≥ 1 or null", ge=1, doc="steps per relaxation (null: "
                                                                     "`relax.max_steps`)")


class VerifySpec(Section):
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

    enabled: bool | None = field(type="bool or null",
                                 doc="verify the answer (null: whenever `finetune.enabled`)")
    oracle: dict[str, Any] | None = field(
        type="mapping or null",
        doc="the oracle, as `finetune.oracle` (null: `finetune.oracle`; give one when the fine-tune "
            "loop is off)")
    mode: Literal["relax", "single_point"] = field(
        "relax", doc="relax each structure with the oracle (cell and atoms, at its pressure), or "
                     "one oracle single point at the model's structure (cheaper, less exact)")
    top_k: Int = field(5, type="int ≥ 1", ge=1, doc="structures verified per composition and pressure, the "
                                                    "model's lowest first")
    window: float = field(
        0.03, type="number ≥ 0", ge=0,
        doc="eV/atom: every unique structure this close to the model's hull (one composition: to its "
            "lowest) is verified too")
    optimizer: Literal["bfgs", "fire", "lbfgs"] = field(
        "bfgs", doc="ASE optimizer of the oracle relaxations (through `FrechetCellFilter`)")
    fmax: float = field(0.05, type="number > 0", gt=0, doc="oracle relaxations converge at this force, eV/Å")
    max_steps: Int = field(100, type="int ≥ 1", ge=1, doc="oracle calls per relaxation at most")
    each_iteration: bool = field(
        True, type="bool",
        doc="with the fine-tune loop: verify the best structures of the model in use at the start of "
            "every iteration (the ranking stop rule needs it)")
    train_frames: Int = field(
        3, type="int ≥ 0", ge=0,
        doc="oracle frames of each verification that join the next fine-tune iteration's data (its "
            "first, the model's structure, and its last, the oracle's minimum, first; no extra "
            "oracle calls)")

    @field_validator("oracle", mode="before")
    @classmethod
    def _oracle(cls, value: Any) -> Any:
        return None if value is None else forms.oracle(value)
