"""The template generator: the campaign's elements substituted into known structures.

CSPBench found template-based methods (substitution into known prototypes) far more often
right about the space group than any de novo search; a swarm that starts from the few
prototypes a composition's neighbours adopt spends its budget where ground states are. For
each composition :class:`TemplateGenerator`

1. reads the templates once (a folder of structure files, one file, an ASE database, or a JSON
   list in the MP-20 format of ``benchmarks/data``: ``[{"material_id", "cif"}, ...]``), leaving
   out those named in ``exclude`` (ids, file stems or reduced formulas: a benchmark leaves its
   target out);
2. keeps those whose atom counts per species are the campaign's composition times one of its
   formula units, up to a permutation of the species (AB2 templates for a CaF2 campaign, with
   either element on either site where the counts allow);
3. scores every assignment of the campaign's elements to a template's species by how close
   their Mendeleev numbers (Pettifor's chemical scale, pymatgen's ``Element.mendeleev_no``) are,
   ``exp(-sum |ΔM| / SCALE)``: elements close on the scale adopt the same structures (Pettifor's
   structure maps), so the assignment that keeps the chemistry is drawn first;
4. scales each substituted cell to the campaign's volume estimate (``volume_factor`` × the sum
   of the element volumes, as the random generator does), keeping the template's shape.

Each call draws, by score, among the (template, assignment) pairs not proposed before, so a
template is proposed once per composition; when every pair has been proposed the generator
returns nothing more (the rest of the campaign's mix goes on). Candidates carry the template's
name and the substitution in ``origin``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lamcsp.generators.base import Candidate, GenerationContext, GeneratorBase, register

from lamcsp.errors import SetupError

#: Mendeleev-number distance that divides an assignment's weight by e
SCALE = 10.0
#: file endings read from a template folder
STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".xyz", ".extxyz", ".json", ".db")


def _mendeleev(z: int) -> float:
    from pymatgen.core.periodic_table import Element

    m = Element.from_Z(int(z)).mendeleev_no
    return float(m) if m is not None else float(z)


def read_templates(source: str | Path, exclude: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """``(name, atoms)`` of every structure in ``source``, those named in ``exclude`` (names or
    reduced formulas) left out.

    Raises:
        SetupError: ``source`` does not exist or a file cannot be read as structures.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise SetupError("source", f"template source {str(path)!r} does not exist")
    files = (sorted(p for p in path.iterdir() if p.suffix.lower() in STRUCTURE_SUFFIXES
                    or p.name.upper().startswith(("POSCAR", "CONTCAR")))
             if path.is_dir() else [path])
    out: list[tuple[str, Any]] = []
    for f in files:
        try:
            out.extend(_read_file(f))
        except SetupError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure names the file
            raise SetupError("source",
                             f"cannot read templates from {str(f)!r}: {type(exc).__name__}: {exc}") from exc
    skip = {str(e) for e in exclude}
    return [(name, a) for name, a in out
            if name not in skip and a.get_chemical_formula(mode="reduce") not in skip]


def _read_file(f: Path) -> list[tuple[str, Any]]:
    import ase.io

    if f.suffix.lower() == ".db":
        import ase.db

        with ase.db.connect(str(f)) as db:
            return [(str(row.get("key", f"{f.stem}-{row.id}")), row.toatoms()) for row in db.select()]
    if f.suffix.lower() == ".json":
        data = json.loads(f.read_text())
        if isinstance(data, list) and data and isinstance(data[0], dict) and "cif" in data[0]:
            from pymatgen.core import Structure
            from pymatgen.io.ase import AseAtomsAdaptor

            return [(str(d.get("material_id", f"{f.stem}-{i}")),
                     AseAtomsAdaptor.get_atoms(Structure.from_str(d["cif"], fmt="cif")))
                    for i, d in enumerate(data)]
    images = ase.io.read(str(f), index=":")
    return [(f.stem if len(images) == 1 else f"{f.stem}-{i}", a) for i, a in enumerate(images)]


