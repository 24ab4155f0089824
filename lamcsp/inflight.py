"""The generation in flight: its relaxation results, on disk until its rows are written.

A generation's rows go to the database once dedupe has decided their flags (``unique``,
``duplicate_of``), all in one transaction and each row with its flags, so no row is written
twice (ASE's ``update`` deletes and re-inserts a whole row: it cost as much as the write
itself, ``benchmarks/mpi_scaling.py``); the search writes them while the next generation
relaxes (:meth:`lamcsp.search.Search.flush_rows`). Until then each result waits in the run
directory's ``generation-<g>.journal`` (:meth:`lamcsp.rundir.RunDir.inflight`): one JSON line per result,
appended and flushed to the operating system as it arrives, so a killed process loses none of
them; synced to the disk when ``rows`` results or ``seconds`` have passed since the last sync
(an fsync costs about as much as a row write), so a machine that goes down loses at most
those. ``--resume`` reads the generation's results back and relaxes only what is missing; a
line cut off by the kill, and lines of another generation (a journal whose generation was
written, but not yet cleared, when the kill came), are left out.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["GenerationJournal"]


class GenerationJournal:
    """The results of generation ``generation`` on their way to the store.

    Args:
        path: the journal file (created on the first :meth:`add`).
        generation: the generation in flight.
        rows: results between two syncs to the disk.
        seconds: the longest a result waits for its sync, checked when another arrives.
    """

    def __init__(self, path: str | os.PathLike[str], generation: int, rows: int = 256, seconds: float = 2.0):
        self.path = Path(path)
        self.generation = int(generation)
        self.rows = rows
        self.seconds = seconds
        self._fh: Any = None
        self._unsynced = 0
        self._since = 0.0

    def read(self) -> dict[str, dict[str, Any]]:
        """What the journal holds for this generation: row key -> the record :meth:`add` was
        given (a later record of a key wins)."""
        out: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return out
        with self.path.open("rb") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:  # cut off by a kill inside the write
                    continue
                if isinstance(rec, dict) and rec.get("generation") == self.generation and "key" in rec:
                    out[str(rec["key"])] = rec["record"]
        return out

    def add(self, key: str, record: dict[str, Any]) -> None:
        """Append one result (``record``: plain data) under its row ``key``; synced when due."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("ab")
        if not self._unsynced:
            self._since = time.monotonic()
        line = json.dumps({"generation": self.generation, "key": key, "record": record}, allow_nan=True)
        self._fh.write(line.encode() + b"\n")
        self._fh.flush()  # a killed process loses nothing: the operating system has it
        self._unsynced += 1
        if self._unsynced >= self.rows or time.monotonic() - self._since >= self.seconds:
            self.sync()

    def sync(self) -> None:
        """Put what was added on the disk now."""
        if self._fh is not None and self._unsynced:
            os.fsync(self._fh.fileno())
        self._unsynced = 0

    def close(self) -> None:
        """Sync and close the file (the journal stays until :meth:`clear`)."""
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None

    def clear(self) -> None:
        """The generation's rows are written: the journal goes."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._unsynced = 0
        self.path.unlink(missing_ok=True)
