"""The campaign schema: one YAML file, validated into a typed, frozen :class:`Campaign`.

``load_campaign(path)`` reads a YAML file, ``parse_campaign(mapping)`` validates a mapping;
both are strict: an unknown key, a wrong type or an impossible value raises
:class:`~lamcsp.errors.SetupError` naming the field by its dotted path
(``generators[1].share``, ``system.pressures``) and what is allowed. Nothing is computed here.

The schema is a set of pydantic v2 models (strict, frozen, unknown keys forbidden), one per
section; each key's default, allowed values and description are written once, in its
``Field``, and :func:`campaign_reference` turns them into the Markdown reference committed as
``docs/campaign_reference.md``::

    python -m lamcsp.campaign --reference > docs/campaign_reference.md

Modules: :mod:`.base` (the section base, the key helper), :mod:`.forms` (formulas, ranges,
oracles), :mod:`.sections` and :mod:`.loop` (the sections), :mod:`.schema` (:class:`Campaign`),
:mod:`.translate` (pydantic's errors as ``SetupError``), :mod:`.parse` (reading), and
:mod:`.reference`.
"""

from lamcsp.campaign.base import Section
from lamcsp.campaign.forms import parse_oracle
from lamcsp.campaign.loop import FinetuneSpec, RescoreSpec, VerifySpec
from lamcsp.campaign.parse import load_campaign, parse_campaign
from lamcsp.campaign.reference import campaign_reference, main
from lamcsp.campaign.schema import DEFAULT_OVERSAMPLE, SECTIONS, SHARE_TOLERANCE, Campaign
from lamcsp.campaign.sections import (
                                      PRESSURE_RANGE_GPA,
                                      DedupeSpec,
                                      GeneratorSpec,
                                      ModelSpec,
                                      ParallelSpec,
                                      RelaxSpec,
                                      ReportSpec,
                                      StopSpec,
                                      SystemSpec,
)

__all__ = [
    "DEFAULT_OVERSAMPLE", "PRESSURE_RANGE_GPA", "SECTIONS", "SHARE_TOLERANCE", "Campaign", "DedupeSpec",
    "FinetuneSpec", "GeneratorSpec", "ModelSpec", "ParallelSpec", "RelaxSpec", "ReportSpec", "Section",
    "RescoreSpec", "StopSpec", "SystemSpec", "VerifySpec", "campaign_reference", "load_campaign", "main",
    "parse_campaign",
    "parse_oracle",
]
