"""Runs many ``lamcsp`` command lines in one process (the CLI's import cost, paid once), for
tests/test_bad_inputs.py: ``python bad_inputs_runner.py CASES.json RESULTS.json``. Each case is an
argv list; each result is its exit status and what it wrote to stderr (a traceback if it raised)."""

import contextlib
import io
import json
import sys
import traceback


def run(argv: list[str]) -> dict:
    from lamcsp.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse's errors
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - what the corpus looks for
            traceback.print_exc(file=err)
            rc = 1
    return {"rc": rc, "stderr": err.getvalue()}


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as fh:
        cases = json.load(fh)
    results = [run(argv) for argv in cases]
    with open(sys.argv[2], "w", encoding="utf-8") as fh:
        json.dump(results, fh)
