"""A regular and an editable install both map generators/, optimizers/, relax/, kernels/
into the lamcsp namespace and install the console script (fresh venvs, no network)."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SUBPACKAGES = ["generators", "optimizers", "relax", "kernels"]

PROBE = textwrap.dedent(
    """
    import importlib.util, json, site, sys
    # -S: no site-packages but the venv's own, so the host's install cannot answer for it
    site.addsitedir(sys.argv[1])
    out = {}
    for name in ["lamcsp", "lamcsp.potentials"] + ["lamcsp." + s for s in SUBPACKAGES]:
        spec = importlib.util.find_spec(name)
        out[name] = spec.origin if spec else None
    print(json.dumps(out))
    """
).replace("SUBPACKAGES", repr(SUBPACKAGES))


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_install_layout(tmp_path, editable):
    import json

    venv = tmp_path / "venv"
    # the venv sees the host's packages only to build (setuptools), offline
    # (--without-pip: the venv's bundled setuptools would shadow the host's; the host's pip
    # installs into it with --python)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True)
    py = venv / "bin" / "python"
    cmd = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
           "--no-build-isolation", "--no-index"]
    cmd += ["-e", ROOT] if editable else [ROOT]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    site_dir = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    probe = subprocess.run([str(py), "-S", "-c", PROBE, site_dir], capture_output=True, text=True,
                           cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    origins = json.loads(probe.stdout)
    for sub in SUBPACKAGES:
        origin = origins[f"lamcsp.{sub}"]
        assert origin is not None, sub
        if editable:
            assert os.path.realpath(origin) == os.path.join(ROOT, sub, "__init__.py")
        else:
            assert origin == os.path.join(site_dir, "lamcsp", sub, "__init__.py")
    assert (venv / "bin" / "lamcsp").exists()  # console script
