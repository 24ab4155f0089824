"""Periodic pair lists for the analytic pair potentials.

Exact for any cell shape (the image range along each lattice vector comes from the
reciprocal-vector lengths, so skewed cells lose no pair), found for the whole batch in one call
of the numba pair kernel the CHGNet, SevenNet and MACE backends use
(:func:`lamcsp.kernels.chgnet_graph.neighbor_pairs`). It replaced a per-system torch loop that
spent half of a Lennard-Jones relaxation in kernel launches (profile of ``tests/test_swarm.py``'s
search: 48 % in the pair list; now a few per cent).
"""

from __future__ import annotations

import numpy as np
import torch

from lamcsp.kernels.chgnet_graph import neighbor_pairs


def periodic_pairs(
    positions: torch.Tensor, cell: torch.Tensor, system_idx: torch.Tensor, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ordered pairs ``(i, j, shift)`` with ``|r_j + shift·cell - r_i| <= cutoff``.

    Args:
        positions: Cartesian positions ``(N, 3)``, Å.
        cell: lattice vectors as rows ``(S, 3, 3)``, Å.
        system_idx: system of each atom ``(N,)``, sorted.
        cutoff: pair cutoff, Å.

    Returns:
        ``i (P,)``, ``j (P,)`` global atom indices and integer lattice ``shift (P, 3)`` (as
        the positions' dtype), such that the pair vector is ``r_j - r_i + shift @ cell[sys]``.
        Self pairs (``i == j`` and zero shift) are excluded; both orders of a pair appear. A
        system with non-finite positions or a singular cell has no pairs (its energy stays
        zero; the relaxer's own checks fail it).
    """
    device, dtype = positions.device, positions.dtype
    pos = positions.detach().cpu().to(torch.float64).numpy()
    cel = cell.detach().cpu().to(torch.float64).numpy().reshape(-1, 3, 3)
    counts = np.bincount(system_idx.detach().cpu().numpy(), minlength=cel.shape[0])
    sys_of_atom = np.repeat(np.arange(len(counts)), counts)
    ok = np.isfinite(cel).reshape(len(counts), -1).all(1)
    ok &= np.bincount(sys_of_atom, ~np.isfinite(pos).all(1), minlength=len(counts)) == 0
    ok[ok] &= np.abs(np.linalg.det(cel[ok])) > 1e-12
    if not ok.all():  # pairs of the good systems only, renumbered back to global atoms
        atoms = np.nonzero(ok[sys_of_atom])[0]
        i, j, image, _ = neighbor_pairs(pos[atoms], cel[ok], counts[ok], float(cutoff))
        i, j = atoms[i], atoms[j]
    else:
        i, j, image, _ = neighbor_pairs(pos, cel, counts, float(cutoff))
    return (torch.as_tensor(i, device=device), torch.as_tensor(j, device=device),
            torch.as_tensor(image, device=device).to(dtype))
