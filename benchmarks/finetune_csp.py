"""Right answers: does the fine-tune loop with oracle verification turn a wrong answer into the
right one, where the pretrained model prefers another structure?

For each target (default: four ``model_prefers_other`` targets of the CSP benchmark whose elements
GPAW handles cheaply, AgBr, CuBr, Mg2Zn, MgIn2 of ``benchmarks/data/mp20_small.json``), two lamcsp
searches of the target's composition and formula units at 0 GPa with the same budget and seed:

(a) ``model``: the pretrained model alone (CHGNet 0.3.0, lamcsp's default generators);
(b) ``loop``: the same search with the fine-tune loop and verification, the oracle labelling and
    verifying (``finetune:`` + ``verify:``, below).

Recorded per target: the wall time and oracle calls (labels plus every oracle call of the
verification, counted from the journals); the model's top-1 of (a) and, in (b), before the
first fine-tune iteration and at the end, each against the reference (the CSP benchmark's
matcher against the target relaxed with the model); the verified answer (the oracle's lowest
among what it verified) against the reference (the matcher against the MP structure, which is a
PBE minimum); whether the final model's top-1 is the oracle's; and the reference relaxed with the
oracle, so that where the oracle itself puts another structure below the reference the energies
say so (the oracle's verdict is what counts).

Oracles: ``--oracle gpaw`` (PBE plane waves with the settings of ``GPAW``, chosen per target by
the convergence study in ``docs/verify.md``), ``--oracle emt`` (CI's smoke run), or a YAML
mapping. Each target keeps its two run directories under ``--out``/runs/<id>/ and writes its
record when both end, so a rerun skips finished targets and resumes an interrupted one (``lamcsp
search --resume``: no oracle call is repeated).

Usage::

    python benchmarks/finetune_csp.py                                   # the four targets, GPAW
    python benchmarks/finetune_csp.py --targets x.cif --oracle emt --population 4 --generations 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import csp_success as bench  # noqa: E402

DEFAULT_IDS = ("mp-23231", "mp-23227", "mp-1094422", "mp-1185901")
#: PBE plane waves (GPAW 26.7, gpaw-data setups); why these settings: docs/verify.md
GPAW = {"calculator": "gpaw",
        "options": {"mode": {"name": "pw", "ecut": 500}, "xc": "PBE", "kpts": {"density": 3.0, "gamma": True},
                    "occupations": {"name": "fermi-dirac", "width": 0.05},
                    "convergence": {"energy": 1e-5, "density": 5e-5}}}


def oracle_spec(text: str) -> dict[str, Any]:
    if text == "gpaw":
        return json.loads(json.dumps(GPAW))
    raw = yaml.safe_load(text)
    return {"calculator": raw} if isinstance(raw, str) else dict(raw)


def campaigns(target: bench.Target, args: argparse.Namespace,
              oracle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    base = {"seed": args.seed,
            "system": {"composition": target.composition, "formula_units": target.formula_units,
                       "pressures": 0.0},
            "population": args.population, "generations": args.generations, "stop": {"patience": None},
            "model": {"backend": "chgnet", "device": args.device}, "report": {"top_n": bench.TOP_K}}
    loop = {**base,
            "finetune": {"enabled": True, "every": args.every, "committee": 2, "epochs": args.epochs,
                         "max_labels": args.labels, "max_iterations": args.iterations, "window": 0.05,
                         "oracle": oracle},
            "verify": {"top_k": args.top_k, "window": 0.03, "mode": args.mode, "fmax": 0.05,
                       "max_steps": args.oracle_steps}}
    return {"model": {**base, "name": f"{target.id}-model"}, "loop": {**loop, "name": f"{target.id}-loop"}}


def run_campaign(campaign: dict[str, Any], folder: Path, threads: int, ranks: int = 1) -> float:
    """Run (or resume) one campaign in ``folder``; the wall seconds of all its runs so far."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "campaign.in.yaml").write_text(yaml.safe_dump(campaign, sort_keys=False))
    run, clock = folder / "run", folder / "seconds.json"
    spent = json.loads(clock.read_text())["seconds"] if clock.exists() else 0.0
    if clock.exists() and json.loads(clock.read_text()).get("done"):
        return spent
    cmd = [sys.executable, "-m", "lamcsp", "search", str(folder / "campaign.in.yaml"), "-o", str(run)]
    if ranks > 1:  # the oracle's labels and verifications on every rank (the mpich wheel's mpiexec)
        launcher = Path(sys.executable).parent / "mpiexec"
        cmd = [str(launcher) if launcher.exists() else "mpiexec", "-n", str(ranks), *cmd]
    if (run / "campaign.yaml").exists():
        cmd.append("--resume")
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(folder / "search.log", "a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    spent += time.time() - t0
    clock.write_text(json.dumps({"seconds": spent, "done": rc == 0}))
    if rc:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}); see {folder / 'search.log'}")
    return spent


