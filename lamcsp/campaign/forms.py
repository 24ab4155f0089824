"""The YAML forms the campaign accepts beyond plain values: formulas (``MgSiO3``), integer
ranges (``"1-4"``, ``"2-230"``), element ranges (``{Mg: [1, 2]}``), option mappings and oracle
specs. Each check returns the value in the schema's type or raises :func:`~.base.invalid`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from lamcsp.campaign.base import invalid, type_name
from lamcsp.errors import SetupError


def integer(value: Any, sub: str = "") -> int:
    """``value`` as an int (an integral float too); else the error names ``sub``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"must be an integer, got {type_name(value)} {value!r}", sub)
    return value


def number(value: Any) -> float:
    """``value`` as a finite float (ints too, never bools)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(f"must be a finite number, got {type_name(value)} {value!r}")
    return float(value)


def element(symbol: Any, sub: str = "") -> str:
    """A chemical symbol, else an error naming ``sub``."""
    from ase.data import chemical_symbols

    if not isinstance(symbol, str) or symbol not in chemical_symbols[1:]:
        raise invalid(f"unknown element {symbol!r}; use chemical symbols such as Si, Mg, O", sub)
    return symbol


def int_ranges(value: Any, lo: int, hi: int, example: str) -> tuple[int, ...]:
    """An int, a list of ints, or text of ranges ``"1-4"`` / ``"1,2,8-10"``: ascending, in
    ``[lo, hi]``."""
    if isinstance(value, str):
        out: list[int] = []
        for part in value.replace(" ", "").split(","):
            if not part:
                continue
            try:
                a, _, b = part.partition("-")
                first, last = int(a), int(b or a)
            except ValueError:
                raise invalid(f"cannot read {part!r}; give an integer, a list, or ranges such as "
                              f"{example!r}") from None
            if first > last:
                raise invalid(f"impossible range {part!r}: the first number must not exceed the "
                              f"second, e.g. {example!r}")
            if first < lo or last > hi:  # before the range is built: "1-1000000000" is no list
                raise invalid(f"{part!r} is outside the allowed {lo}-{hi}")
            out.extend(range(first, last + 1))
        values: list[Any] = out
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        values = [value]
    if not values:
        raise invalid(f"must not be empty; give an integer, a list, or a range such as {example!r}")
    ints = [integer(v) for v in values]
    for v in ints:
        if not lo <= v <= hi:
            raise invalid(f"{v} is outside the allowed {lo}-{hi}")
    if any(b <= a for a, b in zip(ints, ints[1:])):
        raise invalid(f"values must be ascending without repeats, got {ints}")
    return tuple(ints)


def composition(value: Any) -> dict[str, int]:
    """A formula (``MgSiO3``) or a mapping ``{element: count}`` as ``{element: count}``."""
    if isinstance(value, str):
        from ase.formula import Formula

        text = value.strip()
        try:
            counts = Formula(text).count()
        except Exception as exc:  # ase raises ValueError and others on malformed formulas
            raise invalid(f"cannot read formula {value!r} ({exc}); write e.g. Si or MgSiO3") from None
        for symbol in counts:
            element(symbol)
        if not re.fullmatch(r"([A-Z][a-z]?\d*)+", text):
            raise invalid(f"cannot read formula {value!r}; write e.g. Si or MgSiO3 (no brackets), or "
                          "a mapping {element: count}")
        value = dict(counts)
    if not isinstance(value, Mapping) or not value:
        raise invalid(f"must be a formula such as MgSiO3 or a mapping {{element: count}}, got "
                      f"{type_name(value)} {value!r}")
    out: dict[str, int] = {}
    for symbol, n in value.items():
        element(symbol, str(symbol))
        count = integer(n, str(symbol))
        if count < 1:
            raise invalid(f"counts must be positive integers, got {n!r}", str(symbol))
        out[symbol] = count
    return out


def element_ranges(value: Any) -> dict[str, tuple[int, int]]:
    """A variable composition ``{element: [min, max]}`` (atoms per cell)."""
    if not isinstance(value, Mapping) or not value:
        raise invalid("must be a mapping {element: [min, max]} such as {Mg: [1, 2], O: [1, 3]}, got "
                      f"{type_name(value)} {value!r}")
    out: dict[str, tuple[int, int]] = {}
    for symbol, rng in value.items():
        sub = str(symbol)
        element(symbol, sub)
        if not (isinstance(rng, (list, tuple)) and len(rng) == 2):
            raise invalid(f"must be a range [min, max] of atoms per cell, got {rng!r}", sub)
        lo, hi = integer(rng[0], sub), integer(rng[1], sub)
        if lo < 0 or hi < 1:
            raise invalid(f"counts must be >= 0 (min) and >= 1 (max), got [{lo}, {hi}]", sub)
        if lo > hi:
            raise invalid(f"impossible range [{lo}, {hi}]: min must not exceed max", sub)
        out[symbol] = (lo, hi)
    return out


def options(value: Any) -> dict[str, Any]:
    """Keyword options: a mapping with string keys (null, or anything empty: none)."""
    value = value or {}  # `options:` with nothing under it, as the parser always took
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise invalid(f"must be a mapping of option names to values, got {value!r}")
    return dict(value)


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


def oracle(value: Any) -> dict[str, Any]:
    """:func:`parse_oracle` inside a validator (the error's field below the validated one)."""
    try:
        return parse_oracle(value, "")
    except SetupError as exc:
        raise invalid(exc.message, exc.field.lstrip(".")) from None
