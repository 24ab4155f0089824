"""Reading a campaign: a YAML file (:func:`load_campaign`) or a mapping (:func:`parse_campaign`)
validated into a :class:`~lamcsp.campaign.schema.Campaign`, the first problem raised as a
:class:`~lamcsp.errors.SetupError` naming the field by its dotted path.

YAML is read by :func:`read_yaml`: UTF-8 text only, a size limit, no duplicated keys, and no
alias expansion beyond :data:`MAX_YAML_NODES` (a "billion laughs" file is refused before it is
built, not after it has taken the memory)."""

from __future__ import annotations

import os
from typing import Any

import yaml
from pydantic import ValidationError

from lamcsp.campaign.schema import Campaign
from lamcsp.campaign.translate import setup_error
from lamcsp.errors import SetupError

#: largest YAML file read (a campaign is a few hundred bytes; an oracle spec a few kilobytes)
MAX_YAML_BYTES = 1_000_000
#: most YAML nodes a document may hold with every alias expanded
MAX_YAML_NODES = 100_000


class _Refused(Exception):
    """A YAML document refused by :class:`_StrictLoader` (the message says why)."""

    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.line = line


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses duplicated keys and documents whose aliases would
    expand past :data:`MAX_YAML_NODES` nodes (or into themselves)."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        sizes: dict[int, int] = {}
        _expanded_size(node, sizes, set())
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise _Refused(f"key {key!r} appears twice in one mapping; keep one",
                                   key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes under ``node`` with aliases expanded (each shared node measured once)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise _Refused("an alias refers to the node that contains it (a recursive structure)",
                       node.start_mark.line + 1)
    open_.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        size += _expanded_size(child, sizes, open_)
        if size > MAX_YAML_NODES:
            raise _Refused(f"the YAML aliases (*name) here expand to more than {MAX_YAML_NODES} "
                           "values, the limit; write the values out", node.start_mark.line + 1)
    open_.discard(key)
    sizes[key] = size
    return size


def read_yaml(path: str | os.PathLike[str], what: str = "campaign file") -> Any:
    """The YAML document in ``path`` as plain data.

    Raises:
        SetupError: (naming the file, and the line where known) a file that cannot be read, is
            larger than :data:`MAX_YAML_BYTES`, is not UTF-8 text, is not valid YAML, repeats a
            key, or expands past :data:`MAX_YAML_NODES` nodes.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_YAML_BYTES:
            raise SetupError(path, f"the {what} is {size} bytes, above the limit of {MAX_YAML_BYTES}; "
                                   "is it the right file?")
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise SetupError(path, f"cannot read the {what}: {exc.strerror or exc}") from None
    return parse_yaml(data, path, what)


def parse_yaml(data: bytes | str, source: str, what: str = "campaign file") -> Any:
    """:func:`read_yaml` of text or bytes already read (``source`` names it in messages)."""
    if isinstance(data, bytes):
        if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4096]:
            kind = "UTF-16/UTF-32 text" if data[:2] in (b"\xff\xfe", b"\xfe\xff") or data[1:2] == b"\x00" \
                else "a binary file"
            raise SetupError(source, f"the {what} is {kind}, not UTF-8 YAML text; save it as UTF-8")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            raise SetupError(f"{source}, line {line}", f"the {what} is not UTF-8 text (byte "
                             f"0x{data[exc.start]:02x}); save it as UTF-8") from None
    if "\x00" in data:
        raise SetupError(source, f"the {what} holds NUL characters; it is not YAML text")
    try:
        return yaml.load(data, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        where = f"{source}, line {exc.line}" if exc.line is not None else source
        raise SetupError(where, f"{exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SetupError(where, f"YAML syntax error: {problem}") from None
    except RecursionError:
        raise SetupError(source, f"the {what} is nested too deeply to read") from None


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
    return parse_campaign(read_yaml(path), source=os.fspath(path))
