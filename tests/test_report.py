"""Reports: hulls against an independent pymatgen PhaseDiagram, the lowest-polymorph fallback,
transition pressures, self-contained HTML (links, headless Chromium render), export.

The run directory is built from real physics: ASE's EMT for Cu-Au, each structure's volume
relaxed (isotropic scale) at each pressure, H = E + pV.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import ase.db
import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read
from lamcsp.relax.relaxer import RelaxResult
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition
from scipy.optimize import minimize_scalar

from lamcsp.errors import SetupError
from lamcsp.io import spacegroup_number
from lamcsp.report import export, summary, transitions, write_report
from lamcsp.store import ResultStore

PRESSURES = (0.0, 5.0)
SCAN_GRID = (0.0, 4.0, 8.0, 12.0)
CAMPAIGN = """\
name: cuau-emt
seed: 1
system:
  variable: {Cu: [0, 4], Au: [0, 4]}
  max_atoms: 4
  pressures: [0, 5]
model: {backend: emt}
report: {top_n: 3}
"""


def l12(a: float, minority: str, majority: str) -> Atoms:
    return Atoms(f"{minority}{majority}3", scaled_positions=[[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
                 cell=[a] * 3, pbc=True)


def l10(a: float, c_over_a: float = 0.93) -> Atoms:
    return Atoms("Cu2Au2", scaled_positions=[[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
                 cell=[a, a, a * c_over_a], pbc=True)


def b2(a: float) -> Atoms:
    return Atoms("CuAu", scaled_positions=[[0, 0, 0], [.5, .5, .5]], cell=[a] * 3, pbc=True)


def emt_result(atoms: Atoms, pressure: float, relax_volume: bool = True) -> RelaxResult:
    """EMT at the isotropic scale that minimises H = E + pV (or at the given cell), as a RelaxResult."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    cell0 = atoms.cell.copy()

    def enthalpy(scale: float) -> float:
        atoms.set_cell(cell0 * scale, scale_atoms=True)
        return atoms.get_potential_energy() + pressure * units.GPa * atoms.get_volume()

    if relax_volume:
        scale = minimize_scalar(enthalpy, bounds=(0.85, 1.15), method="bounded", options={"xatol": 1e-6}).x
        enthalpy(scale)
    energy = atoms.get_potential_energy()
    result = RelaxResult(
        atoms=atoms.copy(), energy=energy, enthalpy=energy + pressure * units.GPa * atoms.get_volume(),
        pressure_gpa=pressure, converged=True, steps=10, status="converged", fmax=0.01,
        forces=atoms.get_forces(), stress=atoms.get_stress(voigt=False),
    )
    result.atoms.calc = None
    return result


def failed_result(atoms: Atoms, pressure: float) -> RelaxResult:
    n = len(atoms)
    return RelaxResult(atoms=atoms.copy(), energy=math.nan, enthalpy=math.nan, pressure_gpa=pressure,
                       converged=False, steps=3, status="failed: exploded cell", fmax=math.nan,
                       forces=np.zeros((n, 3)), stress=np.zeros((3, 3)))


def add(store: ResultStore, result: RelaxResult, key: str, role: str = "search", generation: int = 0,
        generator: str = "random", unique: bool = True, duplicate_of: int | None = None, **extra) -> int:
    formula = result.atoms.get_chemical_formula()
    extra = {"role": role, "reduced_formula": Composition(formula).reduced_formula, "unit": 0, **extra}
    return store.add(result, key=key, generation=generation, generator=generator, model_id="emt",
                     spacegroup=spacegroup_number(result.atoms), unique=unique, duplicate_of=duplicate_of,
                     extra=extra)


def rattled(atoms: Atoms, seed: int) -> Atoms:
    atoms = atoms.copy()
    atoms.rattle(0.08, seed=seed)
    return atoms


