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
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from lamcsp.campaign import ReportSpec, load_campaign
from lamcsp.errors import SetupError
from lamcsp.hull import HULL_KINDS, Hull, composition_fractions, hull_at, transitions
from lamcsp.io import reduced_formula
from lamcsp.store import Record, RunDir, pressure_key, record_of

if TYPE_CHECKING:
    from ase import Atoms
    from matplotlib.axes import Axes
    from pymatgen.analysis.phase_diagram import PhaseDiagram

__all__ = ["EXPORT_FORMATS", "HULL_KINDS", "Record", "export", "hull_at", "record_of", "summary",
           "transitions", "write_report"]

DB_NAME = RunDir.DB
CAMPAIGN_NAME = RunDir.CAMPAIGN
EXPORT_FORMATS = ("cif", "poscar", "extxyz")
_MAX_PANELS = 6  # compositions per convergence figure


# ------------------------------------------------------------------------------------ rows


def _connect(run_dir: Path) -> Any:
    import ase.db

    path = run_dir / DB_NAME
    if not path.is_file():
        raise SetupError(
            "run_dir", f"{str(run_dir)!r} holds no {DB_NAME}; give the output directory of a "
                       "search (the campaign's `output`, default runs/<name>)")
    return ase.db.connect(str(path), use_lock_file=False)


# ------------------------------------------------------------------------------------ scans



