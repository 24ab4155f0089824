"""What the fine-tune loop keeps on disk for one chemical system: the labelled frames
(:class:`Dataset`) and the committees trained per iteration (:class:`ModelRegistry`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Dataset", "ModelRegistry"]


class Dataset:
    """Labelled frames of one chemical system under ``root`` (``run/finetune/data/<system>``):
    per iteration a dpdata ``deepmd/npy`` folder (``iter-NNN/npy/<formula>``) and an extxyz
    file with provenance (``iter-NNN/frames.extxyz``: iteration, source, oracle); on
    ``--resume`` the earlier iterations are read back, not labelled again."""

    def __init__(self, root: str | os.PathLike, type_map: Sequence[str]):
        self.root = Path(root)
        self.type_map = list(type_map)

    def iteration_dir(self, it: int) -> Path:
        return self.root / f"iter-{it:03d}"

    def add(self, it: int, frames: Sequence[Any]) -> list[Path]:
        import shutil

        import ase.io

        from lamcsp.potentials.deepmd import write_frames

        d = self.iteration_dir(it)
        d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(d / "npy", ignore_errors=True)  # an interrupted earlier write of this iteration
        tmp = d / "frames.extxyz.tmp"
        ase.io.write(tmp, list(frames), format="extxyz")
        systems = write_frames(frames, d / "npy", self.type_map) if frames else []
        os.replace(tmp, d / "frames.extxyz")
        return systems

    def iterations(self) -> list[int]:
        return sorted(int(p.name[5:]) for p in self.root.glob("iter-*") if (p / "frames.extxyz").is_file())

    def frames(self, upto: int | None = None) -> list[Any]:
        import ase.io

        out = []
        for it in self.iterations():
            if upto is None or it <= upto:
                out += ase.io.read(self.iteration_dir(it) / "frames.extxyz", ":")
        return out

    def systems(self, upto: int | None = None) -> list[Path]:
        out = []
        for it in self.iterations():
            if upto is None or it <= upto:
                out += sorted(
                    p for p in (self.iteration_dir(it) / "npy").glob("*") if (p / "type.raw").is_file()
                )
        return out


# -------------------------------------------------------------------------------- registry


class ModelRegistry:
    """The models of one chemical system (``run/finetune/models.json``): per iteration the
    committee's model files, the parent, the data it was trained on, and its errors against the
    oracle on that iteration's labels. Paths inside ``base`` are stored relative to the
    registry's folder (``../../shared/...`` for a campaign set's shared members) and returned
    absolute, so a moved run folder (or set folder) resumes; paths outside it (a user's model)
    are kept as given.

    Args:
        path: the registry file (``run/finetune/models.json``).
        base: the outermost folder that moves with the run: the run's registry folder
            (default), or a campaign set's folder, which holds the members every campaign
            shares.
    """

    PATHS = ("models", "parent", "data")

    def __init__(self, path: str | os.PathLike, base: str | os.PathLike | None = None):
        self.path = Path(path)
        self.root = self.path.parent.absolute()
        self.base = Path(base).absolute() if base is not None else self.root
        self.entries: list[dict[str, Any]] = json.loads(self.path.read_text()) if self.path.is_file() else []

    def _map(self, entry: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
        out = dict(entry)
        for key in self.PATHS:
            if out.get(key) is not None:
                out[key] = [fn(str(p)) for p in out[key]]
        return out

    def _relative(self, path: str) -> str:
        p = Path(path)
        if not p.is_absolute():
            return path
        try:
            p.relative_to(self.base)
        except ValueError:  # outside the run (a user's model): kept as given
            return path
        return Path(os.path.relpath(p, self.root)).as_posix()

    def _absolute(self, path: str) -> str:
        return path if Path(path).is_absolute() else os.path.normpath(self.root / path)

    def add(self, entry: dict[str, Any]) -> None:
        entry = self._map(entry, self._relative)
        self.entries = [e for e in self.entries if e["iteration"] != entry["iteration"]] + [entry]
        self.entries.sort(key=lambda e: e["iteration"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, default=str))
        os.replace(tmp, self.path)

    def latest(self, before: int | None = None) -> dict[str, Any] | None:
        """The last entry (with absolute paths), or the last of the iterations before ``before``."""
        entries = [e for e in self.entries if before is None or e["iteration"] < before]
        return self._map(entries[-1], self._absolute) if entries else None
