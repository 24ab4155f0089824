"""`lamcsp relax` on CIF, POSCAR and multi-frame extxyz with the default model, and its errors."""

import os
import subprocess
import sys

import pytest
from ase.io import read

from lamcsp.cli import main

HERE = os.path.dirname(__file__)
STRUCTS = os.path.join(HERE, "..", "campaigns", "structures")
INFO_KEYS = {"enthalpy_per_atom", "pressure_gpa", "spacegroup", "converged", "steps", "status"}


def test_relax_cif_poscar_extxyz_with_chgnet(tmp_path, capsys):
    out = tmp_path / "out.extxyz"
    inputs = [os.path.join(STRUCTS, f) for f in ("Si_diamond_rattled.cif", "POSCAR_NaCl_strained", "mixed.extxyz")]
    # fmax 0.01: at 0.05 the soft NaCl cell keeps ~0.4 GPa of residual stress (a 1-2 %
    # orthorhombic strain), enough to read as Fmmm at symprec 0.1
    rc = main(["relax", *inputs, "-o", str(out), "--pressure", "1.5", "--max-steps", "500",
               "--fmax", "0.01", "--device", "cpu", "--no-progress"])
    assert rc == 0
    frames = read(out, ":")
    assert len(frames) == 1 + 1 + 3
    raw = out.read_text()
    assert raw.count("energy=") >= 5  # the reserved key is on every frame's info line
    for f in frames:
        assert INFO_KEYS <= set(f.info), set(f.info)
        assert f.info["pressure_gpa"] == 1.5
        assert isinstance(f.info["converged"], bool) and int(f.info["steps"]) >= 0
        assert f.info["status"] in ("converged", "max_steps") or f.info["status"].startswith("failed: ")
        e = f.get_potential_energy()  # ASE moves `energy` to the frame's calculator on read
        assert f.info["enthalpy_per_atom"] == pytest.approx(
            (e + 1.5 / 160.21766208 * f.get_volume()) / len(f), abs=1e-6)
    si, nacl = frames[0], frames[1]
    assert si.info["converged"] and si.info["spacegroup"] == 227  # diamond recovered
    assert nacl.info["converged"] and nacl.info["spacegroup"] == 225  # rocksalt recovered
    assert "relaxed 5 structure(s)" in capsys.readouterr().out


@pytest.mark.parametrize("args,field", [
    (["relax", "missing.cif"], "INPUT"),
    (["relax", os.path.join(STRUCTS, "mixed.extxyz"), "--model", "nosuch"], "model"),
    (["relax", os.path.join(STRUCTS, "mixed.extxyz"), "--model", "chgnet:/no/such/model.pth.tar"], "model"),
    (["relax", os.path.join(STRUCTS, "mixed.extxyz"), "--model", "emt"], "structures"),
    (["relax", os.path.join(STRUCTS, "mixed.extxyz"), "--pressure", "5000"], "--pressure"),
])
def test_bad_input_is_one_clear_line(args, field, capsys):
    rc = main([*args, "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"error in {field}" in err and "Traceback" not in err


def test_not_a_crystal(tmp_path, capsys):
    from ase import Atoms
    from ase.io import write

    write(tmp_path / "mol.xyz", Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]))
    assert main(["relax", str(tmp_path / "mol.xyz")]) == 2
    assert "not a 3D periodic crystal" in capsys.readouterr().err


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "lamcsp", "relax", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--pressure" in proc.stdout


def test_options_a_campaign_has_too_take_its_defaults():
    from lamcsp.campaign import ModelSpec, RelaxSpec, ReportSpec, SystemSpec
    from lamcsp.cli import build_parser, parse_int_list

    args = build_parser().parse_args(["relax", "x.cif"])
    assert (args.fmax, args.max_steps, args.optimizer) == (RelaxSpec().fmax, RelaxSpec().max_steps,
                                                           RelaxSpec().optimizer)
    assert (args.device, args.symprec) == (ModelSpec().device, ReportSpec().symprec)
    args = build_parser().parse_args(["generate", "--composition", "Si"])
    assert args.volume_factor == SystemSpec().volume_factor
    assert tuple(parse_int_list(args.spacegroups, "--spacegroups", 1, 230)) == SystemSpec().spacegroups
