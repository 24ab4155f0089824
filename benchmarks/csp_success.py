"""CSP success benchmark: does lamcsp find known crystal structures, and with fewer
relaxations than random search?

For every target structure (default: the 60 MP-20 test structures of
``benchmarks/data/mp20_small.json``; or any CIF/POSCAR files and folders):

1. the reference is relaxed with the benchmark's model and relaxer (its own minimum is what
   the model can find);
2. every method runs a lamcsp search (:class:`lamcsp.search.Search`) on the target's
   composition and atom count (``--formula-units same``: the reference's formula units;
   ``upto``: 1 to that many) at 0 GPa, with the same budget of relaxations, seed, relaxer and
   model;
3. success (CSPBench's rule): one of the 5 lowest-enthalpy unique structures of the run
   matches the relaxed reference by pymatgen's ``StructureMatcher(ltol=0.2, stol=0.3,
   angle_tol=5)``, both symmetrised first (``SpacegroupAnalyzer(symprec=0.1)
   .get_refined_structure()``).

Recorded per run: success; the relaxations spent until the first relaxed structure (duplicate
or not) that matches the reference, the model steps (force calls: every relaxation's steps + 1
and the energy prescreen's calls of every generation up to the match's) and the wall time until
then; success at equal wall time (``success_at_random_seconds``: the run judged on what it had
stored when symmetric random search of the same target and seed had spent its whole budget);
the energy distance (the run's best enthalpy per atom minus the relaxed reference's: negative
when the model prefers another structure); and, for a failed run, why: ``model_prefers_other``
(at least 5 unique structures lie below the reference, so it could not be among the top 5 even if found),
``found_not_top5`` (found, but fewer than 5 structures lie below the reference, so a
representative that does not match took its place) or ``not_reached`` (the search never
produced it within the budget). ``found`` says separately whether any relaxation matched.

"Unique" is judged by the benchmark, not by the run: the relaxed structures of a run are
grouped, lowest enthalpy first, by the same symmetrised matcher (a structure within
``ENERGY_WINDOW`` of a lower representative that matches it is its duplicate), so every method
is judged by one rule whatever its own duplicate removal did. ``--rescore`` judges finished
runs again from their databases.

Methods (each a campaign's ``generators``; the rest of the campaign is lamcsp's defaults):

* ``lamcsp``: lamcsp's default generator mix (what a campaign without ``generators`` gets);
* ``lamcsp_plain``: symmetric random and the swarm, half each, without the energy prescreen
  (lamcsp's default before the benchmark made ``oversample`` 4 its default);
* ``lamcsp_prior``: the same mix, its random structures (the ``random`` generator's and the
  swarm's new particles) drawn with the symmetry prior ``SMALL_CELL_PRIOR`` (below);
* ``lamcsp_mp``: lamcsp's default (the mix with ``oversample`` 4), its random structures drawn
  with the data-driven prior ``MP_PRIOR`` (space groups and Wyckoff sets in proportion to their
  frequency among known crystals of the same cell size: PyXtal's Materials Project statistics;
  the targets are Materials Project structures, so each adds one count to the table it is
  drawn from, among 88,678);
* ``random_mp``: symmetric random search with ``MP_PRIOR`` and the screen (the prior alone);
* ``lamcsp_prescreen``: the same mix, its ``random`` generator with the energy prescreen
  (``oversample`` 2, below; the swarm's new particles are not prescreened, unlike the
  default's, where both generators draw with ``oversample`` 4);
* ``random``: pure symmetric random search (AIRSS / PyXtal style): a space group drawn
  uniformly among those that can hold the composition, Wyckoff sites, random free coordinates;
* ``random_p1``: random search without symmetry (space group 1 only);
* ``random_screen``: symmetric random with lamcsp's similarity screen before relaxation (what
  the screen alone is worth);
* ``random_prior``: symmetric random with the symmetry prior (``SMALL_CELL_PRIOR``: space
  groups drawn in proportion to their point group's order, half the Wyckoff assignments among
  those with the fewest free coordinates) and the screen, without the swarm (what the prior is
  worth alone);
* ``random_prescreen``: symmetric random with the screen and the energy prescreen: twice the
  candidates drawn (``oversample`` 2), the half with the lower enthalpy at the start (one model
  call each) relaxed;
* ``random_prescreenK``, ``lamcsp_prescreenK`` (``K`` an integer ≥ 2, e.g. ``random_prescreen4``):
  the same with ``oversample`` K;
* ``lamcsp_oversampleK``: the mix with ``oversample`` K in both generators (the swarm's new
  particles ranked with the random draws; ``lamcsp_oversample4`` is the default);
* ``lamcsp_funnelN`` (``N`` an integer ≥ 1, e.g. ``lamcsp_funnel10``): lamcsp's default mix, its
  prescreen ranking the oversampled candidates after ``N`` FIRE steps (``relax.quench_steps``) in
  one batch instead of by their start enthalpy; the kept ones relax on from the quench, those
  that duplicate a known structure after it are not relaxed; any lamcsp method takes the suffix
  (``lamcsp_mp_funnel10``, ``lamcsp_template_funnel5``);
* ``lamcsp_dupreseed``: lamcsp's default mix, the swarm with ``reseed_duplicates`` (a particle
  whose move relaxes into a basin the swarm holds is re-seeded at once, its moves going to new,
  prescreened random structures);
* ``lamcsp_redraw``: lamcsp's default mix, the swarm with ``migration: redraw`` (a particle
  migrating into its leader's template starts anywhere in it, not at the leader's best);
* ``template``: the template generator alone (substitution into known structures; leave-one-out:
  the templates are ``--templates``, by default the MP-20 list, without the target);
* ``lamcsp_template``: lamcsp's default mix on three quarters of the population, the template
  generator on the rest;
* ``pso``: CALYPSO-style particle swarm alone (with its own share of random structures);
* ``ga``: the genetic generator (USPEX-style heredity, lattice mutation, permutation).
* ``METHOD_cascade`` (any lamcsp method, e.g. ``lamcsp_cascade``): the model cascade, the method's
  search with ``--model`` and then a ``rescore:`` stage that re-relaxes its ``--cascade-top-k``
  lowest distinct structures (and all within ``--cascade-window`` of its lowest) with
  ``--cascade-model`` (default SevenNet-0). The run is judged on the cascade's answer: the target
  among the 5 lowest distinct rescored structures by the cascade model's enthalpy, against the
  target relaxed with the cascade model (``refs_<model>/``); the search model's own verdict is
  kept in the record's ``search`` entry. Not with ``--stop-at-match`` (the search must finish).
  To rescore finished cascade runs with another model without searching again, copy their run
  folders to a new ``--out`` (with ``refs/``), delete their ``bench_record.json``, set the new
  model as ``rescore.model`` in each copied ``campaign.yaml`` (``--resume`` refuses a changed
  rescore stage otherwise) and run with the new ``--cascade-model``: each run resumes a finished
  search, so only the rescore stage runs (its rows sit beside the first model's, and each model
  is judged on its own rows).

Every run keeps its lamcsp run directory under ``--out``/runs and writes its record as soon as
it ends, so a rerun skips finished runs and resumes an interrupted one (``lamcsp search
--resume``). ``--stop-at-match`` ends a run after the first generation whose lowest-enthalpy
structure is the target: faster, but biased: where the model prefers other structures, a run
that meets the target before them stops as a success that the whole budget would have undone
(MgIn2 in the first measurements). It is for quick looks, not for the success rates; a run
without it redoes runs that stopped early.

Usage::

    python benchmarks/csp_success.py --subset smoke --budget 60 --seeds 1      # CI smoke run
    python benchmarks/csp_success.py --subset "nsites<=6" --budget 300 --seeds 2
    python benchmarks/csp_success.py --subset ids:mp-23231,mp-1183691 --methods lamcsp,random
    python benchmarks/csp_success.py --targets my_cifs/ --model chgnet --device cuda

Outputs in ``--out`` (default ``benchmarks/results/csp_success``): ``csp_success.json`` (config,
one record per target × method × seed, summaries), ``success_vs_relaxations.png`` and a table on
stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_TARGETS = HERE / "data" / "mp20_small.json"
#: the CI smoke run: three small, quick targets (rocksalt AgBr, hexagonal CrN and AlAg)
SMOKE_IDS = ("mp-23231", "mp-1183691", "mp-1228901")
METHODS = ("lamcsp", "lamcsp_plain", "lamcsp_prior", "lamcsp_mp", "lamcsp_template", "lamcsp_prescreen",
           "lamcsp_dupreseed", "lamcsp_redraw",
           "random_prescreen", "random", "random_p1", "random_screen", "random_prior", "random_mp",
           "template", "pso", "ga")

DEFAULT_METHODS = ("lamcsp", "random", "random_p1", "ga")
TOP_K = 5
#: candidates drawn per relaxation by methods ``random_prescreen`` and ``lamcsp_prescreen`` (the
#: random generator's ``oversample``)
PRESCREEN_OVERSAMPLE = 2
MATCHER = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0}
SYMPREC = 0.1
#: relaxed structures farther than this from the reference's enthalpy (eV/atom) are not
#: compared with the StructureMatcher (a matching structure relaxed by the same relaxer lies
#: within a few meV/atom of it)
ENERGY_WINDOW = 0.05
#: "below the reference": more than this under it, eV/atom (relaxation noise at fmax 0.05)
BELOW_TOL = 0.002


# --------------------------------------------------------------------------------- targets


class Target:
    """One known structure: id, formula, space group, pymatgen structure."""

    def __init__(self, ident: str, structure: Any, spacegroup: int | None = None, source: str = ""):
        self.id = ident
        self.structure = structure
        self.spacegroup = spacegroup
        self.source = source

    @property
    def nsites(self) -> int:
        return len(self.structure)

    @property
    def composition(self) -> dict[str, int]:
        """The reduced composition, as element -> count."""
        comp, _ = self.structure.composition.get_reduced_composition_and_factor()
        return {el.symbol: int(round(n)) for el, n in comp.items()}

    @property
    def formula_units(self) -> int:
        return int(round(self.structure.composition.get_reduced_composition_and_factor()[1]))

    @property
    def formula(self) -> str:
        return self.structure.composition.reduced_formula


def load_targets(paths: Sequence[str]) -> list[Target]:
    """Targets from JSON lists (the MP-20 format: material_id, cif, spacegroup) and
    structure files or folders of them (CIF, POSCAR, extxyz: anything ASE reads)."""
    from pymatgen.core import Structure

    out: list[Target] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.is_file())
            out.extend(load_targets([str(f) for f in files]))
        elif path.suffix == ".json":
            for d in json.loads(path.read_text()):
                s = Structure.from_str(d["cif"], fmt="cif")
                out.append(Target(str(d["material_id"]), s, d.get("spacegroup"), str(path)))
        else:
            from pymatgen.io.ase import AseAtomsAdaptor

            from lamcsp.io import read_structures

            for i, atoms in enumerate(read_structures([str(path)], field="--targets")):
                ident = path.stem if i == 0 else f"{path.stem}-{i}"
                out.append(Target(ident, AseAtomsAdaptor.get_structure(atoms), None, str(path)))
    return out


def select(targets: list[Target], subset: str | None) -> list[Target]:
    """``--subset``: ``smoke``; ``nsites<=N`` (or ``<N``, ``==N``); ``ids:ID,ID``; ``first:N``;
    several joined by ``;`` (all must hold, in order)."""
    if not subset:
        return targets
    for part in (p.strip() for p in subset.split(";") if p.strip()):
        if part == "smoke":
            by_id = {t.id: t for t in targets}
            missing = [i for i in SMOKE_IDS if i not in by_id]
            if missing:
                raise SystemExit(f"--subset smoke: targets {missing} are not in the target list")
            targets = [by_id[i] for i in SMOKE_IDS]
        elif m := re.fullmatch(r"nsites\s*(<=|<|==|>=|>)\s*(\d+)", part):
            import operator

            ops: dict[str, Callable[[int, int], bool]] = {
                "<=": operator.le, "<": operator.lt, "==": operator.eq, ">=": operator.ge, ">": operator.gt}
            op, n = ops[m.group(1)], int(m.group(2))
            targets = [t for t in targets if op(t.nsites, n)]
        elif part.startswith("ids:"):
            want = [i.strip() for i in part[4:].split(",") if i.strip()]
            by_id = {t.id: t for t in targets}
            missing = [i for i in want if i not in by_id]
            if missing:
                raise SystemExit(f"--subset: unknown target ids {missing}")
            targets = [by_id[i] for i in want]
        elif part.startswith("first:"):
            targets = targets[: int(part[6:])]
        else:
            raise SystemExit(f"--subset: cannot read {part!r}; use smoke, nsites<=N, ids:A,B or first:N")
    return targets


# --------------------------------------------------------------------------------- matching


def symmetrized(structure: Any) -> Any:
    """The structure refined to its space group at ``symprec=0.1`` (itself where spglib fails)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return SpacegroupAnalyzer(structure, symprec=SYMPREC).get_refined_structure()
    except Exception:  # spglib finds no cell: compare the structure as it is
        return structure


