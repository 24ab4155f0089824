"""Multi-task fine-tuning across campaigns (lamcsp.multitask, lamcsp.campaign_set) with real
DeePMD-kit: a tiny DPA-2 "pretrained" in this test on Cu-Au and Ni-Al EMT frames, fine-tuned on
shifted data of both systems (slightly compressed, more strained and rattled cells) into one model with a head per
system; EMT is the oracle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.db
import numpy as np
import pytest
import torch
import yaml
from deepmd_models import DPA2, LOSS, LR, emt_frames
from lamcsp.relax.state import from_structures

from lamcsp.errors import SetupError
from lamcsp.multitask import MultitaskDeePMDTrainer, head_name, latest_checkpoint, model_prob, multitask_input
from lamcsp.potentials.deepmd import DeePMDPotential, checkpoint_heads, finetune, train, write_frames

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
TM = ["Cu", "Au", "Ni", "Al"]
#: per system: elements, the lattice constant of its pretraining frames, that of its new frames
SYSTEMS = {"CuAu": (("Cu", "Au"), 3.8, 3.75), "NiAl": (("Ni", "Al"), 3.7, 3.65)}
STEPS = 40  # per head: the per-campaign fine-tunes take STEPS, the two-head one 2 * STEPS
RATE = (3e-3, 1e-4)


def shifted(system: str, n: int, seed: int) -> list:
    elements, _, a0 = SYSTEMS[system]
    return emt_frames(n, seed=seed, a0=a0, strain=0.06, rattle=0.15, elements=elements)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A single-head DPA-2 over Cu, Au, Ni, Al, fitted on a few unshifted frames of both systems."""
    root = tmp_path_factory.mktemp("pretrained")
    frames = []
    for j, (elements, a0, _) in enumerate(SYSTEMS.values()):
        frames += emt_frames(16, seed=1 + j, a0=a0, elements=elements)
    systems = [str(p) for p in write_frames(frames, root / "data", TM)]
    config = {"model": {"type_map": TM, "descriptor": DPA2, "fitting_net": {"neuron": [16, 16], "seed": 1}},
              "learning_rate": LR, "loss": LOSS,
              "training": {"training_data": {"systems": systems, "batch_size": "auto"}, "numb_steps": 80,
                           "disp_freq": 80, "save_freq": 80, "seed": 1}}
    train(config, root / "model", threads=1)
    return root / "model" / "model.ckpt.pt"


def force_rmse(pot: DeePMDPotential, frames: list) -> float:
    ref = np.concatenate([a.get_forces() for a in frames])
    got = pot(from_structures(frames, dtype=torch.float64))["forces"].numpy()
    return float(np.sqrt(((got - ref) ** 2).mean()))


def test_input_heads_and_model_prob():
    assert head_name("cu-au 1") == "cu_au_1"
    with pytest.raises(SetupError):
        head_name("RANDOM")
    assert model_prob({"a": 30, "b": 10}) == {"a": 0.75, "b": 0.25}
    assert model_prob({"a": 30, "b": 10}, {"a": 1, "b": 1}) == {"a": 0.5, "b": 0.5}
    with pytest.raises(SetupError, match="b"):
        model_prob({"a": 1, "b": 1}, {"a": 1})
    single = {"type_map": TM, "descriptor": DPA2, "fitting_net": {"neuron": [16]}}
    cfg = multitask_input(single, {"x": ["/d1"], "y": ["/d2"]}, start={"x": None, "y": "RANDOM"},
                          prob={"x": 0.5, "y": 0.5}, steps=10)
    assert cfg["model"]["shared_dict"] == {"type_map": TM, "descriptor": DPA2}
    assert {h: e["finetune_head"] for h, e in cfg["model"]["model_dict"].items()} == {"x": "Default", "y": "RANDOM"}
    assert set(cfg["loss_dict"]) == set(cfg["training"]["data_dict"]) == {"x", "y"}
    multi = {"shared_dict": {"tm": TM, "d": DPA2},
             "model_dict": {"alpha": {"type_map": "tm", "descriptor": "d", "fitting_net": {"neuron": [8]}}}}
    with pytest.raises(SetupError, match="alpha"):
        multitask_input(multi, {"x": ["/d"]}, start={"x": "beta"}, prob={"x": 1.0}, steps=10)


