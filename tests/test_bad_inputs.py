"""A corpus of bad inputs, each through the real CLI: exit status 2, a one-paragraph message
naming the input, no traceback, and a run directory that a refused command leaves byte-identical.

Campaign files (encodings, YAML syntax, alias bombs, duplicated keys, wrong types, non-finite
and absurd numbers, unknown elements, options and files), structure files for ``relax``,
command-line numbers and output paths, and damaged run directories for ``report``, ``export``
and ``search --resume``. The cases run in one subprocess (``bad_inputs_runner.py``: the CLI's
``main`` per case, the import paid once), plus a few as ``python -m lamcsp`` on their own.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
RUNNER = HERE / "bad_inputs_runner.py"
GOOD = "name: t\nseed: 1\nsystem: {composition: Cu, formula_units: [1, 2], spacegroups: \"1-10\"}\n" \
       "population: 2\ngenerations: 1\nmodel: {backend: emt, device: cpu}\n"
LONG = "x" * 300
CELL = 'Lattice="3.6 0 0 0 3.6 0 0 0 3.6" Properties=species:S:1:pos:R:3 pbc="T T T"'
POSCAR = "Cu Au\n1.0\n3.6 0 0\n0 3.6 0\n0 0 3.6\n{species}\n{counts}\nDirect\n0 0 0\n0.5 0.5 0\n" \
         "0.5 0 0.5\n0 0.5 0.5\n"


def _bomb(levels: int = 9) -> str:
    text = 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels):
        text += f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n"
    return text + f"name: t\nsystem: {{composition: Cu}}\nmodel: {{backend: emt, options: {{x: *l{levels - 1}}}}}\n"


#: campaign file name -> (content, what the message must name)
CAMPAIGNS: dict[str, tuple[bytes | str, str]] = {
    "binary.yaml": (bytes(range(256)) * 4, "binary.yaml"),
    "utf16.yaml": (GOOD.encode("utf-16"), "utf16.yaml"),
    "utf32.yaml": (GOOD.encode("utf-32"), "utf32.yaml"),
    "latin1.yaml": ("# café\n".encode("latin-1") + GOOD.encode(), "latin1.yaml"),
    "nul.yaml": (GOOD.encode() + b"\x00\n", "nul.yaml"),
    "syntax.yaml": ("name: [t\nsystem: {composition: Cu}\n", "syntax.yaml"),
    "tabs.yaml": ("name: t\n\tsystem: x\n", "tabs.yaml"),
    "bomb.yaml": (_bomb(), "aliases"),
    "recursive.yaml": ("name: t\nsystem: {composition: Cu}\nx: &a [*a]\n", "recursive.yaml"),
    "dup_top.yaml": (GOOD + "population: 3\n", "'population'"),
    "dup_nested.yaml": ("name: t\nsystem: {composition: Cu, composition: Au}\n", "'composition'"),
    "empty.yaml": ("", "empty.yaml"),
    "list.yaml": ("- 1\n- 2\n", "campaign"),
    "unknown_key.yaml": (GOOD + "populaton: 3\n", "populaton"),
    "fu_huge_range.yaml": (GOOD.replace('[1, 2]', '"1-1000000000"'), "system.formula_units"),
    "ase_unknown_option.yaml": (GOOD.replace("{backend: emt, device: cpu}",
                                             "{backend: ase, device: cpu, options: {calculator: emt, bogus: 1}}"),
                                "model.options.bogus"),
    "too_many_species.yaml": (GOOD.replace("composition: Cu,", "composition: HLiBeBCNOFNaMgAl,"),
                              "system.composition"),
    "variable_too_many_species.yaml": ("name: t\nsystem: {variable: {H: [0, 1], Li: [0, 1], Be: [0, 1], B: [0, 1], "
                                       "C: [0, 1], N: [0, 1], O: [0, 1]}, max_atoms: 7}\n", "system.variable"),
    "variable_huge_grid.yaml": ("name: t\nsystem: {variable: {Mg: [0, 1000], Al: [0, 1000], Zn: [0, 1000]}, "
                                "max_atoms: 1000}\n", "system.variable"),
    "fu_huge_list.yaml": (GOOD.replace('[1, 2]', '[1, 100000]'), "system.formula_units"),
    "fu_cell_too_big.yaml": (GOOD.replace('[1, 2]', '[1, 5000]'), "system.formula_units"),
    "vf_huge.yaml": (GOOD.replace("spacegroups", "volume_factor: 1.0e+308, spacegroups"), "system.volume_factor"),
    "vf_inf.yaml": (GOOD.replace("spacegroups", "volume_factor: .inf, spacegroups"), "system.volume_factor"),
    "vf_nan.yaml": (GOOD.replace("spacegroups", "volume_factor: .nan, spacegroups"), "system.volume_factor"),
    "vf_negative.yaml": (GOOD.replace("spacegroups", "volume_factor: -1, spacegroups"), "system.volume_factor"),
    "df_huge.yaml": (GOOD.replace("spacegroups", "distance_factor: 1.0e+9, spacegroups"), "system.distance_factor"),
    "pop_float_huge.yaml": (GOOD.replace("population: 2", "population: 1.0e+308"), "population"),
    "pop_int_huge.yaml": (GOOD.replace("population: 2", "population: " + "9" * 40), "population"),
    "pop_above_limit.yaml": (GOOD.replace("population: 2", "population: 100000000"), "population"),
    "pop_zero.yaml": (GOOD.replace("population: 2", "population: 0"), "population"),
    "pop_text.yaml": (GOOD.replace("population: 2", "population: many"), "population"),
    "gen_huge.yaml": (GOOD.replace("generations: 1", "generations: 1000000000000"), "generations"),
    "steps_huge.yaml": (GOOD + "relax: {max_steps: 1.0e+300}\n", "relax.max_steps"),
    "fmax_nan.yaml": (GOOD + "relax: {fmax: .nan}\n", "relax.fmax"),
    "seed_huge.yaml": (GOOD.replace("seed: 1", "seed: " + "1" * 30), "seed"),
    "element.yaml": (GOOD.replace("composition: Cu", "composition: Qq"), "system.composition"),
    "cell_atoms.yaml": (GOOD.replace("composition: Cu", "composition: Cu1000000"), "system.formula_units"),
    "pressure_nan.yaml": (GOOD + "system: {composition: Cu, pressures: .nan}\n", "'system'"),
    "pressure_huge.yaml": (GOOD.replace("spacegroups", "pressures: [1.0e+6], spacegroups"), "system.pressures"),
    "spacegroups.yaml": (GOOD.replace('"1-10"', '"0-500"'), "system.spacegroups"),
    "options_emt.yaml": (GOOD.replace("device: cpu", "device: cpu, options: {bogus: 1}"), "model.options.bogus"),
    "options_lj.yaml": (GOOD.replace("backend: emt", "backend: lj").replace(
        "device: cpu", "device: cpu, options: {sigma: 2.0, sigmaa: 1}"), "model.options.sigmaa"),
    "backend.yaml": (GOOD.replace("backend: emt", "backend: nosuch"), "model.backend"),
    "model_path.yaml": (GOOD.replace("backend: emt", "backend: chgnet, path: nosuch.pth.tar"), "model.path"),
    "references.yaml": (GOOD.replace("spacegroups", "references: {Cu: nosuch.cif}, spacegroups"),
                        "system.references.Cu"),
}

#: a campaign of a set (CHGNet: nothing is loaded before the set's options are checked)
SET_MEMBER = "name: {name}\nsystem: {{composition: Cu}}\nmodel: {{backend: chgnet, device: cpu}}\n" \
             "finetune: {{enabled: true, shared: {shared}}}\n"
#: a campaign set's bad options: files (name -> its finetune.shared) and what the message must name
SETS: dict[str, tuple[dict[str, str], str]] = {
    "weight given by one only": ({"wa": "{weight: 2}", "wb": "null"}, "finetune.shared.weight"),
    "kept heads differ": ({"ka": "{keep_pretrained: {head: h1, data: [npy]}}",
                           "kb": "{keep_pretrained: {head: h2, data: [npy]}}"}, "finetune.shared.keep_pretrained"),
    "kept head weighted, campaigns not": ({"ja": "{keep_pretrained: {data: [npy], weight: 1}}", "jb": "null"},
                                          "finetune.shared.keep_pretrained.weight"),
    "weights in a chgnet set": ({"ca": "{weight: 1}", "cb": "{weight: 2}"}, "finetune.shared"),
}
CAMPAIGNS.update({
    "shared_weight_negative.yaml": (GOOD + "finetune: {shared: {weight: -1}}\n", "finetune.shared.weight"),
    "shared_unknown_key.yaml": (GOOD + "finetune: {shared: {wieght: 1}}\n", "finetune.shared.wieght"),
    "shared_keep_no_data.yaml": (GOOD + "finetune: {shared: {keep_pretrained: {head: p}}}\n",
                                 "finetune.shared.keep_pretrained.data"),
    "shared_keep_missing_folder.yaml": (GOOD + "finetune: {shared: {keep_pretrained: {data: [nosuch]}}}\n",
                                        "finetune.shared.keep_pretrained.data"),
    "shared_keep_random_head.yaml": (GOOD + "finetune: {shared: {keep_pretrained: {head: RANDOM, data: [npy]}}}\n",
                                     "finetune.shared.keep_pretrained.head"),
})

#: structure file name -> (content, what the message must name) for `lamcsp relax`
STRUCTURES: dict[str, tuple[str, str]] = {
    "nan.extxyz": (f"2\n{CELL}\nCu 0 0 0\nCu nan 1.8 1.8\n", "nan.extxyz"),
    "inf_pos.extxyz": (f"2\n{CELL}\nCu 0 0 0\nCu inf 1.8 1.8\n", "inf_pos.extxyz"),
    "inf_cell.extxyz": (f"2\n{CELL.replace('0 3.6 0', '0 inf 0')}\nCu 0 0 0\nCu 1.8 1.8 1.8\n", "inf_cell.extxyz"),
    "singular.extxyz": (f"2\n{CELL.replace('0 0 3.6', '0 0 0')}\nCu 0 0 0\nCu 1.8 1.8 0\n", "singular.extxyz"),
    "overlap.extxyz": (f"2\n{CELL}\nCu 0 0 0\nCu 0 0 0.01\n", "overlap.extxyz"),
    "truncated.extxyz": (f"4\n{CELL}\nCu 0 0 0\nCu 1.8", "truncated.extxyz"),
    "unknown_element.extxyz": (f"1\n{CELL}\nQq 0 0 0\n", "unknown_element.extxyz"),
    "empty.cif": ("", "empty.cif"),
    "POSCAR_species_more": (POSCAR.format(species="Cu Au", counts="4"), "POSCAR_species_more"),
    "POSCAR_counts_more": (POSCAR.format(species="Cu", counts="2 2"), "POSCAR_counts_more"),
}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as `lamcsp search` leaves it (campaign copy, an ASE database with a row, a
    checkpoint), made by lamcsp's own code without relaxing anything."""
    from ase import Atoms

    from lamcsp.campaign import parse_campaign
    from lamcsp.checkpoint import write_checkpoint
    from lamcsp.search import Search

    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "good.yaml").write_text(GOOD)
    search = Search(parse_campaign(__import__("yaml").safe_load(GOOD), source=str(root / "good.yaml")),
                    root / "run", progress=False)
    search.store.db.write(Atoms("Cu", cell=[2.5] * 3, pbc=True), role="search")
    write_checkpoint(search.paths.checkpoint, {"generation": 1, "spent": 2, "units": [], "done": True})
    return root / "run"