class Reference:
    """A relaxed reference and a matcher against it (symmetrised once)."""

    def __init__(self, structure: Any, enthalpy_per_atom: float, spacegroup: int):
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self.structure = structure
        self.enthalpy_per_atom = enthalpy_per_atom
        self.spacegroup = spacegroup
        self.sym = symmetrized(structure)
        self.matcher = StructureMatcher(**MATCHER)
        self.calls = 0

    def matches(self, structure: Any, enthalpy_per_atom: float | None = None,
                symmetrize: Callable[[Any], Any] | None = None) -> bool:
        """Whether ``structure`` is the reference (``symmetrize``: how to symmetrise it, e.g. a
        cached :func:`symmetrized`; only called once the cheap tests pass)."""
        if enthalpy_per_atom is not None and abs(enthalpy_per_atom - self.enthalpy_per_atom) > ENERGY_WINDOW:
            return False
        if structure.composition.reduced_composition != self.structure.composition.reduced_composition:
            return False
        self.calls += 1
        return bool(self.matcher.fit(self.sym, (symmetrize or symmetrized)(structure)))


def relax_reference(target: Target, potential: Any, relax: Any, cache: Path) -> Reference:
    """The target relaxed with the benchmark's model and relaxer (cached in ``cache``)."""
    from lamcsp.relax import Relaxer
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from lamcsp.io import spacegroup_number

    if cache.exists():
        d = json.loads(cache.read_text())
        return Reference(Structure.from_dict(d["structure"]), d["enthalpy_per_atom"], d["spacegroup"])
    relaxer = Relaxer(potential, optimizer=relax.optimizer, fmax=relax.fmax, max_steps=relax.max_steps,
                      max_atoms=relax.max_atoms, progress=False)
    (res,) = relaxer.relax([AseAtomsAdaptor.get_atoms(target.structure)], [0.0])
    s = AseAtomsAdaptor.get_structure(res.atoms)
    ref = Reference(s, float(res.enthalpy_per_atom), spacegroup_number(res.atoms, SYMPREC))
    d = {"structure": s.as_dict(), "enthalpy_per_atom": ref.enthalpy_per_atom, "spacegroup": ref.spacegroup,
         "converged": bool(res.converged), "steps": int(res.steps),
         "matches_input": bool(ref.matches(target.structure))}
    _write_json(cache, d)
    return ref


