"""DeePMD-kit evaluation: structures per second, one structure per call vs grouped by atom count
vs padded with virtual atoms (type -1), on batches of mixed sizes.

For each model and each size mix, the same batch of Cu-Au structures is evaluated (energy,
forces, virial) by:

* ``deeppot``: DeePMD-kit's own ``DeepPot.eval``, one structure per call (the reference);
* ``single``: :class:`lamcsp.potentials.deepmd.DeePMDPotential`, one structure per call;
* ``group``: one call per distinct atom count;
* ``bucket``: one padded call per 25 % range of atom counts;
* ``pad``: one call, every structure padded to the largest with type -1 atoms;
* ``auto``: what the backend picks by default.

Size mixes: ``wide`` (every size from 2 to 32 atoms), ``few`` (4, 8 and 16 atoms only).
Models: by default a DPA-2 of the size of DeePMD-kit's ``input_torch_small`` example and a small
se_e2_a, built with one training step (evaluation cost does not depend on the weights), or
``--model PATH[@HEAD]`` for your own.

Usage::

    python benchmarks/deepmd_eval.py [--structures 64] [--repeat 3] [--device cpu|cuda]
    python benchmarks/deepmd_eval.py --model OpenLAM.pt@HEAD

Writes ``benchmarks/results/deepmd_eval.json`` (``--out``) and prints a table.
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
OUT = ROOT / "benchmarks" / "results" / "deepmd_eval.json"

DPA2_SMALL = {
    "type": "dpa2",
    "repinit": {"tebd_dim": 8, "rcut": 6.0, "rcut_smth": 0.5, "nsel": 120, "neuron": [25, 50, 100],
                "axis_neuron": 12, "activation_function": "tanh", "three_body_sel": 48,
                "three_body_rcut": 4.0, "three_body_rcut_smth": 3.5, "use_three_body": True},
    "repformer": {"rcut": 4.0, "rcut_smth": 3.5, "nsel": 48, "nlayers": 3, "g1_dim": 128, "g2_dim": 32,
                  "attn2_hidden": 32, "attn2_nhead": 4, "attn1_hidden": 128, "attn1_nhead": 4,
                  "axis_neuron": 4, "update_h2": False, "update_g1_has_conv": True,
                  "update_g1_has_grrg": True, "update_g1_has_drrd": True, "update_g1_has_attn": False,
                  "update_g2_has_g1g1": False,
                  "update_g2_has_attn": False, "update_style": "res_residual", "update_residual": 0.01,
                  "update_residual_init": "norm", "attn2_has_gate": True, "use_sqrt_nnei": True,
                  "g1_out_conv": True, "g1_out_mlp": True},
    "precision": "float64", "add_tebd_to_repinit_out": False, "seed": 1,
}
SE_E2_A = {"type": "se_e2_a", "sel": [60, 60], "rcut_smth": 0.5, "rcut": 6.0, "neuron": [25, 50, 100],
           "axis_neuron": 16, "seed": 1}
FITTING = {"neuron": [240, 240, 240], "resnet_dt": True, "seed": 1}


def build_models(root: Path) -> dict[str, str]:
    """Freeze the two default models after one training step on a few EMT frames."""
    from deepmd_models import LOSS, TYPE_MAP, emt_frames

    from lamcsp.potentials.deepmd import train, write_frames

    systems = [str(p) for p in write_frames(emt_frames(8, seed=1), root / "data", TYPE_MAP)]
    out = {}
    for name, desc in (("dpa2-small", DPA2_SMALL), ("se_e2_a", SE_E2_A)):
        cfg = {"model": {"type_map": TYPE_MAP, "descriptor": desc, "fitting_net": FITTING},
               "learning_rate": {"type": "exp", "start_lr": 1e-3, "stop_lr": 1e-3, "decay_steps": 1},
               "loss": LOSS,
               "training": {"training_data": {"systems": systems, "batch_size": 1}, "numb_steps": 1,
                            "disp_freq": 1, "save_freq": 1, "seed": 1}}
        out[name] = str(train(cfg, root / name))
    return out


def structures(sizes: list[int], n: int, type_map: list[str], seed: int = 0) -> list[Any]:
    """``n`` random cells (sizes cycling through ``sizes``) at about 14 Å^3 per atom."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = sizes[i % len(sizes)]
        cell = np.diag([1.0, 1.0, 1.0]) * (14.0 * k) ** (1 / 3) + rng.normal(0, 0.3, (3, 3))
        a = Atoms(rng.choice(type_map, k).tolist(), cell=cell, pbc=True)
        # points on a jittered grid: no two atoms closer than ~1.8 Å
        m = int(np.ceil(k ** (1 / 3)))
        grid = np.array([(x, y, z) for x in range(m) for y in range(m) for z in range(m)], dtype=float)[:k]
        a.set_scaled_positions((grid + 0.5 + rng.normal(0, 0.05, grid.shape)) / m)
        out.append(a)
    return out


def _name(model: str) -> str:
    p = Path(model)
    return f"{p.parent.name}/{p.name}"


