"""Oracle verification of a campaign's answer: the model's best structures, checked by the oracle.

A universal model can be sure and wrong, and a committee of its copies can agree and be wrong
with it; only the oracle (DFT, or EMT in tests) can say which answer is right. CALYPSO users do
this by hand (pre-relax with the potential, re-relax the best with VASP); here it is a stage of
the campaign (``verify:`` in the campaign; on by default whenever the fine-tune loop runs) and a
command for a finished run (``lamcsp verify RUN``)::

    pick     per unit (composition and pressure): the model's top_k unique structures, and every
             unique structure within `window` eV/atom of the model's hull
    oracle   each one relaxed with the oracle at its pressure (or one single point), through the
             executor's map (in parallel under MPI), every oracle call journaled
             (lamcsp.oracle.OracleTask)
    store    each result the moment it returns: a row (role=verify, of=the row it verifies,
             oracle=the oracle id, model_h=the model's enthalpy per atom beside the oracle's)
    compare  per unit: the model's ranking against the oracle's (top-1 agreement, Kendall tau,
             largest error of relative enthalpies) and the answer (the oracle's lowest)

The pure parts (:func:`pick`, :func:`compare`, :func:`signature`, :func:`verification_doc`)
import no files, MPI or CLI; :func:`run_verification` is the runner.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lamcsp.faults import fault

log = logging.getLogger(__name__)

#: a row verified by an oracle is stored under ``verify-<oracle id>-<its key>``
KEY_PREFIX = "verify"
#: the row ``generation`` of verification rows (search rows count from 0)
GENERATION = -4
#: top-1 agreement: the model's lowest is within this of the oracle's lowest, eV/atom (two
#: structures the model tells apart may relax into one oracle minimum)
AGREE_TOL = 1e-3


@dataclasses.dataclass(frozen=True)
class Hit:
    """A unique structure of the search as the verification sees it.

    Attributes:
        row_id: its database row; ``key`` its row key; ``unit`` its search unit.
        label: the unit's label (``CuAu @ 0 GPa``); ``pressure`` GPa.
        reduced_formula: its composition; ``h_model`` the model's enthalpy per atom (eV).
        e_above: the model's energy above the hull (or above the unit's lowest), eV/atom.
    """

    row_id: int
    key: str
    unit: int
    label: str
    pressure: float
    reduced_formula: str
    h_model: float
    e_above: float


def hits_of(pairs: Sequence[tuple[Any, Any]], elements: Sequence[str]) -> list[Hit]:
    """The :class:`Hit` of each ``(unit, row)`` (a :class:`~lamcsp.search.SearchUnit` and its
    unique row; failed rows left out): the model's enthalpy (the model in use at the end:
    ``enthalpy_now`` after a fine-tune model switch) and the energy above the hull of these
    rows at each pressure."""
    from lamcsp.hull import hull_at
    from lamcsp.store import record_of, result_ok

    pairs = [(u, row) for u, row in pairs if result_ok(row)]
    records = [record_of(row) for _, row in pairs]
    above: dict[int, float] = {}
    for p in {r.pressure for r in records}:
        above.update(hull_at([r for r in records if r.pressure == p], elements).e_above)
    return [Hit(row_id=int(row.id), key=str(row.key), unit=u.index, label=u.label, pressure=u.pressure_gpa,
                reduced_formula=u.reduced_formula, h_model=rec.enthalpy_per_atom,
                e_above=above.get(int(row.id), math.inf)) for (u, row), rec in zip(pairs, records)]


def verification_key(oracle: str, key: str) -> str:
    """The row key of the verification of row ``key`` by the oracle ``oracle`` (its id)."""
    return f"{KEY_PREFIX}-{oracle}-{key}"


def pick(hits: Sequence[Hit], top_k: int, window: float) -> list[Hit]:
    """What to verify: per unit its ``top_k`` lowest by the model, and every hit within
    ``window`` eV/atom of the model's hull; by unit, then the model's enthalpy."""
    by_unit: dict[int, list[Hit]] = {}
    for h in hits:
        if math.isfinite(h.h_model):
            by_unit.setdefault(h.unit, []).append(h)
    out = []
    for unit in sorted(by_unit):
        ranked = sorted(by_unit[unit], key=lambda h: (h.h_model, h.row_id))
        out += [h for k, h in enumerate(ranked) if k < top_k or h.e_above <= window]
    return out


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The model's ranking of some structures against the oracle's.

    Attributes:
        ids: the structures (their search rows), in the model's order.
        model: the model's enthalpies per atom, relative to its lowest of these (eV/atom).
        oracle: the oracle's, relative to its lowest (eV/atom), in the same order.
        top1_agree: the model's lowest is the oracle's lowest (within ``AGREE_TOL``).
        kendall_tau: Kendall's tau of the two rankings (None for fewer than 2 structures).
        max_error: the largest |model - oracle| of the relative enthalpies, eV/atom.
        answer: the oracle's lowest (a search row id).
    """

    ids: list[int]
    model: list[float]
    oracle: list[float]
    top1_agree: bool
    kendall_tau: float | None
    max_error: float
    answer: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare(ids: Sequence[int], model_h: Sequence[float], oracle_h: Sequence[float]) -> Comparison | None:
    """Compare the model's and the oracle's enthalpies per atom of the same structures (failed
    oracle results, NaN, are left out); ``None`` when nothing is left."""
    from scipy.stats import kendalltau

    keep = [k for k in range(len(ids)) if math.isfinite(oracle_h[k]) and math.isfinite(model_h[k])]
    if not keep:
        return None
    order = sorted(keep, key=lambda k: (model_h[k], ids[k]))
    m = np.array([model_h[k] for k in order])
    o = np.array([oracle_h[k] for k in order])
    m, o = m - m.min(), o - o.min()
    tau = None
    if len(order) >= 2:
        t = kendalltau(m, o).statistic
        tau = None if not math.isfinite(t) else float(t)
    best = int(np.argmin(o))
    return Comparison(ids=[int(ids[k]) for k in order], model=m.tolist(), oracle=o.tolist(),
                      top1_agree=bool(o[0] <= AGREE_TOL), kendall_tau=tau,
                      max_error=float(np.abs(m - o).max()), answer=int(ids[order[best]]))