SEARCH = {  # key: (structure, generation, generator)
    "l12-cu3au": (lambda: l12(3.75, "Au", "Cu"), 2, "pso"),
    "l12-cuau3": (lambda: l12(4.0, "Cu", "Au"), 1, "random"),
    "b2-cuau": (lambda: b2(3.1), 0, "random"),
    "l10-cuau": (lambda: l10(3.85), 3, "pso"),
    "bcc-cu": (lambda: bulk("Cu", "bcc", a=2.87, cubic=True), 0, "random"),
    "rattled-cu3au": (lambda: rattled(l12(3.75, "Au", "Cu"), 3), 0, "random"),
    "rattled-cuau": (lambda: rattled(l10(3.85) * (2, 1, 1), 4), 1, "pso"),
}


def build_cuau_run(run_dir: Path, references: tuple[str, ...] = ("Cu", "Au"), scans: bool = True) -> ResultStore:
    """A Cu-Au run: references, search rows (a duplicate and a failed one too), and pressure scans."""
    store = ResultStore(run_dir)
    refs = {"Cu": bulk("Cu", "fcc", a=3.61, cubic=True), "Au": bulk("Au", "fcc", a=4.08, cubic=True)}
    for p in PRESSURES:
        for el in references:
            add(store, emt_result(refs[el], p), f"ref-{el}-p{p:g}", role="reference", generation=-1,
                generator="reference")
        ids = {}
        for key, (make, gen, generator) in SEARCH.items():
            relax = not key.startswith("rattled")
            ids[key] = add(store, emt_result(make(), p, relax), f"{key}-p{p:g}", generation=gen,
                           generator=generator)
        dup = emt_result(rattled(l12(3.75, "Au", "Cu"), 9), p, relax_volume=False)
        add(store, dup, f"dup-p{p:g}", generation=3, unique=False, duplicate_of=ids["l12-cu3au"])
        add(store, failed_result(l10(3.85), p), f"failed-p{p:g}", generation=2)
        if scans and p == 0.0:
            for key, make in (("b2-cuau", lambda: b2(3.1)), ("l10-cuau", lambda: l10(3.85))):
                for q in SCAN_GRID:
                    add(store, emt_result(make(), q), f"scan-{key}-p{q:g}", role="scan", generation=0,
                        generator="scan", polymorph=ids[key])
    return store


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cuau-run")
    build_cuau_run(path)
    (path / "campaign.yaml").write_text(CAMPAIGN)
    return path


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory) -> Path:
    return write_report(run_dir, tmp_path_factory.mktemp("report"))


def db_rows(run_dir: Path):
    return list(ase.db.connect(str(run_dir / "results.db"), use_lock_file=False).select())


def independent_pd(run_dir: Path, pressure: float) -> tuple[PhaseDiagram, list[PDEntry]]:
    entries = []
    for row in db_rows(run_dir):
        if (abs(row.pressure_gpa - pressure) < 1e-6 and row.role in ("search", "reference")
                and (row.unique or row.role == "reference") and not row.status.startswith("failed")):
            entries.append(PDEntry(Composition(row.formula), row.enthalpy, attribute=row.id))
    return PhaseDiagram(entries), entries


# ------------------------------------------------------------------------------------ hulls


def test_hull_matches_independent_phase_diagram(run_dir):
    doc = summary(run_dir)
    assert doc["campaign"] == "cuau-emt" and doc["elements"] == ["Cu", "Au"]
    assert [p["pressure_gpa"] for p in doc["pressures"]] == list(PRESSURES)
    for pdoc in doc["pressures"]:
        pd, entries = independent_pd(run_dir, pdoc["pressure_gpa"])
        assert pdoc["hull_kind"] == "phase_diagram"
        assert {h["db_id"] for h in pdoc["hull"]} == {e.attribute for e in pd.stable_entries}
        assert len(pdoc["hull"]) >= 3  # Cu, Au and at least one ordered compound
        x_au = [Composition(h["formula"]).get_atomic_fraction("Au") for h in pdoc["hull"]]
        assert x_au == sorted(x_au) and x_au[0] == 0 and x_au[-1] == 1
        listed = {e["db_id"]: e for es in pdoc["compositions"].values() for e in es}
        assert set(listed) == {e.attribute for e in entries}  # no duplicate, no failed row
        for entry in entries:
            got = listed[entry.attribute]
            assert got["e_above_hull"] == pytest.approx(pd.get_e_above_hull(entry), abs=1e-9)
            assert got["formation_enthalpy_per_atom"] == pytest.approx(pd.get_form_energy_per_atom(entry), abs=1e-9)
        for formula, es in pdoc["compositions"].items():
            assert all(e["reduced_formula"] == formula for e in es)
            assert [e["enthalpy_per_atom"] for e in es] == sorted(e["enthalpy_per_atom"] for e in es)


