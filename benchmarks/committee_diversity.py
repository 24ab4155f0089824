"""How committee members should differ: does the committee's deviation tell its actual error?

The fine-tune loop trusts a structure when its committee agrees (DP-GEN's max force deviation
below ``trust_lo``). A committee of copies of one pretrained model can agree and be wrong. This
benchmark trains K members three ways (``finetune.diversity``, :mod:`lamcsp.trainers`) on the
same EMT labels and measures, on held-out EMT labels in and out of the training distribution,
how the deviation follows the actual error of the committee's mean:

* ``bootstrap``: member k > 0 on a bootstrap resample of the labels (bagging);
* ``seeds``: every member on all labels, only the seeds differ;
* ``fresh_head``: every member on all labels from a fresh readout / fitting net.

Backends: CHGNet (pretrained 0.3.0) and a DeePMD-kit DPA-2 model (a small one pretrained on other
EMT data in the run, ``tests/deepmd_models.py``). Training data: 40 strained, rattled fcc-based
Cu-Au cells (1-8 atoms); test: 30 more of the same, 30 with three times the strain and rattle,
and 30 bcc-based cells (never trained on). Columns: Spearman's rank correlation of deviation and
actual max force error per structure (higher: the deviation ranks the errors), the median of
error / deviation (how far the committee underestimates its error), the fraction of structures it
trusts (deviation < 0.05 eV/Å) whose actual error is above 0.05 eV/Å (``agreed while wrong``),
the force RMSE of the mean (accuracy) and the training time.

Usage::

    python benchmarks/committee_diversity.py [--members 3] [--epochs 15] [--steps 300]

Writes ``benchmarks/results/committee_diversity.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "benchmarks" / "results" / "committee_diversity.json"
LO = 0.05


def bcc_frames(n: int, seed: int) -> list[Any]:
    """``n`` bcc-based Cu-Au cells (1-4 atoms), strained and rattled, labelled by EMT."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("Cu", "bcc", a=3.05, cubic=bool(i % 2)).repeat((1 + i % 2, 1, 1))
        a.set_chemical_symbols(rng.choice(["Cu", "Au"], len(a)).tolist())
        a.set_cell(a.cell.array @ (np.eye(3) + rng.normal(0.0, 0.03, (3, 3))), scale_atoms=True)
        a.rattle(0.1, seed=int(rng.integers(2**31)))
        a.calc = EMT()
        e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
        a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
        out.append(a)
    return out


def measure(committee: Any, frames: list[Any]) -> dict[str, float]:
    from lamcsp.finetune import deviation_against_error, force_rmse

    d = committee.evaluate(frames)
    ref = [f.get_forces() for f in frames]
    err_f = np.array([np.linalg.norm(p - r, axis=1).max() for p, r in zip(d.forces, ref)])
    e_ref = np.array([f.get_potential_energy() / len(f) for f in frames])
    stats = deviation_against_error(d.max_devi_f, err_f, d.devi_e, np.abs(d.energy - e_ref), LO)
    return {**stats, "force_rmse": force_rmse(d.forces, ref)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15, help="CHGNet epochs per member")
    ap.add_argument("--steps", type=int, default=300, help="DeePMD-kit steps per member")
    ap.add_argument("--backends", default="chgnet,deepmd")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from deepmd_models import TYPE_MAP, emt_frames, train_models

    from lamcsp.finetune import Committee
    from lamcsp.potentials.deepmd import write_frames
    from lamcsp.potentials.registry import load_potential
    from lamcsp.trainers import CHGNetTrainer, DeePMDTrainer

    train = emt_frames(40, seed=3)
    tests = {"in": emt_frames(30, seed=4), "strained": emt_frames(30, seed=5, strain=0.09, rattle=0.3),
             "bcc": bcc_frames(30, seed=6)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backends = args.backends.split(",")
        if "deepmd" in backends:
            pretrained = train_models(root / "pretrained", steps=200)["dpa2.pt"]
            systems = write_frames(train, root / "data", TYPE_MAP)
        for backend in backends:
            for diversity in ("bootstrap", "seeds", "fresh_head"):
                work = root / f"{backend}-{diversity}"
                t0 = time.perf_counter()
                if backend == "chgnet":
                    paths = CHGNetTrainer(epochs=args.epochs, diversity=diversity, device="cpu").train(
                        train, work, args.members)
                    pots = [load_potential(f"chgnet:{p}", device="cpu") for p in paths]
                else:
                    paths = DeePMDTrainer(pretrained, steps=args.steps, diversity=diversity, threads=1,
                                          learning_rate=(1e-3, 1e-5)).train(systems, work, args.members)
                    pots = [load_potential(f"deepmd:{p}", device="cpu") for p in paths]
                seconds = time.perf_counter() - t0
                committee = Committee(pots)
                for name, frames in tests.items():
                    rows.append({"backend": backend, "diversity": diversity, "test": name,
                                 "train_seconds": seconds, **measure(committee, frames)})
                    r = rows[-1]
                    print(f"{backend:7s} {diversity:10s} {name:9s} spearman {r['spearman_f']:5.2f}  "
                          f"error/devi {r['error_over_devi_f']:6.1f}  "
                          f"agreed-while-wrong {r['agreed_while_wrong']:.2f}  "
                          f"RMSE {r['force_rmse']:.3f}  ({seconds:.0f} s)", flush=True)
    print(f"\n{len(train)} training frames, K = {args.members}, CPU, {torch.get_num_threads()} threads")
    print(f"{'backend':8s} {'diversity':11s} {'test':9s} {'spearman':>8s} {'err/devi':>8s} "
          f"{'trusted&wrong':>13s} {'mean devi':>9s} {'mean err':>8s} {'RMSE':>6s} {'train s':>7s}")
    for r in rows:
        print(f"{r['backend']:8s} {r['diversity']:11s} {r['test']:9s} {r['spearman_f']:8.2f} "
              f"{r['error_over_devi_f']:8.1f} {r['agreed_while_wrong']:13.2f} {r['mean_devi_f']:9.3f} "
              f"{r['mean_error_f']:8.3f} {r['force_rmse']:6.3f} {r['train_seconds']:7.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"members": args.members, "epochs": args.epochs, "steps": args.steps,
                                    "trust_lo": LO, "train_frames": len(train),
                                    "test_frames": {k: len(v) for k, v in tests.items()},
                                    "threads": torch.get_num_threads(), "machine": platform.platform(),
                                    "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