def test_one_multitask_iteration_gives_a_head_per_system_no_worse_than_per_campaign(pretrained, tmp_path):
    """Two heads from the single-head model; each head's force RMSE on its system's held-out
    frames falls below the pretrained model's, and is no worse than a per-campaign
    fine-tune of the same model on the same labels (``STEPS`` steps each; the two-head model
    2 x ``STEPS``, the same number of gradient steps in all)."""
    data, held = {}, {}
    for j, name in enumerate(SYSTEMS):
        data[name] = write_frames(shifted(name, 16, seed=10 + j), tmp_path / "data" / name, list(SYSTEMS[name][0]))
        held[name] = shifted(name, 8, seed=20 + j)
    trainer = MultitaskDeePMDTrainer(pretrained, {name: None for name in SYSTEMS}, steps=2 * STEPS,
                                     learning_rate=RATE, threads=1)
    t0 = time.perf_counter()
    (member,) = trainer.train(data, tmp_path / "mt", 1, counts={n: 16 for n in SYSTEMS})
    t_shared = time.perf_counter() - t0
    assert checkpoint_heads(member) == list(SYSTEMS)
    cfg = json.loads((tmp_path / "mt" / "member-0" / "input.json").read_text())
    assert cfg["training"]["model_prob"] == {"CuAu": 0.5, "NiAl": 0.5}
    pre = DeePMDPotential(pretrained)
    rows = []
    t0 = time.perf_counter()
    for name in SYSTEMS:
        single = finetune(pretrained, data[name], tmp_path / f"single-{name}", steps=STEPS, threads=1,
                          learning_rate=RATE)
        rows.append((name, force_rmse(pre, held[name]), force_rmse(DeePMDPotential(member, head=name), held[name]),
                     force_rmse(DeePMDPotential(single), held[name])))
    t_single = time.perf_counter() - t0
    print(f"\nforce RMSE on held-out frames (eV/A); two-head training {t_shared:.1f} s, "
          f"two per-campaign fine-tunes {t_single:.1f} s")
    print("system  pretrained  shared head  per-campaign")
    for name, before, shared, single in rows:
        print(f"{name:6s}  {before:10.4f}  {shared:11.4f}  {single:12.4f}")
    for name, before, shared, single in rows:
        assert shared < 0.95 * before, (name, before, shared)  # measured: -8 % (CuAu), -27 % (NiAl)
        # measured shared / per-campaign: 0.99 (CuAu), 0.97 (NiAl). 1.1 leaves room for the
        # batch-order noise of a 40-step training (the two runs draw different batches from the
        # same frames), not for a real loss: a shared descriptor pulled away from one system
        # by the other would show as a larger ratio
        assert shared <= 1.1 * single, (name, shared, single)


