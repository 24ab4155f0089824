"""Reading a campaign: a YAML file (:func:`load_campaign`) or a mapping (:func:`parse_campaign`)
validated into a :class:`~lamcsp.campaign.schema.Campaign`, the first problem raised as a
:class:`~lamcsp.errors.SetupError` naming the field by its dotted path."""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError

from lamcsp.campaign.schema import Campaign
from lamcsp.campaign.translate import setup_error
from lamcsp.errors import SetupError


def parse_campaign(raw: Any, source: str = "<campaign>", base_dir: str | None = None) -> Campaign:
    """A validated :class:`Campaign` from a mapping (e.g. loaded YAML).

    Args:
        raw: the campaign as plain data.
        source: where it came from (a file name), for messages.
        base_dir: what relative ``model.path`` and ``system.references`` values are relative to
            (default: the directory of ``source`` when that is a file, else the working directory).

    Raises:
        SetupError: the first bad field, named by its dotted path, with what is allowed.
    """
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source)) if os.path.isfile(source) else os.getcwd()
    if raw is None:
        raise SetupError(source, "the campaign is empty; give at least system.composition")
    try:
        campaign = Campaign.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise setup_error(exc, Campaign) from None
    # the schema's default system names no composition (Campaign() is the defaults); a file must
    if campaign.system.composition is None and campaign.system.variable is None:
        raise SetupError("system.composition", "missing; give system.composition (e.g. Si or "
                         "MgSiO3) or system.variable (e.g. {Mg: [1, 2], O: [1, 3]})")
    return campaign


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
