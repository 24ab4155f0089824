"""Tasks for the executor tests: importable by name in relax-worker processes (``tests`` is on
their PYTHONPATH)."""

from __future__ import annotations

import os
import time
from typing import Any


class Square:
    """Each item ``{"x": x, "slow_rank": r, "delay": s}`` gives ``{"y": x*x, "rank": rank}``; the
    worker of rank ``slow_rank`` sleeps ``delay`` seconds per item; ``x == raise_at`` raises."""

    def __init__(self, spec: dict[str, Any], worker: Any):
        self.rank = worker.rank
        self.spec = spec

    def __call__(self, items: list[dict[str, Any]], emit: Any) -> None:
        for j, it in enumerate(items):
            if it["x"] == self.spec.get("raise_at"):
                raise ValueError(f"cannot square {it['x']}")
            time.sleep(self.spec.get("delay", 0.0) if self.rank == self.spec.get("slow_rank") else 0.001)
            emit(j, {"y": it["x"] ** 2, "rank": self.rank, "pid": os.getpid()})
