"""Reports of a search run: convex hulls, phase diagrams, enthalpy vs pressure, convergence,
and the best structures as CIF/POSCAR files.

A run directory holds ``results.db`` (written by :class:`lamcsp.store.ResultStore`) and, usually,
``campaign.yaml``. Rows have a ``role``: ``search`` (relaxed candidates), ``reference``
(elemental structures given by the user, relaxed at each pressure) or ``scan`` (re-relaxations of
the best polymorphs over a grid of pressures; ``polymorph`` is the id of the row they came from).

Eligible rows enter hulls and tables: ``search`` rows with ``unique`` set and ``reference`` rows,
whose status is not ``failed...`` and whose enthalpy is finite. Pressures are compared rounded to
1e-6 GPa. At each pressure the hull is pymatgen's :class:`PhaseDiagram` of the eligible rows
(``hull_kind = "phase_diagram"``) when every element of the system has a pure-element entry there;
otherwise each structure is compared with the lowest one of its reduced formula
(``hull_kind = "lowest_polymorph"``, formation enthalpy null).

Ranking (report table and :func:`export`): search rows only, per pressure, by energy above the
hull, then enthalpy per atom, then row id. Space groups of ranked structures are recomputed with
``report.symprec``; elsewhere the stored ones are shown.

The run directory can be read while a search is still writing to it.

This module writes the report folder and exports structures; the rest lives beside it:
:mod:`lamcsp.report_data` reads a run into rows, hulls and rankings and builds the summary
document (:func:`summary`), :mod:`lamcsp.report_plots` draws the figures and
:mod:`lamcsp.report_html` writes the page. Their names stay importable from here.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamcsp.campaign import ReportSpec
from lamcsp.errors import SetupError
from lamcsp.hull import HULL_KINDS, hull_at, transitions
from lamcsp.report_data import (  # noqa: F401  (the names that lived here before the split)
    CAMPAIGN_NAME,
    DB_NAME,
    _agreement,
    _analyse,
    _connect,
    _convergence_doc,
    _count,
    _cummin,
    _element_order,
    _entry,
    _f,
    _finetune_doc,
    _finetune_hulls,
    _hull_entry,
    _polymorph,
    _pressure_doc,
    _read_campaign,
    _Run,
    _scan_curves,
    _scans_doc,
    _summary_doc,
    _top_entries,
    _verification_doc,
    summary,
)
from lamcsp.report_html import (  # noqa: F401  (the names that lived here before the split)
    _CSS,
    _compositions_html,
    _e,
    _finetune_html,
    _html,
    _img,
    _link,
    _num,
    _phase,
    _pressure_html,
    _scans_html,
    _stable_text,
    _table,
    _top_html,
    _verification_html,
)
from lamcsp.report_plots import (  # noqa: F401  (the names that lived here before the split)
    _MAX_PANELS,
    _figure,
    _nan,
    _plot_above,
    _plot_binary,
    _plot_convergence,
    _plot_hull,
    _plot_scan,
    _plot_ternary,
    _plots,
    _save,
)
from lamcsp.store import Record, record_of

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["EXPORT_FORMATS", "HULL_KINDS", "Record", "export", "hull_at", "record_of", "summary",
           "transitions", "write_report"]

EXPORT_FORMATS = ("cif", "poscar", "extxyz")


# ------------------------------------------------------------------------------------ files


def _structure_name(i: int, rank: int, formula: str, spacegroup: int) -> str:
    return f"p{i}-rank{rank:02d}-{formula}-sg{spacegroup}"


def _write_structure(atoms: Atoms, path: Path, fmt: str) -> Path:
    from ase.io import write

    atoms = atoms.copy()
    atoms.calc = None
    if fmt == "cif":
        write(path, atoms, format="cif")
    else:
        write(path, atoms, format="vasp", direct=True)
    return path


def _frame(run: _Run, entry: dict[str, Any]) -> Atoms:
    atoms = run.atoms(entry["db_id"])
    atoms.calc = None
    atoms.info.update({k: entry[k] for k in ("db_id", "pressure_gpa", "spacegroup", "enthalpy_per_atom",
                                             "e_above_hull", "rank")})
    atoms.info["reduced_formula"] = entry["reduced_formula"]
    return atoms


def export(run_dir: str | Path, top: int, fmt: str, out_dir: str | Path) -> list[Path]:
    """Write the ``top`` best search structures at each pressure.

    Structures are ranked as in the report (energy above hull, then enthalpy per atom, then row
    id); the list goes by pressure, then rank. ``cif`` and ``poscar`` write one file each, named
    ``p{pressure index}-rank{NN}-{formula}-sg{space group}.cif|.vasp``; ``extxyz`` writes one file,
    ``top{top}.extxyz``, whose frames carry ``db_id``, ``pressure_gpa``, ``spacegroup``,
    ``enthalpy_per_atom``, ``e_above_hull``, ``rank`` and ``reduced_formula`` in ``info``.

    Raises:
        SetupError: an unknown ``fmt`` (field ``format``), ``top`` < 1, or no ``results.db``.
    """
    if fmt not in EXPORT_FORMATS:
        raise SetupError("format", f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise SetupError("top", f"must be an integer >= 1, got {top!r}")
    run = _analyse(run_dir, None)
    run.spec = run.spec.replace(top_n=top)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = [(i, e) for i, p in enumerate(run.pressures) for e in _top_entries(run, p)]
    if fmt == "extxyz":
        from lamcsp.io import write_frames

        path = out / f"top{top}.extxyz"
        write_frames(str(path), [_frame(run, e) for _, e in entries])
        return [path]
    ext = "cif" if fmt == "cif" else "vasp"
    return [
        _write_structure(run.atoms(e["db_id"]),
                         out / f"{_structure_name(i, e['rank'], e['formula'], e['spacegroup'])}.{ext}", ext)
        for i, e in entries
    ]


def _write_top_files(run: _Run, doc: dict[str, Any], out: Path) -> None:
    """Write each listed structure to ``out/structures`` and record the relative paths."""
    folder = out / "structures"
    folder.mkdir(exist_ok=True)
    for i, pdoc in enumerate(doc["pressures"]):
        for e in pdoc["top"]:
            stem = _structure_name(i, e["rank"], e["formula"], e["spacegroup"])
            atoms = run.atoms(e["db_id"])
            files = {"poscar": _write_structure(atoms, folder / f"{stem}.vasp", "vasp")}
            if run.spec.write_cif:
                files["cif"] = _write_structure(atoms, folder / f"{stem}.cif", "cif")
            e["files"] = {k: v.relative_to(out).as_posix() for k, v in sorted(files.items())}


def _clean(out: Path) -> None:
    """Remove what an earlier report wrote (only its own kinds of files)."""
    for folder, suffixes in (("img", {".png"}), ("structures", {".cif", ".vasp"})):
        for path in (out / folder).glob("*"):
            if path.is_file() and path.suffix in suffixes:
                path.unlink()


def write_report(run_dir: str | Path, out_dir: str | Path | None = None,
                 spec: ReportSpec | None = None) -> Path:
    """Write ``report.html``, ``summary.json``, ``ranking.txt``, plots (``img/``) and top structures
    (``structures/``).

    Each listed structure gets a picture, its simulated XRD pattern (over ``spec.xrd``, a measured
    one, if given; ``summary.json`` then has ``xrd_match``, the listed structures by agreement),
    density, volume per atom and coordination (:mod:`lamcsp.report_xrd`).

    Runs again over an earlier report, replacing it. All links in the page are relative, so the
    folder can be moved or opened offline.

    Args:
        run_dir: the run directory.
        out_dir: where to write (default ``run_dir/report``).
        spec: report settings (default: the campaign's ``report`` section, else defaults).

    Returns:
        The path of ``report.html``.

    Raises:
        SetupError: ``run_dir`` holds no ``results.db``; ``report.xrd`` is missing or unreadable.
    """
    from lamcsp.report_xrd import add_structures, ranking_lines, read_pattern

    run = _analyse(run_dir, spec)
    measured = read_pattern(run.spec.xrd) if run.spec.xrd else None
    out = Path(out_dir) if out_dir is not None else run.run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    doc = _summary_doc(run)
    _write_top_files(run, doc, out)
    with warnings.catch_warnings():  # matplotlib's tight-layout chatter on tiny data sets
        warnings.simplefilter("ignore", UserWarning)
        images = _plots(run, doc, out)
        add_structures(run, doc, out, measured, run.spec.xrd)
    (out / "ranking.txt").write_text("\n".join(ranking_lines(run)) + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    page = out / "report.html"
    page.write_text(_html(doc, images), encoding="utf-8")
    return page
