"""Relaxation throughput: lamcsp's batched relaxer against CHGNet's StructOptimizer and
TorchSim's batched FIRE, on the same structures, side by side in one run.

Every method relaxes the same set (:mod:`structures`: perturbed known crystals and random
PyXtal candidates, 2-24 atoms) with CHGNet 0.3.0, the cell relaxed through a Fréchet cell
filter, ``fmax`` on the largest generalised force row, at most ``--max-steps`` steps each:

* ``lamcsp``: :class:`lamcsp.relax.Relaxer` with FIRE (in-flight batch, one model call per
  step for all running structures); ``lamcsp-lbfgs``: the same with L-BFGS;
* ``structopt``: ``chgnet.model.StructOptimizer`` (ASE FIRE + ``FrechetCellFilter``), one
  structure at a time: the reference for energies;
* ``torchsim``: ``torch_sim.optimize`` with ``frechet_cell_fire`` (ASE flavour) and its
  ``InFlightAutoBatcher`` (same atom budget as lamcsp, convergence checked every step), over
  a thin ``ModelInterface`` around CHGNet (:class:`TorchSimCHGNet`; TorchSim 0.3.0 has none).

``--backend sevennet`` compares the SevenNet backend instead (``--lamcsp-model`` defaults to
``sevennet:7net-0``): ``lamcsp`` against ``ase-fire``, SevenNet's own ASE calculator
(``SevenNetCalculator``) under ASE's FIRE + ``FrechetCellFilter``, one structure at a time (the
reference for energies). ``--backend mace`` does the same for a MACE model file
(``--mace-model FILE``; by default a MACE-MP-small-shaped model, 128x0e channels, max_ell 3,
r_max 6 Å, randomly initialised and saved by this script, as no weights can be downloaded here)
against ``MACECalculator``; it needs the MACE environment (README, "MACE models").

Usage::

    python benchmarks/relax_throughput.py                 # 64 structures, all methods
    python benchmarks/relax_throughput.py --quick         # 8 structures, 100 steps
    python benchmarks/relax_throughput.py --methods lamcsp,torchsim --resume
    python benchmarks/relax_throughput.py --repeat 2      # interleaved repeats, fastest kept
    python benchmarks/relax_throughput.py --backend sevennet --n 32   # lamcsp vs SevenNet's ASE
    .venv-mace/bin/python benchmarks/relax_throughput.py --backend mace --n 16 --threads 1

Results (per-method summaries and per-structure records) go to ``--out`` as JSON, rewritten
after every method; ``--resume`` keeps methods (and repeats) already in that file when their
settings match. The machine's load average is stored with every run: other jobs on a small
machine skew wall times, which is what ``--repeat`` (interleaved, fastest kept) is for.

Reported: wall time, structures/s, model calls, total steps, converged fraction, final energy
per atom against ``structopt`` (all structures, and converged in both), speed ratios, and
where each method's time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from structures import benchmark_structures, size_histogram  # noqa: E402

ALL_METHODS = ["lamcsp", "lamcsp-lbfgs", "structopt", "torchsim", "ase-fire"]
#: the per-structure reference of each backend's comparison (energies are compared with it)
REFERENCES = {"chgnet": "structopt", "sevennet": "ase-fire", "mace": "ase-fire"}
#: methods run by default per backend, and lamcsp's model spec
BACKEND_METHODS = {"chgnet": "lamcsp,lamcsp-lbfgs,structopt,torchsim", "sevennet": "lamcsp,ase-fire",
                   "mace": "lamcsp,ase-fire"}
BACKEND_MODEL = {"chgnet": "chgnet", "sevennet": "sevennet:7net-0", "mace": None}  # mace: --mace-model
#: structures of the 64-set used by --quick (40 atoms in all): Si2, MgO2, TiO2 (6), NaCl (8)
#: crystals and random Si4, Na2Cl2, Ti2O4, Mg4O4 candidates
QUICK_INDICES = [0, 7, 10, 5, 32, 35, 38, 37]
EV_PER_A3_PER_GPA = 1.0 / 160.21766208


def _load_chgnet(device: str):
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name="0.3.0", use_device=device, verbose=False)
    return model.to(device).eval()


def _atoms_record(atoms, index: int, energy: float, converged: bool, steps: int,
                  status: str, fmax: float | None, **extra: Any) -> dict[str, Any]:
    n = len(atoms)
    return {
        "index": index,
        "n_atoms": n,
        "energy": float(energy),
        "energy_per_atom": float(energy) / n,
        "converged": bool(converged),
        "steps": int(steps),
        "status": status,
        "fmax": None if fmax is None else float(fmax),
        "volume_per_atom": float(abs(atoms.get_volume())) / n,
        **extra,
    }


# --------------------------------------------------------------------------------------
# (a) lamcsp
# --------------------------------------------------------------------------------------
def run_lamcsp(structures, args, optimizer: str) -> dict[str, Any]:
    from lamcsp.relax.relaxer import Relaxer

    from lamcsp.potentials.registry import load_potential

    pot = load_potential(args.lamcsp_model, device=args.device, **getattr(args, "mace_options", {}))
    relaxer = Relaxer(pot, optimizer=optimizer, fmax=args.fmax, max_steps=args.max_steps,
                      relax_cell=True, max_atoms=args.max_atoms, progress=False)
    pot.reset_counters()
    t0, c0 = time.perf_counter(), time.process_time()
    results = relaxer.relax([a.copy() for a in structures])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    records = [
        _atoms_record(r.atoms, i, r.energy, r.converged, r.steps, r.status, r.fmax)
        for i, r in enumerate(results)
    ]
    budget = args.max_atoms
    if budget is None:
        from lamcsp.relax.batching import default_max_atoms

        budget = default_max_atoms(pot.device, getattr(pot, "bytes_per_atom", None))
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "model_calls": relaxer.n_model_calls,
        "evaluations": pot.n_evaluations,
        "records": records,
        "timings": {
            "relaxer": dict(relaxer.timings),
            "potential": dict(pot.timings),
        },
        "settings": {"optimizer": optimizer, "max_atoms": budget, "model": pot.model_id},
    }


# --------------------------------------------------------------------------------------
# (b) CHGNet's StructOptimizer
# --------------------------------------------------------------------------------------
_FIRE_LOG = re.compile(r"^\S+:\s+(\d+)\s+\S+\s+(\S+)\s+(\S+)\s*$")


def _timed(fn, timings: dict[str, float], key: str, counts: dict[str, int] | None = None):
    """``fn`` wrapped to add its wall time to ``timings[key]`` (and one to ``counts["calls"]``
    per call when ``counts`` is given), without changing what it does."""
    def wrapped(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            timings[key] += time.perf_counter() - t
            if counts is not None:
                counts["calls"] += 1
    return wrapped


def _one_at_a_time_result(records: list[dict], t_start: float, c_start: float, calls: int,
                          timings: dict[str, float], settings: dict[str, Any]) -> dict[str, Any]:
    """The result of a reference run that relaxed one structure at a time through an ASE
    calculator (every calculator call is one model call and one evaluation)."""
    return {
        "wall_s": time.perf_counter() - t_start,
        "cpu_s": time.process_time() - c_start,
        "model_calls": calls,
        "evaluations": calls,
        "records": records,
        "timings": {"calculator": dict(timings)},
        "settings": settings,
    }


def run_structopt(structures, args) -> dict[str, Any]:
    from chgnet.model import StructOptimizer

    model = _load_chgnet(args.device)
    with contextlib.redirect_stdout(io.StringIO()):
        opt = StructOptimizer(model=model, optimizer_class="FIRE", use_device=args.device)
    calc = opt.calculator

    # count and time the calculator's work without changing it: calculate() is one model
    # call (structure conversion + graph + predict_graph), predict_graph() the model part
    timings = {"calculate": 0.0, "predict_graph": 0.0}
    counts = {"calls": 0}
    calc.calculate = _timed(calc.calculate, timings, "calculate", counts)
    calc.model.predict_graph = _timed(calc.model.predict_graph, timings, "predict_graph")

    records = []
    t_start, c_start = time.perf_counter(), time.process_time()
    for i, atoms0 in enumerate(structures):
        atoms = atoms0.copy()
        log = io.StringIO()
        calls_before = counts["calls"]
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.relax(atoms, fmax=args.fmax, steps=args.max_steps, relax_cell=True,
                      ase_filter="FrechetCellFilter", verbose=False, logfile=log)
        dt = time.perf_counter() - t0
        # the optimizer's own log: last line is the last step and its fmax (the filter's
        # generalised forces, what ASE tests convergence on)
        lines = [ln for ln in log.getvalue().splitlines() if _FIRE_LOG.match(ln)]
        step, _e, fmax = _FIRE_LOG.match(lines[-1]).groups()
        steps, fmax = int(step), float(fmax)
        converged = fmax < args.fmax
        energy = float(atoms.get_potential_energy())  # cached: no model call
        records.append(_atoms_record(
            atoms, i, energy, converged, steps,
            "converged" if converged else "max_steps", fmax,
            wall_s=dt, model_calls=counts["calls"] - calls_before,
        ))
    return _one_at_a_time_result(records, t_start, c_start, counts["calls"], timings,
                                 {"optimizer": "ase FIRE", "filter": "FrechetCellFilter"})


# --------------------------------------------------------------------------------------
# (b') a model's own ASE calculator under ASE FIRE + FrechetCellFilter (SevenNet)
# --------------------------------------------------------------------------------------
def mace_model_file(args) -> str:
    """``--mace-model``, or a MACE-MP-small-shaped model (128x0e channels, max_ell 3, r_max 6 Å)
    built (seeded, randomly initialised: no weights can be downloaded here) and saved once."""
    if args.mace_model:
        return args.mace_model
    path = Path(__file__).resolve().parents[1] / "build" / "mace_mp_small_shape.model"
    if not path.exists():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from mace_models import MP_SMALL, build_model, save_model

        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(build_model(**MP_SMALL), path)
    return str(path)


def _ase_calculator(args):
    """The backend's own ASE calculator for ``--lamcsp-model`` (``sevennet[:NAME][@MODAL]`` or
    ``mace:PATH``)."""
    if args.backend == "mace":
        from mace.calculators import MACECalculator

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MACECalculator(model_paths=args.mace_file, device=args.device,
                                  default_dtype=args.mace_options.get("dtype") or "")
    from sevenn.calculator import SevenNetCalculator

    from lamcsp.potentials.sevennet import split_spec

    arg = args.lamcsp_model.partition(":")[2]
    name, modal = split_spec(arg) if arg else ("7net-0", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SevenNetCalculator(name, modal=modal, device=args.device)


def run_ase_fire(structures, args) -> dict[str, Any]:
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    calc = _ase_calculator(args)
    timings = {"calculate": 0.0}
    counts = {"calls": 0}
    calc.calculate = _timed(calc.calculate, timings, "calculate", counts)
    records = []
    t_start, c_start = time.perf_counter(), time.process_time()
    for i, atoms0 in enumerate(structures):
        atoms = atoms0.copy()
        atoms.calc = calc
        calls_before = counts["calls"]
        t0 = time.perf_counter()
        filt = FrechetCellFilter(atoms)
        opt = FIRE(filt, logfile=None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                opt.run(fmax=args.fmax, steps=args.max_steps)
                failed = None
            except Exception as exc:  # noqa: BLE001 - an exploding structure, recorded
                failed = f"failed: {type(exc).__name__}"
        dt = time.perf_counter() - t0
        fmax = float(np.sqrt((filt.get_forces() ** 2).sum(axis=1)).max()) if failed is None else None
        converged = failed is None and fmax < args.fmax
        energy = float(atoms.get_potential_energy()) if failed is None else float("nan")
        records.append(_atoms_record(
            atoms, i, energy, converged, opt.nsteps, failed or ("converged" if converged else "max_steps"),
            fmax, wall_s=dt, model_calls=counts["calls"] - calls_before,
        ))
    return _one_at_a_time_result(records, t_start, c_start, counts["calls"], timings,
                                 {"optimizer": "ase FIRE", "filter": "FrechetCellFilter",
                                  "calculator": type(calc).__name__})


# --------------------------------------------------------------------------------------
# (c) TorchSim
# --------------------------------------------------------------------------------------
def make_torchsim_chgnet(model, device: torch.device, dtype: torch.dtype = torch.float64):
    """A thin TorchSim ``ModelInterface`` over CHGNet: one pymatgen ``Structure`` and one
    ``CrystalGraph`` per system (CHGNet's own ``graph_converter``), one batched
    ``model(graphs, task="efs")`` call, per-atom energies made total, GPa stresses made
    eV/Å³. CHGNet's stress is ``(1/V) dE/dε`` (it goes unchanged into ASE's ``stress``), which
    is also TorchSim's convention (its cell forces use the virial ``-V (σ + p)``)."""
    from pymatgen.core import Lattice, Structure
    from torch_sim.models.interface import ModelInterface
    from torch_sim.state import SimState

    class TorchSimCHGNet(ModelInterface):
        def __init__(self):
            super().__init__()
            self.model = model.to(device).eval()
            self._device = torch.device(device)
            self._dtype = dtype
            self._compute_stress = True
            self._compute_forces = True
            self._memory_scales_with = "n_atoms"
            self.n_calls = 0
            self.n_evaluations = 0
            self.timings = {"graph": 0.0, "model": 0.0}

        def forward(self, state, **kwargs):
            if isinstance(state, dict):
                state = SimState(**state, masses=torch.ones_like(state["positions"][:, 0]))
            t0 = time.perf_counter()
            cells = state.row_vector_cell.detach().cpu().numpy()
            pos = state.positions.detach().cpu().numpy()
            numbers = state.atomic_numbers.detach().cpu().numpy()
            counts = torch.bincount(state.system_idx, minlength=state.n_systems).tolist()
            bounds = np.concatenate([[0], np.cumsum(counts)])
            graphs = []
            for b in range(state.n_systems):
                lo, hi = bounds[b], bounds[b + 1]
                struct = Structure(Lattice(cells[b]), numbers[lo:hi].tolist(), pos[lo:hi],
                                   coords_are_cartesian=True)
                graphs.append(self.model.graph_converter(struct).to(self._device))
            t1 = time.perf_counter()
            pred = self.model(graphs, task="efs")
            n = torch.tensor(counts, device=self._device, dtype=self._dtype)
            energy = pred["e"].detach().to(self._dtype)
            if self.model.is_intensive:
                energy = energy * n
            out = {
                "energy": energy,
                "forces": torch.cat([f.detach() for f in pred["f"]]).to(self._dtype),
                "stress": torch.stack([s.detach() for s in pred["s"]]).to(self._dtype)
                * EV_PER_A3_PER_GPA,
            }
            t2 = time.perf_counter()
            self.timings["graph"] += t1 - t0
            self.timings["model"] += t2 - t1
            self.n_calls += 1
            self.n_evaluations += state.n_systems
            return out

    return TorchSimCHGNet()


