"""The fine-tune loop's parts: committee deviation, selection, labelling through the executor,
data, registry and the loop's bookkeeping (mocked oracle and trainer)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from helpers import EPS_AR, SIG_AR
from lamcsp.relax.relaxer import atoms_to_dict

from lamcsp.errors import SetupError
from lamcsp.finetune import (
    Committee,
    FinetuneLoop,
    classify,
    farthest_point_order,
    force_deviation,
    sane,
    select,
)
from lamcsp.oracle import LabelTask
from lamcsp.parallel import SerialExecutor
from lamcsp.potentials import LennardJones


def test_force_deviation_is_dp_gens_formula():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(4, 5, 3))  # K models, n atoms
    ref = [np.sqrt(np.mean([np.sum((F[k, i] - F[:, i].mean(axis=0)) ** 2) for k in range(4)])) for i in range(5)]
    assert np.allclose(force_deviation(F), ref)
    assert classify(np.array([0.01, 0.1, 0.2, 0.7]), 0.05, 0.5) == {"accurate": 0.25, "candidate": 0.5,
                                                                    "failed": 0.25}


def ar_cells(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("Ar", "fcc", a=5.3).repeat((2 + i % 2, 1, 1))
        a.rattle(0.2, seed=int(rng.integers(1000)))
        out.append(a)
    return out


def test_committee_deviation_grows_with_disagreement():
    cells = ar_cells(4)
    same = Committee([LennardJones(epsilon=EPS_AR, sigma=SIG_AR) for _ in range(3)]).evaluate(cells)
    assert np.allclose(same.max_devi_f, 0.0) and np.allclose(same.devi_e, 0.0)
    a = Committee([LennardJones(epsilon=EPS_AR * f, sigma=SIG_AR) for f in (1.0, 1.1)]).evaluate(cells)
    b = Committee([LennardJones(epsilon=EPS_AR * f, sigma=SIG_AR) for f in (1.0, 1.5)]).evaluate(cells)
    assert np.all(b.max_devi_f > a.max_devi_f) and np.all(a.max_devi_f > 0)
    # two members: the deviation is half the force difference, atom by atom
    lj1, lj2 = LennardJones(epsilon=EPS_AR, sigma=SIG_AR), LennardJones(epsilon=EPS_AR * 1.1, sigma=SIG_AR)
    from lamcsp.potentials.ase_calc import PotentialCalculator

    c0 = cells[0].copy()
    c0.calc = PotentialCalculator(lj1)
    g1 = c0.get_forces()
    c0.calc = PotentialCalculator(lj2)
    g2 = c0.get_forces()
    assert a.max_devi_f[0] == pytest.approx(np.linalg.norm(g1 - g2, axis=1).max() / 2, rel=1e-6)
    with pytest.raises(SetupError):
        Committee([lj1])


def test_a_committee_of_model_sections_runs_through_the_executor_and_equals_one_of_potentials():
    """The fine-tune loop gives its members as ``model`` sections: the executor evaluates them
    (on the workers under MPI), with the same deviation as the potentials evaluated here."""
    from lamcsp.campaign import ModelSpec

    cells = ar_cells(5, seed=2)
    facs = (1.0, 1.1, 1.3)
    here = Committee([LennardJones(epsilon=EPS_AR * f, sigma=SIG_AR) for f in facs]).evaluate(cells)
    specs = [ModelSpec(backend="lj", device="cpu", options={"epsilon": EPS_AR * f, "sigma": SIG_AR})
             for f in facs]
    ex = SerialExecutor(LennardJones(epsilon=EPS_AR, sigma=SIG_AR))
    there = Committee(specs, executor=ex).evaluate(cells)
    assert np.all(here.max_devi_f > 0)
    np.testing.assert_allclose(there.max_devi_f, here.max_devi_f, rtol=1e-10)
    np.testing.assert_allclose(there.devi_e, here.devi_e, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(there.energy, here.energy, rtol=1e-12)
    with pytest.raises(TypeError, match="needs an executor"):
        Committee(specs).evaluate(cells)


def test_selection_takes_uncertain_and_low_enthalpy_frames_cleans_and_caps():
    cells = ar_cells(8)
    bad = cells[5].copy()
    bad.positions[1] = bad.positions[0] + [0.3, 0, 0]  # atoms 0.3 Å apart
    cells[5] = bad
    H = np.array([-0.08, -0.02, -0.079, -0.01, -0.05, -0.081, -0.03, -0.075])
    from lamcsp.finetune import Deviation

    d = Deviation(np.array([0.01, 0.2, 0.02, 0.7, 0.1, 0.3, 0.04, 0.3]), np.zeros(8), H, [])
    sel = select(cells, d, H, lo=0.05, hi=0.5, window=0.002, max_labels=None)
    # low: 0, 2, 5 (within 2 meV of -0.081); uncertain: 1, 4, 5, 7; 5 is not sane; 3 failed
    assert sorted(sel.chosen) == [0, 1, 2, 4, 7]
    assert "apart" in sel.reasons[5] and "trust_hi" in sel.reasons[3] and sel.reasons[6] == "accurate"
    assert sel.fractions == classify(d.max_devi_f, 0.05, 0.5)
    capped = select(cells, d, H, lo=0.05, hi=0.5, window=0.002, max_labels=3,
                    fingerprints=np.arange(8, dtype=float)[:, None])
    # the low-enthalpy hits first, then the rest in farthest-point order of their fingerprints,
    # starting from the lowest in enthalpy (7; then 1, the farthest from it; then 4)
    assert capped.chosen == [0, 2, 7]
    assert capped.reasons[1] == capped.reasons[4] == "over max_labels"
    # a frame labelled before is not labelled again; an uncertain frame far above the best hit
    # of its composition (by the committee) is left out, a low-enthalpy hit never
    excess = np.array([0.0, 0.3, 0.0, 0.0, 0.2, 0.0, 0.0, 1.5])
    again = select(cells, d, H, lo=0.05, hi=0.5, window=0.002, max_labels=None, already={1},
                   excess=excess, max_energy=1.0)
    assert sorted(again.chosen) == [0, 2, 4]
    assert again.reasons[1] == "labelled before" and "max_energy" in again.reasons[7]
    assert sorted(select(cells, d, H, lo=0.05, hi=0.5, window=0.002, max_labels=None, excess=excess + 2,
                         max_energy=1.0).chosen) == [0, 2]
    assert sane(cells[0]) is None and sane(bad) is not None
    assert farthest_point_order(np.array([[0.0], [1.0], [10.0], [5.0]])) == [0, 2, 3, 1]
    none = select(cells, None, H, lo=0.05, hi=0.5, window=0.002, max_labels=None)
    # no committee yet: every sane hit (the initial data), the low-enthalpy ones first
    assert none.chosen[:2] == [0, 2] and sorted(none.chosen) == [0, 1, 2, 3, 4, 6, 7]


class Flaky(Calculator):
    """EMT that raises on its first ``fail`` calls."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, fail: int = 1, **kw):
        super().__init__(**kw)
        self.fail = fail
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.calls <= self.fail:
            raise RuntimeError("SCF did not converge")
        a = atoms.copy()
        a.calc = EMT()
        self.results = {"energy": a.get_potential_energy(), "forces": a.get_forces(), "stress": a.get_stress()}