def signature(c: Comparison, top_k: int) -> list[int]:
    """The verified top-k ranking: the model's ``top_k`` structures in the oracle's order. The
    fine-tune loop stops only once it no longer changes between iterations."""
    k = min(top_k, len(c.ids))
    return [c.ids[j] for j in sorted(range(k), key=lambda j: (c.oracle[j], c.ids[j]))]


# ------------------------------------------------------------------------------------ runner


@dataclasses.dataclass
class VerifySettings:
    """How to verify: the campaign's ``verify`` section with its oracle resolved (no defaults
    here: they are :class:`lamcsp.campaign.VerifySpec`'s)."""

    oracle: dict[str, Any]
    mode: str
    optimizer: str
    fmax: float
    max_steps: int
    top_k: int
    window: float

    @property
    def oracle_id(self) -> str:
        from lamcsp.oracle import oracle_id

        return oracle_id(self.oracle, self.mode)


def journal_path(run_dir: str | Path, oracle: str, key: str) -> Path:
    """Where the oracle calls of one verification are journaled (:meth:`lamcsp.store.RunDir.journal`)."""
    from lamcsp.store import RunDir

    return RunDir(run_dir).journal(oracle, key)


def run_verification(
    hits: Sequence[Hit],
    settings: VerifySettings,
    *,
    store: Any,
    executor: Any,
    run_dir: str | Path,
    stage: str,
    model_id: str,
    symprec: float = 0.1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Comparison]:
    """Verify the picked ``hits`` (:func:`pick`) with the oracle, store each result as it
    returns, and compare per unit.

    Structures this oracle verified before (their rows exist) are not verified again; an
    interrupted verification resumes from its journal. Returns the comparison per unit label,
    over every structure of the unit this oracle has verified (the picked ones included).

    Args:
        hits: every unique hit of the run (the model's enthalpies); those to verify are picked.
        settings: the oracle and how to verify.
        store: the run's :class:`~lamcsp.store.ResultStore`.
        executor: runs :class:`~lamcsp.oracle.OracleTask` (``map``).
        run_dir: the run directory (journals under ``verify/``).
        stage: what the verification follows (``end``, ``before``, ``iter-0``...), kept on rows.
        model_id: the model whose enthalpies ``hits`` carry.
        symprec: spglib tolerance of the stored space groups.
        progress: a line writer (default: ``INFO`` on this module's logger).
    """
    from lamcsp.log import stage as log_stage
    from lamcsp.oracle import oracle_task
    from lamcsp.relax.relaxer import RelaxResult, atoms_to_dict
    from lamcsp.store import row_item

    oid = settings.oracle_id
    picked = pick(hits, settings.top_k, settings.window)
    todo = [h for h in picked if store.row_id(verification_key(oid, h.key)) is None]
    if todo:
        atoms = [store.db.get(id=h.row_id).toatoms() for h in todo]
        items = [{"atoms": atoms_to_dict(a), "pressure": h.pressure,
                  "journal": str(journal_path(run_dir, oid, h.key))} for a, h in zip(atoms, todo)]
        say = progress if progress is not None else log.info
        say(f"verify ({stage}): {len(todo)} structure(s) with {oid} ({settings.mode}), "
            f"{len(picked) - len(todo)} verified before")
        # one line per structure: each is a whole oracle relaxation
        bar = log_stage("  verified", len(todo), write=say, every=0.0)

        def stored(i: int, d: dict[str, Any]) -> None:
            h = todo[i]
            result = RelaxResult.from_dict(d)
            store.add(**row_item(
                result, verification_key(oid, h.key), role="verify", generation=GENERATION,
                generator="verify", unit=h.unit, model_id=f"oracle:{oid}", symprec=symprec,
                extra={"of": h.row_id, "oracle": oid, "mode": settings.mode, "model_h": h.h_model,
                       "model_h_id": model_id, "stage": stage,
                       # every oracle call this verification took (those a resume replayed too)
                       "oracle_calls": int(d.get("calls", 0)) + int(d.get("replayed", 0)),
                       "oracle_rank": int(d.get("rank", 0))}))
            fault("verify-stored")
            bar.step(detail=f"{h.label} #{h.row_id} {result.status}, {d.get('calls', 0)} oracle calls "
                            f"({d.get('replayed', 0)} replayed) in {d.get('seconds', 0.0):.0f} s")

        executor.map(oracle_task(settings.oracle, mode=settings.mode, optimizer=settings.optimizer,
                                 fmax=settings.fmax, max_steps=settings.max_steps),
                     items, stored, labels=[f"{h.key} (verify)" for h in todo])
    return compare_units(hits, verified(store, oid))


