"""A private PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a data directory
in /tmp, a free port on 127.0.0.1 with password login (scram-sha-256), stopped at the end.

PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` user
(``runuser``). ``LAMCSP_TEST_DB_URL`` (``postgresql://user:pw@host:port/postgres``) uses a running
server instead. :func:`find_binaries` is None where neither is available: the tests skip, naming
the package (``.ci/run`` installs it).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PASSWORD = "lamcsp-test-pw"
USER = "lamcsp"


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (Debian keeps them off PATH), or None."""
    found = shutil.which("pg_ctl")
    if found and Path(found).with_name("initdb").exists():
        return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One PostgreSQL cluster; :meth:`url` names a database in it (created by :meth:`new_database`)."""

    def __init__(self, admin_url: str, stop: list[str] | None = None, root: Path | None = None):
        self.admin_url = admin_url
        self._stop = stop
        self._root = root

    @classmethod
    def start(cls, bin_dir: Path) -> Server:
        root = Path(tempfile.mkdtemp(prefix="lamcsp-pg-"))
        as_root = os.geteuid() == 0
        run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
        (root / "pw").write_text(PASSWORD + "\n", encoding="utf-8")
        if as_root:
            shutil.chown(root, "postgres")
            shutil.chown(root / "pw", "postgres")
        subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", USER,
                        f"--pwfile={root / 'pw'}", "--auth-local=trust", "--auth-host=scram-sha-256",
                        "-E", "UTF8"], check=True, capture_output=True)
        port = _free_port()
        opts = f"-k {root} -p {port} -h 127.0.0.1 -c fsync=off -c max_connections=50"
        subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"),
                        "-w", "-o", opts, "start"], check=True, capture_output=True)
        stop = [*run_as, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"]
        return cls(f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres", stop, root)

    def new_database(self, name: str) -> str:
        """Create the database ``name``; its URL (with the password)."""
        import psycopg2

        con = psycopg2.connect(self.admin_url)
        con.autocommit = True
        try:
            con.cursor().execute(f'DROP DATABASE IF EXISTS "{name}"')
            con.cursor().execute(f'CREATE DATABASE "{name}"')
        finally:
            con.close()
        return self.admin_url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        if self._stop:
            subprocess.run(self._stop, check=False, capture_output=True)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)


def fake_results(symbol: str, generation: int, n: int = 5) -> list[dict]:
    """``n`` items for :meth:`lamcsp.store.ResultStore.add_many`: cells of 1-3 ``symbol`` atoms
    (the generator named ``symbol`` too), keys ``g<generation>-c<i>``."""
    from types import SimpleNamespace

    import numpy as np
    from ase import Atoms

    items = []
    for c in range(n):
        k = 1 + c % 3
        atoms = Atoms(symbol * k, positions=np.arange(3 * k).reshape(-1, 3) * 1.1, cell=[6, 6, 6], pbc=True)
        res = SimpleNamespace(atoms=atoms, energy=-1.0 * c, forces=np.zeros((k, 3)), stress=np.zeros(6),
                              pressure_gpa=0.0, enthalpy=-1.0 * c, enthalpy_per_atom=-1.0 * c / k,
                              converged=True, status="converged", steps=1, fmax=0.0)
        items.append(dict(result=res, key=f"g{generation}-c{c}", generation=generation, generator=symbol,
                          model_id="m", spacegroup=1, unique=True, duplicate_of=None))
    return items