@register("template")
class TemplateGenerator(GeneratorBase):
    """Substitutes the campaign's elements into known structures (module docstring).

    Options:
        source: a folder of structure files (CIF, POSCAR, extxyz...), one file, an ASE database
            or an MP-20-style JSON list (required).
        exclude: names (ids, file stems) or reduced formulas of templates to leave out.
        max_templates: at most this many (template, assignment) pairs per composition, the best
            scored (default: all).
    """

    name = "template"

    def __init__(self, source: str | None = None, exclude: Sequence[str] = (),
                 max_templates: int | None = None):
        if source is None:
            raise SetupError("source", "the template generator needs `source`: a folder of structure "
                                       "files, a file, an ASE database or an MP-20-style JSON list")
        if isinstance(exclude, str) or not all(isinstance(e, str) for e in exclude):
            raise SetupError("exclude", f"must be a list of template names or formulas, got {exclude!r}")
        if max_templates is not None and (isinstance(max_templates, bool)
                                          or not isinstance(max_templates, int) or max_templates < 1):
            raise SetupError("max_templates", f"must be a positive integer or null, got {max_templates!r}")
        if not Path(str(source)).expanduser().exists():
            raise SetupError("source", f"template source {str(source)!r} does not exist")
        self.source = str(source)
        self.exclude = list(exclude)
        self.max_templates = max_templates
        self._templates: list[tuple[str, Any]] | None = None
        #: per composition key: the (template, assignment) pairs and their weights
        self._pairs: dict[str, list[tuple[int, tuple[tuple[int, int], ...], float]]] = {}
        #: (composition, template name, assignment) keys already proposed
        self.used: set[str] = set()

    def templates(self) -> list[tuple[str, Any]]:
        if self._templates is None:
            self._templates = read_templates(self.source, self.exclude)
        return self._templates

    def pairs(self, context: GenerationContext) -> list[tuple[int, tuple[tuple[int, int], ...], float]]:
        """Every (template index, species assignment ``((template Z, campaign Z), ...)``,
        weight) that fits the composition at one of its formula units, best first."""
        from ase.data import atomic_numbers

        comp = {int(atomic_numbers[e]) if isinstance(e, str) else int(e): int(n)
                for e, n in context.composition.items()}
        key = _comp_key(comp, context.formula_units)
        if key in self._pairs:
            return self._pairs[key]
        targets = [{z: n * fu for z, n in comp.items()} for fu in context.formula_units]
        found: list[tuple[int, tuple[tuple[int, int], ...], float]] = []
        for t, (_, atoms) in enumerate(self.templates()):
            zs, counts = np.unique(atoms.numbers, return_counts=True)
            if len(zs) != len(comp):
                continue
            have = dict(zip(zs.tolist(), counts.tolist()))
            for want in targets:
                if sorted(have.values()) != sorted(want.values()):
                    continue
                for perm in itertools.permutations(want):
                    if all(have[a] == want[b] for a, b in zip(have, perm)):
                        d = sum(abs(_mendeleev(a) - _mendeleev(b)) for a, b in zip(have, perm))
                        found.append((t, tuple(zip(have, perm)), math.exp(-d / SCALE)))
        found.sort(key=lambda p: -p[2])
        if self.max_templates is not None:
            found = found[: self.max_templates]
        self._pairs[key] = found
        return found

    def propose(self, n: int, rng: np.random.Generator, context: GenerationContext) -> list[Candidate]:
        from lamcsp.generators.symmetric import default_element_volume

        pairs = self.pairs(context)
        key = _comp_key(context.composition, context.formula_units)
        templates = self.templates()
        fresh = [p for p in pairs if _pair_key(key, templates[p[0]][0], p[1]) not in self.used]
        if not fresh:
            return []
        w = np.array([p[2] for p in fresh])
        picks = rng.choice(len(fresh), size=min(n, len(fresh)), replace=False, p=w / w.sum())
        out = []
        for i in picks:
            t, assignment, weight = fresh[int(i)]
            name, atoms = templates[t]
            a = atoms.copy()
            mapping = dict(assignment)
            a.numbers = np.array([mapping[int(z)] for z in a.numbers])
            volume = context.volume_factor * sum(
                context.element_volumes.get(int(z), default_element_volume(int(z))) for z in a.numbers)
            a.set_cell(a.cell.array * (volume / a.get_volume()) ** (1.0 / 3.0), scale_atoms=True)
            c = Candidate.from_atoms(a)
            c.generator = self.name
            c.origin.update({"template": name, "substitution": {str(k): int(v) for k, v in assignment},
                             "template_weight": float(weight)})
            self.used.add(_pair_key(key, name, assignment))
            out.append(c)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"used": sorted(self.used)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.used = set(state.get("used", []))


def _comp_key(composition: Any, formula_units: Sequence[int]) -> str:
    return json.dumps([sorted((str(k), int(v)) for k, v in composition.items()),
                       sorted(int(f) for f in formula_units)])


def _pair_key(comp_key: str, template: str, assignment: tuple[tuple[int, int], ...]) -> str:
    return f"{comp_key}|{template}|{list(assignment)}"