def test_top_list_ranked_by_energy_above_hull(run_dir):
    doc = summary(run_dir)
    for pdoc in doc["pressures"]:
        top = pdoc["top"]
        assert len(top) == 3 and [e["rank"] for e in top] == [1, 2, 3]
        assert all(e["role"] == "search" for e in top)
        keys = [(e["e_above_hull"], e["enthalpy_per_atom"]) for e in top]
        assert keys == sorted(keys)
        search = [e for es in pdoc["compositions"].values() for e in es if e["role"] == "search"]
        assert keys[0][0] == min(e["e_above_hull"] for e in search)
        assert top[0]["spacegroup"] in (221, 123, 225)  # ordered L1_2 / L1_0 / B2, symmetry found again


def test_convergence_is_cumulative_minimum(run_dir):
    doc = summary(run_dir)
    rows = [r for r in db_rows(run_dir) if r.role == "search" and not r.status.startswith("failed")
            and abs(r.pressure_gpa - 5.0) < 1e-6 and r.reduced_formula == "Cu3Au"]
    conv = next(c for c in doc["convergence"]["pressures"] if c["pressure_gpa"] == 5.0)["compositions"]["Cu3Au"]
    assert conv["generations"] == [0, 1, 2, 3]
    expected = [min(r.enthalpy_per_atom for r in rows if r.generation <= g) for g in conv["generations"]]
    assert conv["best"] == pytest.approx(expected, abs=1e-12)
    assert conv["best"][0] > conv["best"][-1]  # the rattled generation-0 hit is beaten later
    assert conv["by_generator"]["pso"][:2] == [None, None]  # pso found its first Cu3Au in generation 2


def test_lowest_polymorph_fallback_without_an_element(tmp_path):
    build_cuau_run(tmp_path, references=("Cu",), scans=False)
    page = write_report(tmp_path)
    assert all((page.parent / s).is_file() for s in parse_links(page).src)
    written = json.loads((page.parent / "summary.json").read_text())
    for pdoc in written["pressures"]:
        for e in pdoc["top"]:
            e.pop("files")
            e.pop("images")
    doc = summary(tmp_path)
    assert doc == written
    assert any("lowest polymorph" in note for note in doc["notes"])
    for pdoc in doc["pressures"]:
        assert pdoc["hull_kind"] == "lowest_polymorph"
        rows = [r for r in db_rows(tmp_path) if abs(r.pressure_gpa - pdoc["pressure_gpa"]) < 1e-6
                and r.unique and not r.status.startswith("failed")]
        lowest = {}
        for r in rows:
            lowest[r.reduced_formula] = min(lowest.get(r.reduced_formula, math.inf), r.enthalpy_per_atom)
        assert {h["reduced_formula"] for h in pdoc["hull"]} == set(lowest)
        for formula, es in pdoc["compositions"].items():
            for e in es:
                row = next(r for r in rows if r.id == e["db_id"])
                assert e["e_above_hull"] == pytest.approx(row.enthalpy_per_atom - lowest[formula], abs=1e-12)
                assert e["formation_enthalpy_per_atom"] is None
        assert any(e["e_above_hull"] > 1e-3 for es in pdoc["compositions"].values() for e in es)


