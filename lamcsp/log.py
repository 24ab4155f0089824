"""Messages: the ``lamcsp`` logger hierarchy and a progress helper for long stages.

Library modules only create loggers (``logging.getLogger(__name__)``); progress lines are
``INFO`` and user-facing warnings ``WARNING``. Used as a library, lamcsp therefore prints only
its warnings (Python's last-resort handler) unless the caller configures logging. The CLI calls
:func:`configure`: progress to stderr unless ``--quiet``, warnings to stderr always, and with
``--log FILE`` everything, timestamped, to the file as well.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = "lamcsp"
#: the logger of progress lines that no module owns (the stages' helper)
PROGRESS = f"{ROOT}.progress"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _StderrFormatter(logging.Formatter):
    """Progress lines as they are (the search's format is read by people and scripts);
    warnings and errors prefixed with their level."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text.lstrip()}"
        return text


def configure(*, quiet: bool = False, log_file: str | Path | None = None,
              stream: object = None) -> list[logging.Handler]:
    """Set up the ``lamcsp`` loggers for the command line; the handlers added.

    Python's warnings (``warnings.warn`` from lamcsp's dependencies: ASE, pymatgen, torch) are
    captured too, so that ``--log`` holds them with a timestamp and ``--quiet`` never hides them.

    Args:
        quiet: stderr shows warnings and errors only, no progress lines.
        log_file: also write every message (progress included), timestamped, to this file
            (appended: a resumed run adds to its log).
        stream: where the console messages go (default: ``sys.stderr`` at the time of the call).
    """
    handlers: list[logging.Handler] = []
    console = logging.StreamHandler(stream if stream is not None else sys.stderr)  # type: ignore[arg-type]
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(_StderrFormatter())
    # records logged with extra={"console": False} were printed already (the CLI's error lines)
    console.addFilter(lambda record: getattr(record, "console", True))
    handlers.append(console)
    if log_file is not None:
        fh = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        fh.setLevel(logging.INFO)
        fh.setFormatter(logging.Formatter(FILE_FORMAT))
        handlers.append(fh)
    logging.captureWarnings(True)
    for name in (ROOT, "py.warnings"):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):  # a second main() in one process (tests) replaces the first's
            if getattr(h, "_lamcsp", False):
                logger.removeHandler(h)
                h.close()
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the root logger's handlers (if any) would print each line twice
    for h in handlers:
        h._lamcsp = True  # type: ignore[attr-defined]
        logging.getLogger(ROOT).addHandler(h)
        logging.getLogger("py.warnings").addHandler(h)
    return handlers


def unconfigure() -> None:
    """Remove what :func:`configure` added (closing the log file)."""
    logging.captureWarnings(False)
    for name in (ROOT, "py.warnings"):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if getattr(h, "_lamcsp", False):
                logger.removeHandler(h)
                h.close()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``2 h 05 min``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Stage:
    """Progress of one long stage of ``total`` items: ``step()`` after each item writes
    ``NAME done/total: DETAIL (ELAPSED, about LEFT left)``, at most once every ``every``
    seconds (and always for the last item). The time left is the mean time per item so far
    times the items left.

    Args:
        name: what the stage does (``oracle labels``, ``training``...).
        total: items in the stage.
        write: a line writer (default: ``INFO`` on the ``lamcsp.progress`` logger).
        every: the least seconds between two lines.
        clock: monotonic seconds (a fake one in tests).
    """

    def __init__(self, name: str, total: int, *, write: Callable[[str], None] | None = None,
                 every: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.total = int(total)
        self.write = write if write is not None else logging.getLogger(PROGRESS).info
        self.every = every
        self.clock = clock
        self.start = clock()
        self.done = 0
        self._last: float | None = None

    def left(self) -> float | None:
        """Seconds left (``None`` before the first item is done)."""
        if self.done == 0:
            return None
        return (self.clock() - self.start) / self.done * max(self.total - self.done, 0)

    def step(self, n: int = 1, detail: str = "") -> str | None:
        """``n`` more items done; the line written, or ``None`` when it is too soon for one."""
        self.done += n
        now = self.clock()
        if self.done < self.total and self._last is not None and now - self._last < self.every:
            return None
        self._last = now
        elapsed = duration(now - self.start)
        tail = "done" if self.done >= self.total else f"about {duration(self.left() or 0)} left"
        line = f"{self.name} {self.done}/{self.total}" + (f": {detail}" if detail else "")
        line += f" ({elapsed}, {tail})"
        self.write(line)
        return line


def stage(name: str, total: int, **kw: object) -> Stage:
    """A :class:`Stage` (see there); writes nothing until the first ``step()``."""
    return Stage(name, total, **kw)  # type: ignore[arg-type]
