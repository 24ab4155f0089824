"""Where a run's rows live: the SQLite file ``RUN/results.db``, or a database server named by a
URL (``--db``, ``LAMCSP_DB_URL``), and the checks and fixes each needs.

- URLs are written to files and messages without their password (:func:`redact_url`); the
  password of a server comes from ``LAMCSP_DB_URL``, ``PGPASSWORD`` or ``~/.pgpass``
  (:func:`with_credentials`), never the command line.
- PostgreSQL goes through ASE's backend (``ase-db-backends``) with three fixes for several
  writers at once (:func:`postgresql`).
- A results file is checked read-only before a command reads it (:func:`check_database`,
  :func:`connect_read_only`), so a refused command changes nothing.

:class:`lamcsp.store.ResultStore` opens the database; :mod:`lamcsp.rundir` records which one a
run uses (``RUN/database.json``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lamcsp.errors import SetupError

__all__ = ["ENV_DB_URL", "PG_SCHEMA_LOCK", "check_database", "connect_read_only", "has_password", "is_url",
           "postgresql", "redact_url", "with_credentials"]

#: the environment variable that gives ``lamcsp search`` its database URL (credentials included)
ENV_DB_URL = "LAMCSP_DB_URL"


def is_url(url: str) -> bool:
    return "://" in url


def redact_url(url: str) -> str:
    """``url`` without its password (``postgresql://user:pw@host/db`` -> ``postgresql://user@host/db``):
    what is written to files and messages."""
    from urllib.parse import urlsplit, urlunsplit

    if not is_url(url):
        return url
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}@{netloc}"))
    except ValueError:
        return url.split("://", 1)[0] + "://..."


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (which the command line would show in ``ps``)."""
    return redact_url(url) != url


_PG_CLASS: Any = None


def postgresql(url: str) -> Any:
    """ASE's PostgreSQL database (``ase-db-backends``), fixed for several writers at once.

    - The id of a new row: the backend reads ``last_value`` of the id sequence, which is the
      last id *any* session drew, so two writers at once attach key values and species to each
      other's rows or fail on a foreign key (measured: the second of two concurrent writers
      failed at its second row). Here it is ``currval``, this session's own.
    - The schema: two processes that open an empty database at once both create the tables and
      one fails; here creating the schema (and lamcsp's indexes) holds a transaction-level
      advisory lock.
    - Rolling back: the backend's connection wrapper has no ``rollback``, so an error inside
      ``with db:`` (:meth:`ResultStore.transaction`) became an ``AttributeError`` and the
      transaction was never rolled back; here it is.
    """
    global _PG_CLASS
    if _PG_CLASS is None:
        try:
            from ase_db_backends.postgresql import PostgreSQLDatabase
        except ImportError as exc:
            raise SetupError("--db", f"a postgresql:// database needs ASE's PostgreSQL backend and "
                                     f"psycopg2 ({exc}); install the extra: pip install 'lamcsp[postgresql]'"
                             ) from None

        class LamcspPostgreSQL(PostgreSQLDatabase):
            def get_last_id(self, cur: Any) -> int:
                cur.execute("SELECT currval('systems_id_seq')")
                return int(cur.fetchone()[0])

            def _connect(self) -> Any:
                con = super()._connect()
                con.rollback = con.con.rollback
                return con

            def _initialize(self, con: Any) -> None:
                if self.initialized:
                    return
                con.cursor().execute(f"SELECT pg_advisory_xact_lock({PG_SCHEMA_LOCK})")
                super()._initialize(con)

        _PG_CLASS = LamcspPostgreSQL
    return _PG_CLASS(url)


#: the advisory-lock key of schema changes (any fixed 64-bit number; "lamcsp" in ASCII)
PG_SCHEMA_LOCK = 0x6C616D637370


def with_credentials(url: str) -> str:
    """The stored (password-free) ``url``, or ``LAMCSP_DB_URL`` where that names the same
    database with a password; otherwise the driver finds one (``PGPASSWORD``, ``~/.pgpass``)."""
    env = os.environ.get(ENV_DB_URL)
    if env and redact_url(env) == url:
        return env
    return url


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
