"""The run directory: its file names (:class:`RunDir`), which database holds its rows
(``database.json``, for a ``--db`` run), and which process holds it now (``search.pid``)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from lamcsp.databases import redact_url
from lamcsp.errors import SetupError

__all__ = ["DB_NAME", "RunDir", "hold_run", "read_database_file", "run_holder", "write_database_file"]

DB_NAME = "results.db"


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The run directory's file names and paths, in one place.

    ``results.db`` (the ASE database, unless a URL is given), ``campaign.yaml`` (the campaign
    with its seed, written at the start and checked by ``--resume``), ``checkpoint.json`` (the
    search state after every generation), ``generation-<g>.journal`` (the results of generation
    ``g`` until its rows are written, :mod:`lamcsp.inflight`), ``finetune/`` (the fine-tune
    loop's data, models and log), ``verify/<oracle id>/<row key>.jsonl`` (oracle journals) and
    ``report/``.
    """

    root: Path

    DB: ClassVar[str] = DB_NAME
    CAMPAIGN: ClassVar[str] = "campaign.yaml"
    CHECKPOINT: ClassVar[str] = "checkpoint.json"
    LOCK: ClassVar[str] = "search.pid"
    DATABASE: ClassVar[str] = "database.json"

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
    def database(self) -> Path:
        """``database.json``: the database URL (no password) and run id of a ``--db`` run."""
        return self.root / self.DATABASE

    def inflight(self, generation: int) -> Path:
        """The results of generation ``generation`` until its rows are written."""
        return self.root / f"generation-{int(generation)}.journal"

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


def read_database_file(paths: RunDir) -> dict[str, str] | None:
    """``RUN/database.json`` (``{"url": ..., "run": ...}``), or None where the run keeps its rows in
    ``RUN/results.db``.

    Raises:
        SetupError: the file is there but unreadable or not such an object.
    """
    import json

    try:
        info = json.loads(paths.database.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SetupError(str(paths.database), f"cannot read it ({exc}); it names the database of the run "
                                              '({"url": ..., "run": ...}); nothing was changed') from None
    if not (isinstance(info, dict) and isinstance(info.get("url"), str) and isinstance(info.get("run"), str)
            and info["run"]):
        raise SetupError(str(paths.database), 'it must hold {"url": ..., "run": ...}, the database and id of '
                                              "the run; nothing was changed")
    return {"url": info["url"], "run": info["run"]}


def write_database_file(paths: RunDir, url: str, run: str) -> None:
    """Write ``RUN/database.json`` atomically (``url`` without its password)."""
    import json

    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = paths.root / f".{paths.DATABASE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"url": redact_url(url), "run": run}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, paths.database)


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
    process's. ``lamcsp status`` reads it; a pid that is no longer alive holds nothing.

    Raises:
        SetupError: a live process on this host holds the run already.
    """
    import json
    import socket
    import time

    mine = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    holder = run_holder(paths)
    if holder is not None and holder["alive"] and holder["pid"] != mine["pid"]:
        raise SetupError(str(paths.root), f"a search holds this run now (pid {holder['pid']} on "
                                          f"{holder['host']} since {holder['started']}); two searches on one "
                                          "run would store each generation twice: wait for it or stop it")
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