# --------------------------------------------------------------------------------- methods


def method_generators(method: str) -> list[dict[str, Any]] | None:
    """The ``generators`` list of a method's campaign (``None``: lamcsp's default)."""
    cascade = re.fullmatch(r"(lamcsp\w*)_cascade", method)
    if cascade:  # the method's search, then the cascade's rescore stage (set by campaign_for)
        return method_generators(cascade.group(1))
    if method == "lamcsp":
        return None
    if method == "lamcsp_plain":
        return [{"name": "random", "share": 0.5}, {"name": "pso", "share": 0.5}]
    if method in ("random", "random_p1", "random_screen"):
        return [{"name": "random", "share": 1.0}]
    if method in ("lamcsp_prior", "random_prior"):
        from lamcsp.generators.symmetric import SMALL_CELL_PRIOR

        if method == "random_prior":
            return [{"name": "random", "share": 1.0, "options": dict(SMALL_CELL_PRIOR)}]
        return [{"name": "random", "share": 0.5, "options": dict(SMALL_CELL_PRIOR)},
                {"name": "pso", "share": 0.5, "options": {"random_options": dict(SMALL_CELL_PRIOR)}}]
    pre = re.fullmatch(r"(random_prescreen|lamcsp_prescreen|lamcsp_oversample)(\d*)", method)
    if pre and (pre.group(2) or pre.group(1) != "lamcsp_oversample"):  # lamcsp_oversample needs its K
        kind, k = pre.group(1), int(pre.group(2) or PRESCREEN_OVERSAMPLE)
        if k < 2:
            raise SystemExit(f"--methods: {method!r}: the prescreen needs an oversample of at least 2")
        ranked = {"name": "random", "share": 0.5, "options": {"oversample": k}}
        if kind == "random_prescreen":
            return [{**ranked, "share": 1.0}]
        swarm: dict[str, Any] = {"name": "pso", "share": 0.5}
        if kind == "lamcsp_oversample":
            swarm["options"] = {"oversample": k}
        return [ranked, swarm]
    if method in ("lamcsp_dupreseed", "lamcsp_redraw"):
        from lamcsp.campaign import DEFAULT_OVERSAMPLE

        change = {"reseed_duplicates": True} if method == "lamcsp_dupreseed" else {"migration": "redraw"}
        return [{"name": "random", "share": 0.5, "options": {"oversample": DEFAULT_OVERSAMPLE}},
                {"name": "pso", "share": 0.5, "options": {"oversample": DEFAULT_OVERSAMPLE, **change}}]
    if method in ("lamcsp_mp", "random_mp"):
        from lamcsp.generators.symmetric import MP_PRIOR

        if method == "random_mp":
            return [{"name": "random", "share": 1.0, "options": dict(MP_PRIOR)}]
        from lamcsp.campaign import DEFAULT_OVERSAMPLE

        return [{"name": "random", "share": 0.5, "options": {**MP_PRIOR, "oversample": DEFAULT_OVERSAMPLE}},
                {"name": "pso", "share": 0.5, "options": {"random_options": dict(MP_PRIOR),
                                                          "oversample": DEFAULT_OVERSAMPLE}}]
    funnel = re.fullmatch(r"(lamcsp\w*)_funnel\d+", method)
    if funnel:  # a lamcsp method with the funnel (relax.quench_steps, set by campaign_for)
        return method_generators(funnel.group(1))
    if method in ("template", "lamcsp_template"):  # the sources are filled in by campaign_for
        return [{"name": "template", "share": 1.0}]
    if method == "pso":
        return [{"name": "pso", "share": 1.0}]
    if method == "ga":
        return [{"name": "ga", "share": 1.0}]
    raise SystemExit(f"--methods: unknown method {method!r}; use some of {', '.join(METHODS)}")


def campaign_for(target: Target, method: str, seed: int, args: argparse.Namespace) -> Any:
    from lamcsp.campaign import parse_campaign

    raw = _campaign_raw(target, method, seed, args)
    return parse_campaign(raw, source=f"benchmark campaign {raw['name']}")