def run_torchsim(structures, args) -> dict[str, Any]:
    import torch_sim as ts
    from torch_sim.autobatching import InFlightAutoBatcher
    from torch_sim.optimizers import frechet_cell_fire
    from torch_sim.runners import generate_force_convergence_fn

    device = torch.device(args.device)
    wrapped = make_torchsim_chgnet(_load_chgnet(args.device), device)
    budget = args.max_atoms
    if budget is None:
        from lamcsp.relax.batching import default_max_atoms

        budget = default_max_atoms(device, None) if device.type == "cpu" else 0
    if not budget:  # GPU without an explicit budget: TorchSim's own memory estimate
        batcher = InFlightAutoBatcher(wrapped, memory_scales_with="n_atoms")
    else:
        batcher = InFlightAutoBatcher(wrapped, memory_scales_with="n_atoms",
                                      max_memory_scaler=float(budget))
    converged_fn = generate_force_convergence_fn(args.fmax, include_cell_forces=True)
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Optimize has reached max steps" (global counter)
        final = ts.optimize(
            [a.copy() for a in structures],
            wrapped,
            optimizer=frechet_cell_fire,
            md_flavor="ase_fire",
            convergence_fn=converged_fn,
            autobatcher=batcher,
            max_steps=args.max_steps,
            steps_between_swaps=args.torchsim_swap_every,
        )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # one optimizer step per swap attempt when steps_between_swaps == 1
    steps = [int(s) * args.torchsim_swap_every for s in batcher.swap_attempts]
    conv = converged_fn(final, None).cpu().numpy()
    fmax_atoms = ts.quantities.systemwise_max_force(final).cpu().numpy()
    fmax_cell = final.cell_forces.norm(dim=2).amax(dim=1).cpu().numpy()
    energies = final.energy.detach().cpu().numpy()
    atoms_out = ts.io.state_to_atoms(final)
    records = [
        _atoms_record(a, i, energies[i], conv[i], min(steps[i], args.max_steps),
                      "converged" if conv[i] else "max_steps",
                      max(fmax_atoms[i], fmax_cell[i]))
        for i, a in enumerate(atoms_out)
    ]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "model_calls": wrapped.n_calls,
        "evaluations": wrapped.n_evaluations,
        "records": records,
        "timings": {"wrapper": dict(wrapped.timings)},
        "settings": {"optimizer": "frechet_cell_fire (ase_fire)",
                     "max_memory_scaler": batcher.max_memory_scaler,
                     "steps_between_swaps": args.torchsim_swap_every},
    }


