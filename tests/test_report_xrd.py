"""What the report shows of each structure: XRD against Bragg's law, the overlay ranking of a
measured pattern, ranking.txt, structure facts, the PNGs the page references, report.xrd errors.

The run is test_report's EMT Cu-Au run (real EMT energies, volumes relaxed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from pymatgen.core import Composition
from test_report import CAMPAIGN, build_cuau_run, parse_links

from lamcsp.campaign import ReportSpec, parse_campaign
from lamcsp.errors import SetupError
from lamcsp.io import spacegroup_number
from lamcsp.report import write_report
from lamcsp.report_xrd import (
    broadened,
    coordination,
    pattern_similarity,
    read_pattern,
    structure_facts,
    xrd_pattern,
)

CU_KA1 = 1.5406
A_NACL = 5.64


def bragg_two_theta(a: float, hkl: tuple[int, int, int]) -> float:
    d = a / math.sqrt(sum(h * h for h in hkl))
    return math.degrees(2 * math.asin(CU_KA1 / (2 * d)))


def test_rocksalt_peaks_follow_bragg():
    x, y = xrd_pattern(bulk("NaCl", "rocksalt", a=A_NACL))
    strongest = x[np.argsort(y)[::-1][:2]]
    expected = sorted(bragg_two_theta(A_NACL, hkl) for hkl in ((2, 0, 0), (2, 2, 0)))
    assert np.allclose(sorted(strongest), expected, atol=0.02)
    assert y.max() == pytest.approx(100.0)


def write_xy(path: Path, atoms: Atoms, noise_seed: int = 0) -> Path:
    """A 'measured' pattern: the structure's peaks, broadened wider than the report's, with a
    background and noise."""
    grid = np.arange(5.0, 95.0, 0.01)
    rng = np.random.default_rng(noise_seed)
    y = 3.0 * broadened(xrd_pattern(atoms), grid, fwhm=0.2) + 20.0 + rng.normal(0, 2.0, grid.size)
    np.savetxt(path, np.column_stack([grid, y]), header="2theta intensity")
    return path


def test_overlay_ranks_the_source_structure_first(tmp_path):
    candidates = {
        "rocksalt": bulk("NaCl", "rocksalt", a=A_NACL),
        "cscl": Atoms("NaCl", scaled_positions=[[0, 0, 0], [.5, .5, .5]], cell=[3.45] * 3, pbc=True),
        "zincblende": bulk("NaCl", "zincblende", a=6.0),
    }
    for source, atoms in candidates.items():
        measured = read_pattern(write_xy(tmp_path / f"{source}.xy", atoms))
        scores = {k: pattern_similarity(xrd_pattern(a), measured) for k, a in candidates.items()}
        assert max(scores, key=scores.get) == source, scores
        assert scores[source] > 0.9


def test_structure_facts():
    facts = structure_facts(bulk("NaCl", "rocksalt", a=A_NACL))
    # 4 NaCl per 5.64³ Å³ cell
    mass = 4 * (22.98977 + 35.453) * 1.66053907e-24
    assert facts["density"] == pytest.approx(mass / (A_NACL * 1e-8) ** 3, rel=1e-3)
    assert facts["volume_per_atom"] == pytest.approx(A_NACL**3 / 8)
    assert facts["coordination"] == 6
    assert coordination(bulk("Fe", "bcc", a=2.87)) == 8
    assert coordination(bulk("Cu", "fcc", a=3.61) * (2, 1, 1)) == 12


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cuau-run-xrd")
    build_cuau_run(path, scans=False)
    (path / "campaign.yaml").write_text(CAMPAIGN)
    return path


def test_ranking_txt_sorted_with_spacegroups(run_dir, tmp_path):
    import ase.db

    write_report(run_dir, tmp_path)
    lines = (tmp_path / "ranking.txt").read_text().splitlines()
    head = [ln for ln in lines if ln.startswith("#")][-1].split()
    assert head[1:9] == ["pressure_GPa", "rank", "id", "H_eV_atom", "dH_meV_atom", "sg(0.01)", "sg(0.1)",
                         "sg(0.5)"]
    rows = [ln.split() for ln in lines if not ln.startswith("#")]
    db = ase.db.connect(str(run_dir / "results.db"), use_lock_file=False)
    expected = sorted((float(r.pressure_gpa), float(r.enthalpy_per_atom), r.id) for r in db.select(role="search")
                      if r.get("unique") and not str(r.status).startswith("failed"))
    assert [(float(r[0]), int(r[2])) for r in rows] == [(p, i) for p, _, i in expected]
    for r in rows:
        atoms = db.get(id=int(r[2])).toatoms()
        assert [int(s) for s in r[5:8]] == [spacegroup_number(atoms, s) for s in (0.01, 0.1, 0.5)]
        assert float(r[3]) == pytest.approx(db.get(id=int(r[2])).enthalpy_per_atom, abs=1e-6)
        assert r[8] == db.get(id=int(r[2])).formula
    first: dict[tuple[str, str], float] = {}
    for r in rows:  # dH is relative to the lowest of the composition at that pressure
        key = (r[0], Composition(r[8]).reduced_formula)
        first.setdefault(key, float(r[3]))
        assert float(r[4]) == pytest.approx(1000 * (float(r[3]) - first[key]), abs=0.01)
    assert [int(r[1]) for r in rows if float(r[0]) == 0.0] == list(range(1, 1 + sum(float(r[0]) == 0 for r in rows)))


def test_report_images_exist_and_xrd_match(run_dir, tmp_path):
    from urllib.parse import unquote

    import ase.db

    db = ase.db.connect(str(run_dir / "results.db"), use_lock_file=False)
    l12 = next(r for r in db.select(role="search", unique=True) if r.formula == "AuCu3" and r.pressure_gpa == 0)
    pattern = write_xy(tmp_path / "measured.xy", l12.toatoms())
    out = tmp_path / "report"
    page = write_report(run_dir, out, ReportSpec(top_n=3, xrd=str(pattern)))
    links = parse_links(page)
    doc = json.loads((out / "summary.json").read_text())
    top = [e for pdoc in doc["pressures"] for e in pdoc["top"]]
    for e in top:
        assert e["density"] > 0 and e["volume_per_atom"] > 0 and e["coordination"] > 0
        assert set(e["images"]) == {"structure", "xrd"}
        assert all(src in links.src for src in e["images"].values())
    for src in links.src:
        path = out / unquote(src)
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    ranking = doc["xrd_match"]["ranking"]
    assert len(ranking) == len(top)
    sims = [m["xrd_similarity"] for m in ranking]
    assert sims == sorted(sims, reverse=True)
    assert ranking[0]["formula"] == "AuCu3" and ranking[0]["pressure_gpa"] == 0.0 and sims[0] > 0.9
    assert "Agreement with the measured XRD pattern" in page.read_text()


def test_xrd_setup_errors(run_dir, tmp_path):
    with pytest.raises(SetupError) as exc:
        write_report(run_dir, tmp_path / "r", ReportSpec(xrd=str(tmp_path / "missing.xy")))
    assert exc.value.field == "report.xrd"
    bad = tmp_path / "bad.xy"
    bad.write_text("two theta, intensity\nnot numbers\n")
    with pytest.raises(SetupError, match="report.xrd"):
        read_pattern(bad)
    raw = {"name": "x", "system": {"composition": "Cu"}, "model": {"backend": "emt"},
           "report": {"xrd": "missing.xy"}}
    with pytest.raises(SetupError, match=r"report\.xrd"):
        parse_campaign(raw, base_dir=str(tmp_path))
    raw["report"]["xrd"] = "bad.xy"
    with pytest.raises(SetupError, match=r"report\.xrd"):
        parse_campaign(raw, base_dir=str(tmp_path))
    good = write_xy(tmp_path / "good.xy", bulk("Cu", "fcc", a=3.61))
    raw["report"]["xrd"] = "good.xy"
    assert parse_campaign(raw, base_dir=str(tmp_path)).report.xrd == str(good)


def test_campaign_xrd_missing_at_report_time(run_dir, tmp_path):
    """A run's campaign names a pattern that has gone since: the report stops (exit 2), it does
    not fall back to default settings."""
    import shutil

    from lamcsp.cli import main

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    pattern = write_xy(tmp_path / "gone.xy", bulk("Cu", "fcc", a=3.61))
    (run / "campaign.yaml").write_text(CAMPAIGN.replace("report: {top_n: 3}",
                                                        f"report: {{top_n: 1, xrd: {pattern}}}"))
    doc = json.loads((write_report(run).parent / "summary.json").read_text())
    assert doc["xrd_match"]["pattern"] == str(pattern) and len(doc["xrd_match"]["ranking"]) == 2
    pattern.unlink()
    with pytest.raises(SetupError, match=r"report\.xrd"):
        write_report(run)
    assert main(["report", str(run)]) == 2