def _campaign_raw(target: Target, method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """A method's campaign as plain data (see :func:`campaign_for`)."""
    cascade = re.fullmatch(r"(lamcsp\w*)_cascade", method)
    if cascade:
        raw = _campaign_raw(target, cascade.group(1), seed, args)
        raw["name"] = f"{target.id}-{method}-s{seed}"
        raw["rescore"] = {"model": _model_section(args, args.cascade_model), "top_k": args.cascade_top_k,
                          "window": args.cascade_window}
        return raw
    fu = target.formula_units
    system: dict[str, Any] = {"composition": target.composition,
                              "formula_units": fu if args.formula_units == "same" else f"1-{fu}",
                              "pressures": 0.0}
    if method == "random_p1":
        system["spacegroups"] = [1]
    baseline = method in ("random", "random_p1")
    raw: dict[str, Any] = {
        "name": f"{target.id}-{method}-s{seed}", "seed": seed, "system": system,
        "population": args.population, "generations": None, "max_relaxations": args.budget,
        "stop": {"patience": None}, "model": _model_section(args), "report": {"top_n": TOP_K},
        # the search model alone (the ``_cascade`` methods add their rescore stage)
        "rescore": {"model": None},
        # the baselines relax every structure they draw (AIRSS, PyXtal); lamcsp's methods keep
        # its default similarity screen before relaxation
        "dedupe": {"before_relax": False} if baseline else {},
    }
    funnel = re.fullmatch(r"(lamcsp\w*)_funnel(\d+)", method)
    if funnel:
        if int(funnel.group(2)) < 1:
            raise SystemExit(f"--methods: {method!r}: the funnel needs at least one quench step")
        raw["relax"] = {"quench_steps": int(funnel.group(2))}
    gens = method_generators(method)
    base = funnel.group(1) if funnel else method
    if base in ("template", "lamcsp_template"):
        # leave-one-out: the templates are the benchmark lists' other structures, never the target
        tpl = {"name": "template", "share": 1.0,
               "options": {"source": str(args.templates or DEFAULT_TARGETS), "exclude": [target.id]}}
        if base == "template":
            gens = [tpl]
        else:  # a quarter of the default mix's population from the templates
            from lamcsp.campaign import Campaign

            gens = [{"name": g.name, "share": 0.75 * g.share, "options": dict(g.options)}
                    for g in Campaign().generators] + [{**tpl, "share": 0.25}]
    if gens is not None:
        raw["generators"] = gens
    return raw


def generators_of(campaign: Any) -> list[dict[str, Any]]:
    """A campaign's generators as plain data (what a record keeps, to tell stale records)."""
    return [{"name": g.name, "share": g.share, "options": dict(g.options)} for g in campaign.generators]


def stale_records(tasks: Sequence[tuple[Target, str, int]], out: Path, args: argparse.Namespace) -> list[str]:
    """Run folders whose record was made with other generators than the method has now (e.g.
    ``lamcsp`` runs made before lamcsp's default changed): reusing them would mislabel them."""
    stale = []
    # per method, and per target where the generators name it (a template method leaves its target out)
    want: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t, m, seed in tasks:
        path = out / "runs" / t.id / f"{m}-s{seed}" / "bench_record.json"
        if path.exists():
            made = json.loads(path.read_text()).get("generators")
            key = (m, t.id if "template" in m else "")
            if key not in want:
                want[key] = generators_of(campaign_for(t, m, seed, args))
            if made is not None and made != want[key]:
                stale.append(str(path.parent))
    return stale


def _model_section(args: argparse.Namespace, spec: str | None = None) -> dict[str, Any]:
    """The campaign ``model`` section of ``spec`` (default ``--model``) on ``--device``."""
    backend, _, rest = (spec or args.model).partition(":")
    section: dict[str, Any] = {"backend": backend, "device": args.device}
    if rest:
        if backend == "chgnet" and (re.fullmatch(r"\d+\.\d+\.\d+", rest) or rest == "r2scan"):
            section["options"] = {"version": rest}
        elif backend == "sevennet":  # sevennet:NAME[@MODAL], a checkpoint shipped in sevenn (or a file)
            name, _, modal = rest.partition("@")
            section["path" if Path(name).suffix else "name"] = name
            if modal:
                section["modal"] = modal
        else:
            section["path"] = rest
    return section


# --------------------------------------------------------------------------------- one run


def distinct_lowest(rows: Sequence[Any], symmetrized_of: Callable[[Any], Any], below: float,
                    k: int = TOP_K) -> tuple[list[Any], int]:
    """CSPBench's unique structures of a run: its relaxed rows (sorted by enthalpy per atom)
    grouped by the benchmark's own matcher (``MATCHER`` on structures symmetrised at
    ``SYMPREC``), not by the run's ``unique`` flags, so that every method is judged by one rule.

    A row is a new structure when it matches no representative found before it within
    ``ENERGY_WINDOW`` of its enthalpy. The walk stops once it has ``k`` representatives and has
    passed ``below`` (eV/atom). ``symmetrized_of(row)``: the row's structure, symmetrised.

    Returns:
        ``(representatives, n_below)``: the representatives found, lowest first (at least the
        ``k`` lowest where the run has them), and how many distinct structures lie under ``below``.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher(**MATCHER)
    reps: list[tuple[Any, Any]] = []  # (row, symmetrised structure)
    for r in rows:
        h = float(r.enthalpy_per_atom)
        if len(reps) >= k and h >= below:
            break
        sym = symmetrized_of(r)
        if not any(h - float(q.enthalpy_per_atom) <= ENERGY_WINDOW and matcher.fit(s, sym) for q, s in reps):
            reps.append((r, sym))
    return [r for r, _ in reps], sum(1 for r, _ in reps if float(r.enthalpy_per_atom) < below)


def in_search_order(rows: Sequence[Any]) -> list[Any]:
    """Search rows in the order the search relaxed them: by generation, then the order it
    scheduled them in (lowest start enthalpy first where it prescreened; rows written before the
    search recorded an order fall back to the drawn order)."""
    return sorted(rows, key=lambda r: (r.generation, r.get("order", -1), r.unit, r.candidate))


class Ranked:
    """Relaxed rows judged against a reference: each row's structure and symmetrised structure
    made once, the distinct lowest (:func:`distinct_lowest`) and the reference matcher.

    Attributes:
        unique: the distinct structures, lowest first; ``top`` the first ``TOP_K`` of them.
        n_below: how many distinct structures lie more than ``BELOW_TOL`` under the reference.
    """

    def __init__(self, rows: Sequence[Any], ref: Reference):
        from pymatgen.io.ase import AseAtomsAdaptor

        self.ref = ref
        self.structures = {int(r.id): AseAtomsAdaptor.get_structure(r.toatoms()) for r in rows}
        self._sym: dict[int, Any] = {}
        lowest_first = sorted(rows, key=lambda r: r.enthalpy_per_atom)
        below = ref.enthalpy_per_atom - BELOW_TOL
        self.unique, self.n_below = distinct_lowest(lowest_first, self.sym_of, below)
        self.top = self.unique[:TOP_K]

    def sym_of(self, r: Any) -> Any:
        if int(r.id) not in self._sym:
            self._sym[int(r.id)] = symmetrized(self.structures[int(r.id)])
        return self._sym[int(r.id)]

    def is_target(self, r: Any) -> bool:
        """Row ``r`` (one of the rows given) is the reference structure."""
        return self.ref.matches(self.structures[int(r.id)], float(r.enthalpy_per_atom),
                                symmetrize=lambda _: self.sym_of(r))


def evaluate(run_dir: Path, ref: Reference, until: float | None = None) -> dict[str, Any]:
    """Success, first match, energy distance and failure reason of a finished (or stopped) run;
    with ``until`` (seconds), of what it had stored that many seconds after its start."""
    from ase.db.core import T2000, YEAR

    from lamcsp.store import ResultStore, result_ok

    store = ResultStore(run_dir)
    meta = run_dir / "bench_run.json"
    start = json.loads(meta.read_text())["start"] if meta.exists() else None
    rows = in_search_order(store.rows(role="search", include_data=False))
    if until is not None and start is not None:
        rows = [r for r in rows if r.ctime * YEAR + T2000 - start <= until]
    ok = [r for r in rows if result_ok(r)]
    ranked = Ranked(ok, ref)
    unique, n_below, top, match = ranked.unique, ranked.n_below, ranked.top, ranked.is_target
    top_match = [i for i, r in enumerate(top) if match(r)]
    first = None
    for n, r in enumerate(rows, start=1):
        if int(r.id) in ranked.structures and match(r):
            first = (n, r)
            break
    # model steps: each relaxation's steps + 1, and every generation's prescreen (single points
    # or quenches; rows record their unit's per generation), up to the match
    prescreen = {(int(r.unit), int(r.generation)): int(r.get("prescreen_calls", 0)) for r in rows}

    def model_steps(upto: list[Any]) -> int:
        gens = {(int(r.unit), int(r.generation)) for r in upto}
        return sum(int(r.steps) + 1 for r in upto) + sum(prescreen[k] for k in gens)

    best = unique[0].enthalpy_per_atom if unique else math.nan
    success = bool(top_match)
    reason = None
    if not success:
        if n_below >= TOP_K:
            reason = "model_prefers_other"
        elif first is not None:
            reason = "found_not_top5"
        else:
            reason = "not_reached"
    rec: dict[str, Any] = {
        "success": success,
        "rank": (top_match[0] + 1) if success else None,
        "relaxations": len(rows),
        "failed_relaxations": len(rows) - len(ok),
        "unique": sum(1 for r in ok if r.get("unique")),
        "found": first is not None,
        "relaxations_to_match": first[0] if first else None,
        # all relaxations up to the end of the first match's generation: a generation relaxes
        # as one batch, so this count does not depend on the order within it
        "relaxations_through_generation": (sum(1 for r in rows if r.generation <= first[1].generation)
                                           if first else None),
        "seconds_to_match": (first[1].ctime * YEAR + T2000 - start) if first and start else None,
        "model_steps_to_match": model_steps(rows[:first[0]]) if first else None,
        "model_steps": model_steps(rows),
        "best_enthalpy_per_atom": best,
        "energy_distance": best - ref.enthalpy_per_atom if unique else None,
        "n_below_reference": n_below,
        "top_spacegroups": [int(r.spacegroup) for r in top],
        "reason": reason,
    }
    return rec


def evaluate_cascade(run_dir: Path, ref: Reference, oracle: str, *, top_k: int | None = None,
                     window: float | None = None) -> dict[str, Any]:
    """The cascade's verdict on a finished run: the rescore rows of the cascade model (``role=verify``,
    ``stage=rescore``, ``oracle`` = ``oracle``; a run rescored by several models keeps each one's
    rows) ranked by the cascade model's enthalpy, judged against ``ref`` (the target relaxed with
    the cascade model) by the same rule as :func:`evaluate`.

    ``top_k`` and ``window`` replay a smaller pick on the rows already there: only the rows of the
    search's ``top_k`` lowest distinct structures and of those within ``window`` eV/atom of its
    lowest count, as if the stage had re-relaxed only those (``--replay-window``; the benchmark's
    runs have one composition and one pressure).
    ``rescore_seconds`` is the stage's wall time, from the rows' creation times (the last rescore
    row against the last search row); :func:`judge` takes the clock's instead where the stage ran
    alone on a finished search (``bench_run.json``)."""
    from ase.db.core import YEAR

    from lamcsp.store import ResultStore, result_ok

    store = ResultStore(run_dir)
    rows = [r for r in store.rows(role="verify", include_data=False)
            if r.get("stage") == "rescore" and r.get("oracle") == oracle and result_ok(r)]
    search = store.rows(role="search", include_data=False)
    seconds = (max(r.ctime for r in rows) - max(r.ctime for r in search)) * YEAR if rows and search else 0.0
    if window is not None:
        hits = sorted((r for r in search if r.get("unique") and result_ok(r)),
                      key=lambda r: (r.enthalpy_per_atom, r.id))
        keep = {r.id for r in hits[:top_k]}
        keep |= {r.id for r in hits if r.enthalpy_per_atom - hits[0].enthalpy_per_atom <= window}
        rows = [r for r in rows if int(r.get("of")) in keep]
    ranked = Ranked(rows, ref)
    unique, n_below, top = ranked.unique, ranked.n_below, ranked.top
    hit = [i for i, r in enumerate(top) if ranked.is_target(r)]
    rescored = any(ranked.is_target(r) for r in rows)
    best = unique[0].enthalpy_per_atom if unique else math.nan
    reason = None
    if not hit:
        reason = ("model_prefers_other" if n_below >= TOP_K else "found_not_top5" if rescored
                  else "not_rescored")
    return {"success": bool(hit), "rank": hit[0] + 1 if hit else None, "cascade_rows": len(rows),
            "best_enthalpy_per_atom": best,
            "energy_distance": best - ref.enthalpy_per_atom if unique else None,
            "n_below_reference": n_below, "top_spacegroups": [int(r.spacegroup) for r in top],
            "reason": reason, "rescore_seconds": seconds}


def judge(run_dir: Path, method: str, ref: Reference, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`evaluate`; for a cascade method the verdict is the cascade's
    (:func:`evaluate_cascade`), the search model's kept under ``search`` (and, with
    ``--replay-window``, a smaller pick's under ``replay``)."""
    rec = evaluate(run_dir, ref)
    if not method.endswith("_cascade"):
        return rec
    cref = args.cascade_refs[ref_id(run_dir)]
    cascade = evaluate_cascade(run_dir, cref, args.cascade_oracle)
    meta = run_dir / "bench_run.json"
    timed = json.loads(meta.read_text()).get("rescore_seconds") if meta.exists() else None
    if timed is not None:  # the stage ran alone on a finished search: its own clock
        cascade["rescore_seconds"] = timed
    keys = ("success", "rank", "best_enthalpy_per_atom", "energy_distance", "n_below_reference",
            "top_spacegroups", "reason")
    out = {**rec, "search": {k: rec[k] for k in keys}, **{k: cascade[k] for k in keys},
           "cascade_rows": cascade["cascade_rows"], "rescore_seconds": cascade["rescore_seconds"],
           "cascade_model": args.cascade_model}
    if getattr(args, "replay_window", None) is not None:
        replay = evaluate_cascade(run_dir, cref, args.cascade_oracle, top_k=args.cascade_top_k,
                                  window=args.replay_window)
        out["replay"] = {"window": args.replay_window, "top_k": args.cascade_top_k,
                         **{k: replay[k] for k in ("success", "rank", "reason", "cascade_rows")}}
    return out


