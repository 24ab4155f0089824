"""The base of every campaign section: strict, frozen and closed pydantic models whose keys
carry the type text and description that the generated reference prints.

Validators raise :func:`invalid`, a pydantic error whose context holds the one-paragraph
message and the dotted path below the location pydantic reports (``Qq`` under
``system.composition``); :mod:`lamcsp.campaign.translate` turns it into a
:class:`~lamcsp.errors.SetupError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonDict
from pydantic_core import PydanticCustomError

#: the pydantic error type of the schema's own checks (their context: ``message``, ``sub``)
ERROR_TYPE = "lamcsp"

S = TypeVar("S", bound="Section")


def invalid(message: str, sub: str = "") -> PydanticCustomError:
    """The error a validator raises.

    Args:
        message: what is wrong and what is allowed, one paragraph.
        sub: the field below the one validated, as a dotted tail (``Qq``, ``[1].name``,
            ``options.max_attempts``); empty for the field itself.
    """
    return PydanticCustomError(ERROR_TYPE, "{message}", {"message": message, "sub": sub})


def type_name(value: Any) -> str:
    """How messages name the type of a YAML value (``null`` for None)."""
    return "null" if value is None else type(value).__name__


def field(default: Any = None, *, doc: str, type: str | None = None, factory: Any = None,
          **constraints: Any) -> Any:
    """One key of a section: its default (or ``factory``) and, for the reference, the allowed
    values (``type``; None where the annotation is a ``Literal``, whose values the reference
    lists) and a description. ``constraints`` are pydantic's (``ge``, ``gt``, ``min_length``)."""
    extra: JsonDict | None = {"x-type": type} if type is not None else None
    if factory is not None:
        return Field(default_factory=factory, description=doc, json_schema_extra=extra, **constraints)
    return Field(default=default, description=doc, json_schema_extra=extra, **constraints)


def allowed_text(info: FieldInfo) -> str | None:
    """The ``type`` text a key was declared with (:func:`field`), if any."""
    extra = info.json_schema_extra
    text = extra.get("x-type") if isinstance(extra, dict) else None
    return text if isinstance(text, str) else None


#: the largest integer any key takes (what SQLite and numpy store as int64); keys that size work
#: have smaller limits of their own
MAX_INT = 2**63 - 1


def _integral(value: Any) -> Any:
    # strictness relaxed: YAML reads `500.0` or `1e3` as a float, and integer keys have always
    # taken integral floats; anything else still meets pydantic's strict int (no bools, no "3")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise invalid(f"{value:.3g} is beyond the largest integer allowed, {MAX_INT} (2^63 - 1)")
    return value


#: an integer key (an integral float is read as its int)
Int = Annotated[int, BeforeValidator(_integral)]


class Section(BaseModel):
    """A campaign section: strict (no coercion: `"3"` is no number, 1 is not `true`), frozen
    (assignment raises; :meth:`replace` makes a validated copy) and closed (an unknown key is
    an error that lists the allowed ones). Numbers must be finite."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None:  # `relax:` with nothing under it: every default
            return {}
        if isinstance(data, BaseModel):
            return data
        if not isinstance(data, Mapping):
            raise invalid(f"must be a mapping of keys to values, got {type_name(data)} {data!r}")
        allowed = list(cls.model_fields)
        for key in data:
            if key not in allowed:
                raise invalid(f"unknown key {key!r}; allowed keys here: {', '.join(allowed)}", str(key))
        return dict(data)

    @classmethod
    def default_of(cls, name: str) -> Any:
        """The schema's default of key ``name`` (code elsewhere reads defaults from here)."""
        return cls.model_fields[name].get_default(call_default_factory=True)

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes``, validated like the section itself (pydantic's
        ``model_copy(update=...)`` would skip validation).

        Raises:
            SetupError: a change the section does not allow, named by its key.
        """
        from pydantic import ValidationError

        from lamcsp.campaign.translate import setup_error

        try:
            return self.model_validate({**dict(self), **changes})
        except ValidationError as exc:
            raise setup_error(exc, type(self)) from None