def time_it(fn: Any, repeat: int) -> float:
    fn()  # warm-up (TorchScript profiling runs, allocator)
    best = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best.append(time.perf_counter() - t0)
    return float(np.median(best))


def bench(model: str, head: str | None, mix: str, sizes: list[int], n: int, repeat: int,
          device: str) -> list[dict[str, Any]]:
    from deepmd.infer import DeepPot
    from lamcsp.relax.state import from_structures

    from lamcsp.potentials.deepmd import DeePMDPotential

    pots = {m: DeePMDPotential(model, head=head, device=device, batching=m)
            for m in ("group", "bucket", "pad", "auto")}
    tm = pots["group"].type_map
    batch = structures(sizes, n, [t for t in tm if t in ("Cu", "Au")] or tm[:2])
    state = from_structures(batch, dtype=torch.float64, device=device)
    singles = [from_structures([a], dtype=torch.float64, device=device) for a in batch]
    dp = DeepPot(model, head=head)
    types = [np.array([tm.index(s) for s in a.get_chemical_symbols()]) for a in batch]

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    runs = {
        "deeppot": lambda: [dp.eval(a.positions[None], a.cell.array[None], t) for a, t in zip(batch, types)],
        "single": lambda: ([pots["group"](s) for s in singles], sync()),
        "group": lambda: (pots["group"](state), sync()),
        "bucket": lambda: (pots["bucket"](state), sync()),
        "pad": lambda: (pots["pad"](state), sync()),
        "auto": lambda: (pots["auto"](state), sync()),
    }
    rows = []
    for name, fn in runs.items():
        for p in pots.values():
            p.n_model_calls = 0
        sec = time_it(fn, repeat)
        calls = n if name in ("deeppot", "single") else pots[name].n_model_calls // (repeat + 1)
        rows.append({"model": _name(model) + (f"@{head}" if head else ""), "mix": mix, "method": name,
                     "structures": n, "atoms": int(sum(len(a) for a in batch)), "model_calls": calls,
                     "seconds": sec, "structures_per_s": n / sec})
    ref = next(r["structures_per_s"] for r in rows if r["method"] == "deeppot")
    for r in rows:
        r["vs_deeppot"] = r["structures_per_s"] / ref
    return rows


def relax_rate(model: str, head: str | None, n: int, device: str) -> dict[str, Any]:
    """Full relaxations (FIRE, cell too, fmax 0.05 eV/Å, at most 300 steps) of ``n`` random
    Cu-Au cells of 4-16 atoms with the batched relaxer and ``batching="auto"``: seconds per
    structure (the ``t_s`` of docs/mpi_scaling.md's model)."""
    from lamcsp.relax import Relaxer

    from lamcsp.potentials.deepmd import DeePMDPotential

    pot = DeePMDPotential(model, head=head, device=device)
    batch = structures(list(range(4, 17)), n, ["Cu", "Au"], seed=7)
    relaxer = Relaxer(pot, fmax=0.05, max_steps=300, progress=False)
    relaxer.relax(batch[:8])  # warm-up
    t0 = time.perf_counter()
    out = relaxer.relax(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    return {"model": _name(model), "structures": n, "seconds": sec, "seconds_per_structure": sec / n,
            "converged": sum(bool(r.converged) for r in out),
            "mean_steps": float(np.mean([r.steps for r in out])),
            "model_calls": pot.n_model_calls}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="PATH[@HEAD] (repeatable); default: built models")
    ap.add_argument("--structures", type=int, default=62, help="structures per batch")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--relax", type=int, default=0, help="also time N full relaxations per model")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lamcsp.potentials.deepmd import split_spec

    tmp = Path(tempfile.mkdtemp(prefix="lamcsp-dpbench-"))
    if args.model:
        models = [split_spec(m) for m in args.model]
    else:
        models = [(p, None) for p in build_models(tmp).values()]
    mixes = {"wide": list(range(2, 33)), "few": [4, 8, 16]}
    rows = []
    for path, head in models:
        for mix, sizes in mixes.items():
            rows += bench(path, head, mix, sizes, args.structures, args.repeat, args.device)
            for r in rows[-6:]:
                print(f"{r['model']:>24} {r['mix']:>5} {r['method']:>8} {r['model_calls']:>5} calls "
                      f"{r['seconds']:8.3f} s {r['structures_per_s']:8.1f} structures/s "
                      f"{r['vs_deeppot']:6.2f}x DeepPot.eval", flush=True)
    relax_rows = []
    if args.relax:
        for path, head in models:
            relax_rows.append(relax_rate(path, head, args.relax, args.device))
            r = relax_rows[-1]
            print(f"relax {r['model']}: {r['structures']} structures in {r['seconds']:.1f} s, "
                  f"{r['seconds_per_structure'] * 1e3:.1f} ms each, {r['converged']} converged, "
                  f"{r['mean_steps']:.0f} steps on average", flush=True)
    result = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "device": args.device}, "rows": rows,
              "relax": relax_rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
