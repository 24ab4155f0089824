"""The DeePMD-kit backend: tiny se_e2_a, DPA-2 and two-head DPA-2 models trained on EMT data in
this test run; batched evaluation against DeepPot.eval, heads, type map, relaxation, a
campaign, and fine-tuning through the entry the fine-tune loop calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from deepmd_models import TYPE_MAP, emt_frames, train_models
from lamcsp.relax.state import from_structures

from lamcsp.errors import SetupError
from lamcsp.potentials.deepmd import DeePMDPotential, finetune, learning_curve, write_frames
from lamcsp.potentials.registry import load_potential

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def dp_models(tmp_path_factory):
    return train_models(tmp_path_factory.mktemp("deepmd"))


def mixed_sizes(seed: int = 5) -> list:
    """Cu-Au cells of 1 to 16 atoms (8 sizes), rattled, some sizes twice (mixed in one batch)."""
    rng = np.random.default_rng(seed)
    out = []
    for rep in [(1, 1, 1), (2, 1, 1), (2, 2, 1), (1, 1, 1), (2, 2, 2), (3, 1, 1), (2, 1, 1), (4, 2, 2), (3, 1, 1),
                (5, 1, 1), (3, 2, 2)]:
        a = bulk("Cu", "fcc", a=3.75).repeat(rep)
        a.set_chemical_symbols(rng.choice(TYPE_MAP, len(a)).tolist())
        a.rattle(0.08, seed=int(rng.integers(1000)))
        out.append(a)
    return out


def deeppot_reference(path: Path, structures: list, head: str | None = None):
    """DeepPot.eval frame by frame: energies, forces, stresses (-virial / V)."""
    from deepmd.infer import DeepPot

    dp = DeepPot(str(path), head=head)
    tm = dp.get_type_map()
    out = []
    for a in structures:
        e, f, v = dp.eval(a.positions[None], a.cell.array[None], np.array([tm.index(s) for s in a.get_chemical_symbols()]))[:3]
        out.append((float(e.ravel()[0]), f[0], -v.reshape(3, 3) / a.get_volume()))
    return out


def assert_equal_to_reference(out: dict, ref: list, structures: list) -> None:
    i0 = 0
    for k, (a, (e, f, s)) in enumerate(zip(structures, ref)):
        n = len(a)
        assert abs(out["energy"][k].item() - e) / n < 1e-6
        assert np.abs(out["forces"][i0:i0 + n].numpy() - f).max() < 1e-5
        assert np.abs(out["stress"][k].numpy() - s).max() < 1e-6
        i0 += n


@pytest.mark.parametrize("batching", ["group", "bucket", "pad"])
@pytest.mark.parametrize("name", ["se.pt", "se.pth", "dpa2.pt", "dpa2.pth"])
def test_batched_eval_over_mixed_sizes_equals_deeppot_frame_by_frame(dp_models, name, batching):
    structures = mixed_sizes()
    pot = DeePMDPotential(dp_models[name], batching=batching)
    out = pot(from_structures(structures, dtype=torch.float64))
    sizes = {len(a) for a in structures}
    # sizes 1, 2, 3, 4, 5, 8, 12, 16: buckets within 25 % put 4 and 5 together
    assert len(sizes) == 8 and pot.n_model_calls == {"group": 8, "bucket": 7, "pad": 1}[batching]
    assert_equal_to_reference(out, deeppot_reference(dp_models[name], structures), structures)
    # a fitted model, not a constant: forces differ between frames and follow EMT's sign
    emt = np.concatenate([f.get_forces() for f in emt_frames(8, seed=11)])
    got = pot(from_structures(emt_frames(8, seed=11), dtype=torch.float64))["forces"].numpy()
    assert np.corrcoef(emt.ravel(), got.ravel())[0, 1] > 0.5


def test_two_head_model_uses_the_chosen_head_and_lists_heads(dp_models):
    path = dp_models["two_head.pt"]
    structures = mixed_sizes(seed=9)
    state = from_structures(structures, dtype=torch.float64)
    outs = {}
    for head in ("alpha", "beta"):
        outs[head] = load_potential(f"deepmd:{path}@{head}", device="cpu")(state)
        assert_equal_to_reference(outs[head], deeppot_reference(path, structures, head=head), structures)
    assert np.abs(outs["alpha"]["energy"].numpy() - outs["beta"]["energy"].numpy()).max() > 1e-3
    # the frozen model of head alpha is head alpha
    frozen = DeePMDPotential(dp_models["two_head.pth"])(state)
    assert np.allclose(frozen["energy"].numpy(), outs["alpha"]["energy"].numpy(), atol=1e-8)
    for head in ("gamma", None):
        with pytest.raises(SetupError) as err:
            DeePMDPotential(path, head=head)
        assert err.value.field == "model.head" and "alpha" in str(err.value) and "beta" in str(err.value)
    with pytest.raises(SetupError, match="single head"):
        DeePMDPotential(dp_models["se.pt"], head="alpha")


def test_elements_outside_the_type_map_and_missing_files_are_named(dp_models, tmp_path):
    pot = DeePMDPotential(dp_models["se.pth"])
    nacl = bulk("NaCl", "rocksalt", a=5.6)
    with pytest.raises(SetupError) as err:
        pot(from_structures([nacl], dtype=torch.float64))
    assert "Na" in str(err.value) and "Cl" in str(err.value) and "Cu, Au" in str(err.value)
    with pytest.raises(SetupError) as err:
        load_potential(f"deepmd:{tmp_path / 'nope.pt'}", device="cpu")
    assert err.value.field == "model.path"
    from lamcsp.campaign import ModelSpec
    from lamcsp.potentials.registry import load_model

    with pytest.raises(SetupError) as err:
        load_model(ModelSpec(backend="lj", head="alpha"))
    assert err.value.field == "model.head" and "no heads" in str(err.value)


def _lamcsp(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lamcsp", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_relax_and_campaign_with_the_deepmd_backend(dp_models, tmp_path):
    from deepmd.infer import DeepPot

    start = emt_frames(4, seed=21, rattle=0.15)
    ase.io.write(tmp_path / "in.extxyz", start)
    r = _lamcsp("relax", "in.extxyz", "--model", f"deepmd:{dp_models['dpa2.pth']}", "--fmax", "0.02",
                "-o", "out.extxyz", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    relaxed = ase.io.read(tmp_path / "out.extxyz", ":")
    dp = DeepPot(str(dp_models["dpa2.pth"]))
    for a0, a in zip(start, relaxed):
        assert a.info["converged"]
        e, f, _ = dp.eval(a.positions[None], a.cell.array[None], np.array([TYPE_MAP.index(s) for s in a.get_chemical_symbols()]))[:3]
        assert np.abs(f).max() < 0.025  # relaxed by the model's own forces
        assert abs(a.get_potential_energy() - float(e.ravel()[0])) < 1e-6
        e0 = dp.eval(a0.positions[None], a0.cell.array[None], np.array([TYPE_MAP.index(s) for s in a0.get_chemical_symbols()]))[0]
        assert float(e.ravel()[0]) < float(e0.ravel()[0])

    camp = {"name": "cuau-dp", "seed": 3, "system": {"composition": "CuAu", "formula_units": "1-2", "pressures": [0.0]},
            "population": 4, "generations": 2, "stop": {"patience": None},
            "model": {"backend": "deepmd", "path": str(dp_models["two_head.pt"]), "head": "beta", "device": "cpu"},
            "relax": {"fmax": 0.05, "max_steps": 200}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(camp))
    r = _lamcsp("search", "c.yaml", "-o", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(ase.db.connect(str(tmp_path / "run" / "results.db")).select(role="search"))
    assert len(rows) == 8 and {row.model_id for row in rows} == {"deepmd:model.ckpt.pt@beta"}
    assert any(row.unique for row in rows)
    summary = json.loads((tmp_path / "run" / "report" / "summary.json").read_text())
    assert summary["pressures"][0]["compositions"]
    # an element outside the type map stops the campaign before anything runs, naming it
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**camp, "system": {**camp["system"], "composition": "CuAg"}}))
    r = _lamcsp("search", "bad.yaml", "-o", "bad", cwd=tmp_path)
    assert r.returncode != 0 and "Ag" in r.stderr and "type_map" in r.stderr and "Traceback" not in r.stderr


def test_finetune_lowers_the_force_error_on_held_out_frames(dp_models, tmp_path):
    """New EMT data from compressed, more strained cells than the models saw: fine-tuning head
    beta of the two-head model through the entry (--finetune --model-branch), then one more
    iteration from its checkpoint (--init-model), lowers the force RMSE on held-out frames."""
    new = emt_frames(48, seed=31, a0=3.55, strain=0.05)
    held = emt_frames(16, seed=32, a0=3.55, strain=0.05)
    data = write_frames(new, tmp_path / "new", TYPE_MAP)
    assert data and all((d / "set.000" / "force.npy").is_file() for d in data)
    ref = np.concatenate([a.get_forces() for a in held])
    state = from_structures(held, dtype=torch.float64)

    def rmse(pot) -> float:
        return float(np.sqrt(((pot(state)["forces"].numpy() - ref) ** 2).mean()))

    before = rmse(DeePMDPotential(dp_models["two_head.pt"], head="beta"))
    first = finetune(dp_models["two_head.pt"], data, tmp_path / "it1", head="beta", steps=300, threads=1,
                     learning_rate=(3e-3, 1e-4))
    after1 = rmse(DeePMDPotential(first))
    assert after1 < 0.7 * before, (before, after1)
    curve = learning_curve(first.parent)
    assert curve["step"][-1] == 300 and curve["rmse_f_trn"][-1] < curve["rmse_f_trn"][0]
    assert (first.parent / "train.log").is_file() and (first.parent / "model.ckpt.pt").exists()
    second = finetune(first.parent / "model.ckpt.pt", data, tmp_path / "it2", init=True, steps=100, threads=1,
                      learning_rate=(1e-3, 1e-4))
    after2 = rmse(DeePMDPotential(second))
    assert after2 < 0.7 * before, (before, after1, after2)
