"""The cost of the fine-tune loop's committee: K models rating a batch of structures (energies,
forces, max force deviation) against one model rating it, in the same run.

Two kinds of committee, as ``lamcsp.finetune.Committee`` builds them:

* ``copies``: K fine-tuned copies of CHGNet (different seeds; the cost does not depend on the
  weights, so K copies of the pretrained weights are timed), K = 2 and 4;
* ``heads``: the two heads of a multi-task DeePMD-kit DPA-2 model (a shared descriptor, one
  fitting net each), each head its own ``DeePMDPotential``, against one head.

Each member is one batched call over the whole batch (CHGNet: one graph batch; DeePMD-kit: one
call per atom count on a CPU), so a committee of K costs K single passes plus the deviation
arithmetic; the heads of a shared backbone are evaluated head by head (DeePMD-kit's ``DeepPot``
evaluates one head), so they cost as much as copies.

Usage::

    python benchmarks/committee_cost.py [--structures 64] [--repeat 3]

Writes ``benchmarks/results/committee_cost.json`` (``--out``) and prints a table.
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
OUT = ROOT / "benchmarks" / "results" / "committee_cost.json"


def _best(fn: Any, repeat: int) -> float:
    fn()  # warm-up (graph building, caches)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--structures", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from deepmd_models import emt_frames, train_models
    from lamcsp.relax.state import from_structures

    from lamcsp.finetune import Committee
    from lamcsp.potentials.registry import load_potential

    structures = emt_frames(args.structures, seed=3)
    rows: list[dict[str, Any]] = []

    def single(pot: Any) -> None:
        pot(from_structures(structures, dtype=torch.float64, device=pot.device))

    chg = [load_potential("chgnet", device="cpu") for _ in range(4)]
    t1 = _best(lambda: single(chg[0]), args.repeat)
    rows.append({"committee": "CHGNet, one model", "K": 1, "seconds": t1, "ratio": 1.0})
    for k in (2, 4):
        c = Committee(chg[:k])
        t = _best(lambda c=c: c.evaluate(structures), args.repeat)
        rows.append({"committee": f"CHGNet, {k} copies", "K": k, "seconds": t, "ratio": t / t1})

    with tempfile.TemporaryDirectory() as tmp:
        files = train_models(Path(tmp), steps=20)
        model = files["two_head.pt"]
        heads = [load_potential(f"deepmd:{model}@{h}", device="cpu") for h in ("alpha", "beta")]
        t1 = _best(lambda: single(heads[0]), args.repeat)
        rows.append({"committee": "DPA-2 two-head, one head", "K": 1, "seconds": t1, "ratio": 1.0})
        c = Committee(heads)
        t = _best(lambda: c.evaluate(structures), args.repeat)
        rows.append({"committee": "DPA-2 two-head, both heads", "K": 2, "seconds": t, "ratio": t / t1})

    print(f"{len(structures)} Cu-Au structures of 1-8 atoms, CPU, {torch.get_num_threads()} threads, "
          f"best of {args.repeat}")
    print(f"{'committee':<30} {'K':>2} {'seconds':>9} {'vs one':>7} {'structures/s':>13}")
    for r in rows:
        print(f"{r['committee']:<30} {r['K']:>2} {r['seconds']:>9.3f} {r['ratio']:>6.2f}x "
              f"{len(structures) / r['seconds']:>13.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "structures": len(structures), "repeat": args.repeat, "threads": torch.get_num_threads(),
        "machine": platform.platform(), "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
