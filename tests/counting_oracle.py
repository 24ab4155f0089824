"""An oracle that counts its calls: EMT, and one line appended to the file named by
``LAMCSP_ORACLE_COUNT`` per calculation (``O_APPEND``: lines from killed and resumed processes
add up). The kill-and-resume tests compare the count of a killed-and-resumed run with an
uninterrupted one's."""

from __future__ import annotations

import os

from ase.calculators.emt import EMT


class CountingEMT(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=None):  # noqa: D102
        from ase.calculators.calculator import all_changes

        super().calculate(atoms, properties, system_changes if system_changes is not None else all_changes)
        path = os.environ.get("LAMCSP_ORACLE_COUNT")
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{len(self.atoms)}\n".encode())
            finally:
                os.close(fd)
