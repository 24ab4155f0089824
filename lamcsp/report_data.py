"""The data behind a report: a run directory read into rows, hulls and rankings, and the
summary document (``summary.json``, :func:`summary`) that the page, the plots and
:func:`lamcsp.report.export` are drawn from.

The rules (which rows are eligible, how hulls are built, how structures are ranked) are
described in :mod:`lamcsp.report`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamcsp.campaign import ReportSpec, load_campaign
from lamcsp.errors import SetupError
from lamcsp.hull import Hull, composition_fractions, hull_at, transitions
from lamcsp.io import reduced_formula
from lamcsp.store import Record, ResultStore, RunDir, pressure_key, record_of

if TYPE_CHECKING:
    from ase import Atoms

__all__ = ["summary"]

DB_NAME = RunDir.DB
CAMPAIGN_NAME = RunDir.CAMPAIGN


# ------------------------------------------------------------------------------------ rows


def _connect(run_dir: Path) -> ResultStore:
    """The run's rows: ``RUN/results.db``, or the database ``RUN/database.json`` names (a ``--db``
    run, whose rows there carry its id)."""
    from lamcsp.store import check_database, read_database_file

    path = run_dir / DB_NAME
    if read_database_file(RunDir(run_dir)) is None:
        if not path.is_file():
            raise SetupError(
                "run_dir", f"{str(run_dir)!r} holds no {DB_NAME}; give the output directory of a "
                           "search (the campaign's `output`, default runs/<name>)")
        check_database(path)
    return ResultStore(run_dir)


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
    db: ResultStore
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
        if exc.field.startswith("report."):  # but the report would not be the one asked for
            raise
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
    from lamcsp.report_xrd import structure_facts

    out = []
    for rank, r in enumerate(run.ranked(p, run.spec.top_n), start=1):
        entry = _entry(run, r)
        entry["rank"] = rank
        atoms = run.atoms(r.db_id)
        entry["spacegroup"] = spacegroup_number(atoms, run.spec.symprec)
        entry.update({k: _f(v) for k, v in structure_facts(atoms).items()})  # density, volume, CN
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
                     "status": str(row.status), "oracle_calls": int(row.get("oracle_calls", 0)),
                     "stage": str(row.get("stage", ""))})
    docs = verification_doc(rows, run.by_id, run.elements)
    rescored = {r["oracle"] for r in rows if r["stage"] == "rescore"}
    for d in docs:
        d["stage"] = "rescore" if d["oracle"] in rescored else "oracle"
    return sorted(docs, key=lambda d: d["stage"] != "rescore")  # the cascade's order: rescore, then oracle


def _cascade_doc(run: _Run, verification: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The model cascade (search model, rescore model, oracle): its stages in order and, per
    pressure and composition, the answer: the lowest by the last stage that ranked it (None
    without a rescore or verification stage)."""
    if not verification:
        return None
    models = sorted({r.model_id for r in run.records if r.role == "search" and r.model_id})
    stages = [{"stage": "search", "id": ", ".join(models)}] + [{"stage": v["stage"], "id": v["oracle"]}
                                                               for v in verification]
    answers: dict[str, dict[str, Any]] = {}
    for v in verification:  # later stages overwrite earlier ones
        for pdoc in v["pressures"]:
            for formula, comp in pdoc["compositions"].items():
                if comp["answer"] is not None:
                    answers.setdefault(f"{pdoc['pressure_gpa']:g}", {})[formula] = {
                        "stage": v["stage"], "by": v["oracle"], **comp["answer"]}
    return {"stages": stages, "answers": answers}


def _summary_doc(run: _Run) -> dict[str, Any]:
    models = [r.model_id for r in run.records if r.model_id and r.role != "verify"]
    scans, found = _scans_doc(run)
    verification = _verification_doc(run)
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
        "verification": verification,
        "cascade": _cascade_doc(run, verification),
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
                    "shared": it.get("shared"), "errors_in_use": it.get("errors_in_use", {}),
                    "errors_after": it.get("errors_after", {}),
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
