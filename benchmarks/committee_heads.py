"""A committee of K heads on one shared descriptor against K separately fine-tuned models.

The fine-tune loop's committee today is K separate DeePMD-kit fine-tunes of the pretrained model
(``DeePMDTrainer``, ``finetune.diversity: bootstrap``: member k > 0 on a bootstrap resample of
the labels): K ``dp --pt train`` runs (and K ``dp freeze``). The alternative measured here is
one multi-task training (``MultitaskDeePMDTrainer``) whose K heads share the descriptor, head k
on the same bootstrap resample as member k, evaluated head by head (``deepmd:model.pt@mK``):

* ``separate``: K fine-tunes of ``--steps`` steps each (the current arrangement);
* ``heads, K x steps``: one training of K x ``--steps`` steps (each head drawn with probability
  1/K per step: as many fitting-net updates per head as a separate member gets);
* ``heads, steps``: one training of ``--steps`` steps (a K-th of the updates per head).

A tiny DPA-2 (``tests/deepmd_models.py``'s recipe) is pretrained in the run on Cu-Au EMT frames;
the committees are fine-tuned on 24 more (strained, rattled) and tested on 30 held-out frames of
the same kind (``in``) and 30 with three times the strain and rattle (``strained``). Columns:
training wall time, evaluation wall time per structure (the whole committee, best of 3),
Spearman's rank correlation of the committee's max force deviation and the actual max force
error per structure (does the deviation still track the error?), mean deviation and error, and
the force RMSE of the committee's mean.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/committee_heads.py [--steps 100] [--members 2,4]

Writes ``benchmarks/results/committee_heads.json`` (``--out``) and prints a table.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "committee_heads.json"


def resample(systems: list[Path], root: Path, k: int) -> list[Path]:
    """Member/head k's data: the systems as they are (k = 0), or a bootstrap resample of each
    one's frames (``lamcsp.trainers.bootstrap_indices``, as ``DeePMDTrainer`` draws them)."""
    if k == 0:
        return list(systems)
    import dpdata

    from lamcsp.trainers import bootstrap_indices

    out = []
    for j, path in enumerate(systems):
        system = dpdata.LabeledSystem(str(path), fmt="deepmd/npy")
        dest = root / f"{j:03d}-{path.name}"
        system.sub_system(bootstrap_indices(len(system), k + 100 * j, "bootstrap").tolist()).to(
            "deepmd/npy", str(dest))
        out.append(dest)
    return out


def eval_seconds(committee: Any, frames: list[Any], repeat: int = 3) -> float:
    committee.evaluate(frames)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        committee.evaluate(frames)
        best = min(best, time.perf_counter() - t)
    return best / len(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100, help="training steps per separate member")
    ap.add_argument("--members", default="2,4", help="committee sizes K")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from committee_diversity import measure
    from deepmd_models import DPA2, LOSS, LR, TYPE_MAP, emt_frames

    from lamcsp.finetune import Committee
    from lamcsp.multitask import MultitaskDeePMDTrainer
    from lamcsp.potentials.deepmd import DeePMDPotential, train, write_frames
    from lamcsp.trainers import DeePMDTrainer

    torch.set_num_threads(1)
    fine = emt_frames(24, seed=3, strain=0.05, rattle=0.15)
    tests = {"in": emt_frames(30, seed=4, strain=0.05, rattle=0.15),
             "strained": emt_frames(30, seed=5, strain=0.15, rattle=0.45)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pre = [str(p) for p in write_frames(emt_frames(40, seed=1), root / "pre-data", TYPE_MAP)]
        fitting = {"neuron": [16, 16], "seed": 1}
        train({"model": {"type_map": TYPE_MAP, "descriptor": DPA2, "fitting_net": fitting},
               "learning_rate": LR, "loss": LOSS,
               "training": {"training_data": {"systems": pre, "batch_size": "auto"}, "numb_steps": 150,
                            "disp_freq": 150, "save_freq": 150, "seed": 1}}, root / "pretrained", threads=1)
        pretrained = root / "pretrained" / "model.ckpt.pt"
        systems = write_frames(fine, root / "data", TYPE_MAP)
        for K in [int(k) for k in args.members.split(",")]:
            arrangements: dict[str, tuple[float, list[Any]]] = {}
            t0 = time.perf_counter()
            paths = DeePMDTrainer(pretrained, steps=args.steps, diversity="bootstrap", threads=1,
                                  learning_rate=(1e-3, 1e-5)).train(systems, root / f"separate-{K}", K)
            arrangements["separate"] = (time.perf_counter() - t0, [DeePMDPotential(p) for p in paths])
            heads = [f"m{k}" for k in range(K)]
            data = {h: resample(systems, root / f"boot-{K}" / h, k) for k, h in enumerate(heads)}
            for label, steps in ((f"heads, {K} x steps", K * args.steps), ("heads, steps", args.steps)):
                t0 = time.perf_counter()
                trainer = MultitaskDeePMDTrainer(pretrained, {h: None for h in heads}, steps=steps, threads=1,
                                                 learning_rate=(1e-3, 1e-5))
                (member,) = trainer.train(data, root / f"{label.replace(' ', '').replace(',', '-')}-{K}", 1,
                                          counts={h: len(fine) for h in heads})
                pots = [DeePMDPotential(member, head=h) for h in heads]
                arrangements[label] = (time.perf_counter() - t0, pots)
            for label, (seconds, pots) in arrangements.items():
                committee = Committee(pots)
                per = eval_seconds(committee, tests["in"])
                for test, frames in tests.items():
                    r = {"K": K, "committee": label, "test": test, "train_seconds": seconds,
                         "eval_seconds_per_structure": per, **measure(committee, frames)}
                    rows.append(r)
                    print(f"K={K} {label:18s} {test:9s} train {seconds:6.1f} s  eval {1e3 * per:6.2f} "
                          f"ms/structure  spearman {r['spearman_f']:5.2f}  devi {r['mean_devi_f']:.3f}  "
                          f"err {r['mean_error_f']:.3f}  RMSE {r['force_rmse']:.3f}", flush=True)
    print(f"\n{len(fine)} fine-tune frames, {args.steps} steps per separate member, CPU, 1 thread")
    print(f"{'K':>2} {'committee':18s} {'test':9s} {'train s':>8s} {'eval ms/str':>11s} {'spearman':>8s} "
          f"{'mean devi':>9s} {'mean err':>8s} {'RMSE':>6s}")
    for r in rows:
        print(f"{r['K']:>2} {r['committee']:18s} {r['test']:9s} {r['train_seconds']:8.1f} "
              f"{1e3 * r['eval_seconds_per_structure']:11.2f} {r['spearman_f']:8.2f} {r['mean_devi_f']:9.3f} "
              f"{r['mean_error_f']:8.3f} {r['force_rmse']:6.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "fine_tune_frames": len(fine),
                                    "test_frames": {k: len(v) for k, v in tests.items()}, "threads": 1,
                                    "machine": platform.platform(), "torch": torch.__version__, "rows": rows},
                                   indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