def _scan_curves(records: Sequence[Record]) -> dict[str, dict[int, dict[float, float]]]:
    out: dict[str, dict[int, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r.role == "scan" and r.ok:
            out[r.reduced_formula][r.polymorph][r.pressure] = r.enthalpy_per_atom
    return {f: dict(c) for f, c in sorted(out.items())}


# ------------------------------------------------------------------------------------ analysis


@dataclasses.dataclass
class _Run:
    """Everything the report, the summary and the export read from one run directory."""

    run_dir: Path
    name: str
    elements: list[str]
    spec: ReportSpec
    records: list[Record]
    by_id: dict[int, Record]
    pressures: list[float]
    hulls: dict[float, Hull]
    notes: list[str]
    db: Any
    eligible: dict[float, list[Record]] = dataclasses.field(default_factory=dict)

    def eligible_at(self, p: float) -> list[Record]:
        return self.eligible.get(p, [])

    def ranked(self, p: float, top: int) -> list[Record]:
        """The ``top`` best search structures at ``p``: by e_above_hull, enthalpy, id."""
        hull = self.hulls[p]
        rows = [r for r in self.eligible_at(p) if r.role == "search"]
        rows.sort(key=lambda r: (hull.e_above[r.db_id], r.enthalpy_per_atom, r.db_id))
        return rows[:top]

    def atoms(self, db_id: int) -> Atoms:
        return self.db.get(id=db_id).toatoms()


def _element_order(symbols: Iterable[str], first: Sequence[str]) -> list[str]:
    from pymatgen.core import Element

    rest = sorted({Element(s) for s in symbols if s not in first})  # by electronegativity
    return list(first) + [str(e) for e in rest]


def _read_campaign(run_dir: Path, notes: list[str]) -> Any:
    path = run_dir / CAMPAIGN_NAME
    if not path.is_file():
        notes.append(f"no {CAMPAIGN_NAME} in the run directory: default report settings")
        return None
    try:
        return load_campaign(path)
    except SetupError as exc:  # e.g. a model file moved since the run; the results stand
        notes.append(f"{CAMPAIGN_NAME} not read ({exc}): default report settings")
        return None


def _analyse(run_dir: str | Path, spec: ReportSpec | None = None) -> _Run:
    from pymatgen.core import Composition

    run_dir = Path(run_dir)
    db = _connect(run_dir)
    notes: list[str] = []
    campaign = _read_campaign(run_dir, notes)
    records = [record_of(row) for row in db.select(include_data=False)]
    symbols = {str(el) for r in records for el in Composition(r.formula).elements}
    elements = _element_order(symbols, campaign.system.elements if campaign else [])
    pressures = sorted({r.pressure for r in records if r.eligible})
    run = _Run(
        run_dir=run_dir, name=campaign.name if campaign else run_dir.resolve().name, elements=elements,
        spec=spec or (campaign.report if campaign else ReportSpec()), records=records,
        by_id={r.db_id: r for r in records}, pressures=pressures, hulls={}, notes=notes, db=db,
    )
    for r in records:
        if r.eligible:
            run.eligible.setdefault(r.pressure, []).append(r)
    models = {r.model_id for r in records if r.eligible and r.model_id}
    if db.count("enthalpy_now") > 0:
        notes.append("the fine-tune loop changed the model: structures relaxed with an earlier model "
                     f"count with single-point enthalpies of the last one ({', '.join(sorted(models))}); "
                     "the fine-tune section has hulls of the best hits re-relaxed with each model")
    for p in pressures:
        run.hulls[p] = hull_at(run.eligible_at(p), elements)
        if run.hulls[p].kind == "lowest_polymorph":
            notes.append(f"at {p:g} GPa not every element of {'-'.join(elements)} has a pure-element "
                         "structure: energies are relative to the lowest polymorph of each composition")
    return run


# ------------------------------------------------------------------------------------ summary


def _f(x: float | None) -> float | None:
    """A JSON-safe float (NaN and infinities become null)."""
    return None if x is None or not math.isfinite(x) else float(x)


def _entry(run: _Run, r: Record) -> dict[str, Any]:
    hull = run.hulls[r.pressure]
    return {
        "db_id": r.db_id, "formula": r.formula, "reduced_formula": r.reduced_formula,
        "pressure_gpa": r.pressure, "role": r.role, "enthalpy_per_atom": _f(r.enthalpy_per_atom),
        "formation_enthalpy_per_atom": _f(hull.formation[r.db_id]),
        "e_above_hull": _f(hull.e_above[r.db_id]), "spacegroup": r.spacegroup,
        "generation": r.generation, "generator": r.generator,
    }


def _hull_entry(run: _Run, db_id: int) -> dict[str, Any]:
    r = run.by_id[db_id]
    return {"db_id": r.db_id, "formula": r.formula, "reduced_formula": r.reduced_formula,
            "enthalpy_per_atom": _f(r.enthalpy_per_atom),
            "formation_enthalpy_per_atom": _f(run.hulls[r.pressure].formation[db_id])}


def _top_entries(run: _Run, p: float) -> list[dict[str, Any]]:
    from lamcsp.io import spacegroup_number

    out = []
    for rank, r in enumerate(run.ranked(p, run.spec.top_n), start=1):
        entry = _entry(run, r)
        entry["rank"] = rank
        entry["spacegroup"] = spacegroup_number(run.atoms(r.db_id), run.spec.symprec)
        out.append(entry)
    return out


def _pressure_doc(run: _Run, p: float) -> dict[str, Any]:
    rows = sorted(run.eligible_at(p), key=lambda r: (r.enthalpy_per_atom, r.db_id))
    compositions: dict[str, list[dict[str, Any]]] = {}
    # a stable sort: the enthalpy order is kept within a composition
    for r in sorted(rows, key=lambda r: composition_fractions(r.formula, run.elements)):
        compositions.setdefault(r.reduced_formula, []).append(_entry(run, r))
    return {
        "pressure_gpa": p,
        "hull_kind": run.hulls[p].kind,
        "hull": [_hull_entry(run, i) for i in run.hulls[p].stable],
        "compositions": compositions,
        "top": _top_entries(run, p),
    }


def _polymorph(run: _Run, db_id: int, formula: str) -> dict[str, Any]:
    """``{"db_id", "spacegroup"}`` of a scanned polymorph (its search row's space group)."""
    source = run.by_id.get(db_id)
    if source is None:  # the search row is gone: the lowest-pressure scan row stands in
        scans = sorted((r for r in run.records if r.role == "scan" and r.polymorph == db_id
                        and r.reduced_formula == formula), key=lambda r: r.pressure)
        source = scans[0]
    return {"db_id": db_id, "spacegroup": source.spacegroup}


def _scans_doc(run: _Run) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    scans: dict[str, Any] = {}
    found: list[dict[str, Any]] = []
    for formula, curves in _scan_curves(run.records).items():
        scans[formula] = [
            {**_polymorph(run, k, formula), "pressures": sorted(c),
             "enthalpy_per_atom": [_f(c[p]) for p in sorted(c)]}
            for k, c in sorted(curves.items())
        ]
        for p, a, b, interpolated in transitions(curves):
            found.append({"reduced_formula": formula, "pressure_gpa": _f(p),
                          "from": _polymorph(run, a, formula), "to": _polymorph(run, b, formula),
                          "interpolated": interpolated})
    return scans, found


def _cummin(values: dict[int, float], generations: Sequence[int]) -> list[float | None]:
    best, out = math.inf, []
    for g in generations:
        best = min(best, values.get(g, math.inf))
        out.append(_f(best))
    return out


def _convergence_doc(run: _Run) -> dict[str, Any]:
    """Best enthalpy per atom up to each generation, overall and per generator.

    Every non-failed search row counts, duplicates included (they were found too).
    """
    groups: dict[tuple[float, str], list[Record]] = defaultdict(list)
    for r in run.records:
        if r.role == "search" and r.ok:
            groups[(r.pressure, r.reduced_formula)].append(r)
    pressures: dict[float, dict[str, Any]] = {}
    for (p, formula), rows in sorted(groups.items()):
        gens = list(range(min(r.generation for r in rows), max(r.generation for r in rows) + 1))
        by_gen: dict[str, dict[int, float]] = defaultdict(dict)
        for r in rows:
            for name in ("all", r.generator):
                cur = by_gen[name].get(r.generation, math.inf)
                by_gen[name][r.generation] = min(cur, r.enthalpy_per_atom)
        overall = by_gen.pop("all")
        pressures.setdefault(p, {})[formula] = {
            "generations": gens, "best": _cummin(overall, gens), "n_structures": len(rows),
            "by_generator": {name: _cummin(v, gens) for name, v in sorted(by_gen.items())},
        }
    return {"pressures": [{"pressure_gpa": p, "compositions": c} for p, c in sorted(pressures.items())]}


def _verification_doc(run: _Run) -> list[dict[str, Any]]:
    """The oracle's verification of the answer (:func:`lamcsp.verify.verification_doc`)."""
    from lamcsp.verify import verification_doc

    rows = []
    for row in run.db.select(role="verify", include_data=False):
        rows.append({"id": int(row.id), "of": int(row.get("of", 0)), "oracle": str(row.get("oracle", "")),
                     "mode": str(row.get("mode", "")), "pressure": pressure_key(row.pressure_gpa),
                     "formula": str(row.formula), "natoms": int(row.natoms),
                     "reduced_formula": str(row.get("reduced_formula") or reduced_formula(row.formula)),
                     "enthalpy_per_atom": float(row.enthalpy_per_atom),
                     "spacegroup": int(row.get("spacegroup", 0)),
                     "status": str(row.status), "oracle_calls": int(row.get("oracle_calls", 0))})
    return verification_doc(rows, run.by_id, run.elements)


def _summary_doc(run: _Run) -> dict[str, Any]:
    models = [r.model_id for r in run.records if r.model_id and r.role != "verify"]
    scans, found = _scans_doc(run)
    return {
        "campaign": run.name,
        "model_id": models[-1] if models else None,
        "model_ids": sorted(set(models)),
        "elements": run.elements,
        "n_rows": len(run.records),
        "n_rows_by_role": dict(sorted(_count(r.role for r in run.records).items())),
        "notes": list(run.notes),
        "pressures": [_pressure_doc(run, p) for p in run.pressures],
        "scans": scans,
        "transitions": found,
        "convergence": _convergence_doc(run),
        "finetune": _finetune_doc(run),
        "verification": _verification_doc(run),
    }


def _finetune_doc(run: _Run) -> list[dict[str, Any]]:
    """The fine-tune loop per iteration (``run/finetune/iterations.json``): labels, the
    accurate / candidate / failed fractions, the error of the committee in use against the
    oracle's new labels, and how the re-relaxed best hits moved with the new model."""
    path = Path(run.run_dir) / "finetune" / "iterations.json"
    if not path.is_file():
        return []
    rerelaxed: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in run.db.select(role="rerelax"):
        old, new = run.by_id.get(int(row.get("of", -1))), run.by_id.get(int(row.id))
        if old is not None and new is not None and new.ok:
            rerelaxed[int(row.get("iteration", -1))].append({
                "of": old.db_id, "reduced_formula": old.reduced_formula,
                "before": _f(old.enthalpy_per_atom), "after": _f(new.enthalpy_per_atom)})
    hulls = _finetune_hulls(run)
    out = []
    for it in json.loads(path.read_text()):
        moved = rerelaxed.get(int(it["iteration"]), [])
        out.append({"iteration": it["iteration"], "selected": it["selected"], "labelled": it["labelled"],
                    "failed_labels": it["failed_labels"], "fractions": it["fractions"],
                    "errors_before": it["errors_before"], "converged": it["converged"],
                    "stop_reason": it.get("stop_reason", ""), "oracle_calls": it.get("oracle_calls"),
                    "free_labels": it.get("free_labels", 0),
                    "committee_vs_error": it.get("committee_vs_error", {}),
                    "verification": _agreement(it.get("verification")),
                    "n_models": len(it["models"]), "rerelaxed": moved,
                    "hull": hulls.get(int(it["iteration"]), []), "hull_before": hulls.get(-1, [])})
    return out


def _agreement(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per unit, whether the model's top-1 was the oracle's, with the ranking statistics."""
    if not record:
        return None
    return {unit: {k: c[k] for k in ("top1_agree", "kendall_tau", "max_error", "answer", "ranking")}
            for unit, c in record.items()}


def _finetune_hulls(run: _Run) -> dict[int, list[dict[str, Any]]]:
    """Single-model hulls, per pressure, as the loop changed the model: -1, the unique hits of
    the first model; i, the best hits re-relaxed with the model of iteration i (the search's
    own hull mixes the energies of every model it used). Each: the stable formulas and ids."""
    own = [record_of(row, now=False) for row in run.db.select(role="search", unique=True)]
    first = min(own, key=lambda r: r.db_id).model_id if own else None
    groups: dict[int, list[Record]] = defaultdict(list)
    groups[-1] = [r for r in own if r.ok and r.model_id == first]
    for row in run.db.select(role="rerelax"):
        r = run.by_id.get(int(row.id))
        if r is not None and r.ok:
            groups[int(row.get("iteration", -2))].append(r)
    out: dict[int, list[dict[str, Any]]] = {}
    for it, rows in groups.items():
        for p in sorted({r.pressure for r in rows}):
            hull = hull_at([r for r in rows if r.pressure == p], run.elements)
            out.setdefault(it, []).append({
                "pressure_gpa": p, "hull_kind": hull.kind,
                "stable": sorted({run.by_id[i].reduced_formula for i in hull.stable}),
                "ids": hull.stable})
    return out


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for item in items:
        out[item] += 1
    return dict(out)


def summary(run_dir: str | Path, spec: ReportSpec | None = None) -> dict[str, Any]:
    """The run's hulls, transitions and convergence as JSON-ready plain data (no NaN).

    Args:
        run_dir: the run directory (holds ``results.db``, usually ``campaign.yaml``).
        spec: report settings (default: the campaign's ``report`` section, else defaults).

    Raises:
        SetupError: ``run_dir`` holds no ``results.db``.
    """
    return _summary_doc(_analyse(run_dir, spec))


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


# ------------------------------------------------------------------------------------ plots


def _figure(n_panels: int = 1, width: float = 6.4, height: float = 4.6) -> tuple[Any, list[Axes]]:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    cols = min(n_panels, 3)
    rows = -(-n_panels // cols)
    fig = Figure(figsize=(width * (0.75 if cols > 1 else 1) * cols, height * (0.8 if rows > 1 else 1) * rows),
                 layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def _plot_binary(run: _Run, p: float, ax: Axes) -> None:
    hull = run.hulls[p]
    second = run.elements[1]
    rows = run.eligible_at(p)
    x = [composition_fractions(r.formula, run.elements)[0] for r in rows]
    y = _nan([hull.formation[r.db_id] for r in rows])
    ax.scatter(x, y, s=18, c="0.6", label="all structures", zorder=2)
    stable = [run.by_id[i] for i in hull.stable]
    xs = [composition_fractions(r.formula, run.elements)[0] for r in stable]
    ys = _nan([hull.formation[r.db_id] for r in stable])
    ax.plot(xs, ys, "o-", color="tab:red", label="convex hull", zorder=3)
    for r, xi, yi in zip(stable, xs, ys):
        ax.annotate(r.reduced_formula, (xi, yi), textcoords="offset points", xytext=(0, -12),
                    ha="center", fontsize=8)
    ax.axhline(0.0, color="0.8", lw=0.8, zorder=1)
    ax.set_xlabel(f"fraction of {second}")
    ax.set_ylabel("formation enthalpy (eV/atom)")
    ax.legend(fontsize=8)


def _plot_ternary(run: _Run, p: float, ax: Axes) -> None:
    from pymatgen.analysis.phase_diagram import PDPlotter

    plotter = PDPlotter(cast("PhaseDiagram", run.hulls[p].pd), backend="matplotlib", ternary_style="2d")
    lines, stable, unstable = plotter.pd_plot_data  # pymatgen's own Gibbs-triangle coordinates
    for x, y in lines:
        ax.plot(x, y, "k-", lw=1.2)
    if unstable:
        x, y = zip(*unstable.values())
        ax.plot(x, y, "o", color="0.6", ms=4, ls="none")
    for (x, y), entry in stable.items():
        ax.plot(x, y, "o", color="tab:red", ms=7)
        ax.annotate(entry.name, (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_aspect("equal")
    ax.axis("off")


def _plot_above(run: _Run, p: float, ax: Axes) -> None:
    hull = run.hulls[p]
    rows = run.eligible_at(p)
    formulas = sorted({r.reduced_formula for r in rows}, key=lambda f: composition_fractions(f, run.elements))
    where = {f: k for k, f in enumerate(formulas)}
    ax.scatter([where[r.reduced_formula] for r in rows], [1000 * hull.e_above[r.db_id] for r in rows],
               s=18, c="tab:blue")
    ax.set_xticks(range(len(formulas)), formulas, rotation=45 if len(formulas) > 6 else 0, fontsize=8)
    what = "lowest polymorph" if hull.kind == "lowest_polymorph" else "hull"
    ax.set_ylabel(f"enthalpy above {what} (meV/atom)")


def _plot_hull(run: _Run, p: float, path: Path) -> Path:
    fig, (ax,) = _figure()
    hull = run.hulls[p]
    n = len(run.elements)
    if hull.kind == "phase_diagram" and n == 2:
        _plot_binary(run, p, ax)
    elif hull.kind == "phase_diagram" and n == 3:
        _plot_ternary(run, p, ax)
    else:
        _plot_above(run, p, ax)
    ax.set_title(f"{'-'.join(run.elements)} at {p:g} GPa")
    return _save(fig, path)


def _plot_scan(formula: str, curves: list[dict[str, Any]], found: list[dict[str, Any]], path: Path) -> Path:
    """H per atom of each polymorph relative to the one lowest at the first pressure, so that
    curves cross where the lowest polymorph changes."""
    fig, (ax,) = _figure()
    first = min(p for c in curves for p in c["pressures"])
    ref = min((c for c in curves if first in c["pressures"]),
              key=lambda c: c["enthalpy_per_atom"][c["pressures"].index(first)])
    base = dict(zip(ref["pressures"], ref["enthalpy_per_atom"]))
    for c in curves:
        pts = [(q, 1000 * (h - base[q])) for q, h in zip(c["pressures"], c["enthalpy_per_atom"]) if q in base]
        ax.plot(*zip(*pts), "o-", ms=4, label=f"{formula} sg{c['spacegroup']} (#{c['db_id']})")
    for t in found:
        ax.axvline(t["pressure_gpa"], color="0.5", ls=":", lw=1)
    ax.set_xlabel("pressure (GPa)")
    ax.set_ylabel(f"H - H(sg{ref['spacegroup']} #{ref['db_id']}) (meV/atom)")
    ax.set_title(f"{formula}: enthalpy vs pressure (dotted: transitions)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_convergence(p: float, comps: dict[str, Any], path: Path) -> Path:
    chosen = sorted(comps, key=lambda f: -comps[f]["n_structures"])[:_MAX_PANELS]
    fig, axes = _figure(len(chosen))
    for ax, formula in zip(axes, chosen):
        c = comps[formula]
        gens = c["generations"]
        ax.step(gens, _nan(c["best"]), where="post", color="k", lw=2.2, marker="o", ms=4, label="all")
        for name, values in c["by_generator"].items():
            ax.step(gens, _nan(values), where="post", lw=1.2, marker=".", label=name)
        ax.set_xlabel("generation")
        ax.set_ylabel("best H (eV/atom)")
        ax.set_title(f"{formula} at {p:g} GPa", fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _nan(values: list[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


# ------------------------------------------------------------------------------------ html

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: .4em 0; }
.note { color: #844; } .muted { color: #777; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: float | None, scale: float = 1.0, digits: int = 4) -> str:
    return "&ndash;" if value is None else f"{scale * value:.{digits}f}"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> str:
    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(f"<{tag}{' class=l' if k < left else ''}>{v}</{tag}>" for k, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><tr>{cells('th', [_e(h) for h in head])}</tr>{body}</table>"


def _link(href: str, text: str) -> str:
    return f'<a href="{_e(quote(href))}">{_e(text)}</a>'


def _img(src: str, alt: str) -> str:
    return f'<img src="{_e(quote(src))}" alt="{_e(alt)}">'


def _top_html(top: list[dict[str, Any]]) -> str:
    head = ["rank", "formula", "space group", "H (eV/atom)", "ΔH_f (eV/atom)", "above hull (meV/atom)",
            "db id", "files"]
    rows = [
        [str(e["rank"]), _e(e["formula"]), str(e["spacegroup"]), _num(e["enthalpy_per_atom"]),
         _num(e["formation_enthalpy_per_atom"]), _num(e["e_above_hull"], 1000, 1), str(e["db_id"]),
         " ".join(_link(path, kind.upper()) for kind, path in e.get("files", {}).items())]
        for e in top
    ]
    return _table(head, rows, left=2) if rows else "<p class=muted>No search structures at this pressure.</p>"


def _compositions_html(pdoc: dict[str, Any]) -> str:
    head = ["composition", "structures", "lowest H (eV/atom)", "ΔH_f (eV/atom)", "above hull (meV/atom)",
            "space group", "db id"]
    rows = []
    for formula, entries in pdoc["compositions"].items():
        e = entries[0]
        rows.append([_e(formula), str(len(entries)), _num(e["enthalpy_per_atom"]),
                     _num(e["formation_enthalpy_per_atom"]), _num(e["e_above_hull"], 1000, 1),
                     str(e["spacegroup"]), str(e["db_id"])])
    return _table(head, rows)


def _pressure_html(i: int, pdoc: dict[str, Any], images: dict[str, str]) -> str:
    p = pdoc["pressure_gpa"]
    kind = ("convex hull (pymatgen PhaseDiagram)" if pdoc["hull_kind"] == "phase_diagram"
            else "no hull: not every element has a pure structure; enthalpies relative to the lowest "
                 "polymorph of each composition")
    hull_rows = [[_e(h["reduced_formula"]), _e(h["formula"]), _num(h["enthalpy_per_atom"]),
                  _num(h["formation_enthalpy_per_atom"]), str(h["db_id"])] for h in pdoc["hull"]]
    parts = [
        f"<h2 id=p{i}>{p:g} GPa</h2>", f"<p>{_e(kind)}.</p>",
        _img(images[f"hull-{i}"], f"hull at {p:g} GPa"),
        "<h3>Hull</h3>",
        _table(["composition", "formula", "H (eV/atom)", "ΔH_f (eV/atom)", "db id"], hull_rows, left=2),
        "<h3>Lowest structure of each composition</h3>", _compositions_html(pdoc),
        "<h3>Top structures</h3>", _top_html(pdoc["top"]),
    ]
    if f"conv-{i}" in images:
        parts += ["<h3>Convergence</h3>", _img(images[f"conv-{i}"], f"convergence at {p:g} GPa")]
    return "\n".join(parts)


def _phase(polymorph: dict[str, Any]) -> str:
    return f"sg{polymorph['spacegroup']} (#{polymorph['db_id']})"


def _scans_html(doc: dict[str, Any], images: dict[str, str]) -> str:
    parts = ["<h2 id=scans>Enthalpy vs pressure</h2>"]
    if not doc["scans"]:
        return parts[0] + "\n<p class=muted>No pressure scans in this run (no rows with role=scan).</p>"
    for k, formula in enumerate(doc["scans"]):
        parts.append(_img(images[f"scan-{k}"], f"{formula} enthalpy vs pressure"))
    rows = [[_e(t["reduced_formula"]), _num(t["pressure_gpa"], digits=2), _phase(t["from"]), _phase(t["to"])]
            for t in doc["transitions"]]
    parts.append(_table(["composition", "pressure (GPa)", "from", "to"], rows) if rows
                 else "<p class=muted>No transitions in the scanned pressure range.</p>")
    return "\n".join(parts)


def _html(doc: dict[str, Any], images: dict[str, str]) -> str:
    notes = "".join(f"<p class=note>{_e(n)}</p>" for n in doc["notes"])
    toc = " &middot; ".join(f'<a href="#p{i}">{p["pressure_gpa"]:g} GPa</a>'
                            for i, p in enumerate(doc["pressures"]))
    body = [
        f"<h1>{_e(doc['campaign'])}</h1>",
        f"<p>System {_e('-'.join(doc['elements']))}; model {_e(doc['model_id'])}; {doc['n_rows']} rows "
        f"({_e(', '.join(f'{k} {v}' for k, v in doc['n_rows_by_role'].items()))}). "
        f'Data: <a href="summary.json">summary.json</a>.</p>',
        notes, f"<p>{toc} &middot; <a href=#scans>enthalpy vs pressure</a>"
        + (" &middot; <a href=#verify>verification by the oracle</a>" if doc.get("verification") else "")
        + (" &middot; <a href=#finetune>fine-tune loop</a>" if doc.get("finetune") else "") + "</p>",
        *(_pressure_html(i, p, images) for i, p in enumerate(doc["pressures"])),
        _scans_html(doc, images),
        _verification_html(doc),
        _finetune_html(doc),
    ]
    if not doc["pressures"]:
        body.insert(3, "<p class=muted>No finished structures yet.</p>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{_e(doc['campaign'])} - lamcsp report</title><style>{_CSS}</style></head>\n"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _finetune_html(doc: dict[str, Any]) -> str:
    its = doc.get("finetune") or []
    if not its:
        return ""

    def agree(v: dict[str, Any] | None) -> str:
        if not v:
            return "&ndash;"
        n = sum(1 for c in v.values() if c["top1_agree"])
        return f"{n}/{len(v)}"

    def vs(c: dict[str, Any]) -> str:
        if not c or not c.get("n"):
            return "&ndash;"
        return (f"{c['mean_devi_f']:.3f} / {c['mean_error_f']:.3f} "
                f"({100 * c['agreed_while_wrong']:.0f}% trusted while wrong)")

    rows = "".join(
        f"<tr><td>{it['iteration']}</td><td>{it['selected']}</td><td>{it['labelled']}</td>"
        f"<td>{it.get('free_labels', 0)}</td><td>{it['failed_labels']}</td>"
        f"<td>{it['fractions']['accurate']:.2f}</td>"
        f"<td>{it['fractions']['candidate']:.2f}</td><td>{it['fractions']['failed']:.2f}</td>"
        f"<td>{_e(format(it['errors_before'].get('force_rmse', float('nan')), '.3f'))}</td>"
        f"<td>{vs(it.get('committee_vs_error') or {})}</td>"
        f"<td>{agree(it.get('verification'))}</td>"
        f"<td>{_e(it.get('stop_reason') or '') if it['converged'] else ''}</td>"
        f"<td>{_e(_stable_text(it['hull']))}</td></tr>" for it in its)
    return ("<h2 id=finetune>Fine-tune loop</h2><table><tr><th>iteration</th><th>selected</th>"
            "<th>labelled</th><th>oracle frames from the verification</th><th>label failures</th>"
            "<th>accurate</th><th>candidate</th><th>failed</th>"
            "<th>force RMSE vs oracle (eV/&Aring;), model in use</th>"
            "<th>committee deviation / actual error (max force, eV/&Aring;)</th>"
            "<th>top-1 agrees with the oracle (units), model in use at the start</th><th>converged</th>"
            "<th>hull of the best hits re-relaxed with the new model</th></tr>"
            f"{rows}</table><p>Hull of the first model's hits: "
            f"{_e(_stable_text(its[0]['hull_before']))}.</p>")


def _verification_html(doc: dict[str, Any]) -> str:
    vers = doc.get("verification") or []
    if not vers:
        return ""
    parts = ["<h2 id=verify>Verification by the oracle</h2>",
             "<p>The model's best structures of every composition and pressure, relaxed again (or "
             "evaluated) by the oracle. Enthalpies are relative to the lowest of the verified ones, by "
             "each; the answer is the oracle's lowest.</p>"]
    for v in vers:
        parts.append(f"<h3>{_e(v['oracle'])} ({_e(v['mode'])}): {v['n_verified']} structures, "
                     f"{v['oracle_calls']} oracle calls</h3>")
        for pdoc in v["pressures"]:
            hulls = pdoc["hulls"]
            if "oracle" in hulls and hulls["oracle"]["kind"] == "phase_diagram":
                parts.append(f"<p>{pdoc['pressure_gpa']:g} GPa: stable by the oracle "
                             f"{_e(', '.join(hulls['oracle']['stable']))}; by the model, among the same "
                             f"structures, {_e(', '.join(hulls.get('model', {}).get('stable', [])))}"
                             f"{'' if pdoc['hulls_agree'] else ' (they differ)'}.</p>")
            for formula, comp in pdoc["compositions"].items():
                c, ans = comp["comparison"], comp["answer"]
                if c is None:
                    parts.append(f"<p>{_e(formula)} at {pdoc['pressure_gpa']:g} GPa: every oracle "
                                 "calculation failed.</p>")
                    continue
                tau = "&ndash;" if c["kendall_tau"] is None else f"{c['kendall_tau']:.2f}"
                parts.append(
                    f"<p><b>{_e(formula)} at {pdoc['pressure_gpa']:g} GPa</b>: the model's top-1 "
                    f"{'agrees' if c['top1_agree'] else '<b>disagrees</b>'} with the oracle's; "
                    f"Kendall tau {tau}; "
                    f"largest error {1000 * c['max_error']:.1f} meV/atom. Answer: #{ans['of']} "
                    f"(oracle space group {ans['spacegroup']}, "
                    f"{ans['oracle_enthalpy_per_atom']:.4f} eV/atom, "
                    f"the model's rank {ans['model_rank']}).</p>")
                rows = [[str(e["model_rank"]), str(e["oracle_rank"]), str(e["of"]),
                         str(e["model_spacegroup"]), str(e["oracle_spacegroup"]),
                         _num(e["model_relative"], 1000, 1), _num(e["oracle_relative"], 1000, 1),
                         _e(e["status"])] for e in comp["structures"]]
                parts.append(_table(["model rank", "oracle rank", "db id", "space group (model)",
                                     "space group (oracle)", "ΔH model (meV/atom)", "ΔH oracle (meV/atom)",
                                     "oracle status"], rows, left=0))
    return "\n".join(parts)


def _stable_text(hulls: list[dict[str, Any]]) -> str:
    return "; ".join(f"{h['pressure_gpa']:g} GPa: {', '.join(h['stable'])}" for h in hulls) or "-"


def _plots(run: _Run, doc: dict[str, Any], out: Path) -> dict[str, str]:
    folder = out / "img"
    folder.mkdir(exist_ok=True)
    paths: dict[str, Path] = {}
    conv = {c["pressure_gpa"]: c["compositions"] for c in doc["convergence"]["pressures"]}
    for i, p in enumerate(run.pressures):
        paths[f"hull-{i}"] = _plot_hull(run, p, folder / f"hull-p{i}.png")
        if conv.get(p):
            paths[f"conv-{i}"] = _plot_convergence(p, conv[p], folder / f"convergence-p{i}.png")
    by_formula = defaultdict(list)
    for t in doc["transitions"]:
        by_formula[t["reduced_formula"]].append(t)
    for k, (formula, curves) in enumerate(doc["scans"].items()):
        name = folder / f"enthalpy-{formula}.png"
        paths[f"scan-{k}"] = _plot_scan(formula, curves, by_formula[formula], name)
    return {key: path.relative_to(out).as_posix() for key, path in paths.items()}


def write_report(run_dir: str | Path, out_dir: str | Path | None = None,
                 spec: ReportSpec | None = None) -> Path:
    """Write ``report.html``, ``summary.json``, plots (``img/``) and top structures (``structures/``).

    Runs again over an earlier report, replacing it. All links in the page are relative, so the
    folder can be moved or opened offline.

    Args:
        run_dir: the run directory.
        out_dir: where to write (default ``run_dir/report``).
        spec: report settings (default: the campaign's ``report`` section, else defaults).

    Returns:
        The path of ``report.html``.

    Raises:
        SetupError: ``run_dir`` holds no ``results.db``.
    """
    run = _analyse(run_dir, spec)
    out = Path(out_dir) if out_dir is not None else run.run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    doc = _summary_doc(run)
    _write_top_files(run, doc, out)
    with warnings.catch_warnings():  # matplotlib's tight-layout chatter on tiny data sets
        warnings.simplefilter("ignore", UserWarning)
        images = _plots(run, doc, out)
    (out / "summary.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    page = out / "report.html"
    page.write_text(_html(doc, images), encoding="utf-8")
    return page
