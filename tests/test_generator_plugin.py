"""A user-defined generator installed as a package is found through the ``lamcsp.generators``
entry point: the example in campaigns/plugins/lamcsp_example_generator is pip-installed (host
pip, offline) into a temporary folder and used from a subprocess that has it on PYTHONPATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from lamcsp.generators import get_generator

from lamcsp.errors import SetupError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PLUGIN = os.path.join(ROOT, "campaigns", "plugins", "lamcsp_example_generator")

PROBE = textwrap.dedent(
    """
    import json, sys
    from importlib.metadata import entry_points

    import numpy as np
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list

    from lamcsp.errors import SetupError
    from lamcsp.generators import GenerationContext, Generator, get_generator
    from lamcsp.generators.base import _REGISTRY

    out = {"entry_points": sorted(ep.name for ep in entry_points(group="lamcsp.generators")),
           "in_builtin_registry": "strained-seeds" in _REGISTRY}
    gen = get_generator("strained-seeds", prototype="rocksalt", strain=0.03, rattle=0.05)
    out["type"] = type(gen).__module__ + "." + type(gen).__name__
    out["module_file"] = sys.modules[type(gen).__module__].__file__
    out["is_generator"] = isinstance(gen, Generator)
    out["name"] = gen.name

    ctx = GenerationContext(composition={"Mg": 1, "O": 1}, formula_units=[4, 8])
    cands = gen.propose(6, np.random.default_rng(0), ctx)
    again = gen.propose(6, np.random.default_rng(0), ctx)
    out["same_seed_same"] = [c.to_dict() for c in cands] == [c.to_dict() for c in again]
    rows = []
    for c in cands:
        atoms = c.to_atoms()
        i, j, d = neighbor_list("ijd", atoms, 4.0)
        limit = 0.7 * (covalent_radii[atoms.numbers[i]] + covalent_radii[atoms.numbers[j]])
        rows.append({"numbers": sorted(c.numbers.tolist()), "generator": c.generator,
                     "origin": c.origin, "min_ratio": float((d / limit).min()),
                     "volume": c.volume})
    out["candidates"] = rows

    try:
        get_generator("no-such-generator")
    except SetupError as exc:
        out["unknown"] = {"field": exc.field, "message": str(exc)}
    try:
        get_generator("strained-seeds", prototype="perovskite")
    except SetupError as exc:
        out["bad_option"] = {"field": exc.field, "message": str(exc)}
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example plugin installed into a temporary target folder (copied first, so that the
    in-tree build leaves nothing in the repository)."""
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "src"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(src)],
        capture_output=True, text=True, cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr
    return target


@pytest.fixture(scope="module")
def probe(installed):
    env = dict(os.environ, PYTHONPATH=str(installed), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                          cwd=installed.parent)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_loaded_through_the_entry_point(probe, installed):
    assert "strained-seeds" in probe["entry_points"]
    assert not probe["in_builtin_registry"]  # it came from the entry point, not a register() call
    assert probe["type"] == "lamcsp_example_generator.StrainedSeeds"
    assert os.path.realpath(probe["module_file"]).startswith(os.path.realpath(installed))
    assert probe["is_generator"] and probe["name"] == "strained-seeds"


def test_plugin_proposes_valid_candidates(probe):
    rows = probe["candidates"]
    assert len(rows) == 6
    assert probe["same_seed_same"]
    sizes = set()
    for row in rows:
        n = len(row["numbers"])
        assert n in (8, 16)  # 4 or 8 formula units of MgO
        sizes.add(n)
        assert row["numbers"] == [8] * (n // 2) + [12] * (n // 2)
        assert row["generator"] == "strained-seeds"
        assert row["origin"]["prototype"] == "rocksalt"
        assert row["min_ratio"] >= 1.0  # no pair under 0.7 x the sum of covalent radii
        assert row["volume"] > 0
    assert sizes == {8, 16}


def test_unknown_generator_lists_the_known_ones(probe):
    unknown = probe["unknown"]
    assert unknown["field"] == "generator"
    assert "no-such-generator" in unknown["message"]
    assert "strained-seeds" in unknown["message"]
    assert probe["bad_option"]["field"] == "prototype"
    assert "rocksalt" in probe["bad_option"]["message"]


def test_a_generator_without_the_whole_protocol_is_refused_naming_what_it_lacks(monkeypatch):
    """An object with only ``propose`` (the protocol before ``tell`` and the state) is refused
    when a campaign names it, with the methods it lacks; the same object given ``tell`` and the
    state through :class:`GeneratorBase` is accepted."""
    from lamcsp.generators import GeneratorBase, base

    class OnlyPropose:
        name = "only-propose"

        def propose(self, n, rng, context):
            return []

    class Whole(OnlyPropose, GeneratorBase):
        pass

    monkeypatch.setitem(base._REGISTRY, "only-propose", OnlyPropose)
    monkeypatch.setitem(base._REGISTRY, "whole", Whole)
    with pytest.raises(SetupError, match=r"lacks tell\(\), state_dict\(\), load_state_dict\(\)") as info:
        get_generator("only-propose")
    assert info.value.field == "generator" and "GeneratorBase" in str(info.value)
    gen = get_generator("whole")
    assert gen.propose(3, None, None) == [] and gen.state_dict() == {}


def test_unknown_generator_in_this_process():
    with pytest.raises(SetupError) as info:
        get_generator("no-such-generator")
    assert info.value.field == "generator"
    assert "known:" in str(info.value)