def _cases(base: Path, run: Path) -> list[tuple[str, list[str], str, Path | None]]:
    """(name, argv, what stderr must name, run directory that must stay as it was)."""
    cases: list[tuple[str, list[str], str, Path | None]] = []
    for name, (content, named) in CAMPAIGNS.items():
        path = base / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        cases.append((name, ["validate", name], named, None))
    (base / "adir").mkdir()
    (base / "afile").write_text("x")
    (base / "npy").mkdir()  # a deepmd/npy folder (the kept head's data)
    (base / "npy" / "type.raw").write_text("0\n")
    for what, (files, named) in SETS.items():
        for name, shared in files.items():
            (base / f"{name}.yaml").write_text(SET_MEMBER.format(name=name, shared=shared))
        cases.append((f"set: {what}", ["search", *(f"{n}.yaml" for n in files), "--shared-finetune", "-o",
                                       f"set_{next(iter(files))}", "--quiet"], named, None))
    (base / "alone.yaml").write_text(SET_MEMBER.format(name="alone", shared="{weight: 1}"))
    cases.append(("set options in a campaign alone", ["search", "alone.yaml", "-o", "alone_run", "--quiet"],
                  "finetune.shared", None))
    (base / "good.yaml").write_text(GOOD)
    cases += [("campaign is a folder", ["validate", "adir"], "adir", None),
              ("campaign missing", ["validate", "nosuch.yaml"], "nosuch.yaml", None)]
    for name, (content, named) in STRUCTURES.items():
        (base / name).write_text(content)
        cases.append((name, ["relax", name, "--model", "emt", "--device", "cpu", "-o", "out.extxyz"], named, None))
    ok = str(HERE.parent / "campaigns" / "structures" / "mixed.extxyz")
    relax = ["relax", ok, "--model", "emt", "--device", "cpu"]
    cases += [
        ("input is a folder", ["relax", "adir", "--model", "emt"], "INPUT", None),
        ("--fmax nan", [*relax, "--fmax", "nan"], "--fmax", None),
        ("--fmax inf", [*relax, "--fmax", "inf"], "--fmax", None),
        ("--fmax 0", [*relax, "--fmax", "0"], "--fmax", None),
        ("--pressure nan", [*relax, "--pressure", "nan"], "--pressure", None),
        ("--pressure huge", [*relax, "--pressure", "1e308"], "--pressure", None),
        ("--max-steps huge", [*relax, "--max-steps", "1" + "0" * 30], "--max-steps", None),
        ("relax -o folder", [*relax, "-o", "adir"], "--output", None),
        ("relax -o under a file", [*relax, "-o", "afile/out.extxyz"], "--output", None),
        ("relax -o too long", [*relax, "-o", LONG + ".extxyz"], "--output", None),
        ("relax -o missing folder", [*relax, "-o", "nosuch/out.extxyz"], "--output", None),
        ("generate --volume-factor", ["generate", "--composition", "Cu", "--volume-factor", "1e308"],
         "--volume-factor", None),
        ("generate --formula-units", ["generate", "--composition", "Cu", "--formula-units", "1-1000000000"],
         "--formula-units", None),
        ("generate -n nan", ["generate", "--composition", "Cu", "-n", "nan"], "-n", None),
        ("search -o a file", ["search", "good.yaml", "-o", "afile", "--quiet"], "output", None),
        ("search -o too long", ["search", "good.yaml", "-o", LONG, "--quiet"], "output", None),
        ("search into a run", ["search", "good.yaml", "-o", "run_ok", "--quiet"], "output", base / "run_ok"),
        ("export -o a file", ["export", "run_ok", "-o", "afile"], "--output", base / "run_ok"),
        ("export -o too long", ["export", "run_ok", "-o", LONG], "--output", base / "run_ok"),
        ("report -o a file", ["report", "run_ok", "-o", "afile"], "--output", base / "run_ok"),
        ("report not a run", ["report", "adir"], "adir", None),
    ]
    shutil.copytree(run, base / "run_ok")
    damaged = {
        "truncated_db": lambda d: (d / "results.db").write_bytes((d / "results.db").read_bytes()[:3000]),
        "garbage_db": lambda d: (d / "results.db").write_bytes(os.urandom(8192)),
        "text_db": lambda d: (d / "results.db").write_text("not a database\n" * 100),
        "other_sqlite_db": lambda d: _other_sqlite(d / "results.db"),
        "missing_db": lambda d: (d / "results.db").unlink(),
        "binary_checkpoint": lambda d: (d / "checkpoint.json").write_bytes(os.urandom(512)),
        "truncated_checkpoint": lambda d: (d / "checkpoint.json").write_text('{"format": "lamcsp-che'),
        "foreign_checkpoint": lambda d: (d / "checkpoint.json").write_text('{"a": 1}'),
        "shapeless_checkpoint": lambda d: (d / "checkpoint.json").write_text(
            '{"format": "lamcsp-checkpoint", "version": 1, "state": {"units": [{}]}}'),
        "binary_campaign_copy": lambda d: (d / "campaign.yaml").write_bytes(os.urandom(512)),
    }
    for name, damage in damaged.items():
        d = base / name
        shutil.copytree(run, d)
        damage(d)
        named = "checkpoint" if "checkpoint" in name else ("campaign.yaml" if "campaign" in name else
                                                            ("--resume" if name == "missing_db" else "results.db"))
        cases.append((f"{name}: search --resume", ["search", "good.yaml", "--resume", "-o", name, "--quiet"],
                      named, d))
        if name.endswith("_db") and name != "missing_db":
            cases.append((f"{name}: report", ["report", name], "results.db", d))
            cases.append((f"{name}: export", ["export", name, "-o", f"export_{name}"], "results.db", d))
    return cases