def test_labels_run_through_the_executor_retry_once_and_record_failures(tmp_path, lj):
    cu = [bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1)), bulk("Cu", "fcc", a=3.7)]
    for a in cu:
        a.rattle(0.05, seed=1)
    ex = SerialExecutor(lj)
    items = [{"atoms": atoms_to_dict(a)} for a in cu]
    task = LabelTask({"calculator": "emt"})
    out = {}
    task(items, lambda j, r: out.__setitem__(j, r))
    for j, a in enumerate(cu):
        b = a.copy()
        b.calc = EMT()
        assert out[j]["ok"] and out[j]["energy"] == pytest.approx(b.get_potential_energy())
        assert np.allclose(out[j]["forces"], b.get_forces())
    flaky = LabelTask({"calculator": "emt"})
    flaky._calc = Flaky(fail=1)
    got = []
    flaky(items[:1], lambda j, r: got.append(r))
    assert got[0]["ok"] and got[0]["attempts"] == 2
    flaky._calc = Flaky(fail=5)
    got = []
    flaky(items[:1], lambda j, r: got.append(r))
    assert not got[0]["ok"] and got[0]["attempts"] == 2 and "SCF" in got[0]["error"]
    # an external command whose output dpdata reads (here an ASE trajectory written by EMT)
    script = ("import ase.io; from ase.calculators.emt import EMT; a = ase.io.read('POSCAR'); a.calc = EMT(); "
              "a.get_potential_energy(); a.get_stress(); ase.io.write('out.traj', a)")
    cmd = LabelTask({"command": f"{sys.executable} -c \"{script}\"", "input": "vasp", "output": "ase/traj",
                     "output_file": "out.traj"})
    got = []
    cmd(items, lambda j, r: got.append(r))
    assert [g["energy"] for g in got] == pytest.approx([out[0]["energy"], out[1]["energy"]])
    assert np.allclose(got[0]["stress"], out[0]["stress"], atol=1e-8)
    # through the executor's map
    mapped = ex.map(__import__("lamcsp.oracle", fromlist=["label_task"]).label_task({"calculator": "emt"}), items)
    assert mapped[1]["energy"] == pytest.approx(out[1]["energy"])


