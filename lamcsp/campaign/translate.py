"""pydantic's ``ValidationError`` as lamcsp's :class:`~lamcsp.errors.SetupError`: the first
error's location as a dotted path (``generators[1].share``) and a message of our own per error
type that says what is allowed, in one paragraph (never pydantic's multi-line text or URLs)."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from lamcsp.campaign.base import ERROR_TYPE, allowed_text, type_name
from lamcsp.errors import SetupError

_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def dotted(loc: tuple[int | str, ...], sub: str = "") -> str:
    """``("generators", 1, "share")`` as ``generators[1].share``; ``sub`` appended."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    if sub:
        out += sub if sub.startswith("[") or not out else f".{sub}"
    return out


def setup_error(exc: ValidationError, root: type[BaseModel]) -> SetupError:
    """The :class:`SetupError` of the first error in ``exc``, raised validating ``root``."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == ERROR_TYPE:
        return SetupError(dotted(loc, ctx.get("sub", "")) or "campaign", ctx["message"])
    return SetupError(dotted(loc) or "campaign",
                      _message(err["type"], err.get("input"), ctx, field_at(root, loc), err["msg"]))


def field_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> FieldInfo | None:
    """The schema key an error location ends in (list indices and mapping keys below a key
    stay with that key)."""
    model: type[BaseModel] | None = root
    info = None
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return None
        model = _model_in(info.annotation)
    return info


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is tuple:
        return _model_in(typing.get_args(annotation)[0])
    return None


def _nullable(info: FieldInfo | None) -> bool:
    """Whether null is allowed (``X | None``)."""
    if info is None:
        return False
    union = typing.get_origin(info.annotation) in (typing.Union, types.UnionType)
    return union and type(None) in typing.get_args(info.annotation)


def _choices(info: FieldInfo | None) -> list[str]:
    """The values of a ``Literal`` key (of ``Literal[...] | None`` too)."""
    annotation = info.annotation if info is not None else None
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else None
    if typing.get_origin(annotation) is not typing.Literal:
        return []
    return [str(a) for a in typing.get_args(annotation)]


def _message(kind: str, value: Any, ctx: dict[str, Any], info: FieldInfo | None, fallback: str) -> str:
    got = f"got {type_name(value)} {value!r}"
    null = " or null" if _nullable(info) else ""
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return f"must be an integer{null}, {got}"
    if kind in ("float_type", "finite_number", "float_parsing"):
        return f"must be a finite number{null}, {got}"
    if kind == "bool_type":
        return f"must be true or false{null}, {got}"
    if kind in ("string_type", "string_too_short"):
        return f"must be a non-empty string{null}, {got}"
    if kind == "literal_error":
        allowed = ", ".join(_choices(info))
        if isinstance(value, str):
            return f"{value!r} is not allowed; allowed: {allowed}"
        return f"must be one of {allowed}{null}, {got}"
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        annotation = info.annotation if info is not None else None
        what = "a number" if float in (annotation, *typing.get_args(annotation)) else "an integer"
        return f"must be {what} {op} {ctx.get(key):g}, got {value}"
    if kind in ("dict_type", "mapping_type", "model_type", "model_attributes_type"):
        return f"must be a mapping{null}, {got}"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list{null}, {got}"
    if kind == "extra_forbidden":
        return "unknown key"
    text = allowed_text(info) if info is not None else None
    if text is not None:
        return f"must be {text.replace('`', '')}, {got}"
    return f"{fallback.splitlines()[0]}, {got}"
