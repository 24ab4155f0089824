"""The campaign schema: the quickstart validates; each class of bad input is a SetupError that
names the field by its dotted path; the models are frozen and closed at every level; round
trip; `lamcsp validate`; the committed reference."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from lamcsp.campaign import (
    SECTIONS,
    Campaign,
    ModelSpec,
    RelaxSpec,
    campaign_reference,
    load_campaign,
    parse_campaign,
)
from lamcsp.cli import main
from lamcsp.errors import SetupError

ROOT = os.path.join(os.path.dirname(__file__), "..")
QUICKSTART = os.path.join(ROOT, "campaigns", "quickstart.yaml")
REFERENCE = os.path.join(ROOT, "docs", "campaign_reference.md")

BASE = {
    "name": "t",
    "system": {"composition": "Si", "formula_units": "1-4", "pressures": 0},
    "generators": [{"name": "random", "share": 0.4}, {"name": "pso", "share": 0.6}],
    "model": {"backend": "chgnet"},
}


def with_(path: str, value):
    """BASE with the value at a dotted path (``generators[1].share``) replaced."""
    raw = copy.deepcopy(BASE)
    node = raw
    parts = path.replace("[", ".").replace("]", "").split(".")
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return raw


def error(raw, **kw) -> SetupError:
    with pytest.raises(SetupError) as info:
        parse_campaign(raw, **kw)
    return info.value


@pytest.mark.parametrize("name", sorted(p.name for p in Path(QUICKSTART).parent.glob("*.yaml")))
def test_shipped_campaigns_validate(name):
    c = load_campaign(Path(QUICKSTART).parent / name)
    assert isinstance(c, Campaign)
    assert sum(g.share for g in c.generators) == pytest.approx(1.0)
    assert c.model.backend == "chgnet" and c.output_dir == os.path.join("runs", c.name)
    assert c.to_dict() == parse_campaign(c.to_dict()).to_dict()


def test_defaults_and_forms():
    c = parse_campaign({"system": {"composition": {"Mg": 1, "O": 1}, "formula_units": [1, 2, 4],
                                   "pressures": [0, 25.5]}})
    assert c.system.formula_units == (1, 2, 4) and c.system.pressures == (0.0, 25.5)
    # no `generators`: the documented default mix (the dataclass default, not a parser default)
    assert [(g.name, g.share) for g in c.generators] == [("random", 0.5), ("pso", 0.5)]
    assert c.generators == Campaign().generators
    assert c.system.spacegroups == tuple(range(2, 231))
    v = parse_campaign({"system": {"variable": {"Mg": [1, 2], "O": [1, 3]}, "max_atoms": 10}})
    assert v.system.variable == {"Mg": (1, 2), "O": (1, 3)} and v.system.composition is None
    assert parse_campaign(with_("system.formula_units", 3)).system.formula_units == (3,)


def test_unknown_key_top_level():
    e = error(with_("populaton", 12))
    assert e.field == "populaton" and "population" in e.message  # lists the allowed keys


def test_unknown_key_nested():
    e = error(with_("generators[1].shares", 0.6))
    assert e.field == "generators[1].shares" and "share" in e.message
    e = error(with_("relax.fmaxx", 0.1))
    assert e.field == "relax.fmaxx" and "fmax" in e.message


def test_unknown_element():
    e = error(with_("system.composition", "SiXx2"))
    assert e.field == "system.composition" and "Xx" in str(e)
    e = error(with_("system.composition", {"Qq": 2}))
    assert e.field == "system.composition.Qq" and "unknown element" in e.message
    e = error({"system": {"variable": {"Mg": [1, 2], "Zz": [1, 2]}, "max_atoms": 8}})
    assert e.field == "system.variable.Zz"


@pytest.mark.parametrize("count", [0, -2])
def test_zero_or_negative_count(count):
    e = error(with_("system.composition", {"Si": count}))
    assert e.field == "system.composition.Si" and "positive" in e.message
    e = error(with_("system.formula_units", [count, 2]))
    assert e.field == "system.formula_units"
    e = error(with_("population", count))
    assert e.field == "population" and ">= 1" in e.message


def test_impossible_formula_unit_range():
    e = error(with_("system.formula_units", "4-2"))
    assert e.field == "system.formula_units" and "4-2" in e.message
    e = error(with_("system.formula_units", [4, 2]))
    assert e.field == "system.formula_units" and "ascending" in e.message
    e = error(with_("system.formula_units", []))
    assert e.field == "system.formula_units" and "empty" in e.message
    e = error({"system": {"variable": {"Mg": [3, 2]}, "max_atoms": 8}})
    assert e.field == "system.variable.Mg" and "impossible" in e.message
    e = error({"system": {"variable": {"Mg": [1, 2]}}})
    assert e.field == "system.max_atoms"


@pytest.mark.parametrize("pressure", [-100, 5000, [0, 2000]])
def test_pressure_out_of_range(pressure):
    e = error(with_("system.pressures", pressure))
    assert e.field == "system.pressures" and "[-50, 1000]" in e.message


def test_shares_not_summing_to_one():
    e = error(with_("generators[1].share", 0.5))
    assert e.field == "generators[].share" and "0.9" in e.message  # says the sum
    e = error(with_("generators[0].share", -0.1))
    assert e.field == "generators[0].share"


def test_unknown_generator():
    e = error(with_("generators[0].name", "simulated-annealing"))
    assert e.field == "generators[0].name" and "random" in e.message and "pso" in e.message


def test_bad_generator_options():
    e = error(with_("generators[0].options", {"bogus": 1}))
    assert e.field == "generators[0].options" and "bogus" in e.message
    e = error(with_("generators[0].options", {"max_attempts": 0}))
    assert e.field == "generators[0].options.max_attempts"
    c = parse_campaign(with_("generators[0].options", {"max_attempts": 50}))
    assert c.generators[0].options == {"max_attempts": 50}


def test_unknown_backend():
    e = error(with_("model.backend", "mace-xl"))
    assert e.field == "model.backend" and "chgnet" in e.message


def test_missing_model_file(tmp_path):
    e = error(with_("model.path", "no/such/model.pth.tar"), base_dir=str(tmp_path))
    assert e.field == "model.path" and "does not exist" in e.message
    weights = tmp_path / "model.pth.tar"
    weights.write_bytes(b"")
    c = parse_campaign(with_("model.path", "model.pth.tar"), base_dir=str(tmp_path))
    assert c.model.path == str(weights)  # relative to the campaign file's directory


@pytest.mark.parametrize("device", ["gpu", "cuda:x", 0])
def test_bad_device(device):
    e = error(with_("model.device", device))
    assert e.field == "model.device" and "cuda:N" in e.message


def test_bad_relax_and_types():
    assert error(with_("relax.fmax", 0)).field == "relax.fmax"
    assert error(with_("relax.optimizer", "bfgs")).field == "relax.optimizer"
    assert error(with_("relax.max_steps", 0)).field == "relax.max_steps"
    assert error(with_("stop.patience", 0)).field == "stop.patience"
    assert error(with_("finetune.enabled", "yes")).field == "finetune.enabled"
    assert error(with_("finetune.trust_lo", "low")).field == "finetune.trust_lo"
    raw = with_("generations", None)
    assert error(raw).field == "generations"
    raw["max_relaxations"] = 100
    assert parse_campaign(raw).max_relaxations == 100


def test_bad_yaml_syntax(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsystem:\n  composition: Si\n   formula_units: [1, 2\n")
    with pytest.raises(SetupError) as info:
        load_campaign(path)
    assert str(path) in info.value.field and "line" in info.value.field
    assert "YAML" in info.value.message


def test_round_trip(tmp_path):
    c = load_campaign(QUICKSTART)
    assert parse_campaign(c.to_dict()) == c
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump(c.to_dict(), sort_keys=False))
    assert load_campaign(path) == c
    v = parse_campaign({"system": {"variable": {"Mg": [1, 2], "O": [1, 3]}, "max_atoms": 10,
                                   "pressures": [0, 50]},
                        "finetune": {"enabled": True, "max_labels": 50, "oracle": "vasp"}})
    assert parse_campaign(v.to_dict()) == v


def test_cli_validate_exit_codes(tmp_path, capsys):
    assert main(["validate", QUICKSTART]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_("generators[1].share", 0.5)))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "generators[].share" in err and "Traceback" not in err


def test_cli_validate_subprocess_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_("system.composition", {"Qq": 1})))
    proc = subprocess.run([sys.executable, "-m", "lamcsp.cli", "validate", str(bad)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert "system.composition.Qq" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_reference_is_up_to_date():
    with open(REFERENCE, encoding="utf-8") as fh:
        committed = fh.read()
    assert committed == campaign_reference(), (
        "docs/campaign_reference.md is stale: run "
        "python -m lamcsp.campaign --reference > docs/campaign_reference.md")
    for key in ("patience", "trust_lo", "max_relaxations", "sim_threshold", "device"):
        assert f"`{key}`" in committed


def _section_path(key: str) -> str:
    return "generators[0]" if key == "generators[]" else key


@pytest.mark.parametrize("key", ["", *SECTIONS])
def test_unknown_key_at_every_level_names_its_path(key):
    path = _section_path(key)
    e = error(with_(f"{path}.bogus" if path else "bogus", 1))
    assert e.field == (f"{path}.bogus" if path else "bogus")
    assert "unknown key 'bogus'" in e.message
    allowed = SECTIONS[key].model_fields if key else Campaign.model_fields
    assert all(name in e.message for name in allowed)  # what is allowed instead


@pytest.mark.parametrize("path,value,allowed", [
    ("population", "12", "an integer"),
    ("seed", 1.5, "an integer or null"),
    ("stop", 5, "a mapping"),
    ("system.distance_factor", "x", "a finite number"),
    ("system.pressures", float("nan"), "a finite number"),
    ("generators[1].share", "half", "a finite number"),
    ("model.head", 3, "a non-empty string or null"),
    ("relax.max_steps", True, "an integer"),
    ("relax.optimizer", 3, "fire, lbfgs"),
    ("dedupe.use_matcher", 1, "true or false"),
    ("dedupe.ltol", float("inf"), "a finite number"),
    ("report.write_cif", "yes", "true or false"),
    ("parallel.threads", 2.5, "an integer or null"),
    ("finetune.every", [2], "an integer"),
    ("finetune.diversity", "random", "bootstrap, seeds, fresh_head"),
    ("verify.top_k", None, "an integer"),
    ("verify.oracle", 7, "calculator"),
])
def test_wrong_type_at_any_level_is_one_paragraph_naming_the_field(path, value, allowed):
    e = error(with_(path, value))
    assert e.field == path and allowed in e.message
    assert "\n" not in str(e) and "pydantic" not in str(e) and "http" not in str(e)


def test_integral_floats_and_lists_are_read_as_yaml_gives_them():
    c = parse_campaign({**with_("relax.max_steps", 300.0), "population": 8.0})
    assert c.relax.max_steps == 300 and type(c.relax.max_steps) is int and type(c.population) is int
    assert isinstance(c.generators, tuple) and c.system.pressures == (0.0,)
    assert error(with_("relax.max_steps", 300.5)).field == "relax.max_steps"


@pytest.mark.parametrize("key", ["", *SECTIONS])
def test_every_section_is_frozen(key):
    c = parse_campaign(BASE)
    node = c if not key else (c.generators[0] if key == "generators[]" else getattr(c, key))
    name = next(iter(type(node).model_fields))
    with pytest.raises(ValidationError):
        setattr(node, name, getattr(node, name))


def test_replace_is_a_validated_copy():
    m = parse_campaign(BASE).model
    cpu = m.replace(device="cpu")
    assert cpu.device == "cpu" and m.device == "auto" and cpu.backend == m.backend
    with pytest.raises(SetupError) as info:
        m.replace(device="gpu")
    assert info.value.field == "device" and "cuda:N" in info.value.message
    assert ModelSpec(**cpu.model_dump()) == cpu  # the plain data an MPI task carries
    assert RelaxSpec.default_of("fmax") == RelaxSpec().fmax == Campaign().relax.fmax


def test_reference_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "lamcsp.campaign", "--reference"], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    with open(REFERENCE, encoding="utf-8") as fh:
        assert proc.stdout == fh.read()