def _lamcsp(*args: str, cwd: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "lamcsp", *args], cwd=cwd, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def test_campaign_set_shares_one_training_and_resumes_a_kill_without_relabelling(pretrained, tmp_path):
    """Cu-Au and Ni-Al as a set: one shared iteration labels both with the counting EMT oracle,
    trains one two-head model (killed with -9, the whole process group, while DeePMD-kit
    trains), and ``--resume`` restarts DeePMD-kit from its checkpoint without asking the oracle
    again; then each campaign searches with its own head (rows say so) and the set's summary
    lists labels and errors per head. The campaigns weigh their heads 3 : 1 and keep the
    pretrained head on pretraining data (``finetune.shared``)."""
    kept = [str(p) for p in sorted((pretrained.parent.parent / "data").iterdir())][:2]  # pretraining data
    for name, weight in zip(SYSTEMS, (3.0, 1.0)):
        camp = {"name": name, "seed": 3,
                "system": {"composition": name, "formula_units": "1", "pressures": [0.0]},
                "population": 3, "generations": 2, "stop": {"patience": None},
                "model": {"backend": "deepmd", "path": str(pretrained), "device": "cpu"},
                "relax": {"fmax": 0.1, "max_steps": 60},
                "verify": {"enabled": False},
                "finetune": {"enabled": True, "every": 1, "max_iterations": 1, "committee": 2, "steps": 20,
                             "max_labels": 4, "rerelax": 1, "oracle": {"calculator": "counting_oracle:CountingEMT"},
                             "shared": {"weight": weight, "keep_pretrained": {"head": "pre", "data": kept, "weight": 1.0}}}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(camp))
    count = tmp_path / "n"
    args = ("search", "CuAu.yaml", "NiAl.yaml", "--shared-finetune", "-o", "set")
    p = _lamcsp(*args, cwd=tmp_path, env={"LAMCSP_ORACLE_COUNT": str(count)})
    work = tmp_path / "set" / "shared" / "iter-000" / "member-0"
    deadline = time.time() + 120
    # killed once a whole periodic checkpoint is on disk (one DeePMD-kit is still writing would
    # not load, and the resume would rightly train from the start)
    while p.poll() is None and time.time() < deadline and latest_checkpoint(work) is None:
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (work / "model.pt").exists()
    labelled = count.read_text().count("\n")
    assert labelled >= 2
    p = _lamcsp(*args, "--resume", cwd=tmp_path, env={"LAMCSP_ORACLE_COUNT": str(count)})
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert count.read_text().count("\n") == labelled  # nothing labelled again
    assert "Resuming from model.ckpt-" in (work / "train.log").read_text()  # DeePMD-kit's restart
    assert checkpoint_heads(work / "model.pt") == [*SYSTEMS, "pre"]
    # the YAML's weights (finetune.shared): 3 : 1 and the kept pretrained head's 1
    cfg = json.loads((work / "input.json").read_text())
    assert cfg["training"]["model_prob"] == pytest.approx({"CuAu": 0.6, "NiAl": 0.2, "pre": 0.2})
    assert cfg["training"]["data_dict"]["pre"]["training_data"]["systems"] == kept
    summary = json.loads((tmp_path / "set" / "summary.json").read_text())
    for name in SYSTEMS:
        run = tmp_path / "set" / name
        db = ase.db.connect(str(run / "results.db"))
        assert {r.model_id for r in db.select(role="search", generation=1)} == {f"deepmd:model.pt@{name}"}
        assert {r.model_id for r in db.select(role="search", generation=0)} == {"deepmd:model.ckpt.pt"}
        entry = summary["campaigns"][name]
        assert entry["head"] == name and entry["labels"] >= 1
        it = entry["iterations"][0]
        # the pretrained model, then the new head, on the iteration's labels (recorded, not
        # compared: 20 steps, and 2-atom CuAu minima have forces ~0 by symmetry; the fall on
        # held-out frames is the test above's)
        for key in ("force_rmse", "energy_rmse_per_atom"):
            assert np.isfinite(it["errors_before"][key]) and np.isfinite(it["errors_after"][key])
        print(f"\n{name}: {entry['labels']} labels; RMSE on them, pretrained -> head: forces "
              f"{it['errors_before']['force_rmse']:.4f} -> {it['errors_after']['force_rmse']:.4f} eV/A, energy "
              f"{it['errors_before']['energy_rmse_per_atom']:.4f} -> {it['errors_after']['energy_rmse_per_atom']:.4f}"
              " eV/atom")
        log = json.loads((run / "finetune" / "iterations.json").read_text())
        assert log[0]["shared"]["head"] == name
        html = (run / "report" / "report.html").read_text()
        assert "Shared fine-tuning" in html and f"head {name} of one multi-task DeePMD-kit model" in html
