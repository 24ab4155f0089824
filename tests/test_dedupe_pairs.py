"""The greedy choice of representatives from answers asked in rounds, against the one-at-a-time pass."""

import numpy as np
import pytest
from lamcsp.generators.dedupe_pairs import MAX_SPECULATIVE_ROUNDS, representatives


def _case(seed, n=80):
    """Candidates (earlier positions, shuffled as a distance order would) and answers with
    clusters: structures of one cluster match each other (mostly), others rarely."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, max(1, n // 8), n)
    cands = [[int(b) for b in rng.permutation(a) if rng.random() < 0.6] for a in range(n)]
    table = {(a, b): bool(rng.random() < (0.9 if cluster[a] == cluster[b] else 0.05))
             for a in range(n) for b in range(a)}
    return cands, table


def _greedy(cands, table):
    """Today's pass: each structure against the representatives before it, in its order."""
    status, asked = [], []
    for a, cs in enumerate(cands):
        verdict = -1
        for b in cs:
            if status[b] == -1:
                asked.append((a, b))
                if table[(a, b)]:
                    verdict = b
                    break
        status.append(verdict)
    return status, asked


@pytest.mark.parametrize("seed", range(6))
def test_rounds_decide_as_the_greedy_pass(seed):
    cands, table = _case(seed)
    want, want_asked = _greedy(cands, table)
    for speculative in (False, True):
        asked, rounds = [], []

        def ask(asks, stop, asked=asked, rounds=rounds):
            rounds.append(stop)
            out = []
            for a, bs in asks:
                ans = []
                for b in bs:
                    asked.append((a, b))
                    ans.append(table[(a, b)])
                    if stop and ans[-1]:
                        break
                out.append(ans)
            return out

        assert representatives(cands, ask, speculative) == want
        if not speculative:  # exactly the greedy pass's questions, in its order
            assert asked == want_asked
        else:  # a few rounds, the last of them answering all it asks
            assert len(rounds) <= MAX_SPECULATIVE_ROUNDS + 1
            assert len(set(asked)) == len(asked) and set(want_asked) <= set(asked)
