"""The report's figures (matplotlib, no pyplot): the hull or phase diagram at each pressure,
enthalpy vs pressure of the scanned polymorphs, and convergence per composition.

They are drawn from a read run (:class:`lamcsp.report_data._Run`) and its summary document.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lamcsp.hull import composition_fractions

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    from lamcsp.report_data import _Run

_MAX_PANELS = 6  # compositions per convergence figure


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