def parse_oracle_option(text: str) -> dict[str, Any]:
    """``--oracle``: a calculator name, a YAML/JSON mapping, or a YAML file holding one."""
    from lamcsp.campaign import parse_oracle
    from lamcsp.campaign.parse import parse_yaml, read_yaml

    path = Path(text)
    raw = read_yaml(path, what="oracle file") if path.is_file() else parse_yaml(text, "--oracle", "value")
    return parse_oracle(raw, "--oracle")


def verify_run(run_dir: str | Path, *, oracle: str | None = None, top_k: int | None = None,
               window: float | None = None, mode: str | None = None, fmax: float | None = None,
               max_steps: int | None = None, executor: Any = None,
               progress: Callable[[str], None] | None = None) -> dict[str, Comparison]:
    """``lamcsp verify RUN``: the verification stage on a finished (or stopped) run, with its
    campaign's oracle and settings or the ones given; then the report is written again. On a
    run with a rescore stage (the model cascade) the oracle picks from the rescore model's
    ranking (the latest rescore model's, where there were several), as at a search's end.

    Raises:
        SetupError: not a run directory, no oracle, or an oracle that cannot run here.
    """
    from lamcsp.campaign import load_campaign
    from lamcsp.errors import SetupError
    from lamcsp.extras import check_oracle_packages
    from lamcsp.oracle import check_oracle
    from lamcsp.parallel import SerialExecutor
    from lamcsp.report import write_report
    from lamcsp.store import DB_NAME, ResultStore, RunDir, read_database_file
    from lamcsp.units import search_units

    run_dir = Path(run_dir)
    has_db = (run_dir / DB_NAME).is_file() or read_database_file(RunDir(run_dir)) is not None
    if not has_db or not (run_dir / "campaign.yaml").is_file():
        raise SetupError("RUN", f"{str(run_dir)!r} is not a run directory (it needs {DB_NAME} and "
                                "campaign.yaml); give the output directory of a search")
    campaign = load_campaign(run_dir / "campaign.yaml")
    if oracle is not None:
        spec = parse_oracle_option(oracle)
    elif campaign.verify.oracle is not None or campaign.finetune.enabled:
        spec = campaign.verify_oracle
    else:
        raise SetupError("--oracle", f"the campaign of {run_dir} names no oracle; give one, e.g. --oracle "
                                     "emt or --oracle '{calculator: gpaw, options: {mode: {name: pw, "
                                     "ecut: 400}, xc: PBE}}'")
    check_oracle_packages(spec, "--oracle")
    check_oracle(spec, "--oracle")
    v = campaign.verify
    if window is not None and not (math.isfinite(window) and window >= 0):
        raise SetupError("--window", f"must be a finite number >= 0 (eV/atom), got {window}")
    settings = VerifySettings(oracle=spec, mode=mode or v.mode, optimizer=v.optimizer, fmax=fmax or v.fmax,
                              max_steps=max_steps or v.max_steps, top_k=top_k or v.top_k,
                              window=v.window if window is None else window)
    store = ResultStore(run_dir)
    units = {u.index: u for u in search_units(campaign)}
    rows: list[Any] = store.rows(role="search", unique=True, include_data=False)
    pairs = [(units[int(row.get("unit", -1))], row) for row in rows if int(row.get("unit", -1)) in units]
    hits = hits_of(pairs, campaign.system.elements)
    rescore = store.rows(role="verify", stage="rescore", include_data=False)
    if rescore:  # a cascade's run: the oracle checks the rescore model's ranking, as at the search's end
        from lamcsp.rescore import rescored_hits

        hits = rescored_hits(hits, store, str(max(rescore, key=lambda r: r.ctime).oracle))
    models = sorted({str(row.get("model_now", row.get("model_id"))) for _, row in pairs})
    out = run_verification(hits, settings, store=store, executor=executor or SerialExecutor(None),
                           run_dir=run_dir, stage="lamcsp verify", model_id=", ".join(models),
                           symprec=campaign.report.symprec,
                           progress=progress)
    write_report(run_dir)
    return out


