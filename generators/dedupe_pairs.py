"""The matcher's questions of dedupe, asked in bulk so that they can be answered elsewhere.

Dedupe asks ``StructureMatcher`` two kinds of question (:class:`~lamcsp.generators.dedupe.Deduper`):

* **against the store**: for each new structure, its candidate stored structures, closest
  first, until one matches. The new structures are independent, so all of them are one
  :data:`Question` each, asked together.
* **within a generation**: the representatives are chosen greedily, lowest enthalpy first,
  each structure compared with the representatives before it, closest first, until one
  matches. Which earlier structures are representatives depends on earlier answers, so
  :func:`representatives` asks in rounds: each round asks every undecided structure about the
  earlier ones that are, or may yet be, representatives, then decides in order whatever the
  answers allow. The decisions are those of the one-at-a-time greedy pass (the same pairs
  decide), whatever was asked beyond them.

A :class:`Confirm` answers the questions: :class:`InProcess` calls the matcher here, one
structure at a time (``speculative`` false: :func:`representatives` then asks exactly the
pairs the greedy pass needs, no more); ``lamcsp.matching.ExecutorConfirm`` sends them through
an executor's ``map`` to the workers (``speculative`` true: fewer, larger rounds, some answers
unused).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from lamcsp.generators.dedupe import Fingerprinted

__all__ = ["MAX_SPECULATIVE_ROUNDS", "Confirm", "InProcess", "Question", "representatives"]

#: one structure and its candidates, closest first: the matcher is asked ``fit(candidate, structure)``
Question = tuple["Fingerprinted", Sequence["Fingerprinted"]]

#: rounds that stop each question at its first match; after them one round answers every
#: pair that may be needed, which decides all (a bound on the rounds, not a measured optimum)
MAX_SPECULATIVE_ROUNDS = 4

_UNDECIDED = -2
_REP = -1


@runtime_checkable
class Confirm(Protocol):
    """Answers matcher questions. ``speculative``: rounds are dear (answered elsewhere), so
    ask everything that may be needed at once."""

    speculative: bool

    def __call__(self, questions: Sequence[Question], stop: bool = True) -> list[list[bool]]:
        """For each question, ``fit(candidate, structure)`` of its candidates in order, up to
        and including the first ``True`` where ``stop`` (all of them otherwise)."""
        ...


class InProcess:
    """Answers here, with ``matches(candidate, structure)`` (:meth:`Deduper.matches`)."""

    speculative = False

    def __init__(self, matches: Callable[[Fingerprinted, Fingerprinted], bool]):
        self.matches = matches

    def __call__(self, questions: Sequence[Question], stop: bool = True) -> list[list[bool]]:
        out = []
        for entry, candidates in questions:
            answers = []
            for c in candidates:
                answers.append(bool(self.matches(c, entry)))
                if stop and answers[-1]:
                    break
            out.append(answers)
        return out


def representatives(candidates: Sequence[Sequence[int]],
                    ask: Callable[[list[tuple[int, list[int]]], bool], list[list[bool]]],
                    speculative: bool) -> list[int]:
    """The greedy choice of representatives, from answers asked in rounds.

    Structure ``a`` (in the greedy order) duplicates the first of ``candidates[a]`` (earlier
    structures that pass the cheap tests, closest first) that is a representative and
    matches it; with none, it is a representative.

    Args:
        candidates: per structure, positions of earlier structures, closest first.
        ask: ``ask([(a, [b, ...]), ...], stop)``: the answers of ``fit(b, a)``, per question
            up to its first ``True`` where ``stop``.
        speculative: ask every undecided structure in each round (else only the first,
            which then asks exactly the greedy pass's pairs).

    Returns:
        ``(n,)``: ``-1`` for a representative, else the position of the one it duplicates.
    """
    n = len(candidates)
    status = [_UNDECIDED] * n
    known: dict[tuple[int, int], bool] = {}
    first, rounds = 0, 0
    while first < n:
        asks: list[tuple[int, list[int]]] = []
        stop = not speculative or rounds < MAX_SPECULATIVE_ROUNDS
        for a in range(first, n):
            if status[a] != _UNDECIDED:
                continue
            verdict, need = _walk(a, candidates[a], status, known, hopeful=stop)
            if verdict != _UNDECIDED:
                status[a] = verdict
                if a == first:
                    first += 1
                    while first < n and status[first] != _UNDECIDED:
                        first += 1
                continue
            if need:  # else it waits for an earlier one to be decided
                asks.append((a, need))
            if not speculative:
                break
        if first < n and not asks:  # cannot happen: the first undecided one always asks
            raise RuntimeError("dedupe: no question left, but structures undecided")
        if not asks:
            break
        for (a, bs), answers in zip(asks, ask(asks, stop)):
            for b, yes in zip(bs, answers):
                known[(a, b)] = yes
        rounds += 1
    return status


def _walk(a: int, cands: Sequence[int], status: list[int], known: dict[tuple[int, int], bool],
          hopeful: bool = True) -> tuple[int, list[int]]:
    """``a``'s verdict from what is known (``_UNDECIDED`` if it cannot be told yet), and the
    pairs that could tell it: unanswered candidates that are or may be representatives, up to
    the first representative known to match. ``hopeful``: once ``a`` matches an undecided
    one, ask only the representatives after it (that one is most likely a copy of the same
    representative, which is what ``a`` is then looking for; asking the undecided ones too
    made chains of copies take a round per copy)."""
    blocked = hoping = False
    need: list[int] = []
    for b in cands:
        s = status[b]
        if s >= 0:  # a duplicate: never a representative
            continue
        yes = known.get((a, b))
        if yes is None:
            if not hoping or s == _REP:
                need.append(b)
            blocked = True
        elif yes and s == _REP:
            return (_UNDECIDED, need) if blocked else (b, need)
        elif yes:  # matches one that may yet be a representative
            blocked = True
            hoping = hopeful
    return (_UNDECIDED, need) if blocked else (_REP, need)