class FakeOracle:
    """An executor whose map labels with EMT-like fake numbers; frames whose first atom's x is
    negative fail."""

    def __init__(self):
        self.calls = []

    def map(self, task, items, on_result=None, labels=None):
        from lamcsp.relax.relaxer import atoms_from_dict

        self.calls.append(list(labels or []))
        out = []
        for j, it in enumerate(items):
            a = atoms_from_dict(it["atoms"])
            if a.positions[0, 0] < -0.5:
                out.append({"ok": False, "error": "oracle crashed", "attempts": 2})
            else:
                out.append({"ok": True, "energy": -0.08 * len(a), "forces": np.full((len(a), 3), 0.01).tolist(),
                            "stress": np.zeros((3, 3)).tolist(), "attempts": 1})
            if on_result is not None:  # as the executors do: each result as it arrives
                on_result(j, out[-1])
        return out


class FakeTrainer:
    """Members are LJ potentials whose epsilons get closer to each other every iteration."""

    backend = "chgnet"

    def __init__(self):
        self.calls = []

    def train(self, data, workdir, members, parents=None):
        it = len(self.calls)
        self.calls.append((len(data), parents))
        spread = 0.5 / (100**it)
        return [str(workdir / f"member-{k}" / f"lj:{EPS_AR * (1 + spread * k)}") for k in range(members)]


def make_lj(path: str):
    from pathlib import Path

    return LennardJones(epsilon=float(Path(path).name.split(":")[1]), sigma=SIG_AR)


