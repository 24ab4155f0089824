"""The report's page (``report.html``): HTML written from the summary document alone, with
relative links to the figures and structure files, so that the folder can be moved.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: .4em 0; }
figure.s { display: inline-block; margin: .3em; } figure.s img { max-height: 14em; }
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
    match = any("xrd_similarity" in e for e in top)
    head = ["rank", "formula", "space group", "H (eV/atom)", "ΔH_f (eV/atom)", "above hull (meV/atom)",
            "density (g/cm³)", "V (Å³/atom)", "mean CN", *(["XRD match"] if match else []), "db id", "files"]
    rows = [
        [str(e["rank"]), _e(e["formula"]), str(e["spacegroup"]), _num(e["enthalpy_per_atom"]),
         _num(e["formation_enthalpy_per_atom"]), _num(e["e_above_hull"], 1000, 1),
         _num(e.get("density"), digits=3), _num(e.get("volume_per_atom"), digits=2),
         _num(e.get("coordination"), digits=2), *([_num(e.get("xrd_similarity"), digits=3)] if match else []),
         str(e["db_id"]), " ".join(_link(path, kind.upper()) for kind, path in e.get("files", {}).items())]
        for e in top
    ]
    if not rows:
        return "<p class=muted>No search structures at this pressure.</p>"
    pictures = "".join(
        f"<figure class=s>{_img(e['images']['structure'], 'structure #' + str(e['db_id']))}"
        f"{_img(e['images']['xrd'], 'XRD of #' + str(e['db_id']))}"
        f"<figcaption>rank {e['rank']}: {_e(e['formula'])} sg{e['spacegroup']} (#{e['db_id']})</figcaption>"
        "</figure>" for e in top if e.get("images"))
    note = ("<p class=muted>Mean CN: neighbours within 1.1 times each atom's nearest-neighbour distance. "
            "XRD: Cu Kα1, pymatgen.</p>")
    return _table(head, rows, left=2) + note + pictures


def _xrd_html(doc: dict[str, Any]) -> str:
    m = doc.get("xrd_match")
    if not m:
        return ""
    rows = [[str(k), _e(r["formula"]), str(r["spacegroup"]), f"{r['pressure_gpa']:g}", str(r["rank"]),
             str(r["db_id"]), _num(r["xrd_similarity"], digits=3)] for k, r in enumerate(m["ranking"], 1)]
    return (f"<h2 id=xrd>Agreement with the measured XRD pattern</h2><p>{_e(m['pattern'])}: "
            f"{_e(m['similarity'])} (Gaussian FWHM {m['fwhm_deg']:g}°, step {m['grid_step_deg']:g}°); 1 is "
            "the same shape; peak shifts (a lattice off by ~1%, another pressure) lower it a lot.</p>"
            + _table(["match rank", "formula", "space group", "pressure (GPa)", "enthalpy rank", "db id",
                      "Pearson r"], rows, left=0))


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
        f'Data: <a href="summary.json">summary.json</a>, <a href="ranking.txt">ranking.txt</a>.</p>',
        notes, f"<p>{toc} &middot; <a href=#scans>enthalpy vs pressure</a>"
        + (" &middot; <a href=#xrd>XRD match</a>" if doc.get("xrd_match") else "")
        + (" &middot; <a href=#verify>verification by the oracle</a>" if doc.get("verification") else "")
        + (" &middot; <a href=#finetune>fine-tune loop</a>" if doc.get("finetune") else "") + "</p>",
        *(_pressure_html(i, p, images) for i, p in enumerate(doc["pressures"])),
        _xrd_html(doc),
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
            f"{_e(_stable_text(its[0]['hull_before']))}.</p>" + _shared_text(its))


def _shared_text(its: list[dict[str, Any]]) -> str:
    """The campaign set's shared training (``--shared-finetune``), per iteration: the head's
    force RMSE on the iteration's labels, model in use before -> new head after."""
    shared = [it for it in its if it.get("shared")]
    if not shared:
        return ""
    first = shared[0]["shared"]
    if first.get("backend") == "chgnet":
        what = ("one CHGNet model (CHGNet has no heads) fine-tuned on the labels of every campaign of the "
                "set, its per-element reference energies refitted by one least-squares fit over all of them")
    else:
        what = (f"head {_e(str(first.get('head')))} of one multi-task DeePMD-kit model (a shared "
                "descriptor, a head per campaign) trained on the labels of every campaign of the set")
    steps = "; ".join(
        f"iteration {it['iteration']}: "
        + _e(format(it.get("errors_in_use", {}).get("force_rmse", float("nan")), ".3f")) + " &rarr; "
        + _e(format(it.get("errors_after", {}).get("force_rmse", float("nan")), ".3f"))
        for it in shared)
    return (f"<p>Shared fine-tuning ({_e(str(first.get('set')))}: "
            f"{_e(', '.join(first.get('campaigns', [])))}): this campaign searches with {what}. Force RMSE "
            f"(eV/&Aring;) on each iteration's labels, model in use &rarr; new model: {steps}.</p>")


def _verification_html(doc: dict[str, Any]) -> str:
    vers = doc.get("verification") or []
    if not vers:
        return ""
    parts = ["<h2 id=verify>Verification by the oracle</h2>",
             "<p>The model's best structures of every composition and pressure, relaxed again (or "
             "evaluated) by the oracle. Enthalpies are relative to the lowest of the verified ones, by "
             "each; the answer is the oracle's lowest.</p>"]
    cascade = doc.get("cascade")
    if cascade and any(st["stage"] == "rescore" for st in cascade["stages"]):
        chain = " &rarr; ".join(f"{_e(st['stage'])} ({_e(st['id'])})" for st in cascade["stages"])
        answers = "; ".join(f"{_e(f)} at {p} GPa: #{a['of']} (space group {a['spacegroup']}, by "
                            f"{_e(a['by'])})"
                            for p, comps in cascade["answers"].items() for f, a in comps.items())
        parts.append(f"<p>Model cascade: {chain}. Each stage ranks what the stage before it picked; "
                     f"the answer is the last stage's lowest: {answers}.</p>")
    for v in vers:
        what = "rescore model" if v.get("stage") == "rescore" else "oracle"
        calls = "model steps" if v.get("stage") == "rescore" else "oracle calls"
        parts.append(f"<h3>{what} {_e(v['oracle'])} ({_e(v['mode'])}): {v['n_verified']} structures, "
                     f"{v['oracle_calls']} {calls}</h3>")
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
