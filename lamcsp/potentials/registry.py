"""Model specs to potentials: ``chgnet``, ``chgnet:0.3.0``, ``chgnet:PATH``,
``deepmd:PATH[@HEAD]``, ``sevennet[:NAME|PATH][@MODAL]``, ``mace:PATH[@HEAD]``, ``emt``,
``ase:NAME`` (any ASE calculator by name or ``module:Class``), ``lj``, ``morse``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lamcsp.device import resolve_device
from lamcsp.errors import SetupError
from lamcsp.potentials.base import Potential


def _chgnet(arg: str | None, device: str, **kw: Any) -> Potential:
    from lamcsp.potentials.chgnet import CHGNetPotential

    version = kw.pop("version", None)  # a pretrained version by name, e.g. {version: "0.2.0"}
    if arg and version:
        raise SetupError("model.options.version", f"give a model file ({arg}) or a version "
                                                  f"({version}), not both")
    return CHGNetPotential(model=arg or version or "0.3.0", device=resolve_device(device), **kw)


def _deepmd(arg: str | None, device: str, **kw: Any) -> Potential:
    from lamcsp.potentials.deepmd import DeePMDPotential, split_spec

    if not arg:
        raise SetupError("model.path", "the deepmd backend needs a model file: deepmd:PATH[@HEAD], or "
                                       "model: {backend: deepmd, path: model.pt, head: NAME}")
    path, head = split_spec(arg)
    if head is not None and kw.get("head") not in (None, head):
        raise SetupError("model.head", f"two heads given: {head!r} in the spec and {kw['head']!r}")
    if head is not None:
        kw["head"] = head
    return DeePMDPotential(path, device=resolve_device(device), **kw)


def _sevennet(arg: str | None, device: str, **kw: Any) -> Potential:
    from lamcsp.extras import SEVENNET_INSTALL, require

    require("sevenn", "model.backend", "the sevennet model backend", SEVENNET_INSTALL)
    from lamcsp.potentials.sevennet import SevenNetPotential, split_spec

    name, modal = split_spec(arg) if arg else ("7net-0", None)
    if modal is not None and kw.get("modal") not in (None, modal):
        raise SetupError("model.modal", f"two modals given: {modal!r} in the spec and {kw['modal']!r}")
    if modal is not None:
        kw["modal"] = modal
    return SevenNetPotential(name, device=resolve_device(device), **kw)


def _mace(arg: str | None, device: str, **kw: Any) -> Potential:
    from lamcsp.potentials.mace import MACEPotential, split_spec

    if not arg:
        raise SetupError("model.path", "the mace backend needs a model file: mace:PATH[@HEAD], or "
                                       "model: {backend: mace, path: MODEL.model, head: NAME}")
    path, head = split_spec(arg)
    if head is not None and kw.get("head") not in (None, head):
        raise SetupError("model.head", f"two heads given: {head!r} in the spec and {kw['head']!r}")
    if head is not None:
        kw["head"] = head
    return MACEPotential(path, device=resolve_device(device), **kw)


def _ase(arg: str | None, device: str, **kw: Any) -> Potential:
    from lamcsp.potentials.ase_calc import (
        ASECalculatorPotential,
        known_numbers,
        make_ase_calculator,
    )

    if not arg:
        raise SetupError("model", "ase backend needs a calculator name, e.g. ase:emt")
    return ASECalculatorPotential(
        make_ase_calculator(arg, **kw), name=arg, numbers=known_numbers(arg)
    )


def _emt(arg: str | None, device: str, **kw: Any) -> Potential:
    return _ase("emt", device, **kw)


def _lj(arg: str | None, device: str, **kw: Any) -> Potential:
    from lamcsp.potentials.pair import LennardJones

    return LennardJones(device=resolve_device(device), **kw)


def _morse(arg: str | None, device: str, **kw: Any) -> Potential:
    from lamcsp.potentials.pair import Morse

    return Morse(device=resolve_device(device), **kw)


BACKENDS: dict[str, Callable[..., Potential]] = {
    "chgnet": _chgnet,
    "deepmd": _deepmd,
    "sevennet": _sevennet,
    "mace": _mace,
    "ase": _ase,
    "emt": _emt,
    "lj": _lj,
    "morse": _morse,
}


#: backends whose pretrained models a campaign names with ``model.name``
NAMED_BACKENDS = ("sevennet",)

#: constructor arguments the model section sets itself, never through ``model.options``
_SET_BY_SECTION = {"self", "device", "model", "path", "modal"}


def backend_options(backend: str) -> list[str] | None:
    """The ``model.options`` keys ``backend`` takes: its constructor's keyword arguments, less
    those the model section sets (``device``, the model file); None for ``ase``, whose options
    are those of the calculator it names (checked when that is built).

    Raises:
        SetupError: an unknown backend.
    """
    import inspect

    if backend not in BACKENDS:
        raise SetupError("model.backend", f"unknown model backend {backend!r}; known: "
                                          f"{', '.join(sorted(BACKENDS))}")
    if backend == "ase":
        return None
    if backend == "emt":
        from ase.calculators.emt import EMT

        return sorted(EMT.default_parameters)
    if backend == "chgnet":
        from lamcsp.potentials.chgnet import CHGNetPotential as cls

        extra = ["version"]  # a pretrained version by name (_chgnet)
    elif backend == "deepmd":
        from lamcsp.potentials.deepmd import DeePMDPotential as cls  # type: ignore[assignment]

        extra = []
    elif backend == "sevennet":
        from lamcsp.potentials.sevennet import SevenNetPotential as cls  # type: ignore[assignment]

        extra = []
    elif backend == "mace":  # the module imports mace-torch only when a model is loaded
        from lamcsp.potentials.mace import MACEPotential as cls  # type: ignore[assignment]

        extra = []
    else:
        from lamcsp.potentials import pair

        cls = {"lj": pair.LennardJones, "morse": pair.Morse}[backend]  # type: ignore[assignment]
        extra = []
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name not in _SET_BY_SECTION
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)] + extra


def load_potential(spec: str = "chgnet", device: str = "auto", **kwargs: Any) -> Potential:
    """A potential from a model spec ``BACKEND[:ARG]``.

    Args:
        spec: ``chgnet`` (default: the pretrained 0.3.0 weights shipped in the chgnet
            package), ``chgnet:PATH`` (a CHGNet checkpoint), ``deepmd:PATH[@HEAD]`` (a
            DeePMD-kit ``.pt``/``.pth`` model and its head), ``sevennet[:NAME|PATH][@MODAL]``
            (``7net-0`` by default, ``7net-mf-0@PBE``, ``7net-l3i5``, or a checkpoint file),
            ``emt``, ``ase:NAME``,
            DeePMD-kit ``.pt``/``.pth`` model and its head), ``mace:PATH[@HEAD]`` (a MACE
            ``.model`` file and its head), ``emt``, ``ase:NAME``,
            ``lj`` or ``morse`` (parameters as keyword arguments).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        kwargs: passed to the backend.

    Raises:
        SetupError: unknown backend, missing model file, or unusable device.
    """
    backend, _, arg = spec.partition(":")
    backend = backend.strip().lower()
    if backend not in BACKENDS:
        raise SetupError(
            "model",
            f"unknown model backend {backend!r} in {spec!r}; known backends: "
            f"{', '.join(sorted(BACKENDS))}",
        )
    return BACKENDS[backend](arg or None, device, **kwargs)


def load_model(spec: Any) -> Potential:
    """The potential of a campaign's ``model`` section (:class:`lamcsp.campaign.ModelSpec`).

    ``backend`` and ``path`` (or ``name``, a pretrained model) make the spec string
    (``chgnet:PATH``, ``sevennet:7net-0``); ``head`` and ``modal`` go to the backends that have
    them; ``options`` are the backend's keyword arguments (``calculator`` names the ASE
    calculator of ``ase``).

    Raises:
        SetupError: as :func:`load_potential`, or options the backend does not take, named
            ``model.options``.
    """
    options = dict(spec.options)
    if spec.backend == "ase":
        name = options.pop("calculator", None)
        if not name:
            raise SetupError("model.options.calculator", "the ase backend needs a calculator name, "
                                                         "e.g. {calculator: emt}")
        text = f"ase:{name}"
    else:
        text = spec.backend + (f":{spec.path or spec.name}" if spec.path or spec.name else "")
    if spec.name is not None and spec.backend not in NAMED_BACKENDS:
        raise SetupError("model.name", f"the {spec.backend} backend has no pretrained models by name; "
                                       "model.name is for sevennet (a chgnet version is "
                                       "model.options.version)")
    if spec.modal is not None:
        if spec.backend != "sevennet":
            raise SetupError("model.modal", f"the {spec.backend} backend has no modals; model.modal is the "
                                            "fidelity of a multi-fidelity SevenNet model (backend: sevennet)")
        options["modal"] = spec.modal
    if spec.head is not None:
        if spec.backend not in ("deepmd", "mace"):
            raise SetupError("model.head", f"the {spec.backend} backend has no heads; model.head is for "
                                           "multi-head DeePMD-kit and MACE models (backend: deepmd or mace)")
        options["head"] = spec.head
    try:
        return load_potential(text, device=spec.device, **options)
    except TypeError as exc:
        raise SetupError("model.options", f"the {spec.backend} backend does not take these options "
                                          f"({exc})") from None