def test_ternary_hull_and_plot(tmp_path):
    store = ResultStore(tmp_path)
    for el, a in (("Cu", 3.61), ("Au", 4.08), ("Ag", 4.09)):
        add(store, emt_result(bulk(el, "fcc", a=a, cubic=True), 0.0), f"ref-{el}", role="reference")
    add(store, emt_result(l12(3.75, "Au", "Cu"), 0.0), "cu3au")
    add(store, emt_result(l12(3.9, "Ag", "Cu"), 0.0), "cu3ag")
    mixed = Atoms("Cu2AuAg", scaled_positions=[[0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
                  cell=[3.9] * 3, pbc=True)
    add(store, emt_result(mixed, 0.0), "cu2auag")
    page = write_report(tmp_path)
    doc = json.loads((page.parent / "summary.json").read_text())
    (pdoc,) = doc["pressures"]
    pd, entries = independent_pd(tmp_path, 0.0)
    assert pdoc["hull_kind"] == "phase_diagram" and len(doc["elements"]) == 3
    assert {h["db_id"] for h in pdoc["hull"]} == {e.attribute for e in pd.stable_entries}
    assert (page.parent / "img" / "hull-p0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------ scans


def test_transition_pressure_matches_linear_interpolation(run_dir):
    doc = summary(run_dir)
    curves = {}
    by_id = {r.id: r for r in db_rows(run_dir)}
    for row in by_id.values():
        if row.role == "scan":
            curves.setdefault(row.polymorph, {})[row.pressure_gpa] = row.enthalpy_per_atom
    (a, ca), (b, cb) = sorted(curves.items())
    grid = np.array(SCAN_GRID)
    d = np.array([cb[p] - ca[p] for p in grid])
    k = int(np.flatnonzero(np.sign(d[:-1]) != np.sign(d[1:]))[0])
    expected = grid[k] - d[k] * (grid[k + 1] - grid[k]) / (d[k + 1] - d[k])
    assert len(doc["transitions"]) == 1
    t = doc["transitions"][0]
    assert t["reduced_formula"] == "CuAu" and t["interpolated"]
    assert t["pressure_gpa"] == pytest.approx(expected, abs=1e-9)
    assert 0 < t["pressure_gpa"] < SCAN_GRID[-1]
    low_first = a if ca[grid[0]] < cb[grid[0]] else b
    assert t["from"]["db_id"] == low_first and {t["from"]["db_id"], t["to"]["db_id"]} == {a, b}
    assert {t["from"]["spacegroup"], t["to"]["spacegroup"]} == {by_id[a].spacegroup, by_id[b].spacegroup} == {221, 123}


def test_transitions_function():
    lines = {1: {0.0: 0.0, 1.0: 0.1, 2.0: 0.2}, 2: {0.0: 0.05, 1.0: 0.0, 2.0: -0.05}}
    assert transitions(lines) == [(pytest.approx(0.05 / 0.15), 1, 2, True)]
    gap = {1: {0.0: 0.0, 1.0: 0.1}, 2: {1.0: 0.05}}  # B has no point at 0 GPa: midpoint
    assert transitions(gap) == [(0.5, 1, 2, False)]
    assert transitions({1: {0.0: 0.0, 1.0: 0.0}, 2: {0.0: 0.1, 1.0: 0.1}}) == []


# ------------------------------------------------------------------------------------ html


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.src: list[str] = []
        self.href: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.src.append(attrs["src"])
        if tag == "a" and "href" in attrs:
            self.href.append(attrs["href"])


def parse_links(page: Path) -> Links:
    parser = Links()
    parser.feed(page.read_text())
    return parser


def test_report_links_exist(report):
    from urllib.parse import unquote

    links = parse_links(report)
    # hull and convergence per pressure, one scan plot, a picture and an XRD plot per listed structure
    n_images = len(PRESSURES) * 2 + 1 + 2 * 3 * len(PRESSURES)
    assert len(links.src) == n_images
    files = [h for h in links.href if not h.startswith("#")]
    assert any(h.endswith(".cif") for h in files) and any(h.endswith(".vasp") for h in files)
    for ref in links.src + files:
        assert "://" not in ref and not ref.startswith("/")
        assert (report.parent / unquote(ref)).is_file(), ref
    assert "script" not in links.tags
    doc = json.loads((report.parent / "summary.json").read_text())
    listed = {f for pdoc in doc["pressures"] for e in pdoc["top"] for f in e["files"].values()}
    assert listed == {h for h in files if h.startswith("structures/")}
    cif = next(f for f in listed if f.endswith(".cif"))
    assert re.fullmatch(r"structures/p[01]-rank0[1-3]-[A-Za-z0-9]+-sg\d+\.cif", cif)


def test_report_reruns_and_overwrites(run_dir, tmp_path):
    from lamcsp.campaign import ReportSpec

    write_report(run_dir, tmp_path)
    assert len(list((tmp_path / "structures").glob("*.cif"))) == 3 * len(PRESSURES)
    page = write_report(run_dir, tmp_path, spec=ReportSpec(top_n=1, write_cif=False))
    assert list((tmp_path / "structures").glob("*.cif")) == []
    assert len(list((tmp_path / "structures").glob("*.vasp"))) == len(PRESSURES)
    assert all((page.parent / h).is_file() for h in parse_links(page).href if not h.startswith("#"))


def test_report_without_scans_or_campaign(tmp_path):
    build_cuau_run(tmp_path, scans=False)
    page = write_report(tmp_path)
    assert page == tmp_path / "report" / "report.html"
    text = page.read_text()
    assert "No pressure scans" in text
    doc = json.loads((page.parent / "summary.json").read_text())
    assert doc["transitions"] == [] and doc["campaign"] == tmp_path.name
    assert len(doc["pressures"][0]["top"]) == 7  # the default top_n (10) is more than there are
    assert all((page.parent / s).is_file() for s in parse_links(page).src)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


PROBE = """<script>
window.addEventListener("load", function () {
  var flags = Array.prototype.map.call(document.images, function (img) {
    return (img.complete && img.naturalWidth > 0) ? "1" : "0";
  });
  document.body.dataset.images = flags.join("");
});
</script>"""


@pytest.mark.skipif(chromium() is None, reason="no chromium binary")
def test_report_renders_in_headless_chromium(report, tmp_path):
    probe = report.with_name("report-probe.html")
    probe.write_text(report.read_text().replace("</body>", PROBE + "\n</body>"))
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
           probe.resolve().as_uri()]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        probe.unlink()
    flags = re.search(r'data-images="([01]*)"', out)
    assert flags is not None, out[-2000:]
    assert len(flags.group(1)) == len(parse_links(report).src) > 0
    assert set(flags.group(1)) == {"1"}


# ------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("fmt,ext", [("cif", ".cif"), ("poscar", ".vasp")])
def test_export_files(run_dir, tmp_path, fmt, ext):
    paths = export(run_dir, 2, fmt, tmp_path)
    assert len(paths) == 2 * len(PRESSURES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    doc = summary(run_dir)
    by_id = {r.id: r for r in db_rows(run_dir)}
    for path, entry in zip(paths, [e for pdoc in doc["pressures"] for e in pdoc["top"][:2]]):
        assert path.suffix == ext and f"-{entry['formula']}-sg{entry['spacegroup']}" in path.name
        atoms = read(path)
        ref = by_id[entry["db_id"]].toatoms()
        assert atoms.get_chemical_formula() == ref.get_chemical_formula()
        assert np.allclose(atoms.cell.cellpar(), ref.cell.cellpar(), atol=1e-4)


def test_export_extxyz(run_dir, tmp_path):
    (path,) = export(run_dir, 3, "extxyz", tmp_path)
    frames = read(path, index=":")
    assert len(frames) == 3 * len(PRESSURES)
    by_id = {r.id: r for r in db_rows(run_dir)}
    for frame in frames:
        row = by_id[frame.info["db_id"]]
        assert frame.info["pressure_gpa"] == pytest.approx(row.pressure_gpa)
        assert frame.info["enthalpy_per_atom"] == pytest.approx(row.enthalpy_per_atom, abs=1e-9)
        assert frame.info["spacegroup"] > 0 and row.role == "search" and row.unique
        assert frame.get_chemical_formula() == row.formula
    assert [f.info["pressure_gpa"] for f in frames] == sorted(f.info["pressure_gpa"] for f in frames)


def test_export_errors(run_dir, tmp_path):
    with pytest.raises(SetupError) as err:
        export(run_dir, 2, "xyz", tmp_path)
    assert err.value.field == "format" and "cif, poscar, extxyz" in err.value.message
    with pytest.raises(SetupError) as err:
        export(run_dir, 0, "cif", tmp_path)
    assert err.value.field == "top"
    with pytest.raises(SetupError) as err:
        export(tmp_path / "nothing", 2, "cif", tmp_path)
    assert str(tmp_path / "nothing") in err.value.message
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(SetupError):
        summary(tmp_path / "nothing")
