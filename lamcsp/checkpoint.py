"""The checkpoint of the search state, and plain data.

The checkpoint of the search state (swarm, RNG states, counters) is JSON written to a temporary
file in the same directory, flushed and fsynced, then moved over the old one with
:func:`os.replace` (atomic on POSIX), and the directory is fsynced; a reader sees the old
checkpoint or the new one, never a partial file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lamcsp.errors import SetupError
from lamcsp.faults import fault

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "plain", "read_checkpoint", "rng_from_state",
           "rng_state", "write_checkpoint"]

CHECKPOINT_FORMAT = "lamcsp-checkpoint"
CHECKPOINT_VERSION = 1


def plain(obj: Any) -> Any:
    """``obj`` as JSON-ready plain data: numpy scalars and arrays, tuples, paths converted.

    Objects with a ``to_dict()`` method are written as its result. Anything else raises
    :class:`TypeError`.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"checkpoint dict keys must be strings, got {k!r}")
            out[k] = plain(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "to_dict"):
        return plain(obj.to_dict())
    raise TypeError(f"not plain data: {type(obj).__name__}")


# -- checkpoint ------------------------------------------------------------------------------


def write_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file, fsync, :func:`os.replace`, fsync dir)."""
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "state": plain(state)})
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        fault("checkpoint-write")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def read_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The state stored at ``path``, or ``None`` if there is no checkpoint."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise SetupError("checkpoint", f"{path} is not a readable checkpoint (not UTF-8 JSON text: a "
                                       "binary or damaged file)") from None
    except OSError as exc:
        raise SetupError("checkpoint", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise SetupError("checkpoint", f"{path} is not a readable checkpoint (invalid JSON: {exc})") from exc
    if not (isinstance(doc, dict) and doc.get("format") == CHECKPOINT_FORMAT
            and isinstance(doc.get("state"), dict)):
        raise SetupError("checkpoint", f"{path} is not a lamcsp checkpoint")
    if doc.get("version") != CHECKPOINT_VERSION:
        raise SetupError(
            "checkpoint",
            f"{path} has checkpoint version {doc.get('version')!r}; "
            f"this lamcsp reads version {CHECKPOINT_VERSION}",
        )
    return doc["state"]


# -- RNG state -------------------------------------------------------------------------------

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The full state of ``rng`` as plain data (restore it with :func:`rng_from_state`)."""
    return plain(rng.bit_generator.state)


def rng_from_state(d: dict[str, Any]) -> np.random.Generator:
    """A generator in exactly the state ``d`` (from :func:`rng_state`)."""
    name = d.get("bit_generator") if isinstance(d, dict) else None
    if name not in _BIT_GENERATORS:
        raise SetupError(
            "checkpoint", f"unknown RNG bit generator {name!r}; allowed: {', '.join(_BIT_GENERATORS)}"
        )
    bg = getattr(np.random, name)()
    state = dict(d)
    if name == "MT19937":
        state["state"] = {**state["state"], "key": np.asarray(state["state"]["key"], dtype=np.uint32)}
    bg.state = state
    return np.random.Generator(bg)