RUNNERS = {
    "lamcsp": lambda s, a: run_lamcsp(s, a, "fire"),
    "lamcsp-lbfgs": lambda s, a: run_lamcsp(s, a, "lbfgs"),
    "structopt": run_structopt,
    "torchsim": run_torchsim,
    "ase-fire": run_ase_fire,
}


# --------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------
def summarize(res: dict[str, Any]) -> dict[str, Any]:
    recs = res["records"]
    n = len(recs)
    return {
        "n_structures": n,
        "wall_s": res["wall_s"],
        "structures_per_s": n / res["wall_s"],
        "cpu_s": res.get("cpu_s"),
        "model_calls": res["model_calls"],
        "evaluations": res["evaluations"],
        "total_steps": int(sum(r["steps"] for r in recs)),
        "converged_fraction": sum(r["converged"] for r in recs) / n,
        "failed": sum(r["status"].startswith("failed") for r in recs),
        "wall_s_repeats": res.get("walls", [res["wall_s"]]),
        "cpu_s_repeats": res.get("cpus", [res.get("cpu_s")]),
    }


def energy_comparison(recs: list[dict], ref: list[dict], tol_mev: float = 2.0) -> dict:
    """Per-structure final energy per atom differences ``method - ref``, meV/atom."""
    out = {}
    subsets = (("all", False, None), ("converged_in_both", True, None),
               ("crystals_converged_in_both", True, "crystal"),
               ("random_converged_in_both", True, "random"))
    for label, both_conv, kind in subsets:
        d = []
        for r, q in zip(recs, ref, strict=True):
            if both_conv and not (r["converged"] and q["converged"]):
                continue
            if kind is not None and r.get("kind") != kind:
                continue
            de = 1000.0 * (r["energy_per_atom"] - q["energy_per_atom"])
            if math.isfinite(de):
                d.append(de)
        d = np.asarray(d)
        if len(d) == 0:
            out[label] = {"n": 0}
            continue
        ad = np.abs(d)
        out[label] = {
            "n": len(d),
            "mean_mev": float(d.mean()),
            "median_abs_mev": float(np.median(ad)),
            "max_abs_mev": float(ad.max()),
            "frac_within_tol": float((ad <= tol_mev).mean()),
            "n_lower": int((d < -tol_mev).sum()),
            "n_higher": int((d > tol_mev).sum()),
        }
    return out