def verified(store: Any, oracle: str) -> dict[int, float]:
    """The oracle's enthalpy per atom of every row it verified (by the verified row's id; NaN
    where the oracle failed)."""
    out: dict[int, float] = {}
    for row in store.rows(role="verify", oracle=oracle, include_data=False):
        ok = not str(row.status).startswith("failed")
        out[int(row.of)] = float(row.enthalpy_per_atom) if ok else math.nan
    return out


def compare_units(hits: Sequence[Hit], oracle_h: dict[int, float]) -> dict[str, Comparison]:
    """Per unit label, the comparison over its hits that the oracle verified."""
    out: dict[str, Comparison] = {}
    by_unit: dict[str, list[Hit]] = {}
    for h in hits:
        if h.row_id in oracle_h:
            by_unit.setdefault(h.label, []).append(h)
    for label, hs in by_unit.items():
        c = compare([h.row_id for h in hs], [h.h_model for h in hs], [oracle_h[h.row_id] for h in hs])
        if c is not None:
            out[label] = c
    return out


def ranking_record(comparisons: dict[str, Comparison], top_k: int) -> dict[str, Any]:
    """Plain data of one verification for the fine-tune log: per unit the comparison and the
    verified top-k ranking (:func:`signature`)."""
    return {label: {**c.to_dict(), "ranking": signature(c, top_k)}
            for label, c in sorted(comparisons.items())}


def ranking_stable(records: Sequence[dict[str, Any] | None]) -> bool | None:
    """Whether the verified ranking has settled: in the last two verifications
    (:func:`ranking_record`) every unit has the same answer (the oracle's lowest of all it has
    verified: nothing the model brought up since is lower by the oracle), and in the last the
    model's top-1 is that answer. ``None`` when there are not two yet.

    The model's top-k in the oracle's order (``ranking``) is not asked to stay the same: it
    changes whenever the search finds another near-degenerate structure, and a loop that trains
    again on every such change trades a model that ranks right for one that may not."""
    recs = [r for r in records if r is not None]
    if len(recs) < 2:
        return None
    last, before = recs[-1], recs[-2]
    if set(last) != set(before) or not last:
        return False
    return all(last[u]["answer"] == before[u]["answer"] and last[u]["top1_agree"] for u in last)


# ------------------------------------------------------------------------------------ report