def test_loop_bookkeeping_with_mocked_oracle_and_trainer(tmp_path):
    cells = ar_cells(10, seed=3)
    cells[4].positions[0, 0] = -1.0  # the oracle fails on it
    H = np.linspace(-0.08, -0.04, 10)
    H[4] = -0.0799
    sources = [f"u0-g0-c{i}" for i in range(10)]
    oracle, trainer = FakeOracle(), FakeTrainer()

    def loop():
        return FinetuneLoop(tmp_path / "ft", ["Ar"], oracle, {"calculator": "emt"}, trainer, make_lj, members=3,
                            lo=0.002, hi=0.5, window=0.003, max_labels=4, conv_accuracy=0.9, max_iterations=6)

    ft = loop()
    r0 = ft.step(cells, H, sources)
    # no committee: the low-enthalpy hits (within 3 meV of the lowest; one fails), then the
    # others by enthalpy, max_labels in all
    assert r0.iteration == 0 and r0.selected == 4 and r0.labelled == 3 and r0.failed_labels == 1
    assert oracle.calls[0] == ["u0-g0-c0", "u0-g0-c4", "u0-g0-c1", "u0-g0-c2"]
    frames = ase.io.read(tmp_path / "ft" / "data" / "iter-000" / "frames.extxyz", ":")
    assert len(frames) == 3 and frames[0].info["source"] == "u0-g0-c0" and frames[0].info["iteration"] == 0
    assert "emt" in frames[0].info["oracle"]
    assert list((tmp_path / "ft" / "data" / "iter-000" / "npy").glob("*/set.000/force.npy"))
    assert len(r0.models) == 3 and trainer.calls[0] == (3, None) and r0.oracle_calls == 4
    # a kill before the iteration's log entry: it runs again and asks the oracle nothing (its
    # labels are journaled, the failed one included)
    again = loop().step(cells, H, sources)
    assert len(oracle.calls) == 1 and again.oracle_calls == 0 and again.labelled == 3 and again.failed_labels == 1
    assert trainer.calls[1] == (3, None)  # FakeTrainer has no saved members to skip
    ft.finish(r0)
    trainer.calls.pop()

    r1 = ft.step(cells, H, sources)
    ft.finish(r1)
    # a committee now: uncertain frames ([lo, hi)) besides the hits, at most 4, none of those
    # labelled before; nor the one whose label failed (it was tried twice: oracle time is dear)
    assert r1.selected == 4 and r1.fractions["accurate"] < 0.9 and "force_rmse" in r1.errors_before
    assert not set(oracle.calls[1]) & set(oracle.calls[0])
    assert trainer.calls[1][1] == r0.models  # trained from the previous members
    reg = json.loads((tmp_path / "ft" / "models.json").read_text())
    # paths relative to the loop's folder (a moved run resumes)
    assert [e["iteration"] for e in reg] == [0, 1] and reg[1]["parent"] == [
        f"models/iter-000/member-{k}/{m.split('/')[-1]}" for k, m in enumerate(r0.models)]

    # resume: a new loop on the same folder continues at iteration 2 with all the data
    ft2 = loop()
    assert ft2.iteration == 2 and len(ft2.data.frames()) == r0.labelled + r1.labelled
    sources2 = [f"u0-g1-c{i}" for i in range(10)]  # the next generation's (found again)
    r2 = ft2.step(cells, H, sources2)
    ft2.finish(r2)
    r3 = ft2.step(cells, H, sources2)
    ft2.finish(r3)
    # the committee trained at iteration 2 agrees to 5e-5 relative: every frame accurate, nothing
    # labelled, the loop stops before max_iterations
    assert not r2.converged and r3.converged and ft2.done and ft2.iteration == 4
    assert r3.selected == 0 and r3.fractions["accurate"] == 1.0 and r3.models == []
    assert len(trainer.calls) == 3
    log = json.loads((tmp_path / "ft" / "iterations.json").read_text())
    assert [e["iteration"] for e in log] == list(range(len(log))) and log[0]["failed"][0]["error"] == "oracle crashed"


def test_registry_stores_a_sets_shared_members_relative_so_a_moved_set_resumes(tmp_path):
    """A campaign of a set registers members that live beside its run (``SET/shared/...``):
    stored relative to the registry's folder (``../../shared/...``), they resolve in the set's
    new place after ``mv``; a model outside the set (the user's) stays as given."""
    import shutil

    from lamcsp.finetune_data import ModelRegistry

    root = tmp_path / "set"
    member = root / "shared" / "iter-000" / "member-0" / "model.pt"
    member.parent.mkdir(parents=True)
    member.write_bytes(b"x")
    user = tmp_path / "pretrained.pt"
    reg = ModelRegistry(root / "CuAu" / "finetune" / "models.json", base=root)
    reg.add({"iteration": 0, "models": [str(member)], "parent": [str(user)],
             "data": [str(root / "CuAu" / "finetune" / "data" / "iter-000" / "npy" / "x")]})
    stored = json.loads(reg.path.read_text())[0]
    assert stored["models"] == ["../../shared/iter-000/member-0/model.pt"]
    assert stored["parent"] == [str(user)] and stored["data"] == ["data/iter-000/npy/x"]
    shutil.move(root, tmp_path / "moved")
    got = ModelRegistry(tmp_path / "moved" / "CuAu" / "finetune" / "models.json", base=tmp_path / "moved").latest()
    assert got["models"] == [str(tmp_path / "moved" / "shared" / "iter-000" / "member-0" / "model.pt")]
    assert Path(got["models"][0]).is_file() and got["parent"] == [str(user)]
    # without a base (a campaign alone), a path outside its folder is kept absolute as before
    alone = ModelRegistry(tmp_path / "run" / "finetune" / "models.json")
    alone.add({"iteration": 0, "models": [str(member)]})
    assert json.loads(alone.path.read_text())[0]["models"] == [str(member)]


