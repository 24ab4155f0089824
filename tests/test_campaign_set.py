"""Campaign sets (lamcsp.campaign_set) without DeePMD-kit: the CHGNet set (one shared model on
both campaigns' labels, its element references refit by one least-squares fit over all of
them), run under ``mpiexec -n 2`` and resumed after ``mv``; the set's YAML options and their
errors; one shared MPI executor switching models per campaign. The multi-task DeePMD-kit set is
tests/test_multitask.py's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
import yaml
from helpers import mpiexec

from lamcsp.campaign import parse_campaign
from lamcsp.campaign_set import check_alone, shared_options
from lamcsp.errors import SetupError

TESTS = Path(__file__).resolve().parent
#: two systems that share Cu, so one element reference is fit on both systems' frames
SYSTEMS = ("CuAu", "CuNi")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMCSP_FAULT", "PMI_", "OMPI_"))}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    return env


def _campaign(name: str, **finetune) -> dict:
    return {"name": name, "seed": 2, "system": {"composition": name, "formula_units": "1", "pressures": [0.0]},
            "population": 3, "generations": 2, "stop": {"patience": None},
            "model": {"backend": "chgnet", "device": "cpu"}, "relax": {"fmax": 0.1, "max_steps": 40},
            "verify": {"enabled": False}, "parallel": {"threads": 1},
            "finetune": {"enabled": True, "every": 1, "max_iterations": 1, "committee": 2, "epochs": 1,
                         "max_labels": 3, "rerelax": 1, "snapshot_every": 20, "oracle": "emt", **finetune}}


@pytest.mark.slow
def test_chgnet_set_on_two_ranks_shares_one_model_and_one_reference_fit_and_resumes_after_mv(tmp_path):
    """CuAu and CuNi as a CHGNet set under ``mpiexec -n 2`` (the relaxations, the committee and
    EMT's labels on both ranks' workers, the training on rank 0): after the one shared
    iteration both campaigns relax with the same new model (their rows say so), their registries
    name the same members, Cu's refit reference is one value fit on both systems' frames (not
    CuAu's alone), and the summary says CHGNet has no heads. Then the set is moved and resumed
    (serially): the registries' members resolve in the new place and nothing is redone."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from lamcsp.potentials.chgnet import _load_chgnet

    for name in SYSTEMS:
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(_campaign(name)))
    args = [sys.executable, "-m", "lamcsp", "search", *(f"{n}.yaml" for n in SYSTEMS), "--shared-finetune",
            "-o", "set", "--quiet"]
    r = subprocess.run([mpiexec(), "-n", "2", *args], cwd=tmp_path, capture_output=True, text=True, env=_env(),
                       timeout=300)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "set"
    members = [root / "shared" / "iter-000" / f"member-{k}" / "model.pt" for k in range(2)]
    assert all(m.is_file() for m in members)
    frames = {}
    for name in SYSTEMS:
        run = root / name
        db = ase.db.connect(str(run / "results.db"), use_lock_file=False)
        assert {row.model_id for row in db.select(role="search", generation=0)} == {"chgnet-0.3.0"}
        assert {row.model_id for row in db.select(role="search", generation=1)} == {"chgnet:model.pt"}
        # what the two ranks' workers relaxed: every row of the generation was stored
        assert db.count(role="search", generation=1) == 3
        reg = json.loads((run / "finetune" / "models.json").read_text())
        # stored relative to the run, through the set's folder (a moved set resumes)
        assert reg[0]["models"] == [f"../../shared/iter-000/member-{k}/model.pt" for k in range(2)]
        frames[name] = ase.io.read(run / "finetune" / "data" / "iter-000" / "frames.extxyz", ":")
        assert frames[name]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["backend"] == "chgnet" and "no heads" in summary["note"]
    assert all(summary["campaigns"][n]["head"] is None for n in SYSTEMS)

    # Cu's reference energy: the pretrained one shifted by one fit over both systems' labels
    pre, _ = _load_chgnet("0.3.0")
    new, _ = _load_chgnet(members[0])

    def fit(fr: list) -> dict[int, float]:
        structures = [AseAtomsAdaptor.get_structure(a) for a in fr]
        pred = pre.predict_structure(structures, task="e", batch_size=16)
        residual = np.array([a.get_potential_energy() / len(a) for a in fr]) - np.array([float(p["e"]) for p in pred])
        zs = sorted({s.Z for st in structures for s in st.species})
        x = np.array([[sum(1 for s in st.species if s.Z == z) / len(st) for z in zs] for st in structures])
        return dict(zip(zs, np.linalg.lstsq(x, residual, rcond=None)[0]))

    both, alone = fit(frames["CuAu"] + frames["CuNi"]), fit(frames["CuAu"])
    shift = {z: float(new.composition_model.fc.weight[0, z - 1] - pre.composition_model.fc.weight[0, z - 1])
             for z in (29, 79, 28)}
    print(f"\nCu reference shift: {shift[29]:.5f} eV (fit on both systems: {both[29]:.5f}, on CuAu alone: "
          f"{alone[29]:.5f})")
    assert shift == pytest.approx({z: both[z] for z in shift}, abs=1e-5)
    assert abs(both[29] - alone[29]) > 1e-3  # the check tells the two fits apart

    # moved, then resumed serially: the members load from the new place; nothing is redone
    shutil.move(root, tmp_path / "moved")
    n_rows = {n: ase.db.connect(str(tmp_path / "moved" / n / "results.db"), use_lock_file=False).count()
              for n in SYSTEMS}
    args[args.index("set")] = "moved"
    r = subprocess.run([*args, "--resume"], cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    for name in SYSTEMS:
        db = ase.db.connect(str(tmp_path / "moved" / name / "results.db"), use_lock_file=False)
        assert db.count() == n_rows[name]
    assert not root.exists()


def _parsed(name: str, shared: dict | None, base: Path):
    raw = _campaign(name)
    if shared is not None:
        raw["finetune"]["shared"] = shared
    return parse_campaign(raw, source=f"{name}.yaml", base_dir=str(base))


def test_set_options_from_yaml_agree_across_the_set_or_name_field_and_file(tmp_path):
    """``finetune.shared``: weights from every campaign (or none: label counts), one kept
    pretrained head (its folders relative to the campaign file) given by one campaign or the
    same by several; mixed weights, differing kept heads and options in a campaign run alone
    are one-paragraph errors naming the field and the files."""
    npy = tmp_path / "pre" / "sys0"
    npy.mkdir(parents=True)
    (npy / "type.raw").write_text("0\n")
    keep = {"head": "kept", "data": ["pre/sys0"], "weight": 0.5}
    a = _parsed("CuAu", {"weight": 3.0, "keep_pretrained": keep}, tmp_path)
    b = _parsed("CuNi", {"weight": 1.0}, tmp_path)
    weights, kept = shared_options([a, b], ["a.yaml", "b.yaml"])
    assert weights == {"CuAu": 3.0, "CuNi": 1.0}
    assert kept.head == "kept" and kept.data == (str(npy),) and kept.weight == 0.5
    assert shared_options([_parsed("CuAu", None, tmp_path), _parsed("CuNi", None, tmp_path)], ["a", "b"]) == (None, None)

    with pytest.raises(SetupError) as e:
        shared_options([a, _parsed("CuNi", None, tmp_path)], ["a.yaml", "b.yaml"])
    assert e.value.field == "finetune.shared.weight" and "a.yaml" in e.value.message and "b.yaml" in e.value.message
    other = _parsed("CuNi", {"weight": 1.0, "keep_pretrained": {**keep, "head": "other"}}, tmp_path)
    with pytest.raises(SetupError) as e:
        shared_options([a, other], ["a.yaml", "b.yaml"])
    assert e.value.field == "finetune.shared.keep_pretrained" and "b.yaml" in e.value.message
    with pytest.raises(SetupError) as e:
        shared_options([_parsed("CuAu", {"keep_pretrained": keep}, tmp_path), _parsed("CuNi", None, tmp_path)],
                       ["a.yaml", "b.yaml"])
    assert e.value.field == "finetune.shared.keep_pretrained.weight"
    with pytest.raises(SetupError) as e:
        check_alone(a, "a.yaml")
    assert e.value.field == "finetune.shared" and "a.yaml" in e.value.message and "\n" not in str(e.value)
    check_alone(_parsed("CuAu", None, tmp_path), "a.yaml")
