"""What a campaign needs installed, checked before any work.

Every feature a campaign can name works after README's first install command, or stops the
campaign before its first generation (and before its run directory is made) with one paragraph
naming the field and the extra to install. Packages are looked up, not imported (a heavy import
is paid when the feature runs).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from lamcsp.errors import SetupError

#: how to install what an optional feature needs
DEEPMD_INSTALL = ("`pip install -c constraints.txt \"lamcsp[deepmd]\"`, then rebuild DeePMD-kit's op "
                  "against this torch: `DP_VARIANT=cpu DP_ENABLE_TENSORFLOW=0 pip install -c "
                  "constraints.txt --no-build-isolation --no-deps --force-reinstall --no-binary deepmd-kit "
                  "deepmd-kit==3.2.0` (README, \"DeePMD-kit models\")")
SEVENNET_INSTALL = ("`pip install -c constraints.txt \"lamcsp[sevennet]\"` (sevenn, its pretrained "
                    "checkpoints inside; README, \"SevenNet models\")")
MACE_INSTALL = ("`pip install -c constraints.txt \"lamcsp[mace]\"` in an environment of its own "
                "(`python -m venv --system-site-packages VENV`): mace-torch 0.3.16 pins e3nn 0.4.4, "
                "which the sevennet extra's e3nn cannot share (README, \"MACE models\")")
GPAW_INSTALL = ("`apt-get install libxc-dev libopenblas-dev && pip install pybind11 && pip install "
                "--no-build-isolation \"lamcsp[dft]\"` (GPAW and its PAW setups, gpaw-data)")
#: ASE calculators whose Python package lamcsp can install: name -> (module, how)
ORACLE_PACKAGES: dict[str, tuple[str, str]] = {"gpaw": ("gpaw", GPAW_INSTALL)}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (looked up, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, field: str, feature: str, how: str) -> None:
    """Raise a :class:`SetupError` naming ``field`` unless ``module`` is installed."""
    if not installed(module):
        raise SetupError(field, f"{feature} needs the Python package {module!r}, which is not installed "
                                f"here; install it with {how}. Nothing was run.")


def check_oracle_packages(oracle: dict[str, Any], field: str) -> None:
    """The oracle's package (GPAW...) and a ``module:Class`` calculator's module are installed."""
    if "calculator" in oracle:
        name = str(oracle["calculator"])
        if name.lower() in ORACLE_PACKAGES:
            module, how = ORACLE_PACKAGES[name.lower()]
            require(module, field, f"the {name} oracle", how)
        elif ":" in name:
            require(name.partition(":")[0], field, f"the oracle {name}", "pip (it is your own calculator)")
    else:  # a command's output is read with dpdata (a core dependency)
        require("dpdata", field, "a command oracle", "`pip install dpdata`")


def _check_model(model: Any, where: str) -> None:
    """The packages of one model section (``model`` or ``rescore.model``)."""
    if model.backend == "deepmd":
        require("deepmd", f"{where}.backend", "the deepmd model backend", DEEPMD_INSTALL)
    if model.backend == "sevennet":
        require("sevenn", f"{where}.backend", "the sevennet model backend", SEVENNET_INSTALL)
    if model.backend == "mace":
        require("mace", f"{where}.backend", "the mace model backend", MACE_INSTALL)
    if model.backend == "ase" and ":" in str(model.options.get("calculator", "")):
        name = str(model.options["calculator"])
        require(name.partition(":")[0], f"{where}.options.calculator", f"the calculator {name}",
                "pip (it is your own calculator)")


def check_campaign(campaign: Any) -> None:
    """Every package the campaign's features need is installed, else a :class:`SetupError`
    naming the field and the extra to install (before any work)."""
    _check_model(campaign.model, "model")
    rescore = getattr(campaign, "rescore_model", None)
    if rescore is not None and not campaign.rescore_is_default:  # the default steps aside (Search.begin)
        _check_model(rescore, "rescore.model")
    if campaign.finetune.enabled:
        check_oracle_packages(campaign.finetune.oracle, "finetune.oracle")
        require("dpdata", "finetune.enabled", "the fine-tune loop", "`pip install dpdata`")
    if campaign.verify_enabled:
        check_oracle_packages(campaign.verify_oracle,
                              "verify.oracle" if campaign.verify.oracle is not None else "finetune.oracle")