def print_table(results: dict[str, dict], order: list[str], reference: str = "structopt") -> None:
    ref = results.get(reference)
    hdr = (f"{'method':<13} {'wall s':>8} {'cpu s':>8} {'struct/s':>8} {'calls':>6} {'evals':>6} "
           f"{'steps':>6} {'conv':>6}  {f'dE/atom vs {reference}, meV (all | conv-in-both)':<44}")
    print(hdr)
    print("-" * len(hdr))
    for m in order:
        if m not in results:
            continue
        s = results[m]["summary"]
        cmp_txt = ""
        if ref is not None and m != reference:
            c = results[m]["energy_vs_ref"]
            parts = []
            for k in ("all", "converged_in_both"):
                e = c[k]
                if e["n"]:
                    parts.append(f"med {e['median_abs_mev']:.2f} max {e['max_abs_mev']:.1f} "
                                 f"{100 * e['frac_within_tol']:.0f}%")
                else:
                    parts.append("-")
            cmp_txt = " | ".join(parts)
        cpu = s.get("cpu_s")
        cpu_txt = f"{cpu:8.1f}" if cpu is not None else f"{'-':>8}"
        print(f"{m:<13} {s['wall_s']:8.1f} {cpu_txt} {s['structures_per_s']:8.3f} {s['model_calls']:6d} "
              f"{s['evaluations']:6d} {s['total_steps']:6d} {s['converged_fraction']:6.3f}  "
              f"{cmp_txt}")
    print(f"  dE: per-structure |E/atom - E_{reference}/atom|: median, max, % within 2 meV/atom")
    print("  calls: model calls (batched); evals: structure evaluations (sum of batch sizes)")
    print("  cpu: process CPU time (all threads) of that repeat, less sensitive to other jobs")
    print("  wall: fastest repeat; all repeats: " + "; ".join(
        f"{m} " + ", ".join(f"{w:.1f}" for w in results[m]["summary"]["wall_s_repeats"])
        for m in order if m in results))
    for m in order:
        if m in results and m != reference and ref is not None:
            cmp = results[m]["energy_vs_ref"]
            c = cmp["all"]
            if c["n"]:
                print(f"  {m}: mean signed dE {c['mean_mev']:+.2f} meV/atom; "
                      f"{c['n_lower']} lower, {c['n_higher']} higher than {reference} by > 2 meV")
            for kind in ("crystals", "random"):
                c = cmp[f"{kind}_converged_in_both"]
                if c["n"]:
                    print(f"    {kind} (converged in both, {c['n']}): median |dE| "
                          f"{c['median_abs_mev']:.2f}, max {c['max_abs_mev']:.2f} meV/atom, "
                          f"{100 * c['frac_within_tol']:.0f}% within 2 meV/atom")
    print()
    print("speed (wall-time ratios, higher = first method faster):")
    for a in ("lamcsp", "lamcsp-lbfgs"):
        for b in ("structopt", "torchsim", "ase-fire"):
            if a in results and b in results:
                r = results[b]["summary"]["wall_s"] / results[a]["summary"]["wall_s"]
                print(f"  {a} / {b}: {r:6.2f}x")
    if "torchsim" in results and "structopt" in results:
        r = results["structopt"]["summary"]["wall_s"] / results["torchsim"]["summary"]["wall_s"]
        print(f"  torchsim / structopt: {r:6.2f}x")
    print("speed (CPU-time ratios of the same repeats):")
    for a, b in (("lamcsp", "structopt"), ("lamcsp", "torchsim"), ("lamcsp-lbfgs", "structopt"),
                 ("lamcsp-lbfgs", "torchsim"), ("torchsim", "structopt"), ("lamcsp", "ase-fire"),
                 ("lamcsp-lbfgs", "ase-fire")):
        if a in results and b in results:
            ca, cb = results[a]["summary"].get("cpu_s"), results[b]["summary"].get("cpu_s")
            if ca and cb:
                print(f"  {a} / {b}: {cb / ca:6.2f}x")