def verification_doc(rows: Sequence[dict[str, Any]], sources: dict[int, Any], elements: Sequence[str]
                     ) -> list[dict[str, Any]]:
    """The report's verification section.

    Args:
        rows: the verification rows as dicts (``id``, ``of``, ``oracle``, ``mode``, ``pressure``,
            ``formula``, ``reduced_formula``, ``enthalpy_per_atom``, ``enthalpy``, ``natoms``,
            ``spacegroup``, ``status``, ``oracle_calls``).
        sources: the typed row record (:class:`~lamcsp.store.Record`) of every row, by id (the model's
            enthalpies: the model in use at the end).
        elements: the system's elements (for the hulls).

    Returns:
        Per oracle: per pressure, per composition the verified structures (the model's and the
        oracle's relative enthalpies and ranks), the comparison and the answer; and the oracle's
        hull of the verified structures beside the model's hull of the same structures.
    """
    from lamcsp.hull import hull_at
    from lamcsp.store import Record

    out = []
    for oid in sorted({r["oracle"] for r in rows}):
        mine = [r for r in rows if r["oracle"] == oid and int(r["of"]) in sources]
        pressures = []
        for p in sorted({r["pressure"] for r in mine}):
            at = [r for r in mine if r["pressure"] == p]
            comps: dict[str, Any] = {}
            for formula in sorted({r["reduced_formula"] for r in at}):
                rs = [r for r in at if r["reduced_formula"] == formula]
                c = compare([int(r["of"]) for r in rs], [sources[int(r["of"])].enthalpy_per_atom for r in rs],
                            [r["enthalpy_per_atom"] if not str(r["status"]).startswith("failed") else math.nan
                             for r in rs])
                by_of = {int(r["of"]): r for r in rs}
                structures = []
                if c is not None:
                    by_oracle = sorted(range(len(c.ids)), key=lambda k: (c.oracle[k], c.ids[k]))
                    oracle_rank = {c.ids[k]: n + 1 for n, k in enumerate(by_oracle)}
                    for k, i in enumerate(c.ids):
                        r = by_of[i]
                        structures.append({
                            "of": i, "verify_id": int(r["id"]), "model_rank": k + 1,
                            "oracle_rank": oracle_rank[i],
                            "model_relative": c.model[k], "oracle_relative": c.oracle[k],
                            "model_spacegroup": int(sources[i].spacegroup),
                            "oracle_spacegroup": int(r["spacegroup"]),
                            "oracle_enthalpy_per_atom": float(r["enthalpy_per_atom"]), "status": r["status"],
                            "oracle_calls": int(r.get("oracle_calls", 0))})
                failed = [int(r["of"]) for r in rs if str(r["status"]).startswith("failed")]
                comps[formula] = {"structures": structures, "failed": failed,
                                  "comparison": None if c is None else {k: v for k, v in c.to_dict().items()
                                                                         if k in ("top1_agree", "kendall_tau",
                                                                                  "max_error", "answer")},
                                  "answer": None if c is None else {
                                      "of": c.answer, "verify_id": int(by_of[c.answer]["id"]),
                                      "spacegroup": int(by_of[c.answer]["spacegroup"]),
                                      "oracle_enthalpy_per_atom": float(by_of[c.answer]["enthalpy_per_atom"]),
                                      "model_rank": c.ids.index(c.answer) + 1}}
            ok = [r for r in at if not str(r["status"]).startswith("failed")]
            hulls = {}
            for kind in ("oracle", "model"):
                recs = [Record(db_id=int(r["of"]), formula=r["formula"], reduced_formula=r["reduced_formula"],
                               role="search", pressure=p,
                               enthalpy=(r["enthalpy_per_atom"] if kind == "oracle"
                                         else sources[int(r["of"])].enthalpy_per_atom) * r["natoms"],
                               enthalpy_per_atom=(r["enthalpy_per_atom"] if kind == "oracle"
                                                  else sources[int(r["of"])].enthalpy_per_atom),
                               natoms=int(r["natoms"]), spacegroup=int(r["spacegroup"]), generation=0,
                               generator="verify", unique=True, status="converged", model_id=oid, polymorph=0)
                        for r in ok]
                if recs:
                    hull = hull_at(recs, elements)
                    names = {rec.db_id: rec.reduced_formula for rec in recs}
                    hulls[kind] = {"kind": hull.kind, "stable": sorted({names[i] for i in hull.stable}),
                                   "ids": hull.stable}
            pressures.append({"pressure_gpa": p, "compositions": comps, "hulls": hulls,
                              "hulls_agree": bool(hulls) and hulls.get("oracle", {}).get("stable")
                              == hulls.get("model", {}).get("stable")})
        modes = sorted({str(r.get("mode", "")) for r in mine})
        out.append({"oracle": oid, "mode": ", ".join(modes), "n_verified": len(mine),
                    "oracle_calls": sum(int(r.get("oracle_calls", 0)) for r in mine), "pressures": pressures})
    return out
