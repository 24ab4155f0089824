"""Bridges to ASE calculators, both ways.

* :class:`ASECalculatorPotential`: any ASE calculator as a lamcsp :class:`Potential`, one
  structure at a time (for oracles and comparisons; it is not batched).
* :class:`PotentialCalculator`: a lamcsp potential as an ASE calculator, so ASE's optimizers
  can run on exactly the same model (used to check our optimizers against ASE's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import voigt_6_to_full_3x3_stress

from lamcsp.errors import SetupError
from lamcsp.potentials.base import Output, Potential
from lamcsp.relax.state import BatchedState, from_structures, to_atoms

ASE_CALCULATORS: dict[str, Callable[..., Calculator]] = {}


def _emt(**kw: Any) -> Calculator:
    from ase.calculators.emt import EMT

    return EMT(**kw)


def _lj(**kw: Any) -> Calculator:
    from ase.calculators.lj import LennardJones

    return LennardJones(**kw)


ASE_CALCULATORS.update({"emt": _emt, "lj": _lj})


def known_numbers(name: str) -> set[int] | None:
    """Elements a named calculator covers, where ASE tells (EMT); ``None`` otherwise."""
    if name.lower() == "emt":
        from ase.calculators.emt import parameters
        from ase.data import atomic_numbers

        return {atomic_numbers[s] for s in parameters}
    return None


def make_ase_calculator(name: str, *, field: str = "model", **kwargs: Any) -> Calculator:
    """An ASE calculator by name with its keyword arguments: ``emt``, ``lj``, any name ASE's
    ``get_calculator_class`` knows (``gpaw``, ``vasp``, ``espresso``, ``cp2k``, ``abacus`` with
    the ase-abacus plugin, ...), or a ``module:Class`` path. ``field`` names the campaign
    field in errors."""
    factory = ase_calculator_factory(name, field=field)
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise SetupError(field, f"ASE calculator {name!r} refused its options: {exc}") from exc


def ase_calculator_options(name: str) -> list[str] | None:
    """The keyword arguments the ASE calculator ``name`` takes, or None where that cannot be
    told without building it (a factory function, a class taking ``**kwargs`` without
    ``default_parameters``, a calculator that is not installed: checked when it is built).

    A calculator class's own named arguments, its ``default_parameters`` (the parameters ASE's
    ``Calculator`` accepts through ``**kwargs``) and those of ``Calculator`` itself (``label``,
    ``directory``...). ASE keeps unknown keyword arguments of such a calculator without a word,
    so a misspelt option would silently not apply."""
    import inspect

    from ase.calculators.calculator import Calculator

    classes = {"emt": "ase.calculators.emt:EMT", "lj": "ase.calculators.lj:LennardJones"}  # ASE_CALCULATORS'
    try:
        factory = ase_calculator_factory(classes.get(name.lower(), name))
    except SetupError:
        return None
    if not isinstance(factory, type):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)

    def named(fn: Any) -> set[str]:
        return {p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds} - {"self"}

    params = inspect.signature(factory.__init__).parameters.values()
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
    defaults = dict(getattr(factory, "default_parameters", None) or {})
    if takes_any and not defaults:
        return None
    base = named(Calculator.__init__) if issubclass(factory, Calculator) else set()
    return sorted(named(factory.__init__) | set(defaults) | (base if takes_any else set()))


def ase_calculator_factory(name: str, *, field: str = "model") -> Callable[..., Calculator]:
    """What :func:`make_ase_calculator` calls to build the calculator ``name`` (looked up and
    imported, not built)."""
    key = name.lower()
    if key in ASE_CALCULATORS:
        return ASE_CALCULATORS[key]
    if ":" in name:
        import importlib

        mod, _, cls = name.partition(":")
        try:
            return getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError) as exc:
            raise SetupError(field, f"cannot import ASE calculator {name!r}: {exc}") from exc
    from ase.calculators.calculator import get_calculator_class

    try:
        factory = get_calculator_class(key)
    except ImportError as exc:
        raise SetupError(field, f"ASE calculator {name!r} is unknown or not installed here ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - ASE raises various errors for unknown names
        raise SetupError(
            field,
            f"unknown ASE calculator {name!r} ({exc}); give a name ASE knows (emt, lj, gpaw, vasp, "
            "espresso, cp2k, ...) or a 'package.module:ClassName' path",
        ) from exc
    return factory


class ASECalculatorPotential(Potential):
    """Any ASE calculator as a :class:`Potential`, evaluated one structure at a time."""

    def __init__(
        self,
        calculator: Calculator | Callable[[], Calculator],
        name: str = "ase",
        dtype: torch.dtype = torch.float64,
        numbers: set[int] | None = None,
    ):
        """
        Args:
            calculator: an ASE calculator instance, or a zero-argument factory returning one.
            name: calculator name for model ids.
            dtype: dtype of the returned tensors.
            numbers: atomic numbers the calculator covers (checked before work), if known.
        """
        super().__init__(device="cpu", dtype=dtype)
        self.calculator = calculator if isinstance(calculator, Calculator) else calculator()
        self.name = f"ase:{name}"
        self._numbers = numbers

    @property
    def supported_numbers(self) -> set[int] | None:
        """Elements the calculator covers, where known (EMT's parameter table)."""
        return self._numbers

    def forward(self, state: BatchedState) -> Output:
        energies: list[float] = []
        forces: list[np.ndarray] = []
        stresses: list[np.ndarray] = []
        errors: list[str | None] = []
        for atoms in to_atoms(state):
            atoms.calc = self.calculator
            try:
                energies.append(atoms.get_potential_energy())
                forces.append(atoms.get_forces())
                stresses.append(voigt_6_to_full_3x3_stress(atoms.get_stress()))
                errors.append(None)
            except Exception as exc:  # an oracle's failure is data, not a crash
                n = len(atoms)
                energies.append(np.nan)
                forces.append(np.full((n, 3), np.nan))
                stresses.append(np.full((3, 3), np.nan))
                errors.append(f"{type(exc).__name__}: {exc}")
        dev, dt = state.device, state.dtype
        return {
            "energy": torch.as_tensor(np.array(energies), dtype=dt, device=dev),
            "forces": torch.as_tensor(np.concatenate(forces), dtype=dt, device=dev),
            "stress": torch.as_tensor(np.stack(stresses), dtype=dt, device=dev),
            "errors": errors,
        }


class PotentialCalculator(Calculator):
    """A lamcsp :class:`Potential` as an ASE calculator (energy, forces, stress)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, potential: Potential, **kwargs: Any):
        super().__init__(**kwargs)
        self.potential = potential

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        state = from_structures([self.atoms], dtype=self.potential.dtype)
        out = self.potential(state)
        e = float(out["energy"][0])
        s = out["stress"][0].cpu().numpy()
        self.results = {
            "energy": e,
            "free_energy": e,
            "forces": out["forces"].cpu().numpy().copy(),
            "stress": np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]),
        }
