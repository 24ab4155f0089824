"""Messages (lamcsp.log): --quiet hides progress lines, never warnings; --log FILE holds both,
timestamped; the progress helper's estimate of the time left."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from lamcsp.log import Stage, duration

CAMPAIGN = """\
name: log-emt
seed: 3
system: {composition: Cu, formula_units: [1], pressures: [0.0, 5.0]}
generators:
  - {name: random, share: 0.5}
  - {name: cannot-build, share: 0.5}
population: 2
generations: 1
stop: {patience: null}
model: {backend: emt, device: cpu}
relax: {fmax: 0.05, max_steps: 60}
report: {scan_points: 2, scan_top: 1}
"""

# a generator that cannot build this composition (as a template source without it): the search
# goes on with the other generator and warns once per unit
RUNNER = textwrap.dedent("""\
    import sys
    from lamcsp.errors import SetupError
    from lamcsp.generators.base import register
    from lamcsp.generators.symmetric import SymmetricRandom

    class CannotBuild(SymmetricRandom):
        def propose(self, n, rng, context):
            raise SetupError("source", "no structure of this composition")

    register("cannot-build")(lambda **kw: CannotBuild(**kw))
    from lamcsp.cli import main
    sys.exit(main(sys.argv[1:]))
""")

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def test_quiet_search_shows_warnings_and_the_log_holds_everything(tmp_path):
    (tmp_path / "c.yaml").write_text(CAMPAIGN)
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "runner.py", "--log", "run.log", "search", "c.yaml", "-o", "run",
                           "--quiet"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "generation 1/1" not in err and "pressure scan" not in err  # no progress lines
    assert "warning: cannot-build built nothing for Cu @ 0 GPa" in err, err
    lines = (tmp_path / "run.log").read_text().splitlines()
    stamped = [ln for ln in lines if STAMP.match(ln)]
    assert any("INFO" in ln and "generation 1/1" in ln for ln in stamped), lines
    assert any("WARNING" in ln and "cannot-build built nothing" in ln for ln in stamped), lines
    # a long single stage (the pressure scan: 2 polymorphs at most x 2 pressures) with its estimate
    assert any(re.search(r"pressure scan 1/\d+ \(.*about .* left\)", ln) for ln in stamped), lines
    assert any(re.search(r"pressure scan (\d+)/\1 \(.*done\)", ln) for ln in stamped), lines
    # the same command without --quiet shows the progress on stderr, not timestamped
    again = subprocess.run([sys.executable, "runner.py", "search", "c.yaml", "-o", "run2"], cwd=tmp_path,
                           capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "generation 1/1" in again.stderr and "warning: cannot-build" in again.stderr
    assert not any(STAMP.match(ln) for ln in again.stderr.splitlines())


def test_stage_estimates_the_time_left_from_the_mean_time_per_item():
    now = [100.0]
    lines: list[str] = []
    st = Stage("labels", 10, write=lines.append, every=5.0, clock=lambda: now[0])
    assert st.left() is None
    now[0] += 2.0
    assert st.step() == "labels 1/10 (2 s, about 18 s left)"  # the first item always says
    now[0] += 2.0
    assert st.step() is None  # 2 s after the last line: too soon
    now[0] += 4.0  # 3 items in 8 s
    assert st.step(detail="x") == "labels 3/10: x (8 s, about 19 s left)"
    assert st.left() == 8.0 / 3 * 7
    now[0] += 1.0
    assert st.step(7) == "labels 10/10 (9 s, done)"  # the last one always says
    assert lines == ["labels 1/10 (2 s, about 18 s left)", "labels 3/10: x (8 s, about 19 s left)",
                     "labels 10/10 (9 s, done)"]
    assert [duration(s) for s in (0.4, 59, 200, 7500)] == ["0 s", "59 s", "3 min 20 s", "2 h 05 min"]


def test_library_use_prints_no_progress_by_default():
    """Importing lamcsp configures nothing: its loggers inherit Python's default (WARNING)."""
    import logging

    import lamcsp.search  # noqa: F401
    import lamcsp.verify  # noqa: F401

    for name in ("lamcsp", "lamcsp.search", "lamcsp.verify", "lamcsp.progress"):
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING), name
    assert not logging.getLogger("lamcsp").handlers
