"""What the report shows of each listed structure, and the files for scripts: a picture, the
simulated powder XRD pattern (overlaid on a measured one, ``report.xrd``), density, volume and
coordination, and the CALYPSO-style ``ranking.txt``.

Choices, so that a reader can redo them:

- XRD: pymatgen's :class:`~pymatgen.analysis.diffraction.xrd.XRDCalculator`, Cu Kα1
  (1.54056 Å), 2θ in [:data:`TWO_THETA_RANGE`] degrees, intensities scaled to 100.
- Agreement with a measured pattern: both patterns on one 2θ grid (:data:`GRID_STEP` degrees,
  over the part of :data:`TWO_THETA_RANGE` that the measurement covers); the simulated sticks
  are broadened by a Gaussian of full width at half maximum :data:`FWHM` degrees, the measured
  pattern is interpolated linearly; the similarity is the Pearson correlation of the two (1:
  the same shape; scale and a constant background do not count). It is strict about peak
  positions: a lattice off by ~1% (the model's error, another pressure) moves high-angle peaks
  by more than the width and lowers r a lot; compare structures with each other, not with 1.
- Coordination: an atom's neighbours are the atoms within 1.1 times its nearest-neighbour
  distance (:data:`SHELL_FACTOR`: bcc counts 8, not 8 + 6; fcc 12; rocksalt 6); the table
  shows the mean over the atoms. Fast, and blind to bond chemistry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lamcsp.errors import SetupError

if TYPE_CHECKING:
    from ase import Atoms

    from lamcsp.report_data import _Run

__all__ = ["FWHM", "GRID_STEP", "SHELL_FACTOR", "SYMPRECS", "TWO_THETA_RANGE", "WAVELENGTH", "broadened",
           "coordination", "pattern_similarity", "ranking_lines", "read_pattern", "structure_facts",
           "xrd_pattern"]

WAVELENGTH = "CuKa1"
TWO_THETA_RANGE = (10.0, 90.0)
FWHM = 0.3
GRID_STEP = 0.02
SHELL_FACTOR = 1.1
SYMPRECS = (0.01, 0.1, 0.5)  # tolerances of the space-group columns of ranking.txt
FIELD = "report.xrd"


# ------------------------------------------------------------------------------------ patterns


def read_pattern(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A measured powder pattern: two columns, 2θ (degrees) and intensity; ``#`` comments and
    any further columns are ignored.

    Returns:
        ``(two_theta (n,), intensity (n,))``, sorted by 2θ.

    Raises:
        SetupError: (field ``report.xrd``) the file is missing, unreadable, or has fewer than
            ten finite points.
    """
    path = Path(path)
    if not path.is_file():
        raise SetupError(FIELD, f"measured XRD pattern {str(path)!r} does not exist (a text file of two "
                                "columns, 2θ in degrees and intensity; relative to the campaign file)")
    try:
        data = np.loadtxt(path, comments="#", ndmin=2, usecols=(0, 1))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SetupError(FIELD, f"measured XRD pattern {str(path)!r} is not two columns of numbers "
                                f"(2θ in degrees, intensity): {exc}") from None
    data = data[np.isfinite(data).all(axis=1)]
    if len(data) < 10:
        raise SetupError(FIELD, f"measured XRD pattern {str(path)!r} has {len(data)} points; give at "
                                "least 10 (2θ in degrees, intensity)")
    order = np.argsort(data[:, 0])
    return data[order, 0], data[order, 1]


