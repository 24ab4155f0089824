"""The template generator: substitution into known structures."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from lamcsp.generators import GenerationContext, get_generator
from pymatgen.analysis.structure_matcher import FrameworkComparator, StructureMatcher
from pymatgen.io.ase import AseAtomsAdaptor

from lamcsp.errors import SetupError


@pytest.fixture
def library(tmp_path):
    """Rocksalt NaCl, CsCl-type CsCl, zincblende ZnS and fluorite CaF2 as CIF files."""
    d = tmp_path / "templates"
    d.mkdir()
    structures = {
        "NaCl": bulk("NaCl", "rocksalt", a=5.64),
        "CsCl": bulk("CsCl", "cesiumchloride", a=4.12),
        "ZnS": bulk("ZnS", "zincblende", a=5.41),
        "CaF2": bulk("CaF2", "fluorite", a=5.46),
    }
    for name, a in structures.items():
        a.write(d / f"{name}.cif")
    return d, structures


def test_templates_of_the_composition_are_substituted_with_the_chemistry_kept(library):
    """KBr x 1: the three AB templates fit (fluorite does not), each both ways round; the
    assignment that puts K on the cation site (Mendeleev numbers close to Na, Cs, Zn) scores
    higher than the swapped one; every proposal is its template's structure (same prototype by
    pymatgen's matcher) with the campaign's elements at the campaign's volume estimate; each
    (template, assignment) is proposed once, then nothing; ``exclude`` leaves one out."""
    d, structures = library
    ctx = GenerationContext(composition={"K": 1, "Br": 1}, formula_units=[1], volume_factor=1.0)
    gen = get_generator("template", source=str(d))
    pairs = gen.pairs(ctx)
    names = [gen.templates()[t][0] for t, _, _ in pairs]
    assert sorted(set(names)) == ["CsCl", "NaCl", "ZnS"] and len(pairs) == 6
    for name in ("NaCl", "CsCl", "ZnS"):
        mine = {assignment: w for t, assignment, w in pairs if gen.templates()[t][0] == name}
        cation = 11 if name == "NaCl" else 55 if name == "CsCl" else 30
        kept = next(w for a, w in mine.items() if dict(a)[cation] == 19)
        swapped = next(w for a, w in mine.items() if dict(a)[cation] == 35)
        assert kept > swapped
    rng = np.random.default_rng(0)
    got = gen.propose(4, rng, ctx) + gen.propose(4, rng, ctx)
    assert len(got) == 6 and gen.propose(4, rng, ctx) == []
    from lamcsp.generators.symmetric import default_element_volume

    volume = default_element_volume(19) + default_element_volume(35)
    matcher = StructureMatcher(scale=True, attempt_supercell=True, comparator=FrameworkComparator())
    for c in got:
        assert sorted(c.numbers.tolist()) == [19, 35]
        assert c.volume == pytest.approx(volume, rel=1e-9)
        template = structures[c.origin["template"]]
        assert matcher.fit(AseAtomsAdaptor.get_structure(c.to_atoms()), AseAtomsAdaptor.get_structure(template))
    assert len({(c.origin["template"], tuple(sorted(c.origin["substitution"].items()))) for c in got}) == 6
    other = get_generator("template", source=str(d), exclude=["NaCl"])
    assert {other.templates()[t][0] for t, _, _ in other.pairs(ctx)} == {"CsCl", "ZnS"}


def test_template_state_round_trips_and_bad_options_are_named(library):
    d, _ = library
    ctx = GenerationContext(composition={"Ca": 1, "F": 2}, formula_units=[1, 2])
    gen = get_generator("template", source=str(d))
    first = gen.propose(1, np.random.default_rng(1), ctx)
    assert len(first) == 1 and first[0].origin["template"] == "CaF2"
    again = get_generator("template", source=str(d))
    again.load_state_dict(gen.state_dict())
    assert again.propose(5, np.random.default_rng(1), ctx) == []  # fluorite's one assignment is used
    for kw, field in ((dict(), "source"), (dict(source=str(d / "none")), "source"),
                      (dict(source=str(d), exclude="NaCl"), "exclude"),
                      (dict(source=str(d), max_templates=0), "max_templates")):
        with pytest.raises(SetupError) as err:
            get_generator("template", **kw)
        assert err.value.field == field
