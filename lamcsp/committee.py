"""The fine-tune loop's committee: K models evaluated on the same structures, DP-GEN's force
deviation, and how well that deviation tells the committee's actual error on oracle labels.

DP-GEN's deviation: for each atom the root-mean-square distance of the K force vectors from
their mean, ``sqrt(mean_k |f_k - <f>|^2)``; ``max_devi_f`` is its maximum over atoms. The energy
deviation is the standard deviation over models of the energy per atom.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from lamcsp.errors import SetupError

__all__ = ["Committee", "Deviation", "deviation_against_error", "force_deviation", "force_rmse"]


@dataclasses.dataclass
class Deviation:
    """Committee statistics of S structures: ``max_devi_f`` (S,) eV/Å, ``devi_e`` (S,) eV/atom,
    ``energy`` (S,) the committee's mean energy per atom, ``forces`` per structure (mean)."""

    max_devi_f: np.ndarray
    devi_e: np.ndarray
    energy: np.ndarray
    forces: list[np.ndarray]


def force_deviation(forces: np.ndarray) -> np.ndarray:
    """DP-GEN's per-atom force deviation of ``forces`` (K models, n atoms, 3):
    ``sqrt(mean_k |f_k - <f>|^2)``, shape (n,)."""
    f = np.asarray(forces, dtype=float)
    return np.sqrt(((f - f.mean(axis=0)) ** 2).sum(axis=-1).mean(axis=0))


class Committee:
    """K models evaluated on the same structures, one batched pass per model.

    Args:
        potentials: the members (fine-tuned copies with different seeds, or several heads of
            one model): each a :class:`~lamcsp.potentials.base.Potential` (evaluated in this
            process) or, with an ``executor``, a campaign ``model`` section evaluated through
            its ``evaluate`` (on the workers under MPI).
        executor: the executor (:class:`lamcsp.parallel.Executor`) for members given as
            ``model`` sections.
    """

    def __init__(self, potentials: Sequence[Any], executor: Any = None):
        if len(potentials) < 2:
            raise SetupError(
                "finetune.committee", f"a committee needs at least 2 models, got {len(potentials)}"
            )
        self.potentials = list(potentials)
        self.executor = executor

    def __len__(self) -> int:
        return len(self.potentials)

    def evaluate(self, structures: Sequence[Any]) -> Deviation:
        import torch

        from lamcsp.relax.state import from_structures

        if not structures:
            z = np.zeros(0)
            return Deviation(z, z, z, [])
        counts = np.array([len(a) for a in structures])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        energies, forces = [], []
        for pot in self.potentials:
            if callable(pot):  # a Potential, here
                state = from_structures(list(structures), dtype=torch.float64, device=pot.device)
                out = pot(state)
                energies.append(out["energy"].detach().cpu().numpy() / counts)
                forces.append(out["forces"].detach().cpu().numpy())
                continue
            if self.executor is None:
                raise TypeError("a committee member given as a model section needs an executor")
            points = self.executor.evaluate(list(structures), [0.0] * len(structures), model=pot)
            energies.append(np.array([p.energy for p in points]) / counts)
            forces.append(np.concatenate([p.forces for p in points]))
        E = np.stack(energies)  # (K, S)
        F = np.stack(forces)  # (K, N, 3)
        per_atom = force_deviation(F)
        max_devi = np.array([per_atom[s : s + n].max() for s, n in zip(starts, counts)])
        mean_f = F.mean(axis=0)
        return Deviation(
            max_devi, E.std(axis=0), E.mean(axis=0), [mean_f[s : s + n] for s, n in zip(starts, counts)]
        )


def force_rmse(predicted: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Root-mean-square force error over all atoms and components, eV/Å."""
    p = np.concatenate([np.asarray(x).reshape(-1) for x in predicted]) if predicted else np.zeros(0)
    r = np.concatenate([np.asarray(x).reshape(-1) for x in reference]) if reference else np.zeros(0)
    return float(np.sqrt(np.mean((p - r) ** 2))) if len(p) else float("nan")


def deviation_against_error(devi_f: np.ndarray, error_f: np.ndarray, devi_e: np.ndarray, error_e: np.ndarray,
                            lo: float) -> dict[str, float]:
    """How well the committee's deviation tells its actual error, on oracle labels.

    Args:
        devi_f: DP-GEN's max force deviation per structure (eV/Å); ``error_f`` the committee's
            actual max force error per structure against the oracle (eV/Å, mean force of the
            members).
        devi_e: energy deviation per atom (eV/atom); ``error_e`` the actual energy error per
            atom (eV/atom).
        lo: ``trust_lo``.

    Returns:
        ``n``; the means of each; ``spearman_f``, the rank correlation of deviation and error
        (NaN for fewer than 3); ``error_over_devi_f``, the median of error / deviation (how much
        the committee underestimates its error); ``agreed_while_wrong``, the fraction the
        committee trusts (deviation < ``lo``) whose actual error is above ``lo``.
    """
    from scipy.stats import spearmanr

    n = len(devi_f)
    if n == 0:
        return {"n": 0}
    rho = float(spearmanr(devi_f, error_f).statistic) if n >= 3 else float("nan")
    trusted = devi_f < lo
    return {
        "n": n, "mean_devi_f": float(np.mean(devi_f)), "mean_error_f": float(np.mean(error_f)),
        "mean_devi_e": float(np.mean(devi_e)), "mean_error_e": float(np.mean(error_e)),
        "spearman_f": rho if np.isfinite(rho) else float("nan"),
        "error_over_devi_f": float(np.median(error_f / np.maximum(devi_f, 1e-12))),
        "agreed_while_wrong": float(np.sum(trusted & (error_f > lo)) / n),
    }