def journal_calls(run: Path) -> dict[str, int]:
    """Oracle calls counted from the journals: every line of a verification journal, and every
    label asked of the oracle (not the verification frames reused as labels)."""
    from lamcsp.oracle import Journal

    labels = sum(1 for r in Journal(run / "finetune" / "labels.jsonl").read() if r.get("kind") == "select")
    verify = sum(len(Journal(p).read()) for p in (run / "verify").glob("*/*.jsonl"))
    return {"labels": labels, "verify": verify, "total": labels + verify}


def top1(run: Path) -> Any:
    """The lowest unique search row of a run by the model in use at its end."""
    import ase.db

    from lamcsp.report import record_of

    db = ase.db.connect(str(run / "results.db"))
    rows = [r for r in db.select(role="search", unique=True) if record_of(r).ok]
    return min(rows, key=lambda r: (record_of(r).enthalpy_per_atom, r.id))


def describe(row: Any, ref: bench.Reference) -> dict[str, Any]:
    from pymatgen.io.ase import AseAtomsAdaptor

    from lamcsp.io import spacegroup_number

    atoms = row.toatoms()
    return {"db_id": int(row.id), "spacegroup": spacegroup_number(atoms, bench.SYMPREC),
            "matches_reference": ref.matches(AseAtomsAdaptor.get_structure(atoms))}


def oracle_reference(target: bench.Target, oracle: dict[str, Any], args: argparse.Namespace,
                     folder: Path) -> dict[str, Any]:
    """The MP structure relaxed with the oracle (journaled: a rerun repeats no oracle call)."""
    from lamcsp.relax.relaxer import atoms_to_dict
    from pymatgen.io.ase import AseAtomsAdaptor

    from lamcsp.oracle import OracleTask

    task = OracleTask({"oracle": oracle, "mode": args.mode, "optimizer": "bfgs", "fmax": 0.05,
                       "max_steps": args.oracle_steps})
    out: list[dict[str, Any]] = []
    task([{"atoms": atoms_to_dict(AseAtomsAdaptor.get_atoms(target.structure)), "pressure": 0.0,
           "journal": str(folder / "reference_oracle.jsonl")}], lambda j, r: out.append(r))
    r = out[0]
    return {"enthalpy_per_atom": r["enthalpy"] / len(r["atoms"]["numbers"]), "status": r["status"],
            "steps": r["steps"], "calls": r["calls"]}