def xrd_pattern(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """The simulated powder pattern's peaks: ``(two_theta (n,), intensity (n,))``, degrees and
    intensities scaled to 100 (Cu Kα1, 2θ in :data:`TWO_THETA_RANGE`)."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    structure = AseAtomsAdaptor.get_structure(atoms)
    pattern = XRDCalculator(wavelength=WAVELENGTH).get_pattern(structure, two_theta_range=TWO_THETA_RANGE)
    return np.asarray(pattern.x, dtype=float), np.asarray(pattern.y, dtype=float)


def broadened(peaks: tuple[np.ndarray, np.ndarray], grid: np.ndarray, fwhm: float = FWHM) -> np.ndarray:
    """Peaks ``(two_theta (n,), intensity (n,))`` as Gaussians of full width ``fwhm`` (degrees)
    summed on ``grid (m,)``; returns ``(m,)``."""
    x, y = peaks
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    if len(x) == 0:
        return np.zeros_like(grid)
    return (y[None, :] * np.exp(-0.5 * ((grid[:, None] - x[None, :]) / sigma) ** 2)).sum(axis=1)


def pattern_similarity(peaks: tuple[np.ndarray, np.ndarray],
                       measured: tuple[np.ndarray, np.ndarray]) -> float:
    """Pearson correlation in [-1, 1] of the broadened simulated peaks and the measured pattern
    on a common grid (the module's docstring); 0 where either is flat."""
    lo = max(TWO_THETA_RANGE[0], float(measured[0][0]))
    hi = min(TWO_THETA_RANGE[1], float(measured[0][-1]))
    if hi - lo < 10 * GRID_STEP:
        return 0.0
    grid = np.arange(lo, hi, GRID_STEP)
    sim = broadened(peaks, grid)
    exp = np.interp(grid, measured[0], measured[1])
    if np.std(sim) == 0 or np.std(exp) == 0:
        return 0.0
    return float(np.corrcoef(sim, exp)[0, 1])


# ------------------------------------------------------------------------------------ facts


def coordination(atoms: Atoms, factor: float = SHELL_FACTOR) -> float:
    """Mean number of neighbours within ``factor`` times each atom's nearest-neighbour distance."""
    from ase.neighborlist import neighbor_list

    cutoff = 4.0
    while True:  # widen until every atom has a neighbour and its whole first shell is in range
        i, d = neighbor_list("id", atoms, cutoff)
        dmin = np.full(len(atoms), np.inf)
        np.minimum.at(dmin, i, d)
        if np.isfinite(dmin).all() and factor * dmin.max() <= cutoff or cutoff > 20.0:
            break
        cutoff *= 1.5
    if not np.isfinite(dmin).any():
        return 0.0
    counts = np.bincount(i[d <= factor * dmin[i] + 1e-6], minlength=len(atoms))
    return float(counts.mean())


def structure_facts(atoms: Atoms) -> dict[str, float]:
    """``density`` (g/cm³), ``volume_per_atom`` (Å³) and ``coordination`` (mean, :func:`coordination`)."""
    from ase.units import _amu

    volume = float(atoms.get_volume())
    density = float(atoms.get_masses().sum()) * _amu * 1e3 / (volume * 1e-24)
    return {"density": density, "volume_per_atom": volume / len(atoms), "coordination": coordination(atoms)}


# ------------------------------------------------------------------------------------ figures


def plot_structure(atoms: Atoms, path: Path) -> Path:
    """A small static picture of the cell (ASE's PNG writer)."""
    from ase.io import write

    write(path, atoms, format="png", rotation="10x,-20y", show_unit_cell=2, scale=25, maxwidth=400,
          radii=0.6)  # covalent radii scaled down, so that the atoms behind show
    return path


def plot_xrd(peaks: tuple[np.ndarray, np.ndarray], measured: tuple[np.ndarray, np.ndarray] | None,
             title: str, path: Path) -> Path:
    """The simulated pattern (sticks and the broadened curve), over the measured one if given."""
    from lamcsp.report_plots import _figure, _save

    fig, (ax,) = _figure(1, width=5.0, height=2.6)
    grid = np.arange(*TWO_THETA_RANGE, GRID_STEP)
    curve = broadened(peaks, grid)
    scale = 100.0 / curve.max() if curve.max() > 0 else 1.0
    ax.vlines(peaks[0], 0, peaks[1], color="C0", lw=0.8)
    ax.plot(grid, curve * scale, color="C0", lw=1, label="simulated (Cu Kα1)")
    if measured is not None:
        top = float(np.max(measured[1])) or 1.0
        ax.plot(measured[0], 100.0 * measured[1] / top, color="C3", lw=0.8, alpha=0.8, label="measured")
    ax.set_xlim(*TWO_THETA_RANGE)
    ax.set_xlabel("2θ (degrees)")
    ax.set_ylabel("intensity")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def add_structures(run: _Run, doc: dict[str, Any], out: Path,
                   measured: tuple[np.ndarray, np.ndarray] | None, pattern: str | None) -> None:
    """For each listed structure (its facts are in the entry already, :func:`structure_facts`):
    a picture and an XRD plot in ``out/img`` (``entry["images"]``, paths relative to ``out``) and,
    with a measured pattern, ``entry["xrd_similarity"]`` and ``doc["xrd_match"]``, the listed
    structures ranked by it."""
    folder = out / "img"
    folder.mkdir(exist_ok=True)
    matches = []
    for i, pdoc in enumerate(doc["pressures"]):
        for e in pdoc["top"]:
            atoms = run.atoms(e["db_id"])
            stem = f"p{i}-rank{e['rank']:02d}-{e['db_id']}"
            peaks = xrd_pattern(atoms)
            title = f"{e['formula']} sg{e['spacegroup']} #{e['db_id']} at {pdoc['pressure_gpa']:g} GPa"
            images = {"structure": plot_structure(atoms, folder / f"structure-{stem}.png"),
                      "xrd": plot_xrd(peaks, measured, title, folder / f"xrd-{stem}.png")}
            e["images"] = {k: v.relative_to(out).as_posix() for k, v in images.items()}
            if measured is not None:
                e["xrd_similarity"] = _finite(pattern_similarity(peaks, measured))
                matches.append({k: e[k] for k in ("db_id", "formula", "spacegroup", "rank", "pressure_gpa",
                                                  "xrd_similarity")})
    if measured is not None:
        matches.sort(key=lambda m: (-(m["xrd_similarity"] if m["xrd_similarity"] is not None else -2.0),
                                    m["pressure_gpa"], m["rank"]))
        doc["xrd_match"] = {
            "pattern": pattern, "wavelength": WAVELENGTH, "fwhm_deg": FWHM, "grid_step_deg": GRID_STEP,
            "similarity": "Pearson correlation of the Gaussian-broadened simulated pattern and the "
                          "measured one on a common 2θ grid",
            "ranking": matches}


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# ------------------------------------------------------------------------------------ ranking.txt


def ranking_lines(run: _Run, symprecs: Sequence[float] = SYMPRECS) -> list[str]:
    """``ranking.txt``: every eligible search row, per pressure, by enthalpy per atom (then id).
    Relative enthalpy is to the lowest row of the same reduced formula at that pressure (meV/atom);
    space groups are recomputed at each tolerance in ``symprecs``. Whitespace-separated columns
    under one ``#`` header, for scripts."""
    from lamcsp.io import spacegroup_number

    sg_head = " ".join(f"{'sg(' + format(s, 'g') + ')':>9}" for s in symprecs)
    lines = [f"# lamcsp ranking of {run.name}: search rows by enthalpy per atom at each pressure; "
             "dH relative to the lowest of the same composition",
             f"# {'pressure_GPa':>12} {'rank':>5} {'id':>7} {'H_eV_atom':>13} {'dH_meV_atom':>12} "
             f"{sg_head} formula"]
    for p in run.pressures:
        rows = sorted((r for r in run.eligible_at(p) if r.role == "search"),
                      key=lambda r: (r.enthalpy_per_atom, r.db_id))
        lowest: dict[str, float] = {}
        for r in rows:
            lowest.setdefault(r.reduced_formula, r.enthalpy_per_atom)
        for rank, r in enumerate(rows, start=1):
            atoms = run.atoms(r.db_id)
            sgs = " ".join(f"{spacegroup_number(atoms, s):>9d}" for s in symprecs)
            dh = 1000.0 * (r.enthalpy_per_atom - lowest[r.reduced_formula])
            lines.append(f"  {p:12.4f} {rank:5d} {r.db_id:7d} {r.enthalpy_per_atom:13.6f} {dh:12.2f} "
                         f"{sgs} {r.formula}")
    return lines
