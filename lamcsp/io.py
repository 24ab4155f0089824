"""Reading structures (CIF, POSCAR/CONTCAR, extxyz and whatever else ASE reads) and writing
relaxation results as extxyz frames with lamcsp's documented keys."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from ase import Atoms

from lamcsp.errors import SetupError

#: keys every relaxed frame carries (``energy`` is ASE's reserved key: after ``ase.io.read``
#: it is the frame's ``get_potential_energy()``, as the file's ``energy=`` field)
RESULT_KEYS = ("energy", "enthalpy_per_atom", "pressure_gpa", "spacegroup", "converged", "steps", "status")


def _format_for(path: str) -> str | None:
    name = os.path.basename(path).upper()
    if name.startswith(("POSCAR", "CONTCAR")) or name.endswith(".VASP"):
        return "vasp"
    return None


#: atoms closer than this (Å) are one atom written twice, not a structure to relax
MIN_DISTANCE = 0.1


def _check_overlap(atoms: Atoms, what: str, field: str) -> None:
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, MIN_DISTANCE, self_interaction=False)
    if len(d):
        raise SetupError(field, f"{what} has atoms {int(i[0])} and {int(j[0])} {float(d[0]):.3f} Å apart "
                                f"(closer than {MIN_DISTANCE} Å: an atom written twice?)")


def _check_poscar_header(path: str, field: str) -> None:
    """A POSCAR whose species line and counts line disagree (ASE reads it without a word)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = [fh.readline() for _ in range(7)]
    except OSError as exc:
        raise SetupError(field, f"cannot read {path!r}: {exc.strerror or exc}") from None
    species, counts = lines[5].split(), lines[6].split()
    if not species or all(t.isdigit() for t in species):
        return  # VASP 4: no species line (the counts are on line 6); ASE checks those
    if len(species) != len(counts) or not all(t.isdigit() for t in counts):
        raise SetupError(field, f"{path!r} names {len(species)} species on line 6 ({' '.join(species)}) "
                                f"but line 7 gives {len(counts)} counts ({' '.join(counts) or 'none'}); "
                                "give one atom count per species")


def check_output_path(path: str | os.PathLike[str], field: str, *, directory: bool = False) -> None:
    """Refuse an output path that cannot be written, before any work starts.

    Args:
        path: the file (or, with ``directory``, the folder) to be written.
        field: the option or key that gave it (named in the message).
        directory: ``path`` is a folder, created if missing (else a file, whose folder must exist).

    Raises:
        SetupError: a name longer than the file system allows, a file where a folder is needed
            (or a folder where a file is), a missing or read-only folder.
    """
    text = os.fspath(path)
    if not text:
        raise SetupError(field, "empty path; give a file or folder name")
    if len(os.fsencode(text)) > 4000:
        raise SetupError(field, f"the path is {len(os.fsencode(text))} bytes long, above the limit of 4000")
    for part in text.split(os.sep):
        if len(os.fsencode(part)) > 255:
            raise SetupError(field, f"the name {part[:40]}... is {len(os.fsencode(part))} bytes long, "
                                    "above the file system's limit of 255")
    if directory:
        if os.path.exists(text) and not os.path.isdir(text):
            raise SetupError(field, f"{text!r} exists and is a file, not a folder; give a folder name")
        parent = text
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        parent = parent or "."
    else:
        if os.path.isdir(text):
            raise SetupError(field, f"{text!r} is a folder; give a file name")
        parent = os.path.dirname(text) or "."
        if not os.path.exists(parent):
            raise SetupError(field, f"the folder {parent!r} of {text!r} does not exist")
    if not os.path.isdir(parent):
        raise SetupError(field, f"{parent!r} in {text!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SetupError(field, f"the folder {parent!r} is not writable")


def read_structures(paths: Iterable[str], field: str = "INPUT") -> list[Atoms]:
    """All frames of all files, in order; each frame's ``info`` gets ``source`` and ``frame``.

    Raises:
        SetupError: a missing or unreadable file, or a structure that is not 3D periodic.
    """
    from ase.io import read

    out: list[Atoms] = []
    for path in paths:
        if not os.path.isfile(path):
            raise SetupError(field, f"no such file {path!r}; give CIF, POSCAR or extxyz files")
        if _format_for(path) == "vasp":
            _check_poscar_header(path, field)
        try:
            frames = read(path, index=":", format=_format_for(path))
        except Exception as exc:
            raise SetupError(
                field,
                f"cannot read structures from {path!r} ({type(exc).__name__}: {exc}); "
                "lamcsp reads CIF, POSCAR/CONTCAR (*.vasp) and extxyz",
            ) from exc
        if isinstance(frames, Atoms):
            frames = [frames]
        if not frames:
            raise SetupError(field, f"{path!r} holds no structure")
        for k, atoms in enumerate(frames):
            if not (np.isfinite(atoms.cell.array).all() and np.isfinite(atoms.positions).all()):
                raise SetupError(field, f"frame {k} of {path!r} has a non-finite (NaN or infinite) "
                                        "cell vector or atom position")
            if not atoms.pbc.all() or atoms.cell.rank < 3 or abs(atoms.cell.volume) < 1e-6:
                raise SetupError(
                    field,
                    f"frame {k} of {path!r} is not a 3D periodic crystal (pbc={atoms.pbc.tolist()}, "
                    f"volume={abs(atoms.cell.volume):.3g} A^3); lamcsp relaxes periodic crystals",
                )
            if len(atoms) == 0:
                raise SetupError(field, f"frame {k} of {path!r} has no atoms")
            _check_overlap(atoms, f"frame {k} of {path!r}", field)
            atoms.calc = None
            atoms.info["source"] = os.path.basename(path)
            atoms.info["frame"] = k
            out.append(atoms)
    return out


def reduced_formula(composition: Any) -> str:
    """pymatgen's reduced formula of a formula or ``{element: count}`` (``"Si8"`` -> ``"Si"``,
    elements in pymatgen's electronegativity order). Its warning about noble gases without an
    electronegativity, which only affects that order, is silenced."""
    import warnings

    from pymatgen.core import Composition

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return Composition(composition).reduced_formula


def spacegroup_number(atoms: Atoms, symprec: float = 0.1) -> int:
    """International space-group number by spglib (0 when spglib finds none)."""
    import spglib

    try:
        cell = (atoms.cell.tolist(), atoms.get_scaled_positions().tolist(), atoms.numbers.tolist())
        data = spglib.get_symmetry_dataset(cell, symprec=symprec)
    except Exception:  # spglib raises on degenerate cells; the frame still gets written
        return 0
    return int(data.number) if data is not None else 0


def result_frame(result, info: dict | None = None, symprec: float = 0.1) -> Atoms:
    """An ``Atoms`` frame for one :class:`~lamcsp.relax.relaxer.RelaxResult`."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = result.atoms.copy()
    atoms.info.update(info or {})
    atoms.info.update(
        enthalpy_per_atom=float(result.enthalpy_per_atom),
        pressure_gpa=float(result.pressure_gpa),
        spacegroup=spacegroup_number(atoms, symprec),
        converged=bool(result.converged),
        steps=int(result.steps),
        status=str(result.status),
    )
    s = result.stress
    atoms.calc = SinglePointCalculator(
        atoms,
        energy=float(result.energy),
        forces=np.asarray(result.forces),
        stress=np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]),
    )
    return atoms


def write_frames(path: str, frames: Sequence[Atoms]) -> None:
    """Write extxyz atomically (a temporary file renamed into place)."""
    from ase.io import write

    tmp = f"{path}.tmp"
    write(tmp, list(frames), format="extxyz")
    os.replace(tmp, path)
