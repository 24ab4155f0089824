"""Tiny DeePMD-kit models trained on EMT-labelled Cu-Au frames (tests and benchmarks).

Each trains in seconds on one CPU thread: an se_e2_a model, a DPA-2 model, and a two-head
(multi-task) DPA-2 model whose heads share the descriptor. They are fitted, not random: the
fine-tune test needs a model that has learnt something to improve on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

TYPE_MAP = ["Cu", "Au"]

LOSS = {"type": "ener", "start_pref_e": 0.2, "limit_pref_e": 1, "start_pref_f": 100, "limit_pref_f": 1,
        "start_pref_v": 0, "limit_pref_v": 0}
LR = {"type": "exp", "start_lr": 0.003, "stop_lr": 1e-4, "decay_steps": 50}

SE_E2_A = {"type": "se_e2_a", "sel": [24, 24], "rcut_smth": 0.5, "rcut": 4.5, "neuron": [4, 8],
           "axis_neuron": 4, "seed": 1}

DPA2 = {
    "type": "dpa2",
    "repinit": {"tebd_dim": 4, "rcut": 4.5, "rcut_smth": 0.5, "nsel": 24, "neuron": [4, 8],
                "axis_neuron": 4, "activation_function": "tanh"},
    "repformer": {"rcut": 3.5, "rcut_smth": 0.5, "nsel": 12, "nlayers": 1, "g1_dim": 8, "g2_dim": 4,
                  "attn2_hidden": 4, "attn2_nhead": 1, "attn1_hidden": 4, "attn1_nhead": 1,
                  "axis_neuron": 4, "update_h2": False, "update_g1_has_conv": True,
                  "update_g1_has_grrg": True, "update_g1_has_drrd": True, "update_g1_has_attn": False,
                  "update_g2_has_g1g1": False, "update_g2_has_attn": False, "update_style": "res_residual",
                  "update_residual": 0.01, "update_residual_init": "norm", "attn2_has_gate": True,
                  "use_sqrt_nnei": True, "g1_out_conv": True, "g1_out_mlp": True},
    "precision": "float64", "add_tebd_to_repinit_out": False, "seed": 1,
}


def emt_frames(n: int, seed: int, a0: float = 3.8, strain: float = 0.03, rattle: float = 0.1,
               cells: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2)),
               elements: tuple[str, ...] | list[str] = tuple(TYPE_MAP)) -> list[Any]:
    """``n`` random fcc-based cells (1-8 atoms) of ``elements`` (Cu-Au unless told), strained
    and rattled, labelled by EMT (energy, forces, stress as single-point results)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("Cu", "fcc", a=a0).repeat(cells[i % len(cells)])
        a.set_chemical_symbols(rng.choice(list(elements), len(a)).tolist())
        a.set_cell(a.cell.array @ (np.eye(3) + rng.normal(0.0, strain, (3, 3))), scale_atoms=True)
        a.rattle(rattle, seed=int(rng.integers(2**31)))
        a.calc = EMT()
        e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
        a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
        out.append(a)
    return out


def _config(descriptor: dict[str, Any], systems: list[str], steps: int) -> dict[str, Any]:
    return {"model": {"type_map": TYPE_MAP, "descriptor": descriptor, "fitting_net": {"neuron": [16, 16], "seed": 1}},
            "learning_rate": LR, "loss": LOSS,
            "training": {"training_data": {"systems": systems, "batch_size": "auto"}, "numb_steps": steps,
                         "disp_freq": steps, "save_freq": steps, "seed": 1}}


def _multitask(systems: list[str], steps: int) -> dict[str, Any]:
    half = len(systems) // 2
    return {
        "model": {"shared_dict": {"tm": TYPE_MAP, "d": DPA2},
                  "model_dict": {"alpha": {"type_map": "tm", "descriptor": "d", "fitting_net": {"neuron": [16, 16], "seed": 1}},
                                 "beta": {"type_map": "tm", "descriptor": "d", "fitting_net": {"neuron": [8], "seed": 2}}}},
        "learning_rate": LR, "loss_dict": {"alpha": LOSS, "beta": LOSS},
        "training": {"model_prob": {"alpha": 0.5, "beta": 0.5},
                     "data_dict": {"alpha": {"training_data": {"systems": systems[:half], "batch_size": "auto"}},
                                   "beta": {"training_data": {"systems": systems[half:], "batch_size": "auto"}}},
                     "numb_steps": steps, "disp_freq": steps, "save_freq": steps, "seed": 1},
    }


def train_models(root: Path, steps: int = 200) -> dict[str, Path]:
    """Train the three models under ``root`` (two at a time, one thread each); returns their
    files: ``se.pt``, ``se.pth``, ``dpa2.pt``, ``dpa2.pth``, ``two_head.pt`` (heads ``alpha``,
    ``beta``) and ``data`` (the training systems' folder)."""
    from lamcsp.potentials.deepmd import train, write_frames

    systems = [str(p) for p in write_frames(emt_frames(80, seed=1), root / "data", TYPE_MAP)]
    jobs = {"se": (_config(SE_E2_A, systems, steps), {}),
            "dpa2": (_config(DPA2, systems, steps), {}),
            "two_head": (_multitask(systems, steps // 2), {"freeze_head": "alpha"})}
    with ThreadPoolExecutor(2) as pool:
        done = {name: pool.submit(train, cfg, root / name, threads=1, **kw) for name, (cfg, kw) in jobs.items()}
        for f in done.values():
            f.result()
    out = {"data": root / "data"}
    for name in jobs:
        out[f"{name}.pt"] = root / name / "model.ckpt.pt"
        out[f"{name}.pth"] = root / name / "model.pth"
    return out
