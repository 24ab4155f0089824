"""Duplicate removal: within a population, and against what is already stored.

Cheap test first, expensive test second (pymatgen's ``group_structures`` idea):

1. **composition**: only structures with the same reduced composition can be duplicates
   (atom counts may differ: a supercell duplicates its primitive cell);
2. **enthalpy** (optional): two structures whose enthalpies per atom differ by more than
   ``energy_tol`` are never duplicates;
3. **fingerprint distance** (numba, :mod:`lamcsp.kernels.fingerprints`): a pair is a candidate
   duplicate when its distance is under ``sim_threshold`` (CALYPSO's ``SimThreshold``) or,
   where both enthalpies are known and the matcher confirms, when they lie within
   ``energy_tol`` whatever the distance;
4. **StructureMatcher.fit** on the candidate pairs only, closest first, each structure's
   reduced cell computed once (:meth:`Deduper.matches`; ``use_matcher=False`` takes the
   fingerprint's word instead). The pairs are asked in bulk through a
   :class:`~lamcsp.generators.dedupe_pairs.Confirm`, here or on other processes
   (:mod:`lamcsp.generators.dedupe_pairs`).

Why relaxed structures bypass the threshold: two relaxations of one structure often end a few
per cent apart in cell shape on a soft energy landscape. On the lowest 25 unique structures of
37 CHGNet searches (the CSP benchmark's <= 6-site targets, 300 relaxations each), 394 pairs
within 30 meV/atom matched by StructureMatcher; only 12 % of them lay under the bcm threshold
0.04 (median 0.08; 0.2 would have caught 94 %, but also passes 82 % of the pairs that do not
match, so the threshold cannot separate them). The enthalpy window is the better gate: it cut
the unique count of six of those runs from 956 to 770 structures of 1,800 for 8,400 matcher
calls instead of 960 (10.5 s instead of 2.3 s, against about 500 s of relaxation on the CPU).
Unrelaxed candidates (no enthalpy: the similarity screen before relaxation) keep the
fingerprint gate.

Fingerprints are computed once per structure (:meth:`Deduper.describe` gives
:class:`Fingerprinted` entries) and kept in a :class:`StoredStructures`, which grows by
``append``/``extend`` without recomputing anything; both are plain data (``to_dict`` /
``from_dict``) so they go into checkpoints and across MPI ranks.

Distances, with the pair weights ``w_AB = N_A N_B / Σ N_A N_B`` of Oganov and Valle:

* ``"bcm"`` (default): ``sqrt(Σ_AB w_AB mean_l (Q_l - Q'_l)²)``, in ``[0, 1]``. Default
  threshold 0.04: on Si and NaCl polymorphs (fcc, hcp, bcc, sc, diamond, lonsdaleite, β-tin,
  rocksalt, CsCl, zincblende, wurtzite) a 0.1 Å rattle or a 1 % strain stays under 0.04 while
  distinct polymorphs are at 0.05 (fcc–hcp) and above.
* ``"ov"``: OV's cosine distance ``0.5 (1 - cos)``, in ``[0, 1]``. Default threshold 0.05: a
  0.03 Å rattle stays under it; polymorphs sit near 0.1 (fcc–hcp, zincblende–wurtzite) and
  above, except those with the same first shells (diamond–lonsdaleite: 0.013), which only
  the matcher tells apart. The narrow Gaussians (σ = 0.03 Å) make it sensitive to strain
  (1 % gives about 0.1), so it suits relaxed structures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from lamcsp.generators.base import Candidate
from lamcsp.generators.dedupe_pairs import Confirm, InProcess, representatives
from lamcsp.generators.fingerprinted import (  # noqa: F401  (importable from here, as before)
    CompositionKey,
    Fingerprinted,
    StoredStructures,
    composition_key,
)
from lamcsp.kernels.fingerprints import (
    DEFAULT_LS,
    bcm_fingerprints,
    fingerprint_distance_matrix,
    fingerprint_distances,
    ov_fingerprints,
    pair_weights,
)

from lamcsp.errors import SetupError

DEFAULT_SIM_THRESHOLD = {"bcm": 0.04, "ov": 0.05}
_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "bcm": {"ls": DEFAULT_LS, "cutoff": 5.0},
    "ov": {"r_max": 6.0, "delta": 0.08, "sigma": 0.03},
}
_METRIC = {"bcm": "euclidean", "ov": "cosine"}

class Deduper:
    """Finds duplicate structures: composition, then fingerprint distance, then StructureMatcher.

    Args:
        sim_threshold: fingerprint distance under which two structures are candidate
            duplicates (CALYPSO's ``SimThreshold``); ``None``: :data:`DEFAULT_SIM_THRESHOLD`
            of the fingerprint (see the module docstring for the scales).
        fingerprint: ``"bcm"`` (CALYPSO's bond characterization matrix) or ``"ov"``
            (Oganov–Valle).
        use_matcher: confirm candidate pairs with pymatgen's ``StructureMatcher``; ``False``
            takes every pair under the threshold as a duplicate.
        ltol, stol, angle_tol: ``StructureMatcher`` tolerances (pymatgen's defaults).
        energy_tol: pairs whose enthalpies per atom differ by more than this (eV/atom) are
            never duplicates; ``None`` disables the check (it also applies only where both
            energies are known). With the matcher on, pairs within it are matched whatever
            their fingerprint distance (relaxed copies: see the module docstring).
        fingerprint_options: keyword arguments of the fingerprint function
            (``bcm_fingerprints``: ``ls``, ``cutoff``; ``ov_fingerprints``: ``r_max``,
            ``delta``, ``sigma``), over the defaults.
        matcher_options: further ``StructureMatcher`` keyword arguments.

    Attributes:
        n_matcher_calls: ``StructureMatcher.fit`` calls made so far (cumulative).
        n_fingerprint_pairs: pairs compared by fingerprint distance so far (cumulative).
    """

    def __init__(
        self,
        sim_threshold: float | None = None,
        fingerprint: str = "bcm",
        use_matcher: bool = True,
        ltol: float = 0.2,
        stol: float = 0.3,
        angle_tol: float = 5.0,
        energy_tol: float | None = 0.01,
        fingerprint_options: dict[str, Any] | None = None,
        matcher_options: dict[str, Any] | None = None,
    ):
        if fingerprint not in _DEFAULT_OPTIONS:
            raise SetupError("fingerprint", f"unknown fingerprint {fingerprint!r}; allowed: 'bcm', 'ov'")
        if sim_threshold is None:
            sim_threshold = DEFAULT_SIM_THRESHOLD[fingerprint]
        if not (isinstance(sim_threshold, (int, float)) and sim_threshold > 0):
            raise SetupError("sim_threshold", f"must be a number > 0, got {sim_threshold!r}")
        if energy_tol is not None and not energy_tol >= 0:
            raise SetupError("energy_tol", f"must be >= 0 eV/atom or None, got {energy_tol!r}")
        options = dict(_DEFAULT_OPTIONS[fingerprint])
        unknown = set(fingerprint_options or {}) - set(options)
        if unknown:
            raise SetupError(
                "fingerprint_options",
                f"unknown options {sorted(unknown)} for {fingerprint!r}; allowed: {sorted(options)}",
            )
        options.update(fingerprint_options or {})
        self.sim_threshold = float(sim_threshold)
        self.fingerprint = fingerprint
        self.fingerprint_options = options
        self.use_matcher = bool(use_matcher)
        self.energy_tol = None if energy_tol is None else float(energy_tol)
        self.matcher_options = {"ltol": ltol, "stol": stol, "angle_tol": angle_tol, **(matcher_options or {})}
        self._matcher: Any = None
        self.n_matcher_calls = 0
        self.n_fingerprint_pairs = 0

    @property
    def signature(self) -> dict[str, Any]:
        """The fingerprint settings, plain data; stored fingerprints are comparable only under equal ones."""
        opts = {k: (list(v) if isinstance(v, (tuple, list, np.ndarray)) else v)
                for k, v in self.fingerprint_options.items()}
        return {"fingerprint": self.fingerprint, **opts}

    def new_store(self) -> StoredStructures:
        """An empty :class:`StoredStructures` tagged with this deduper's settings."""
        return StoredStructures(self.signature)

    # -- describing -------------------------------------------------------------------------

    def describe(
        self, items: Sequence[Any], energies: Sequence[float | None] | None = None
    ) -> list[Fingerprinted]:
        """Fingerprint a list of structures (batched per element set).

        Args:
            items: ``Candidate``, ASE ``Atoms``, pymatgen ``Structure`` or ``Fingerprinted``
                (kept as they are, energies aside).
            energies: enthalpy per atom of each item, eV (``None`` entries allowed).

        Returns:
            One :class:`Fingerprinted` per item, in order.
        """
        energies = self._check_energies(items, energies)
        out: list[Fingerprinted | None] = [None] * len(items)
        todo: dict[tuple[int, ...], list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = {}
        for k, item in enumerate(items):
            if isinstance(item, Fingerprinted):
                e = item.energy if energies[k] is None else energies[k]
                out[k] = dataclasses.replace(item, energy=e) if e != item.energy else item
                continue
            numbers, frac, lattice = _as_arrays(item, k)
            todo.setdefault(tuple(sorted(set(numbers.tolist()))), []).append((k, numbers, frac, lattice))
        fn = bcm_fingerprints if self.fingerprint == "bcm" else ov_fingerprints
        for elements, group in todo.items():
            pos = np.concatenate([f @ lat for _, _, f, lat in group])
            cells = np.stack([lat for *_, lat in group])
            counts = [len(z) for _, z, _, _ in group]
            nums = np.concatenate([z for _, z, _, _ in group])
            fps = fn(pos, cells, counts, nums, list(elements), **self.fingerprint_options)
            for (k, z, f, lat), fp in zip(group, fps):
                out[k] = Fingerprinted(z, f, lat, fp, energies[k])
        return [e for e in out if e is not None]

    # -- deduplicating ----------------------------------------------------------------------

    def unique(
        self, items: Sequence[Any], energies: Sequence[float | None] | None = None,
        confirm: Confirm | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Duplicates within one population.

        Items are taken in order of enthalpy where every item has one (lowest first, so the
        lowest-enthalpy copy is the one kept), otherwise in the given order; each is compared
        with the representatives found before it
        (:func:`~lamcsp.generators.dedupe_pairs.representatives`).

        Args:
            items: as :meth:`describe`.
            energies: enthalpy per atom of each item, eV.
            confirm: answers the matcher's questions (default: :meth:`matches` here).

        Returns:
            ``(unique_indices, duplicate_of)``: the indices of the representatives, ascending;
            ``(n,)`` ints, ``-1`` for a representative, else the index of the representative
            it duplicates.
        """
        entries = self.describe(items, energies)
        n = len(entries)
        dup = np.full(n, -1, dtype=np.int64)
        e_all = [e.energy for e in entries]
        if n and all(e is not None for e in e_all):
            order = np.argsort(np.asarray(e_all, dtype=float), kind="stable")
        else:
            order = np.arange(n)
        groups: dict[CompositionKey, list[int]] = {}
        for k in order:
            groups.setdefault(entries[k].key, []).append(int(k))
        seq: list[int] = []  # the groups one after the other: one greedy pass over all of them
        cands: list[list[int]] = []
        for members in groups.values():
            F = np.stack([entries[k].fingerprint for k in members])
            D = fingerprint_distance_matrix(F, self._weights(entries[members[0]]), _METRIC[self.fingerprint])
            E = _energies([entries[k] for k in members])
            self.n_fingerprint_pairs += len(members) * (len(members) - 1) // 2
            start = len(seq)
            for a, k in enumerate(members):
                cands.append([start + int(b) for b in self._close(entries[k], D[a, :a], E[:a])])
            seq.extend(members)
        confirm = confirm or InProcess(self.matches)

        def ask(asks: list[tuple[int, list[int]]], stop: bool) -> list[list[bool]]:
            questions = [(entries[seq[a]], [entries[seq[b]] for b in bs]) for a, bs in asks]
            return self._confirm(confirm, questions, stop)

        status = representatives(cands, ask, confirm.speculative and self.use_matcher)
        for a, s in enumerate(status):
            if s >= 0:
                dup[seq[a]] = seq[s]
        return np.flatnonzero(dup < 0), dup

    def against(
        self, items: Sequence[Any], stored: StoredStructures | Sequence[Fingerprinted],
        energies: Sequence[float | None] | None = None, confirm: Confirm | None = None,
    ) -> np.ndarray:
        """Duplicates of a population among what is stored: each item's candidates, closest
        first, until one matches (one question per item, all asked together).

        Args:
            items: as :meth:`describe` (pass the ``Fingerprinted`` entries to avoid
                recomputing fingerprints).
            stored: a :class:`StoredStructures`, or a list of ``Fingerprinted``.
            energies: enthalpy per atom of each item, eV.
            confirm: answers the matcher's questions (default: :meth:`matches` here).

        Returns:
            ``(n,)`` ints: the index of the stored entry each item duplicates, or ``-1``.

        Raises:
            SetupError: the store was made with other fingerprint settings.
        """
        if not isinstance(stored, StoredStructures):
            stored = StoredStructures(None, list(stored))
        if stored.signature is not None and stored.signature != self.signature:
            raise SetupError("stored", f"fingerprints were made with {stored.signature}, this deduper uses "
                             f"{self.signature}; recompute them with Deduper.describe")
        entries = self.describe(items, energies)
        out = np.full(len(entries), -1, dtype=np.int64)
        by_key: dict[CompositionKey, list[int]] = {}
        for k, e in enumerate(entries):
            by_key.setdefault(e.key, []).append(k)
        questions: list[tuple[Fingerprinted, list[Fingerprinted]]] = []
        owners: list[tuple[int, np.ndarray]] = []  # the item, and the stored index of each candidate
        for key, members in by_key.items():
            idx, G = stored.group(key)
            if len(idx) == 0:
                continue
            F = np.stack([entries[k].fingerprint for k in members])
            D = fingerprint_distances(F, G, self._weights(entries[members[0]]), _METRIC[self.fingerprint])
            self.n_fingerprint_pairs += D.size
            others = [stored.entries[i] for i in idx]
            E = _energies(others)
            for a, k in enumerate(members):
                close = self._close(entries[k], D[a], E)
                if len(close):
                    questions.append((entries[k], [others[c] for c in close]))
                    owners.append((k, idx[close]))
        answers = self._confirm(confirm or InProcess(self.matches), questions, True)
        for (k, ids), ans in zip(owners, answers):
            if ans and ans[-1]:
                out[k] = ids[len(ans) - 1]
        return out

    def fingerprint_distance(self, a: Fingerprinted, b: Fingerprinted) -> float:
        """Fingerprint distance of two entries of the same composition (as compared with
        ``sim_threshold``); ``inf`` for different compositions."""
        if a.key != b.key or len(a.fingerprint) != len(b.fingerprint):
            return float("inf")
        d = fingerprint_distances(
            a.fingerprint[None], b.fingerprint[None], self._weights(a), _METRIC[self.fingerprint]
        )
        return float(d[0, 0])

    # -- internals --------------------------------------------------------------------------

    def _weights(self, entry: Fingerprinted) -> np.ndarray:
        elements = sorted(set(entry.numbers.tolist()))
        w = pair_weights(elements, entry.numbers)
        per_pair = len(entry.fingerprint) // len(w)
        w = np.repeat(w, per_pair)
        return w / per_pair if self.fingerprint == "bcm" else w

    def _close(self, entry: Fingerprinted, dist: np.ndarray, energies: np.ndarray) -> np.ndarray:
        """Indices of the others (``dist``: their fingerprint distances to ``entry``;
        ``energies``: their enthalpies per atom, NaN where unknown) that pass the cheap tests,
        closest first: the matcher's candidates."""
        close = dist < self.sim_threshold
        if self.energy_tol is not None and entry.energy is not None:
            de = np.abs(energies - entry.energy)  # NaN (unknown) compares False both ways
            close &= ~(de > self.energy_tol)
            if self.use_matcher:
                # relaxed structures: the enthalpy window is the gate and the fingerprint only
                # orders the matcher calls (copies of one relaxed structure often differ by more
                # than the threshold: see the module docstring)
                close |= de <= self.energy_tol
        close = np.flatnonzero(close)
        return close[np.argsort(dist[close], kind="stable")]

    def _confirm(self, confirm: Confirm, questions: list[tuple[Fingerprinted, list[Fingerprinted]]],
                 stop: bool) -> list[list[bool]]:
        """The answers of ``confirm``; without the matcher, the fingerprint's word (yes)."""
        if not self.use_matcher:
            return [[True] if stop else [True] * len(c) for _, c in questions]
        answers = confirm(questions, stop)
        self.n_matcher_calls += sum(len(x) for x in answers)
        return answers

    def matches(self, a: Fingerprinted, b: Fingerprinted) -> bool:
        """``StructureMatcher.fit(a, b)`` with each entry's reduced cell computed once
        (:meth:`Fingerprinted.reduced`, passed with ``skip_structure_reduction``: the same
        reduction ``fit`` would make, so the same answer; ``benchmarks/mpi_scaling.py --part
        dedupe`` checks it). Reduced cells of different sizes never match unless the matcher
        builds supercells or subsets (pymatgen finds that only after copying and masking both);
        matchers that drop species before reducing take the plain path."""
        matcher = self._get_matcher()
        opts = self.matcher_options
        if opts.get("ignored_species"):
            return bool(matcher.fit(a.structure(), b.structure()))
        primitive = bool(opts.get("primitive_cell", True))
        ra, rb = a.reduced(primitive), b.reduced(primitive)
        if len(ra) != len(rb) and not (opts.get("attempt_supercell") or opts.get("allow_subset")):
            return False
        return bool(matcher.fit(ra, rb, skip_structure_reduction=True))

    def _get_matcher(self) -> Any:
        if self._matcher is None:
            from pymatgen.analysis.structure_matcher import StructureMatcher

            try:
                self._matcher = StructureMatcher(**self.matcher_options)
            except TypeError as exc:
                raise SetupError("matcher_options", f"bad StructureMatcher options: {exc}") from exc
        return self._matcher

    @staticmethod
    def _check_energies(items: Sequence[Any], energies: Sequence[float | None] | None) -> list[float | None]:
        if energies is None:
            return [None] * len(items)
        if len(energies) != len(items):
            raise SetupError("energies", f"need one enthalpy per item ({len(items)}), got {len(energies)}")
        return [None if e is None else float(e) for e in energies]


def _energies(entries: Sequence[Fingerprinted]) -> np.ndarray:
    """The entries' enthalpies per atom, NaN where unknown."""
    return np.array([np.nan if e.energy is None else e.energy for e in entries], dtype=float)


def _as_arrays(item: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(item, Candidate):
        return item.numbers, item.frac, item.lattice
    if hasattr(item, "get_scaled_positions") and hasattr(item, "cell"):  # ASE Atoms
        return (np.asarray(item.numbers, dtype=np.int64), item.get_scaled_positions(wrap=False),
                np.asarray(item.cell, dtype=float))
    if hasattr(item, "frac_coords") and hasattr(item, "lattice"):  # pymatgen Structure
        return (np.asarray(item.atomic_numbers, dtype=np.int64), np.asarray(item.frac_coords, dtype=float),
                np.asarray(item.lattice.matrix, dtype=float))
    raise SetupError("items", f"item {k} is a {type(item).__name__}; allowed: Candidate, ase.Atoms, "
                     "pymatgen Structure, Fingerprinted")