def cascade_pairs(records: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Per cascade method, the same runs judged twice: on the search model's own ranking
    (``search``) and on the cascade's; the targets gained and lost, the rescore stage's share of
    the wall time and, where recorded, the replayed smaller pick's hits."""
    out: dict[str, Any] = {}
    for m in methods:
        rs = [r for r in records if r["method"] == m and "search" in r]
        if not m.endswith("_cascade") or not rs:
            continue

        def count(judged: Sequence[dict[str, Any]]) -> dict[str, int]:
            return {"hits": sum(bool(j["success"]) for j in judged),
                    "rank1": sum(bool(j["success"]) and j["rank"] == 1 for j in judged),
                    "model_prefers_other": sum(j["reason"] == "model_prefers_other" for j in judged)}

        seconds = sum(r["seconds"] for r in rs)
        rescore = sum(r.get("rescore_seconds", 0.0) for r in rs)
        doc: dict[str, Any] = {
            "runs": len(rs), "cascade_model": rs[0].get("cascade_model"),
            "search": count([r["search"] for r in rs]), "cascade": count(rs),
            "gained": sorted(f"{r['formula']} s{r['seed']}" for r in rs
                            if r["success"] and not r["search"]["success"]),
            "lost": sorted(f"{r['formula']} s{r['seed']}" for r in rs
                          if r["search"]["success"] and not r["success"]),
            "seconds": seconds, "rescore_seconds": rescore,
            "rescore_share": rescore / seconds if seconds else None,
            "cascade_rows": sum(r.get("cascade_rows", 0) for r in rs)}
        replays = [r["replay"] for r in rs if "replay" in r]
        if replays:
            doc["replay"] = {"window": replays[0]["window"], "top_k": replays[0]["top_k"],
                             **count(replays),
                             "cascade_rows": sum(x["cascade_rows"] for x in replays)}
        out[m] = doc
    return out


def print_cascade_pairs(records: list[dict[str, Any]], pairs: dict[str, Any]) -> None:
    """Per cascade run, the search model's verdict beside the cascade's; then the counts."""
    def verdict(j: dict[str, Any]) -> str:
        return f"hit r{j['rank']}" if j["success"] else f"miss {j['reason']}"

    for m, doc in pairs.items():
        print(f"\n{m}: the search model's ranking against the cascade's ({doc['cascade_model']}), "
              "same runs")
        for r in sorted((r for r in records if r["method"] == m and "search" in r),
                        key=lambda r: (r["seed"], r["target"])):
            print(f"  {r['target']:12s} {r['formula']:10s} s{r['seed']}  search {verdict(r['search']):28s} "
                  f"cascade {verdict(r):28s} rows {r.get('cascade_rows', 0):4d}  "
                  f"rescore {r.get('rescore_seconds', 0.0):5.0f} of {r['seconds']:5.0f} s"
                  + (f"  replay {verdict(r['replay'])}" if "replay" in r else ""))
        for name in ("search", "cascade", "replay"):
            if name in doc:
                c = doc[name]
                extra = (f" (window {c['window']:g}, top {c['top_k']}, {c['cascade_rows']} rows)"
                         if name == "replay" else "")
                print(f"  {name:8s} top-5 hits {c['hits']}/{doc['runs']}, rank 1 {c['rank1']}, "
                      f"model_prefers_other {c['model_prefers_other']}{extra}")
        share = doc["rescore_share"]
        print(f"  gained {', '.join(doc['gained']) or '-'}; lost {', '.join(doc['lost']) or '-'}; "
              f"rescore {doc['rescore_seconds']:.0f} of {doc['seconds']:.0f} s "
              f"({_fmt(share and 100 * share, '.0f')}%), {doc['cascade_rows']} structures")


def ref_id(run_dir: Path) -> str:
    """The target id of a run folder (``runs/<target>/<method>-s<seed>``)."""
    return run_dir.parent.name


def run_one(target: Target, method: str, seed: int, ref: Reference, potential: Any,
            args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from pymatgen.io.ase import AseAtomsAdaptor

    from lamcsp.search import Search
    from lamcsp.store import ResultStore

    run_dir = out / "runs" / target.id / f"{method}-s{seed}"
    record_path = run_dir / "bench_record.json"
    if record_path.exists():
        rec = json.loads(record_path.read_text())
        if rec.get("stopped_at_match") and not args.stop_at_match:
            # a run ended early at its first match: not a full-budget run; start it again
            import shutil

            shutil.rmtree(run_dir)
        elif args.rescore:
            # judge the finished run again from its database, with the current rule
            rec = {**rec, **judge(run_dir, method, ref, args), "rescored": True}
            _write_json(record_path, rec)
            return rec
        else:
            return rec
    campaign = campaign_for(target, method, seed, args)
    resume = (run_dir / "campaign.yaml").exists()
    meta = run_dir / "bench_run.json"
    t0 = time.time()
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(meta, {"start": t0, "elapsed": 0.0})
    prior = json.loads(meta.read_text())["elapsed"] if meta.exists() else 0.0

    def found(search: Search) -> bool:
        # after each generation: stop once the target is the lowest unique structure so far (a
        # later generation would need 5 distinct lower structures to push it out of the top 5)
        store: ResultStore = search.store
        rows = sorted(store.rows(role="search", unique=True, include_data=False),
                      key=lambda r: r.enthalpy_per_atom)[:1]
        return any(ref.matches(AseAtomsAdaptor.get_structure(r.toatoms()), float(r.enthalpy_per_atom))
                   for r in rows)

    from lamcsp.store import read_checkpoint

    # a finished search resumed (by a cascade with another model): this call is its rescore stage
    state = read_checkpoint(run_dir / "checkpoint.json") if resume else None
    rescore_only = bool(state and state.get("done"))
    search = Search(campaign, run_dir, potential=potential, resume=resume, progress=False)
    search.run(until=found if args.stop_at_match else None, report=False)
    elapsed = prior + time.time() - t0
    stage = {"rescore_seconds": time.time() - t0} if rescore_only and method.endswith("_cascade") else {}
    _write_json(meta, {**json.loads(meta.read_text()), "elapsed": elapsed, **stage})
    rec = {"target": target.id, "formula": target.formula, "nsites": target.nsites,
           "spacegroup": target.spacegroup, "method": method, "seed": seed,
           "generators": generators_of(campaign), **judge(run_dir, method, ref, args), "seconds": elapsed,
           "stopped_at_match": bool(args.stop_at_match), "resumed": resume}
    _write_json(record_path, rec)
    return rec


# --------------------------------------------------------------------------------- summary


def model_below(records: list[dict[str, Any]]) -> list[str]:
    """Targets for which some run (any method, any seed) found a structure the model puts more
    than ``BELOW_TOL`` under the relaxed reference. With ``--stop-at-match`` a run ends when the
    target is its lowest structure, so on these targets a hit only says that the target came
    before the lower structure: luck, not search; the per-run ratios leave them out."""
    return sorted({r["target"] for r in records if (r.get("n_below_reference") or 0) > 0})


def summarize(records: list[dict[str, Any]], methods: Sequence[str], budget: int,
              exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Per method: success rate over runs and over targets, median relaxations and seconds to
    the first match over successful runs, failure reasons; and each method's median against
    pure symmetric random search's, on its own hits and on the runs both hit. The per-run ratios
    leave out the targets in ``exclude`` (:func:`model_below`, with ``--stop-at-match``)."""
    out: dict[str, Any] = {}
    by = {m: [r for r in records if r["method"] == m] for m in methods}
    for m, rs in by.items():
        if not rs:
            continue
        hits = [r for r in rs if r["success"]]
        targets = sorted({r["target"] for r in rs})
        reasons: dict[str, int] = {}
        for r in rs:
            if r["reason"]:
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        out[m] = {
            "runs": len(rs), "hits": len(hits), "success_rate": len(hits) / len(rs),
            "targets": len(targets),
            "targets_found_any_seed": sum(any(r["success"] for r in rs if r["target"] == t) for t in targets),
            "median_relaxations_to_match": _median([r["relaxations_to_match"] for r in hits]),
            "median_relaxations_through_generation": _median([r.get("relaxations_through_generation")
                                                              for r in hits]),
            "median_seconds_to_match": _median([r["seconds_to_match"] for r in hits]),
            "median_model_steps_to_match": _median([r.get("model_steps_to_match") for r in hits]),
            "model_steps": sum(r.get("model_steps") or 0 for r in rs),
            "hits_at_random_seconds": (sum(bool(r.get("success_at_random_seconds")) for r in rs)
                                       if any(r.get("success_at_random_seconds") is not None for r in rs)
                                       else None),
            "relaxations_spent": sum(r["relaxations"] for r in rs),
            "seconds": sum(r["seconds"] for r in rs),
            "failure_reasons": reasons,
        }
    if "random" in out:
        base = {(r["target"], r["seed"]): r for r in by["random"]}
        for m in out:
            own = out[m]["median_relaxations_to_match"]
            ref = out["random"]["median_relaxations_to_match"]
            out[m]["median_ratio_vs_random"] = own / ref if own and ref else None
            own = out[m]["median_relaxations_through_generation"]
            ref = out["random"]["median_relaxations_through_generation"]
            out[m]["median_ratio_vs_random_through_generation"] = own / ref if own and ref else None
            both = [(r["relaxations_to_match"], base[(r["target"], r["seed"])]["relaxations_to_match"])
                    for r in by[m] if r["success"] and (r["target"], r["seed"]) in base
                    and base[(r["target"], r["seed"])]["success"]]
            if both:
                a, b = _median([x for x, _ in both]), _median([y for _, y in both])
                out[m]["common_hits"] = len(both)
                out[m]["median_ratio_vs_random_common"] = a / b if a and b else None
            for key in ("relaxations_to_match", "model_steps_to_match", "seconds_to_match"):
                out[m][f"per_run_{key}_vs_random"] = ratios_vs_random(
                    [r for r in records if r["target"] not in set(exclude)], m, key)
    return out


def equal_time(records: list[dict[str, Any]], refs: dict[str, Reference], out: Path) -> None:
    """Success at equal wall time: each run judged on what it had stored when symmetric random
    search of the same target and seed had spent its whole budget (``success_at_random_seconds``;
    ``None`` without a random run to compare with)."""
    base = {(r["target"], r["seed"]): r for r in records if r["method"] == "random"}
    for r in records:
        b = base.get((r["target"], r["seed"]))
        if b is None or r.get("reason") == "error":
            r["success_at_random_seconds"] = None
        elif r is b or r["seconds"] <= b["seconds"]:
            r["success_at_random_seconds"] = r["success"]
        else:  # judged again on what it had stored by then (not where only records were collected)
            run_dir = out / "runs" / r["target"] / f"{r['method']}-s{r['seed']}"
            if not (run_dir / "results.db").exists():
                r["success_at_random_seconds"] = r.get("success_at_random_seconds")
                continue
            cut = evaluate(run_dir, refs[r["target"]], until=b["seconds"])
            r["success_at_random_seconds"] = cut["success"]


def ratios_vs_random(records: list[dict[str, Any]], method: str, key: str) -> dict[str, Any] | None:
    """Per-run ratios ``method / random`` of ``key`` (e.g. ``seconds_to_match``) on the runs both
    hit: their median, geometric mean and worst (largest); and the runs only the method hit
    (wins at the budget) or only random hit."""
    base = {(r["target"], r["seed"]): r for r in records if r["method"] == "random"}
    ratios, wins, losses = [], 0, 0
    for r in records:
        b = base.get((r["target"], r["seed"]))
        if r["method"] != method or b is None:
            continue
        if r["success"] and b["success"] and r.get(key) and b.get(key):
            ratios.append(float(r[key]) / float(b[key]))
        wins += int(r["success"] and not b["success"])
        losses += int(b["success"] and not r["success"])
    if not ratios:
        return None
    return {"runs": len(ratios), "median": statistics.median(ratios),
            "geomean": float(np.exp(np.mean(np.log(ratios)))), "worst": max(ratios), "best": min(ratios),
            "wins_at_budget": wins, "losses_at_budget": losses}


def _median(xs: Sequence[float | None]) -> float | None:
    v = [float(x) for x in xs if x is not None]
    return statistics.median(v) if v else None


def print_table(records: list[dict[str, Any]], summary: dict[str, Any], methods: Sequence[str],
                targets: list[Target], seeds: Sequence[int]) -> None:
    w = max(12, *(len(f"{t.id} {t.formula}") for t in targets))
    head = f"{'target':<{w}} {'sites':>5} {'sg':>4} {'E_ref':>8} " + " ".join(f"{m:>16}" for m in methods)
    print(head)
    print("-" * len(head))
    refs = {r["target"]: r for r in records}
    for t in targets:
        cells = []
        for m in methods:
            rs = [r for r in records if r["target"] == t.id and r["method"] == m]
            if not rs:
                cells.append(f"{'-':>16}")
                continue
            hits = [r for r in rs if r["success"]]
            med = _median([r["relaxations_to_match"] for r in hits])
            ed = _median([r["energy_distance"] for r in rs])
            txt = f"{len(hits)}/{len(rs)}" + (f" @{med:.0f}" if med is not None else "")
            if not hits and ed is not None:
                txt += f" {1000 * ed:+.0f}meV"
            cells.append(f"{txt:>16}")
        e_ref = refs.get(t.id, {}).get("reference_enthalpy_per_atom")
        e_txt = f"{e_ref:8.3f}" if e_ref is not None else f"{'':>8}"
        name = f"{t.id} {t.formula}"
        print(f"{name:<{w}} {t.nsites:>5} {t.spacegroup or '':>4} {e_txt} " + " ".join(cells))
    print()
    print("cells: hits/runs @median relaxations to the first match; failed: median energy distance "
          "(best found - relaxed reference, meV/atom)")
    print()
    print(f"{'method':<10} {'success':>9} {'targets':>8} {'med relax':>10} {'vs random':>10} "
          f"{'(common)':>9} {'med s':>7} {'relax':>7} {'s':>7}  failures")
    for m, s in summary.items():
        ratio = s.get("median_ratio_vs_random")
        common = s.get("median_ratio_vs_random_common")
        print(f"{m:<10} {s['hits']:>3}/{s['runs']:<3} {100 * s['success_rate']:3.0f}% "
              f"{s['targets_found_any_seed']:>3}/{s['targets']:<3} "
              f"{_fmt(s['median_relaxations_to_match'], '.0f'):>10} {_fmt(ratio, '.2f'):>10} "
              f"{_fmt(common, '.2f'):>9} {_fmt(s['median_seconds_to_match'], '.1f'):>7} "
              f"{s['relaxations_spent']:>7} {s['seconds']:>7.0f}  "
              + ", ".join(f"{k} {v}" for k, v in sorted(s["failure_reasons"].items())))


def print_costs(summary: dict[str, Any]) -> None:
    """What the user pays against symmetric random search, on the runs both hit: per-run ratios
    (method / random) of relaxations, model steps and wall seconds to the first match."""
    if "random" not in summary:
        return
    print()
    print(f"{'method':<18} {'hits':>5} {'@random s':>9} {'med steps':>9} {'med s':>7}   "
          "per-run ratio vs random on common hits (median / geomean / worst): relaxations | steps | "
          "seconds;  wins/losses at the budget")
    for m, s in summary.items():
        cells = []
        for key in ("relaxations_to_match", "model_steps_to_match", "seconds_to_match"):
            r = s.get(f"per_run_{key}_vs_random")
            cells.append("-" if r is None else f"{r['median']:.2f}/{r['geomean']:.2f}/{r['worst']:.2f}")
        r = s.get("per_run_seconds_to_match_vs_random") or {}
        at = s.get("hits_at_random_seconds")
        steps = _fmt(s.get("median_model_steps_to_match"), ".0f")
        tail = f"  (n={r.get('runs')});  {r.get('wins_at_budget')}/{r.get('losses_at_budget')}" if r else ""
        print(f"{m:<18} {s['hits']:>5} {_fmt(at, 'd'):>9} {steps:>9} "
              f"{_fmt(s['median_seconds_to_match'], '.1f'):>7}   " + " | ".join(cells) + tail)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def plot(records: list[dict[str, Any]], methods: Sequence[str], budget: int, path: Path) -> None:
    """Success rate (over runs) against relaxations spent, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = np.arange(0, budget + 1)
    for m in methods:
        rs = [r for r in records if r["method"] == m]
        if not rs:
            continue
        firsts = np.array([r["relaxations_to_match"] for r in rs if r["success"]], dtype=float)
        ys = [(firsts <= x).sum() / len(rs) for x in xs]
        ax.step(xs, ys, where="post", label=f"{m} ({len(firsts)}/{len(rs)})")
    ax.set_xlabel("relaxations spent")
    ax.set_ylabel("success rate (top-5 match)")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, budget)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------- main


def _write_json(path: Path, data: Any) -> None:
    # one temporary name per process: two benchmark processes (say one per seed, --seeds 1, and
    # --seeds 2,) may share --out and write the same reference at once
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def _error_record(t: Target, m: str, seed: int, ref: Reference, exc: BaseException) -> dict[str, Any]:
    return {"target": t.id, "formula": t.formula, "nsites": t.nsites, "spacegroup": t.spacegroup,
            "method": m, "seed": seed, "success": False, "reason": "error",
            "error": f"{type(exc).__name__}: {exc}", "relaxations": 0, "seconds": 0.0,
            "relaxations_to_match": None, "seconds_to_match": None, "energy_distance": None,
            "rank": None, "reference_enthalpy_per_atom": ref.enthalpy_per_atom,
            "reference_spacegroup": ref.spacegroup}


def _run_task(t: Target, m: str, seed: int, ref: Reference, potential: Any, args: argparse.Namespace,
              out: Path) -> dict[str, Any]:
    try:
        rec = run_one(t, m, seed, ref, potential, args, out)
    except Exception as exc:  # a run that cannot start or crashes: recorded, not fatal
        return _error_record(t, m, seed, ref, exc)
    rec["reference_enthalpy_per_atom"] = ref.enthalpy_per_atom
    rec["reference_spacegroup"] = ref.spacegroup
    return rec


#: a ``--jobs`` worker's arguments and model (set by :func:`_init_worker`)
_WORKER: dict[str, Any] = {}


def _init_worker(args: argparse.Namespace, threads: int, model: Any) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(threads)
    from lamcsp.potentials.registry import load_model

    _WORKER.update(args=args, potential=load_model(model))


def _worker_task(t: Target, m: str, seed: int, ref: Reference, out: Path) -> dict[str, Any]:
    return _run_task(t, m, seed, ref, _WORKER["potential"], _WORKER["args"], out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=[str(DEFAULT_TARGETS)],
                    help="JSON target lists (MP-20 format) and/or CIF/POSCAR files or folders")
    ap.add_argument("--subset", default=None,
                    help="smoke | nsites<=N | ids:ID,ID | first:N (join with ';')")
    ap.add_argument("--budget", type=int, default=300, help="relaxations per run (default 300)")
    ap.add_argument("--seeds", default="2",
                    help="N (seeds 1..N) or a comma list of seeds (default 2)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"comma list of {', '.join(METHODS)}, random_prescreenK, lamcsp_prescreenK, "
                         "lamcsp_oversampleK, lamcsp_funnelN "
                         f"(default {','.join(DEFAULT_METHODS)})")
    ap.add_argument("--templates", default=None,
                    help="template source of methods template and lamcsp_template (default: the "
                         "MP-20 list; the target itself is always left out)")
    ap.add_argument("--model", default="chgnet",
                    help="chgnet (pretrained 0.3.0), chgnet:VERSION, chgnet:PATH, emt, lj... "
                         "(default chgnet)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--population", type=int, default=None,
                    help="structures per generation (default: lamcsp's campaign default)")
    ap.add_argument("--formula-units", choices=("same", "upto"), default="same",
                    help="same: the reference's formula units; upto: 1 to that many")
    ap.add_argument("--stop-at-match", action="store_true",
                    help="end a run once the target is its lowest structure (faster, biased: quick "
                         "looks only)")
    ap.add_argument("--collect", action="store_true",
                    help="run nothing: summarise the runs that have a record in --out (runs made "
                         "elsewhere, or a benchmark cut short)")
    ap.add_argument("--rescore", action="store_true",
                    help="judge runs that already have a record again from their databases (after a "
                         "change of the success rule), rewriting the records")
    ap.add_argument("--cascade-model", default="sevennet:7net-0",
                    help="the rescore model of METHOD_cascade methods, as --model (default "
                         "sevennet:7net-0)")
    ap.add_argument("--cascade-top-k", type=int, default=10,
                    help="structures per run the cascade model re-relaxes, the search model's lowest "
                         "first (default 10)")
    ap.add_argument("--cascade-window", type=float, default=0.05,
                    help="eV/atom: every unique structure this close to the search's lowest is "
                         "re-relaxed too (default 0.05)")
    ap.add_argument("--replay-window", type=float, default=None,
                    help="cascade methods: judge each run also on the rows a smaller rescore window "
                         "(eV/atom, with --cascade-top-k) would have picked, from the rows stored "
                         "(record key `replay`; with --rescore, on finished runs)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at a time, each in its own process with its own model (default 1); on "
                         "a GPU they share it, on a CPU they share the cores")
    ap.add_argument("--out", default=str(HERE / "results" / "csp_success"), help="output folder")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")  # pymatgen's CIF rounding notes, spglib deprecations

    from lamcsp.campaign import Campaign

    defaults = Campaign()
    if args.population is None:
        args.population = defaults.population
    seeds = (list(range(1, int(args.seeds) + 1)) if args.seeds.isdigit()
             else [int(s) for s in args.seeds.split(",") if s.strip()])
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        method_generators(m)
    cascades = [m for m in methods if m.endswith("_cascade")]
    if cascades and args.stop_at_match:
        raise SystemExit(f"--stop-at-match: the cascade methods ({', '.join(cascades)}) judge the search's "
                         "end; run them without it")
    targets = select(load_targets(args.targets), args.subset)
    if not targets:
        raise SystemExit("no targets selected")
    out = Path(args.out)
    (out / "refs").mkdir(parents=True, exist_ok=True)

    import torch

    from lamcsp.potentials.registry import load_model

    campaign0 = campaign_for(targets[0], methods[0], seeds[0], args)
    potential = load_model(campaign0.model)
    default_gens = ", ".join(f"{g.name} {g.share:g}" + (f" {g.options}" if g.options else "")
                             for g in defaults.generators)
    print(f"csp_success: {len(targets)} targets x {len(methods)} methods x {len(seeds)} seeds, budget "
          f"{args.budget} relaxations, population {args.population}, model {potential.model_id} on "
          f"{args.device}; lamcsp default generators: {default_gens}", flush=True)
    t_start = time.time()
    # every reference first (cached in refs/), so that parallel workers share them
    refs = {t.id: relax_reference(t, potential, campaign0.relax, out / "refs" / f"{t.id}.json")
            for t in targets}
    args.cascade_refs = {}
    if cascades:  # the targets relaxed with the cascade model too (refs_<name>/, as model_agreement.py)
        from lamcsp.rescore import rescore_id

        cascade_potential = load_model(campaign_for(targets[0], cascades[0], seeds[0], args).rescore.model)
        args.cascade_oracle = rescore_id(cascade_potential.model_id)
        folder = out / f"refs_{args.cascade_model.partition(':')[2] or args.cascade_model}"
        folder.mkdir(parents=True, exist_ok=True)
        args.cascade_refs = {t.id: relax_reference(t, cascade_potential, campaign0.relax,
                                                   folder / f"{t.id}.json") for t in targets}
        del cascade_potential
    # seeds outermost, so that an interrupted benchmark has every target for the first seeds
    tasks = [(t, m, s) for s in seeds for t in targets for m in methods]
    if args.collect:
        have = [task for task in tasks
                if (out / "runs" / task[0].id / f"{task[1]}-s{task[2]}" / "bench_record.json").exists()]
        print(f"--collect: {len(tasks) - len(have)} of {len(tasks)} runs have no record; summarising "
              f"the other {len(have)}", flush=True)
        tasks = have
    stale = stale_records(tasks, out, args)
    if stale:
        raise SystemExit(f"{len(stale)} run folders were made with other generators than their method "
                         f"has now (lamcsp's default changed since?), e.g. {stale[0]}: move them away "
                         "(or rename them to the method they ran) and run again")
    by_task: dict[int, dict[str, Any]] = {}

    def done(k: int, rec: dict[str, Any]) -> None:
        t, m, seed = tasks[k]
        by_task[k] = rec
        de = rec["energy_distance"]
        status = (f"hit at {rec['relaxations_to_match']} (rank {rec['rank']})" if rec["success"]
                  else f"error: {rec['error']}" if rec["reason"] == "error"
                  else f"miss: {rec['reason']} (dE {_fmt(de and 1000 * de, '+.0f')} meV/atom)")
        print(f"[{len(by_task)}/{len(tasks)}] {t.id} {t.formula} ({t.nsites} sites, sg {t.spacegroup}) "
              f"{m} seed {seed}: {status}, {rec['relaxations']} relaxations, {rec['seconds']:.0f} s",
              flush=True)

    if args.jobs <= 1:
        for k, (t, m, seed) in enumerate(tasks):
            done(k, _run_task(t, m, seed, refs[t.id], potential, args, out))
    else:
        # one process per job, each with its own model (on the same GPU, or a share of the cores)
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(args, threads, campaign0.model)) as pool:
            futures = {pool.submit(_worker_task, t, m, seed, refs[t.id], out): k
                       for k, (t, m, seed) in enumerate(tasks)}
            for fut in as_completed(futures):
                k = futures[fut]
                try:
                    rec = fut.result()
                except Exception as exc:  # the worker died: recorded like a crashed run
                    t, m, seed = tasks[k]
                    rec = _error_record(t, m, seed, refs[t.id], exc)
                done(k, rec)
    records = [by_task[k] for k in sorted(by_task)]
    equal_time(records, refs, out)
    excluded = model_below(records) if args.stop_at_match else []
    summary = summarize(records, methods, args.budget, exclude=excluded)
    print()
    print_table(records, summary, methods, targets, seeds)
    print_costs(summary)
    summary["cascade_pairs"] = cascade_pairs(records, methods)
    print_cascade_pairs(records, summary["cascade_pairs"])
    if excluded:
        print(f"per-run ratios and wins/losses leave out {len(excluded)} targets where the model puts "
              f"another structure under the reference (--stop-at-match): {', '.join(excluded)}")
    result = {
        "config": {"targets": args.targets, "subset": args.subset, "n_targets": len(targets),
                   "budget": args.budget, "seeds": seeds, "methods": methods, "model": potential.model_id,
                   "device": args.device, "population": args.population, "formula_units": args.formula_units,
                   "stop_at_match": args.stop_at_match, "lamcsp_default_generators": default_gens,
                   "matcher": MATCHER, "symprec": SYMPREC, "top_k": TOP_K,
                   "ratios_exclude_targets": excluded},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "loadavg": os.getloadavg()},
        "seconds": time.time() - t_start,
        "summary": summary,
        "records": records,
    }
    _write_json(out / "csp_success.json", result)
    plot(records, methods, args.budget, out / "success_vs_relaxations.png")
    print(f"\nwrote {out / 'csp_success.json'} and {out / 'success_vs_relaxations.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