def evaluate(target: bench.Target, folder: Path, ref_model: bench.Reference, seconds: dict[str, float],
             oracle: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import ase.db
    from pymatgen.io.ase import AseAtomsAdaptor

    ref_mp = bench.Reference(target.structure, float("nan"), target.spacegroup or 0)
    run_a, run_b = folder / "model" / "run", folder / "loop" / "run"
    db = ase.db.connect(str(run_b / "results.db"))
    summary = json.loads((run_b / "report" / "summary.json").read_text())
    log = json.loads((run_b / "finetune" / "iterations.json").read_text())
    before = next(iter((log[0].get("verification") or {}).values()), None) if log else None
    ver = summary["verification"][0]["pressures"][0]["compositions"][target.formula]
    answer = db.get(id=ver["answer"]["verify_id"])
    ref_oracle = oracle_reference(target, oracle, args, folder)
    h_answer = float(answer.enthalpy_per_atom)
    return {
        "target": target.id, "formula": target.formula, "nsites": target.nsites,
        "spacegroup": target.spacegroup,
        "oracle": summary["verification"][0]["oracle"],
        "model": {"seconds": seconds["model"], "top1": describe(top1(run_a), ref_model)},
        "loop": {
            "seconds": seconds["loop"], "oracle_calls": journal_calls(run_b),
            "iterations": len(log), "stop_reason": log[-1].get("stop_reason", "") if log else "",
            "top1_before": describe(db.get(id=before["ids"][0]), ref_model) if before else None,
            "top1_after": describe(top1(run_b), ref_model),
            "answer": {"verify_id": int(answer.id), "of": int(answer.of),
                       "spacegroup": int(answer.spacegroup),
                       "oracle_enthalpy_per_atom": h_answer,
                       "matches_reference": ref_mp.matches(AseAtomsAdaptor.get_structure(answer.toatoms())),
                       "model_rank": ver["answer"]["model_rank"]},
            "top1_agrees": bool(ver["comparison"]["top1_agree"]),
            "kendall_tau": ver["comparison"]["kendall_tau"],
            "verified": len(ver["structures"]),
            "reference_by_oracle": ref_oracle,
            "answer_minus_reference_mev": 1000 * (h_answer - ref_oracle["enthalpy_per_atom"]),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=[str(bench.DEFAULT_TARGETS)],
                    help="JSON target lists (MP-20 format) and/or CIF/POSCAR files")
    ap.add_argument("--subset", default=None, help="as csp_success.py (default: the four GPAW targets)")
    ap.add_argument("--oracle", default="gpaw", help="gpaw, emt, or a YAML mapping")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--every", type=int, default=3, help="generations between fine-tune iterations")
    ap.add_argument("--iterations", type=int, default=3, help="fine-tune iterations at most")
    ap.add_argument("--labels", type=int, default=12, help="oracle labels per iteration at most")
    ap.add_argument("--epochs", type=int, default=30, help="CHGNet fine-tune epochs per member")
    ap.add_argument("--top-k", type=int, default=5, help="structures verified per composition")
    ap.add_argument("--mode", choices=("relax", "single_point"), default="relax")
    ap.add_argument("--oracle-steps", type=int, default=40, help="oracle calls per verification at most")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per process")
    ap.add_argument("--ranks", type=int, default=1, help="MPI ranks of the loop's search (mpiexec -n)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(HERE / "results" / "finetune_csp"))
    args = ap.parse_args(argv)

    from lamcsp.campaign import RelaxSpec
    from lamcsp.potentials.registry import load_potential

    targets = bench.load_targets(args.targets)
    default = args.targets == [str(bench.DEFAULT_TARGETS)]
    subset = args.subset or (f"ids:{','.join(DEFAULT_IDS)}" if default else None)
    targets = bench.select(targets, subset)
    oracle = oracle_spec(args.oracle)
    out = Path(args.out)
    potential = None
    records = []
    for t in targets:
        folder = out / "runs" / t.id
        record = folder / "record.json"
        if record.exists():
            records.append(json.loads(record.read_text()))
            continue
        specs = campaigns(t, args, oracle)
        seconds = {}
        for kind in ("model", "loop"):
            print(f"{t.id} {t.formula}: {kind} ...", flush=True)
            seconds[kind] = run_campaign(specs[kind], folder / kind, args.threads,
                                         args.ranks if kind == "loop" else 1)
        if potential is None:
            potential = load_potential("chgnet", device=args.device)
        ref_model = bench.relax_reference(t, potential, RelaxSpec(), folder / "reference_model.json")
        rec = evaluate(t, folder, ref_model, seconds, oracle, args)
        bench._write_json(record, rec)
        records.append(rec)
    print(f"\n{'target':12s} {'formula':8s} {'(a) top-1':>9s} {'(b) before':>10s} {'after':>6s} "
          f"{'answer':>7s} {'agrees':>6s} {'answer-ref':>10s} {'oracle calls':>12s} {'(a) s':>6s} "
          f"{'(b) s':>7s}")
    yes = {True: "ref", False: "other", None: "-"}
    for r in records:
        b = r["loop"]
        print(f"{r['target']:12s} {r['formula']:8s} {yes[r['model']['top1']['matches_reference']]:>9s} "
              f"{yes[(b['top1_before'] or {}).get('matches_reference')]:>10s} "
              f"{yes[b['top1_after']['matches_reference']]:>6s} {yes[b['answer']['matches_reference']]:>7s} "
              f"{'yes' if b['top1_agrees'] else 'no':>6s} {b['answer_minus_reference_mev']:>8.1f}  "
              f"{b['oracle_calls']['total']:>12d} {r['model']['seconds']:>6.0f} {b['seconds']:>7.0f}")
    matched = sum(1 for r in records if r["loop"]["answer"]["matches_reference"])
    agreed = sum(1 for r in records if r["loop"]["answer"]["matches_reference"] and r["loop"]["top1_agrees"])
    print(f"verified answers matching the reference: {matched}/{len(records)}; of those, the final model's "
          f"top-1 is the oracle's in {agreed}")
    bench._write_json(out / "finetune_csp.json", {"oracle": oracle, "args": vars(args), "records": records,
                                                  "matched": matched, "agreed": agreed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
