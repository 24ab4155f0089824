"""The store: relaxed structures in an ASE database, and an atomic checkpoint of the search.

Results go to an ASE database in the run directory (``run_dir/results.db``, SQLite; a
``postgresql://...`` URL is passed to :func:`ase.db.connect` as is), so ``ase db results.db``
lists and filters them. Every row carries the relaxed geometry, the final energy, forces and
stress as its calculator results, and these key values:

``key`` (the caller's idempotency key, e.g. ``"g3-c7"``), ``pressure_gpa``, ``enthalpy``,
``enthalpy_per_atom``, ``spacegroup``, ``generation``, ``generator``, ``converged``, ``status``,
``steps``, ``unique``, ``duplicate_of`` (row id, ``0`` for none: ASE key values cannot be
``None``) and ``model_id``.

``formula`` and ``energy`` are reserved names in ASE (not allowed as key values): they are the
row's own columns, ``row.formula`` and ``row.energy``, and select as usual
(``ase db results.db formula=Ar4``, ``energy<-3``).

Crash safety. ASE's SQLite backend writes one row (the system and all its key values) in one
transaction that commits before :meth:`ResultStore.add` returns (:meth:`ResultStore.add_many`:
all its rows in one transaction), so a ``kill -9`` at any moment leaves either no row or the
whole row. ASE's ``.lock`` file is not used (the database locks
itself); a stale one left by a killed writer would otherwise block every later write.
:meth:`ResultStore.add` with a key already stored returns the stored row's id and writes
nothing; a resumed campaign that re-adds the results of a generation therefore stores
none twice and loses none that were committed.

The checkpoint of the search state is :mod:`lamcsp.checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from lamcsp.checkpoint import (  # re-exported: the checkpoint lived here
    CHECKPOINT_VERSION,
    plain,
    read_checkpoint,
    rng_from_state,
    rng_state,
    write_checkpoint,
)
from lamcsp.errors import SetupError
from lamcsp.faults import fault

if TYPE_CHECKING:
    from ase.db.row import AtomsRow

    from lamcsp.relax.relaxer import RelaxResult

__all__ = [
    "CHECKPOINT_VERSION",
    "Record",
    "RunDir",
    "h_now",
    "record_of",
    "result_of_row",
    "ResultStore",
    "plain",
    "read_checkpoint",
    "rng_from_state",
    "result_ok",
    "rng_state",
    "row_item",
    "write_checkpoint",
]

DB_NAME = "results.db"


def _is_url(url: str) -> bool:
    return "://" in url


class ResultStore:
    """Relaxed structures in an ASE database.

    Args:
        run_dir: the run directory; the SQLite database is ``run_dir/results.db``.
        url: a database URL (``postgresql://user:pw@host/db``) or a path, instead of the
            default file. Anything :func:`ase.db.connect` takes.
    """

    def __init__(self, run_dir: str | Path, url: str | None = None):
        import ase.db

        self.run_dir = Path(run_dir)
        if url is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.url = str(self.run_dir / DB_NAME)
        else:
            self.url = url
        try:
            # No ASE lock file: SQLite/PostgreSQL lock by themselves, and a lock file left by a
            # process killed with -9 while writing would block every later write forever.
            self.db = ase.db.connect(self.url, append=True, use_lock_file=False)
        except Exception as exc:  # malformed URL, missing driver, unreadable file
            raise SetupError("store", f"cannot open the results database {self.url!r}: {exc}") from exc
        self._indexed = False

    #: indexes ASE's schema lacks: key-value lookups by (key, value), and the child tables by row
    #: id (an update or delete of one row scanned them all)
    INDEXES = (
        ("lamcsp_text_key_value", "text_key_values(key, value)"),
        ("lamcsp_number_key_value", "number_key_values(key, value)"),
        ("lamcsp_text_id", "text_key_values(id)"),
        ("lamcsp_number_id", "number_key_values(id)"),
        ("lamcsp_keys_id", "keys(id)"),
        ("lamcsp_species_id", "species(id)"),
    )

    def _ensure_indexes(self) -> None:
        """Add :attr:`INDEXES` to the database (once; ASE and ``ase db`` ignore them). Without
        them the idempotency check of :meth:`add` (``key=...``) and every :meth:`update` scan
        the whole table: 10 ms per stored row at 10^5 rows (``benchmarks/mpi_scaling.py``)."""
        if self._indexed:
            return
        managed = getattr(self.db, "managed_connection", None)
        if managed is None:
            self._indexed = True
            return
        try:
            with managed() as con:
                cur = con.cursor()
                cur.execute("SELECT 1 FROM text_key_values LIMIT 1")
                for name, on in self.INDEXES:
                    cur.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {on}")
            self._indexed = True
        except Exception:  # noqa: BLE001 - tables not created yet (an empty database): next time
            pass

    def __repr__(self) -> str:
        return f"ResultStore({self.url!r})"

    # -- writing -------------------------------------------------------------------------

    def add(
        self,
        result: RelaxResult,
        *,
        key: str,
        generation: int,
        generator: str,
        model_id: str,
        spacegroup: int,
        unique: bool,
        duplicate_of: int | None,
        extra: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
    ) -> int:
        """Store one relaxed structure; return its row id.

        ``key`` is the idempotency key: if a row with this key is stored already, its id is
        returned and nothing is written. ``extra`` adds more key values (plain scalars);
        ``data`` is stored as the row's data (plain data, e.g. the candidate it came from).
        One call is one database transaction (unless inside :meth:`transaction`).
        """
        return self.add_many([dict(result=result, key=key, generation=generation, generator=generator,
                                   model_id=model_id, spacegroup=spacegroup, unique=unique,
                                   duplicate_of=duplicate_of, extra=extra, data=data)])[0]

    def add_many(self, items: list[dict[str, Any]]) -> list[int]:
        """Store several relaxed structures in one transaction; their row ids, in order.

        Each item holds the keyword arguments of :meth:`add` (``result``, ``key``, ...). All
        rows commit together or none does, and one commit costs as much as a whole row
        (``benchmarks/mpi_scaling.py``): the search writes the results that arrive together
        with this. Keys already stored are skipped, as in :meth:`add`.
        """
        self._ensure_indexes()
        rows = []
        for it in items:
            _check_key(it["key"])
            rows.append(self._row(**it))
        ids: list[int] = []
        try:
            if getattr(self.db, "connection", None) is not None:  # inside transaction(): caller commits
                return [self._write(*r) for r in rows]
            with self.db:  # one transaction
                for r in rows:
                    ids.append(self._write(*r))
                    fault("store-write")
            return ids
        except ValueError as exc:  # ASE's check of key names and values
            raise SetupError("extra", f"cannot store these key values: {exc}") from exc

    def _write(self, row: AtomsRow, kvp: dict[str, Any], data: dict[str, Any]) -> int:
        existing = self.row_id(kvp["key"])
        if existing is not None:
            return existing
        return int(self.db.write(row, key_value_pairs=kvp, data=data))

    def _row(self, result: RelaxResult, *, key: str, generation: int, generator: str, model_id: str,
             spacegroup: int, unique: bool, duplicate_of: int | None, extra: dict[str, Any] | None = None,
             data: dict[str, Any] | None = None) -> tuple[AtomsRow, dict[str, Any], dict[str, Any]]:
        """The ASE row of one result, its key values and its data.

        The row is built directly, as ASE builds it from atoms with a single-point calculator
        (``calculator="unknown"``, energy, forces, Voigt stress), without ASE's calculator state
        check, which compares the atoms four times and cost half of every write."""
        from ase.db.core import now
        from ase.db.row import AtomsRow, atoms2dict
        from ase.stress import full_3x3_to_voigt_6_stress

        atoms = result.atoms.copy()
        atoms.calc = None
        stress = np.asarray(result.stress, dtype=float)
        if stress.shape == (3, 3):
            stress = full_3x3_to_voigt_6_stress(stress)
        dct = atoms2dict(atoms)
        dct.update(calculator="unknown", calculator_parameters={}, energy=float(result.energy),
                   forces=np.asarray(result.forces, dtype=float).reshape(len(atoms), 3), stress=stress)
        row = AtomsRow(dct)
        row.ctime = now()
        row.user = os.getenv("USER")
        kvp: dict[str, Any] = {
            "key": key,
            "pressure_gpa": float(result.pressure_gpa),
            "enthalpy": float(result.enthalpy),
            "enthalpy_per_atom": float(result.enthalpy_per_atom),
            "spacegroup": int(spacegroup),
            "generation": int(generation),
            "generator": str(generator),
            "converged": bool(result.converged),
            "status": str(result.status),
            "steps": int(result.steps),
            "final_fmax": float(result.fmax),
            "unique": bool(unique),
            "duplicate_of": 0 if duplicate_of is None else int(duplicate_of),
            "model_id": str(model_id),
        }
        for name, value in (extra or {}).items():
            if name in kvp:
                raise SetupError("extra", f"key value {name!r} is set by the store itself")
            kvp[name] = plain(value)
        return row, kvp, plain(data or {})

    def mark_duplicate(self, row_id: int, of: int) -> None:
        """Mark row ``row_id`` as a duplicate of row ``of``."""
        self.db.update(int(row_id), unique=False, duplicate_of=int(of))

    def update(self, row_id: int, **kv: Any) -> None:
        """Set key values of one row."""
        self._ensure_indexes()
        self.db.update(int(row_id), **{k: plain(v) for k, v in kv.items()})

    def transaction(self) -> Any:
        """A context manager in which every write is one transaction: all of them commit at
        the end, or none (an exception or a kill inside rolls all back)::

            with store.transaction():
                store.update(3, unique=False, duplicate_of=1)
                store.update(1, unique=True, duplicate_of=0)
        """
        return self.db  # ASE's SQLite and PostgreSQL databases are such context managers

    # -- reading -------------------------------------------------------------------------

    def row_id(self, key: str) -> int | None:
        """The id of the row stored under ``key``, or ``None``."""
        for row in self.db.select(key=key, limit=1, include_data=False):
            return int(row.id)
        return None

    def keys(self) -> set[str]:
        """The idempotency keys of all stored rows."""
        return {row.key for row in self.db.select("key", include_data=False)}

    def rows(self, *selection: Any, **kv: Any) -> list[AtomsRow]:
        """Rows matching an ASE selection (``store.rows(unique=True, generation=3)``)."""
        return list(self.db.select(*selection, **kv))

    def count(self, *selection: Any, **kv: Any) -> int:
        return int(self.db.count(*selection, **kv))


def row_item(result: RelaxResult, key: str, *, role: str, generation: int, generator: str, unit: int,
             model_id: str, symprec: float = 0.1, candidate: int = -1, unique: bool = False,
             deduped: bool = True, extra: dict[str, Any] | None = None,
             data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The arguments of :meth:`ResultStore.add` for one result: the row's ``role`` (``search``,
    ``reference``, ``scan``, ``rerelax``, ``verify``), its unit (-1: none) and candidate, its
    space group (spglib at ``symprec``; 0 for a failed result) and reduced formula, computed
    here, the one place that writes these key values."""
    from lamcsp.io import reduced_formula, spacegroup_number

    ok = result_ok(result)
    return dict(
        result=result, key=key, generation=generation, generator=generator, model_id=model_id,
        spacegroup=spacegroup_number(result.atoms, symprec) if ok else 0,
        unique=unique and ok, duplicate_of=None, data=data,
        extra={"role": role, "unit": unit, "candidate": candidate, "deduped": deduped,
               "reduced_formula": reduced_formula(result.atoms.get_chemical_formula()), **(extra or {})})


def result_ok(result: Any) -> bool:
    """A result (a :class:`~lamcsp.relax.relaxer.RelaxResult` or a stored row) that counts: not
    failed, finite enthalpy."""
    return not str(result.status).startswith("failed") and bool(np.isfinite(result.enthalpy_per_atom))


def h_now(row: Any) -> float:
    """A row's enthalpy per atom by the model in use (``enthalpy_now`` after a fine-tune model
    switch; else its own)."""
    return float(row.get("enthalpy_now", row.enthalpy_per_atom))


def result_of_row(row: Any) -> RelaxResult:
    """A stored row as the :class:`~lamcsp.relax.relaxer.RelaxResult` it was written from."""
    from lamcsp.relax.relaxer import RelaxResult

    atoms = row.toatoms()
    stress = row.get("stress")
    if stress is not None:
        from ase.stress import voigt_6_to_full_3x3_stress

        stress = voigt_6_to_full_3x3_stress(np.asarray(stress))
    atoms.calc = None
    return RelaxResult(atoms=atoms, energy=float(row.energy), enthalpy=float(row.enthalpy),
                       pressure_gpa=float(row.pressure_gpa), converged=bool(row.converged),
                       steps=int(row.steps), status=str(row.status), fmax=float(row.final_fmax),
                       forces=np.asarray(row.get("forces")), stress=stress)


# ------------------------------------------------------------------------------ the row record


@dataclasses.dataclass(frozen=True)
class Record:
    """The typed row record: one database row as the report, the verification and the hull
    maths read it (``pressure`` rounded to 1e-6 GPa; see :func:`record_of`)."""

    db_id: int
    formula: str
    reduced_formula: str
    role: str
    pressure: float
    enthalpy: float
    enthalpy_per_atom: float
    natoms: int
    spacegroup: int
    generation: int
    generator: str
    unique: bool
    status: str
    model_id: str
    polymorph: int

    @property
    def ok(self) -> bool:
        """Counts (:func:`result_ok`): not failed, finite enthalpy."""
        return result_ok(self)

    @property
    def eligible(self) -> bool:
        """Enters hulls and tables: a unique search row or a reference row, not failed."""
        return self.ok and (self.role == "reference" or (self.role == "search" and self.unique))


def pressure_key(value: Any) -> float:
    return round(float(value), 6) + 0.0  # + 0.0 turns -0.0 into 0.0


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def record_of(row: Any, *, now: bool = True) -> Record:
    """The :class:`Record` of a database row. With ``now``, a row relaxed before a fine-tune
    model switch counts with ``enthalpy_now`` (the model in use at the end, a single point at
    its structure), so that every hull compares energies of one model."""
    enthalpy = _number(row.get("enthalpy"))
    per_atom = row.get("enthalpy_per_atom")
    model = row.get("model_id", "")
    if now and row.get("enthalpy_now") is not None:
        per_atom, model = float(row.enthalpy_now), row.get("model_now", model)
        enthalpy = per_atom * row.natoms
    return Record(
        db_id=int(row.id),
        formula=str(row.formula),
        reduced_formula=str(row.get("reduced_formula") or _reduced(row.formula)),
        role=str(row.get("role", "search")),
        pressure=pressure_key(row.get("pressure_gpa", 0.0)),
        enthalpy=enthalpy,
        enthalpy_per_atom=_number(per_atom) if per_atom is not None else enthalpy / row.natoms,
        natoms=int(row.natoms),
        spacegroup=int(row.get("spacegroup", 0)),
        generation=int(row.get("generation", 0)),
        generator=str(row.get("generator", "")),
        unique=bool(row.get("unique", True)),
        status=str(row.get("status", "converged")),
        model_id=str(model),
        polymorph=int(row.get("polymorph", 0)),
    )


def _reduced(formula: str) -> str:
    from lamcsp.io import reduced_formula

    return reduced_formula(formula)


# ------------------------------------------------------------------------------ the run directory


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The run directory's file names and paths, in one place.

    ``results.db`` (the ASE database, unless a URL is given), ``campaign.yaml`` (the campaign
    with its seed, written at the start and checked by ``--resume``), ``checkpoint.json`` (the
    search state after every generation), ``finetune/`` (the fine-tune loop's data, models and
    log), ``verify/<oracle id>/<row key>.jsonl`` (oracle journals) and ``report/``.
    """

    root: Path

    DB: ClassVar[str] = DB_NAME
    CAMPAIGN: ClassVar[str] = "campaign.yaml"
    CHECKPOINT: ClassVar[str] = "checkpoint.json"
    LOCK: ClassVar[str] = "search.pid"

    def __init__(self, root: str | os.PathLike[str]):
        object.__setattr__(self, "root", Path(root))

    @property
    def db(self) -> Path:
        return self.root / self.DB

    @property
    def campaign(self) -> Path:
        return self.root / self.CAMPAIGN

    @property
    def checkpoint(self) -> Path:
        return self.root / self.CHECKPOINT

    @property
    def lock(self) -> Path:
        return self.root / self.LOCK

    @property
    def finetune(self) -> Path:
        return self.root / "finetune"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def journal(self, oracle: str, key: str) -> Path:
        """Where the oracle calls of one verification of row ``key`` are journaled."""
        return self.root / "verify" / oracle / f"{key}.jsonl"

    def holds_run(self, db_url: str | None = None) -> bool:
        """Whether a search has written here (its checkpoint, campaign copy, or database)."""
        return self.checkpoint.exists() or self.campaign.exists() or (db_url is None and self.db.exists())


def run_holder(paths: RunDir) -> dict[str, Any] | None:
    """The search process named by the run's lock file (``pid``, ``host``, ``started``) and
    whether it holds the run now: ``alive`` True (a live process of that pid on this host),
    False (dead: a search killed with -9 leaves its lock file behind) or None (another host,
    which cannot be asked). None without a lock file. Reads only."""
    import json
    import socket

    try:
        info = json.loads(paths.lock.read_text(encoding="utf-8"))
        pid = int(info["pid"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # a torn or foreign file holds nothing
        return {"pid": None, "host": None, "started": None, "alive": False}
    alive: bool | None = None
    if info.get("host") == socket.gethostname():
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:  # alive, another user's
            alive = True
    return {"pid": pid, "host": info.get("host"), "started": info.get("started"), "alive": alive}


@contextlib.contextmanager
def hold_run(paths: RunDir) -> Iterator[None]:
    """Mark the run as held by this process while the block runs: ``search.pid`` holds its pid,
    host and start time (written atomically), removed at the end if it is still this
    process's. ``lamcsp status`` reads it; a pid that is no longer alive holds nothing."""
    import json
    import socket
    import time

    mine = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = paths.root / f".{paths.LOCK}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(mine), encoding="utf-8")
    os.replace(tmp, paths.lock)
    try:
        yield
    finally:
        holder = run_holder(paths)
        if holder is not None and holder["pid"] == mine["pid"] and holder["host"] == mine["host"]:
            try:
                paths.lock.unlink()
            except OSError:
                pass


def connect_read_only(path: str | os.PathLike[str]) -> Any:
    """An SQLite connection to ``path`` that cannot write (``mode=ro``): what a command that must
    leave a run unchanged reads through (ASE's own connection may create its tables)."""
    import sqlite3
    from urllib.parse import quote

    return sqlite3.connect(f"file:{quote(str(Path(path).resolve()))}?mode=ro", uri=True)


def check_database(path: str | os.PathLike[str]) -> None:
    """Refuse a results database that SQLite cannot read (damaged, truncated, not a database, or
    not one of ASE's), opened read-only so that a refused command changes nothing. A file of
    size 0 (a run killed before its first row) passes.

    Raises:
        SetupError: naming the file and what is wrong.
    """
    import sqlite3

    path = Path(path)
    if path.is_dir() or not path.exists():
        raise SetupError(str(path), "the results database is missing (or a folder), so the run cannot be "
                                    "read; nothing was changed")
    if path.stat().st_size == 0:
        return
    why = None
    try:
        con = connect_read_only(path)
        try:
            check = con.execute("PRAGMA quick_check").fetchone()
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
        if check is None or check[0] != "ok":
            why = f"SQLite's integrity check fails: {check[0] if check else 'no answer'}"
        elif tables and "systems" not in tables:
            why = "an SQLite database, but not an ASE database of results"
    except sqlite3.DatabaseError as exc:
        why = f"{exc}"
    if why is not None:
        raise SetupError(str(path), f"the results database is damaged or not a results database ({why}); "
                                    "restore it from a copy (nothing was changed)")


def _check_key(key: str) -> None:
    from ase.db.core import str_represents

    if not isinstance(key, str) or not key or any(str_represents(key, t) for t in (bool, int, float)):
        raise SetupError("key", f"an idempotency key must be a non-numeric string like 'g3-c7', got {key!r}")


# -- plain data ------------------------------------------------------------------------------