def _other_sqlite(path: Path) -> None:
    path.unlink()
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()


def test_bad_input_corpus(tmp_path, run_dir):
    cases = _cases(tmp_path, run_dir)
    assert len(cases) >= 40
    before = {name: _tree(d) for name, _, _, d in cases if d is not None}
    (tmp_path / "cases.json").write_text(json.dumps([argv for _, argv, _, _ in cases]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run([sys.executable, str(RUNNER), "cases.json", "results.json"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    bad = []
    for (name, _, named, d), res in zip(cases, results):
        err = res["stderr"]
        problems = []
        if res["rc"] != 2:
            problems.append(f"exit status {res['rc']}")
        if "Traceback" in err:
            problems.append("traceback")
        if named not in err:
            problems.append(f"{named!r} not named")
        if "YAML syntax" in err and "syntax" not in name and "tabs" not in name:
            problems.append("a syntax error, not the problem meant")
        if d is not None and _tree(d) != before[name]:
            problems.append(f"{d.name} changed")
        if problems:
            bad.append(f"{name}: {', '.join(problems)}: {err.strip()[-400:]}")
    assert not bad, "\n".join(bad)
    assert not (tmp_path / "missing_db" / "results.db").exists()  # --resume made no empty database


@pytest.mark.parametrize("name,argv,named", [
    ("nan coordinates", ["relax", "nan.extxyz", "--model", "emt"], "nan.extxyz"),
    ("UTF-16 campaign", ["validate", "utf16.yaml"], "utf16.yaml"),
    ("--fmax nan", ["relax", "nan.extxyz", "--fmax", "nan"], "--fmax"),
])
def test_bad_input_as_a_console_command(tmp_path, name, argv, named):
    """A few of the corpus as `python -m lamcsp` (the process, its exit status and stderr)."""
    (tmp_path / "nan.extxyz").write_text(STRUCTURES["nan.extxyz"][0])
    (tmp_path / "utf16.yaml").write_bytes(GOOD.encode("utf-16"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run([sys.executable, "-m", "lamcsp", *argv], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and named in proc.stderr, proc.stderr
    # one paragraph: the error on one line (after argparse's usage, for an option it refused)
    assert proc.stderr.strip().splitlines()[-1].startswith(f"lamcsp {argv[0]}: error")
