"""The store: relaxed structures in an ASE database, and an atomic checkpoint of the search.

Results go to an ASE database in the run directory (``run_dir/results.db``, SQLite; or a
database server, see below and :mod:`lamcsp.databases`), so ``ase db results.db``
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

A shared database. ``--db URL`` (or ``LAMCSP_DB_URL`` in the environment) puts a run's rows in
another database, typically PostgreSQL (``postgresql://user@host:5432/dbname``; the password from
``PGPASSWORD``, ``~/.pgpass`` or the environment variable, never the command line). Several runs
may write into one such database at once: each run has an id, kept in ``RUN/database.json`` with
the URL (password removed), every row carries it as the key value ``run``, and every read of the
run selects on it (``ase db URL run=ID``). ``report``, ``export``, ``status``, ``verify`` and
``--resume`` find the database through that file (:mod:`lamcsp.rundir`). ASE's PostgreSQL
backend (``ase-db-backends``) is used with three fixes for concurrent writers
(:func:`lamcsp.databases.postgresql`).

The checkpoint of the search state is :mod:`lamcsp.checkpoint`; the run directory's file names
are :class:`lamcsp.rundir.RunDir`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lamcsp.checkpoint import (  # re-exported: the checkpoint lived here
    CHECKPOINT_VERSION,
    plain,
    read_checkpoint,
    rng_from_state,
    rng_state,
    write_checkpoint,
)
from lamcsp.databases import (  # re-exported: they lived here
    ENV_DB_URL,
    PG_SCHEMA_LOCK,
    check_database,
    connect_read_only,
    has_password,
    redact_url,
)
from lamcsp.databases import postgresql as _postgresql
from lamcsp.databases import with_credentials as _with_credentials
from lamcsp.errors import SetupError
from lamcsp.faults import fault
from lamcsp.rundir import (  # re-exported: they lived here
    DB_NAME,
    RunDir,
    hold_run,
    read_database_file,
    run_holder,
    write_database_file,
)

if TYPE_CHECKING:
    from ase.db.row import AtomsRow

    from lamcsp.relax.relaxer import RelaxResult

__all__ = [
    "CHECKPOINT_VERSION",
    "DB_NAME",
    "check_database",
    "connect_read_only",
    "hold_run",
    "run_holder",
    "write_database_file",
    "ENV_DB_URL",
    "Record",
    "RunDir",
    "h_now",
    "has_password",
    "read_database_file",
    "record_of",
    "redact_url",
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


class ResultStore:
    """Relaxed structures in an ASE database.

    Args:
        run_dir: the run directory; the SQLite database is ``run_dir/results.db`` unless the run
            keeps its rows elsewhere (``run_dir/database.json``, written when ``url`` was given).
        url: a database URL (``postgresql://user@host/db``) or a path, instead of the default
            file; the run then gets an id and reads and writes only its own rows there. A run
            directory whose ``database.json`` names another database is refused.
        fresh: a new run: (re)write ``database.json`` with a new run id when ``url`` is given.

    Raises:
        SetupError: the database cannot be reached or read (its URL named without the
            password), its driver is missing, or ``url`` is not the run's database.
    """

    def __init__(self, run_dir: str | Path, url: str | None = None, *, fresh: bool = False):
        import ase.db

        self.run_dir = Path(run_dir)
        self.paths = RunDir(self.run_dir)
        where = None if fresh else read_database_file(self.paths)
        run = None
        if url is None and where is not None:
            url, run = _with_credentials(where["url"]), where["run"]
        elif url is not None and where is not None:
            if redact_url(url) != where["url"]:
                raise SetupError("--db", f"{self.run_dir} keeps its results in {where['url']}, not in "
                                         f"{redact_url(url)}; resume it with that database "
                                         "(nothing was changed)")
            run = where["run"]
        elif url is not None:
            if not fresh and self.paths.db.exists():
                raise SetupError("--db", f"{self.run_dir} keeps its results in {self.paths.db}; resume it "
                                         "without --db (and without LAMCSP_DB_URL) (nothing was changed)")
            import uuid

            run = uuid.uuid4().hex
        if url is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            url = str(self.run_dir / DB_NAME)
        self.url = url
        self.run = run
        #: what every read selects on and every row carries: this run's id in a shared database
        self.scope: dict[str, str] = {"run": run} if run else {}
        shown = redact_url(url)
        try:
            if url.startswith(("postgresql://", "postgres://")):
                self.db = _postgresql(url)
            else:
                # No ASE lock file: SQLite locks by itself, and a lock file left by a process
                # killed with -9 while writing would block every later write forever.
                self.db = ase.db.connect(url, append=True, use_lock_file=False)
            if run:
                self.db.count(run=run)  # reach it now (a server opens its connection lazily)
        except SetupError:
            raise
        except Exception as exc:  # malformed URL, unreachable server, refused login, unreadable file
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SetupError("--db", f"cannot open the results database {shown}: {why} (a password is "
                                     f"read from {ENV_DB_URL}, PGPASSWORD or ~/.pgpass; nothing was changed)"
                             ) from None
        if run and (where is None or fresh):
            write_database_file(self.paths, shown, run)
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
                if getattr(self.db, "type", "") == "postgresql":  # one writer changes the schema at a time
                    cur.execute(f"SELECT pg_advisory_xact_lock({PG_SCHEMA_LOCK})")
                cur.execute("SELECT 1 FROM text_key_values LIMIT 1")
                for name, on in self.INDEXES:
                    cur.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {on}")
            self._indexed = True
        except Exception:  # noqa: BLE001 - tables not created yet (an empty database): next time
            pass

    def __repr__(self) -> str:
        return f"ResultStore({redact_url(self.url)!r}" + (f", run={self.run!r})" if self.run else ")")

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
                for r in rows:
                    ids.append(self._write(*r))
                    fault("store-write")
                return ids
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
             data: dict[str, Any] | None = None,
             ctime: float | None = None) -> tuple[AtomsRow, dict[str, Any], dict[str, Any]]:
        """The ASE row of one result, its key values and its data; ``ctime`` (ASE's unit,
        ``ase.db.core.now()``): when the result arrived, where it is written later (the search
        writes a generation's rows after its dedupe).

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
        row.ctime = now() if ctime is None else float(ctime)
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
            **self.scope,
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
        for row in self.select(key=key, limit=1, include_data=False):
            return int(row.id)
        return None

    def keys(self) -> set[str]:
        """The idempotency keys of all stored rows."""
        return {row.key for row in self.select("key", include_data=False)}

    def select(self, *selection: Any, **kv: Any) -> Iterator[AtomsRow]:
        """This run's rows matching an ASE selection, as :meth:`ase.db.core.Database.select`."""
        return self.db.select(*selection, **kv, **self.scope)

    def rows(self, *selection: Any, **kv: Any) -> list[AtomsRow]:
        """Rows matching an ASE selection (``store.rows(unique=True, generation=3)``)."""
        return list(self.select(*selection, **kv))

    def count(self, *selection: Any, **kv: Any) -> int:
        return int(self.db.count(*selection, **kv, **self.scope))

    def get(self, id: int) -> AtomsRow:  # noqa: A002 - ASE's name
        """The row with this id."""
        return self.db.get(id=int(id))


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


def _check_key(key: str) -> None:
    from ase.db.core import str_represents

    if not isinstance(key, str) or not key or any(str_represents(key, t) for t in (bool, int, float)):
        raise SetupError("key", f"an idempotency key must be a non-numeric string like 'g3-c7', got {key!r}")


# -- plain data ------------------------------------------------------------------------------