def print_breakdown(results: dict[str, dict]) -> None:
    print()
    print("where the time goes (seconds, % of wall):")
    for m, res in results.items():
        wall = res["summary"]["wall_s"]
        t = res.get("timings", {})

        def pct(x: float, wall: float = wall) -> str:
            return f"{x:8.2f} s {100 * x / wall:5.1f}%"

        print(f"  {m}  (wall {wall:.2f} s)")
        if m.startswith("lamcsp"):
            rel, pot = t.get("relaxer", {}), t.get("potential", {})
            parts = {k: v for k, v in pot.items() if k != "total"}
            for k, v in parts.items():
                print(f"    potential {k:<18} {pct(v)}")
            other = pot.get("total", 0.0) - sum(parts.values())
            print(f"    potential other        {pct(other)}  (conversions, autograd glue)")
            for k in ("optimizer", "checks", "batching"):
                print(f"    relaxer {k:<20} {pct(rel.get(k, 0.0))}")
            rest = wall - sum(rel.values())
            print(f"    unaccounted            {pct(rest)}")
        elif m == "ase-fire":
            c = t.get("calculator", {})
            print(f"    calculator (graph + model) {pct(c.get('calculate', 0.0))}")
            print(f"    ASE FIRE + filter      {pct(wall - c.get('calculate', 0.0))}")
        elif m == "structopt":
            c = t.get("calculator", {})
            graph = c.get("calculate", 0.0) - c.get("predict_graph", 0.0)
            print(f"    model (predict_graph)  {pct(c.get('predict_graph', 0.0))}")
            print(f"    graph + conversion     {pct(graph)}")
            print(f"    ASE FIRE + filter      {pct(wall - c.get('calculate', 0.0))}")
        elif m == "torchsim":
            w = t.get("wrapper", {})
            print(f"    model forward          {pct(w.get('model', 0.0))}")
            print(f"    graph building         {pct(w.get('graph', 0.0))}")
            print(f"    optimizer + batcher    {pct(wall - sum(w.values()))}")


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float | np.floating):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=64, help="number of structures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=sorted(REFERENCES), default="chgnet",
                   help="the model compared: chgnet (lamcsp, StructOptimizer, TorchSim), sevennet "
                        "(lamcsp against SevenNet's ASE calculator) or mace (lamcsp against MACECalculator; "
                        "in the MACE environment, README \"MACE models\")")
    p.add_argument("--methods", default=None, help="default: the backend's methods")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2, help="torch threads, same for all")
    p.add_argument("--max-atoms", type=int, default=None,
                   help="atom budget per batch for lamcsp and torchsim (default: lamcsp's)")
    p.add_argument("--torchsim-swap-every", type=int, default=1,
                   help="TorchSim steps_between_swaps (1: convergence checked every step)")
    p.add_argument("--lamcsp-model", default=None,
                   help="model spec for lamcsp (default: chgnet or sevennet:7net-0 by --backend; e.g. lj "
                        "for a dry run of the code path)")
    p.add_argument("--mace-model", default=None,
                   help="--backend mace: the MACE .model file (default: a MACE-MP-small-shaped model built "
                        "here, randomly initialised)")
    p.add_argument("--mace-dtype", default=None, choices=["float32", "float64"],
                   help="--backend mace: compute dtype of both methods (default: the model file's)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every method this many times (interleaved); report the fastest")
    p.add_argument("--quick", action="store_true", help="8 structures, 100 steps: smoke check")
    p.add_argument("--resume", action="store_true",
                   help="keep methods already in --out whose settings match")
    p.add_argument("--out", default=None,
                   help="JSON file (default benchmarks/results/relax_throughput_DEVICE.json)")
    args = p.parse_args(argv)

    if args.quick:
        args.max_steps = min(args.max_steps, 100)
    args.methods = args.methods or BACKEND_METHODS[args.backend]
    args.mace_options = {"dtype": args.mace_dtype} if args.mace_dtype else {}
    if args.backend == "mace":
        args.mace_file = mace_model_file(args)
        args.lamcsp_model = args.lamcsp_model or f"mace:{args.mace_file}"
    args.lamcsp_model = args.lamcsp_model or BACKEND_MODEL[args.backend]
    reference = REFERENCES[args.backend]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(RUNNERS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {ALL_METHODS}")
    dev_tag = torch.device(args.device).type
    out = Path(args.out or Path(__file__).resolve().parent / "results"
               / f"relax_throughput_{dev_tag}{'' if args.backend == 'chgnet' else '_' + args.backend}"
                 f"{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    if args.quick:
        structures = [benchmark_structures(64, args.seed)[i] for i in QUICK_INDICES]
    else:
        structures = benchmark_structures(args.n, args.seed)
    print(size_histogram(structures))
    config = {
        "n": len(structures), "seed": args.seed, "quick": args.quick, "device": args.device,
        "max_steps": args.max_steps, "fmax": args.fmax, "threads": args.threads,
        "max_atoms": args.max_atoms, "torchsim_swap_every": args.torchsim_swap_every,
        "lamcsp_model": args.lamcsp_model,
    }
    if args.backend != "chgnet":  # (older result files have no backend key)
        config["backend"] = args.backend
    if args.backend == "mace":
        config.update(mace_model=args.mace_file, mace_dtype=args.mace_dtype)
    meta = {
        "config": config,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "structures": [
            {"index": i, "name": a.info.get("name"), "kind": a.info.get("kind"),
             "n_atoms": len(a), "formula": a.get_chemical_formula()}
            for i, a in enumerate(structures)
        ],
    }
    results: dict[str, dict] = {}
    if args.resume and out.exists():
        old = json.loads(out.read_text())
        if old.get("config") == config:
            results = old.get("methods", {})
            print(f"resuming: {sorted(results)} from {out}")
        else:
            print(f"not resuming: settings in {out} differ")

    # warm the model up once (lazy initialisation, allocator, numba's cache) outside every timer
    with contextlib.redirect_stdout(io.StringIO()):
        from ase.build import bulk
        from pymatgen.io.ase import AseAtomsAdaptor

        if args.backend == "chgnet":
            warm = _load_chgnet(args.device)
            warm.predict_structure(AseAtomsAdaptor.get_structure(bulk("Si", "diamond", a=5.43)),
                                   task="efs")
        else:
            from lamcsp.relax.state import from_structures

            from lamcsp.potentials.registry import load_potential

            warm = load_potential(args.lamcsp_model, device=args.device)
            warm(from_structures([bulk("Si", "diamond", a=5.43), bulk("NaCl", "rocksalt", a=5.6)]))
            si = bulk("Si", "diamond", a=5.43)
            si.calc = _ase_calculator(args)
            si.get_forces()
        del warm

    def write():
        order = [m for m in ALL_METHODS if m in results]
        ref = results.get(reference)
        for m in order:
            results[m]["summary"] = summarize(results[m])
            if ref is not None and m != reference:
                results[m]["energy_vs_ref"] = energy_comparison(results[m]["records"],
                                                                ref["records"])
        out.write_text(json.dumps(_jsonable({**meta, "methods": results}), indent=1))
        return order

    # repeats are interleaved (method 1, 2, ..., then again) so that load from other jobs on
    # the machine falls on all methods alike; each method reports its fastest repeat
    for rep in range(args.repeat):
        for m in methods:
            done = len(results.get(m, {}).get("walls", []))
            if done > rep:
                if rep == 0:
                    print(f"{m}: {done} repeat(s) kept from {out}")
                continue
            print(f"running {m} (repeat {rep + 1}/{args.repeat}) ...", flush=True)
            load_before = os.getloadavg()
            res = RUNNERS[m](structures, args)
            # the machine's load average before and after (other jobs skew the timings)
            res["loadavg"] = {"before": load_before, "after": os.getloadavg()}
            for r, a in zip(res["records"], structures, strict=True):
                r["name"] = a.info.get("name")
                r["kind"] = a.info.get("kind")
            s = summarize(res)
            print(f"  {m}: {s['wall_s']:.1f} s, {s['model_calls']} calls, "
                  f"{s['total_steps']} steps, converged {s['converged_fraction']:.3f}, "
                  f"load {res['loadavg']['before'][0]:.2f} -> {res['loadavg']['after'][0]:.2f}",
                  flush=True)
            prev = results.get(m)
            walls = [*(prev["walls"] if prev else []), res["wall_s"]]
            loads = [*(prev["loadavgs"] if prev else []), res["loadavg"]]
            cpus = [*(prev["cpus"] if prev else []), res["cpu_s"]]
            if prev is None or res["wall_s"] < prev["wall_s"]:
                results[m] = res
            results[m]["walls"] = walls
            results[m]["loadavgs"] = loads
            results[m]["cpus"] = cpus
            write()

    order = write()
    print()
    print(f"{len(structures)} structures, fmax {args.fmax} eV/A, max {args.max_steps} steps, "
          f"device {args.device}, {args.threads} torch threads")
    print_table(results, order, reference)
    print_breakdown({m: results[m] for m in order})
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
