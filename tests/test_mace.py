"""The mace backend. mace-torch 0.3.16 pins e3nn 0.4.4, which the main test environment (sevenn,
DeePMD-kit) cannot share, so the checks that need mace (``mace_checks.py``) run where mace
imports: in this process when it does, else in a second environment made once under the ignored
``build/venv-mace`` (``venv --system-site-packages``, ``pip install -e ".[mace]"``, README's
"MACE models") and reused while the ``mace`` extra in ``pyproject.toml`` is unchanged. The checks
here run in the main environment: without mace the backend is a one-paragraph error naming the
extra."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lamcsp.errors import SetupError
from lamcsp.extras import installed

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "build" / "venv-mace"
#: pip's words for a registry it could not reach (skip), as opposed to any other failure (fail)
OFFLINE = re.compile(r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
                     r"No matching distribution found for (mace-torch|e3nn)|Network is unreachable")

if installed("mace"):
    from mace_checks import *  # noqa: F403 - the checks run here, collected from this module
else:
    def test_without_mace_the_backend_names_the_extra_and_its_own_environment(tmp_path):
        from lamcsp.potentials.registry import load_potential

        (tmp_path / "m.model").write_bytes(b"")
        with pytest.raises(SetupError) as err:
            load_potential(f"mace:{tmp_path / 'm.model'}")
        text = str(err.value)
        assert err.value.field == "model.backend" and "lamcsp[mace]" in text and "environment of its own" in text

    def test_a_campaign_with_a_mace_model_stops_before_work_without_mace(tmp_path):
        from lamcsp.campaign import parse_campaign
        from lamcsp.extras import check_campaign

        (tmp_path / "m.model").write_bytes(b"")
        campaign = parse_campaign({"system": {"composition": "Si2"},
                                   "model": {"backend": "mace", "path": str(tmp_path / "m.model"), "head": "pbe",
                                             "options": {"dtype": "float32"}}})
        with pytest.raises(SetupError) as err:
            check_campaign(campaign)
        assert err.value.field == "model.backend" and "lamcsp[mace]" in str(err.value)

    def _extra_line() -> str:
        return next(line for line in (ROOT / "pyproject.toml").read_text().splitlines()
                    if line.startswith("mace = ["))

    def _mace_python() -> Path:
        """The MACE environment's python, made (once) where missing or stale."""
        python, stamp = VENV / "bin" / "python", VENV / "lamcsp-mace-extra.txt"
        if python.exists() and stamp.exists() and stamp.read_text() == _extra_line():
            return python
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(VENV)],
                       check=True)
        # this python's pip installs into the venv (no second pip, and no bundled setuptools that
        # would shadow the one the editable install builds with); torch comes from the system
        # site, held at the project's version by constraints.txt
        r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                            "-c", str(ROOT / "constraints.txt"), "--no-build-isolation", "-e", f"{ROOT}[mace]"],
                           capture_output=True, text=True)
        if r.returncode:
            shutil.rmtree(VENV, ignore_errors=True)
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
            if OFFLINE.search(r.stdout + r.stderr):
                pytest.skip(f"pip could not reach the package registry to install lamcsp[mace]: {tail}")
            pytest.fail(f"installing lamcsp[mace] into {VENV} failed:\n{tail}")
        stamp.write_text(_extra_line())
        return python

    @pytest.mark.slow
    def test_mace_checks_in_the_mace_environment():
        python = _mace_python()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
                            str(ROOT / "tests" / "mace_checks.py")], cwd=ROOT, capture_output=True, text=True,
                           env=env)
        tail = "\n".join(r.stdout.strip().splitlines()[-30:])
        assert r.returncode == 0, f"mace_checks.py failed in {VENV}:\n{tail}\n{r.stderr[-2000:]}"
        assert re.search(r"\b1[0-9] passed\b", tail) and "failed" not in tail, tail
