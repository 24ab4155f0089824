"""``lamcsp status RUN``: where a running or stopped campaign stands, read without writing.

The generation reached and the run's budget (checkpoint and campaign copy), the relaxations
stored per row role, the best enthalpy per atom of every unit (composition and pressure) with
its space group, the fine-tune iterations finished, and whether a search process holds the run
now (:func:`lamcsp.store.run_holder`). The database is opened read-only through SQLite itself
(``mode=ro``), not through ASE, whose connection may create its tables (a ``--db`` run's rows are
selected from the database ``RUN/database.json`` names); nothing in the run
directory changes.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

from lamcsp.errors import SetupError
from lamcsp.store import (
    RunDir,
    check_database,
    connect_read_only,
    pressure_key,
    read_checkpoint,
    read_database_file,
    run_holder,
)

__all__ = ["format_status", "run_status"]


def _rows(db: Path) -> list[dict[str, Any]]:
    """Every row's key values (ASE's ``systems.key_value_pairs``, JSON), read-only."""
    if db.stat().st_size == 0:
        return []
    con = connect_read_only(db)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "systems" not in tables:
            return []
        return [json.loads(kv or "{}") for (kv,) in con.execute("SELECT key_value_pairs FROM systems")]
    finally:
        con.close()


def _campaign_copy(paths: RunDir) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(paths.campaign.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _finetune(paths: RunDir) -> dict[str, Any] | None:
    """The fine-tune loop's iterations finished (``finetune/iterations.json``) and models
    registered (``finetune/models.json``), or None where the run has no fine-tune folder."""
    if not paths.finetune.is_dir():
        return None
    out: dict[str, Any] = {"iterations": 0, "converged": False, "models": 0}
    for name, key in (("iterations.json", "iterations"), ("models.json", "models")):
        try:
            entries = json.loads((paths.finetune / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(entries, list):
            out[key] = len(entries)
            if key == "iterations" and entries and isinstance(entries[-1], dict):
                out["converged"] = bool(entries[-1].get("converged", False))
    return out


def run_status(run: str | Path) -> dict[str, Any]:
    """The status of the run in ``run`` as plain data (what ``lamcsp status --json`` prints).

    Raises:
        SetupError: ``run`` is not a run directory, or its database or checkpoint is damaged
            (naming the path).
    """
    paths = RunDir(run)
    if not paths.root.is_dir() or not paths.holds_run():
        raise SetupError(str(paths.root), f"not a run directory: it holds none of {RunDir.DB}, "
                                          f"{RunDir.CAMPAIGN}, {RunDir.CHECKPOINT}; give the directory "
                                          "that lamcsp search wrote (its -o RUN or the campaign's output)")
    state = read_checkpoint(paths.checkpoint) or {}
    campaign = _campaign_copy(paths)
    rows: list[dict[str, Any]] = []
    where = read_database_file(paths)
    if where is not None:  # a --db run: its rows in the database it names (selects only)
        from lamcsp.store import ResultStore

        rows = [dict(r.key_value_pairs) for r in ResultStore(paths.root).select(include_data=False)]
    elif paths.db.exists():
        check_database(paths.db)
        try:
            rows = _rows(paths.db)
        except (sqlite3.DatabaseError, ValueError) as exc:
            raise SetupError(str(paths.db), f"the results database cannot be read ({exc})") from None
    roles: dict[str, int] = {}
    best: dict[tuple[str, float], dict[str, Any]] = {}
    for kv in rows:
        role = str(kv.get("role", "search"))
        roles[role] = roles.get(role, 0) + 1
        h = kv.get("enthalpy_now", kv.get("enthalpy_per_atom"))
        if role != "search" or str(kv.get("status", "")).startswith("failed") or h is None \
                or not math.isfinite(float(h)):
            continue
        unit = (str(kv.get("reduced_formula", "?")), pressure_key(kv.get("pressure_gpa", 0.0)))
        if unit not in best or float(h) < best[unit]["enthalpy_per_atom"]:
            best[unit] = {"composition": unit[0], "pressure_gpa": unit[1], "enthalpy_per_atom": float(h),
                          "spacegroup": int(kv.get("spacegroup", 0)), "key": kv.get("key")}
    return {
        "run": str(paths.root),
        "name": campaign.get("name"),
        "generation": int(state.get("generation", 0)),
        "generations": campaign.get("generations"),
        "relaxations_spent": int(state.get("spent", 0)),
        "done": bool(state.get("done", False)),
        "rows": dict(sorted(roles.items())),
        "best": [best[u] for u in sorted(best)],
        "finetune": _finetune(paths),
        "holder": run_holder(paths),
        "database": where["url"] if where else (str(paths.db) if paths.db.exists() else None),
    }


def format_status(st: dict[str, Any]) -> str:
    """The status as lines for a person."""
    holder = st["holder"]
    if holder is None or holder["alive"] is False:
        held = "not running" + (f" (a search that stopped without cleaning up, pid {holder['pid']}, left "
                                "its lock file)" if holder and holder["pid"] else "")
    elif holder["alive"]:
        held = f"running: pid {holder['pid']} since {holder['started']}"
    else:
        held = f"held by pid {holder['pid']} on host {holder['host']} (another machine: cannot tell if alive)"
    total = f" of {st['generations']}" if st["generations"] else ""
    lines = [
        f"run {st['run']}" + (f" (campaign {st['name']!r})" if st["name"] else ""),
        f"  process: {held}",
        f"  generations completed: {st['generation']}{total}" + ("; finished" if st["done"] else ""),
        "  rows stored: " + (", ".join(f"{role} {n}" for role, n in st["rows"].items()) or "none")
        + ("" if st["database"] else " (no results.db here)"),
    ]
    ft = st["finetune"]
    if ft is not None:
        lines.append(f"  fine-tune: {ft['iterations']} iteration(s) finished, {ft['models']} model set(s)"
                     + (", converged" if ft["converged"] else ""))
    if st["best"]:
        lines.append("  best enthalpy per unit (search rows):")
        for b in st["best"]:
            lines.append(f"    {b['composition']:<12} {b['pressure_gpa']:>8g} GPa  "
                         f"{b['enthalpy_per_atom']:.5f} eV/atom  space group {b['spacegroup']}  ({b['key']})")
    return "\n".join(lines)