@pytest.mark.slow
def test_campaign_with_the_fine_tune_loop_chgnet_and_emt(tmp_path):
    """A CuAu campaign from CHGNet with EMT as the oracle: iterations every generation, labels
    with provenance, a committee registered per iteration, the search going on with the new
    model (its rows say so), the best hits re-relaxed, the report's fine-tune section, and a
    resumed finished run adding nothing."""
    import os
    import subprocess

    import ase.db
    import yaml

    camp = {"name": "cuau-ft", "seed": 5, "system": {"composition": "CuAu", "formula_units": "1-2", "pressures": [0.0]},
            "population": 4, "generations": 2, "stop": {"patience": None},
            "model": {"backend": "chgnet", "device": "cpu"}, "relax": {"fmax": 0.05, "max_steps": 150},
            "finetune": {"enabled": True, "every": 1, "committee": 2, "epochs": 2, "max_labels": 4, "rerelax": 2,
                         "window": 0.05, "oracle": "emt", "snapshot_every": 5}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(camp))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "lamcsp", "search", "c.yaml", "-o", "run"], cwd=tmp_path,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    log = json.loads((run / "finetune" / "iterations.json").read_text())
    assert [e["iteration"] for e in log] == [0, 1] and log[0]["labelled"] >= 1
    frames = ase.io.read(run / "finetune" / "data" / "iter-000" / "frames.extxyz", ":")
    for f in frames:  # the oracle's labels, with provenance
        g = f.copy()
        g.calc = EMT()
        assert f.get_potential_energy() == pytest.approx(g.get_potential_energy())
        assert f.info["iteration"] == 0
        # the selection's labels name the row they came from; the verification's oracle frames
        # (the model's best, relaxed by the oracle before the iteration) join them at no cost
        assert f.info["source"].startswith("u0-g0-") if f.info["kind"] == "select" else \
            f.info["source"].startswith("verify:")
    assert {f.info["kind"] for f in frames} == {"select", "verify"}
    models = json.loads((run / "finetune" / "models.json").read_text())
    assert len(models[0]["models"]) == 2 and all((run / "finetune" / m).is_file() for m in models[0]["models"])
    db = ase.db.connect(str(run / "results.db"))
    g1 = list(db.select(role="search", generation=1))
    assert g1 and {row.model_id for row in g1} == {"chgnet:model.pt"}  # generation 1 ran on the new model
    assert {row.model_id for row in db.select(role="search", generation=0)} == {"chgnet-0.3.0"}
    # relaxation-trajectory frames (every 5 steps) are kept with the rows for the committee to rate
    frames = [f for row in db.select(role="search") for f in (row.data or {}).get("frames", [])]
    assert frames and all(len(f["numbers"]) in (2, 4) for f in frames)
    rer = list(db.select(role="rerelax"))
    assert rer and all(row.get("of") and row.model_id == "chgnet:model.pt" for row in rer)
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert [it["iteration"] for it in summary["finetune"]] == [0, 1]
    n = db.count()
    r = subprocess.run([sys.executable, "-m", "lamcsp", "search", "c.yaml", "-o", "run", "--resume"], cwd=tmp_path,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert db.count() == n and len(json.loads((run / "finetune" / "iterations.json").read_text())) == 2


@pytest.mark.slow
def test_chgnet_trainer_on_chgnets_own_labels_keeps_the_model(tmp_path):
    """Labels made by CHGNet itself (energy, forces, stress): fine-tuning on them must leave the
    model where it is. A unit or sign slip in any label (CHGNet's StructureData takes VASP's
    kBar stress) would pull it away at once."""
    import torch
    from ase.calculators.singlepoint import SinglePointCalculator
    from lamcsp.relax.state import from_structures

    from lamcsp.potentials.ase_calc import PotentialCalculator
    from lamcsp.potentials.registry import load_potential
    from lamcsp.trainers import CHGNetTrainer

    pot = load_potential("chgnet", device="cpu")
    frames = []
    for i in range(6):
        a = bulk("Cu", "fcc", a=3.5 + 0.05 * i).repeat((1 + i % 2, 1, 1))
        a.set_cell(a.cell.array @ (np.eye(3) + 0.02 * np.random.default_rng(i).normal(size=(3, 3))), scale_atoms=True)
        a.rattle(0.08, seed=i)
        a.calc = PotentialCalculator(pot)
        e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
        a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
        frames.append(a)
    assert max(np.abs(a.get_stress()).max() for a in frames) > 0.01  # stresses of GPa: the test can see a slip
    model = CHGNetTrainer(epochs=3, learning_rate=3e-4).train(frames, tmp_path, 1)[0]
    new = load_potential(f"chgnet:{model}", device="cpu")
    state = from_structures(frames, dtype=torch.float64)
    a, b = pot(state), new(state)
    assert np.abs(a["forces"].numpy() - b["forces"].numpy()).max() < 0.02
    assert np.abs(a["stress"].numpy() - b["stress"].numpy()).max() * 160.2 < 1.0  # GPa


@pytest.mark.parametrize("finetune, model, field", [
    ({"enabled": True}, {"backend": "lj"}, "finetune.enabled"),
    ({"enabled": True, "oracle": {"foo": 1}}, {"backend": "chgnet"}, "finetune.oracle"),
    ({"enabled": True, "trust_lo": 0.3, "trust_hi": 0.2}, {"backend": "chgnet"}, "finetune.trust_hi"),
    ({"enabled": True, "committee": 1}, {"backend": "chgnet"}, "finetune.committee"),
    ({"enabled": True, "conv_accuracy": 1.5}, {"backend": "chgnet"}, "finetune.conv_accuracy"),
])
def test_bad_finetune_sections_name_the_field(finetune, model, field):
    from lamcsp.campaign import parse_campaign

    with pytest.raises(SetupError) as err:
        parse_campaign({"name": "x", "system": {"composition": "CuAu"}, "model": model, "finetune": finetune})
    assert err.value.field == field
    ok = parse_campaign({"name": "x", "system": {"composition": "CuAu"}, "model": {"backend": "chgnet"},
                         "finetune": {"enabled": True, "oracle": "emt"}})
    assert ok.finetune.oracle == {"calculator": "emt"} and "fine-tune: every 2" in ok.summary()


def test_an_unknown_oracle_stops_the_search_before_any_relaxation(tmp_path):
    from lamcsp.campaign import parse_campaign
    from lamcsp.search import Search

    camp = parse_campaign({"name": "x", "system": {"composition": "Cu"}, "model": {"backend": "chgnet"},
                           "generations": 1, "population": 2,
                           "finetune": {"enabled": True, "oracle": {"calculator": "nosuchcode"}}})
    with pytest.raises(SetupError) as err:
        Search(camp, run_dir=tmp_path / "run", progress=None).run()
    assert err.value.field == "finetune.oracle" and "nosuchcode" in str(err.value)
    import ase.db

    assert ase.db.connect(str(tmp_path / "run" / "results.db")).count(role="search") == 0


@pytest.mark.slow
def test_loop_on_ag_pd_learns_emt_and_its_verified_hull_is_emts(tmp_path):
    """End to end, variable composition Ag-Pd (cells of at most 3 atoms) from pretrained CHGNet
    with EMT as the oracle. CHGNet puts ordered Ag-Pd compounds on the hull (formation about
    -60 meV/atom); EMT none (all about +20 meV/atom: it separates the elements). After the loop
    and the verification: the hull of the verified structures by the oracle, the same
    structures' hull by the last model, and EMT's own hull of them (relaxed here with EMT) have
    the same stable phases; and the committee's force RMSE against EMT on the campaign's unique
    hits is at least 3x lower than the pretrained model's."""
    import dataclasses
    import os
    import subprocess

    import ase.db
    import torch
    import yaml
    from lamcsp.relax.relaxer import Relaxer
    from lamcsp.relax.state import from_structures

    from lamcsp.potentials.registry import load_potential
    from lamcsp.report import hull_at, record_of

    camp = {"name": "agpd", "seed": 7,
            "system": {"variable": {"Ag": [1, 2], "Pd": [1, 2]}, "max_atoms": 3, "pressures": [0.0]},
            "population": 4, "generations": 2, "stop": {"patience": None},
            "model": {"backend": "chgnet", "device": "cpu"}, "relax": {"fmax": 0.02, "max_steps": 200},
            "finetune": {"enabled": True, "every": 1, "committee": 2, "epochs": 30, "max_labels": 20,
                         "rerelax": 2, "window": 0.05, "oracle": "emt", "snapshot_every": 10, "max_iterations": 2},
            "verify": {"top_k": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(camp))
    r = subprocess.run([sys.executable, "-m", "lamcsp", "search", "c.yaml", "-o", "run"], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    db = ase.db.connect(str(run / "results.db"))
    summary = json.loads((run / "report" / "summary.json").read_text())
    # the premise: the pretrained model's own hull has compounds on it
    assert len(summary["finetune"][0]["hull_before"][0]["stable"]) > 2
    hulls = summary["verification"][0]["pressures"][0]["hulls"]
    sources = [db.get(id=i) for i in sorted({row.of for row in db.select(role="verify")})]
    by_emt = Relaxer(load_potential("emt", device="cpu"), fmax=0.01, max_steps=500).relax(
        [row.toatoms() for row in sources])
    records = [dataclasses.replace(record_of(row), enthalpy=res.enthalpy, enthalpy_per_atom=res.enthalpy_per_atom)
               for row, res in zip(sources, by_emt)]
    emt_hull = hull_at(records, ["Ag", "Pd"])
    emt_stable = sorted({next(r.reduced_formula for r in records if r.db_id == i) for i in emt_hull.stable})
    print("stable: verified by EMT", hulls["oracle"]["stable"], "by the last model", hulls["model"]["stable"],
          "EMT's own relaxations", emt_stable)
    assert hulls["oracle"]["kind"] == hulls["model"]["kind"] == emt_hull.kind == "phase_diagram"
    assert hulls["oracle"]["stable"] == hulls["model"]["stable"] == emt_stable

    hits = [row.toatoms() for row in db.select(role="search", unique=True)]
    ref = []
    for a in hits:
        b = a.copy()
        b.calc = EMT()
        ref.append(b.get_forces())
    ref = np.concatenate(ref)
    state = from_structures(hits, dtype=torch.float64)
    models = json.loads((run / "finetune" / "models.json").read_text())[-1]["models"]
    before = load_potential("chgnet", device="cpu")(state)["forces"].numpy()
    after = np.mean([load_potential(f"chgnet:{run / 'finetune' / m}", device="cpu")(state)["forces"].numpy()
                     for m in models], axis=0)
    rmse_before, rmse_after = (float(np.sqrt(((f - ref) ** 2).mean())) for f in (before, after))
    print(f"{len(hits)} hits: force RMSE vs EMT {rmse_before:.4f} -> {rmse_after:.4f} eV/A "
          f"({rmse_before / rmse_after:.1f}x)")
    assert rmse_after * 3 <= rmse_before
