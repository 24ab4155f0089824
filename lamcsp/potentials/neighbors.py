"""Periodic pair lists in torch for the analytic pair potentials.

Plain and exact for any cell shape: the image range along each lattice vector comes from the
reciprocal-vector lengths, so skewed cells lose no pair. Built per system on the state's
device; cost grows as atoms² × images, fine for the small cells pair potentials are used on.
"""

from __future__ import annotations

import math

import torch


def periodic_pairs(
    positions: torch.Tensor, cell: torch.Tensor, system_idx: torch.Tensor, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All ordered pairs ``(i, j, shift)`` with ``|r_j + shift·cell - r_i| < cutoff``.

    Args:
        positions: Cartesian positions ``(N, 3)``, Å.
        cell: lattice vectors as rows ``(S, 3, 3)``, Å.
        system_idx: system of each atom ``(N,)``, sorted.
        cutoff: pair cutoff, Å.

    Returns:
        ``i (P,)``, ``j (P,)`` global atom indices and integer lattice ``shift (P, 3)`` (as
        the positions' dtype), such that the pair vector is ``r_j - r_i + shift @ cell[sys]``.
        Self pairs (``i == j`` and zero shift) are excluded; both orders of a pair appear.
    """
    pos = positions.detach()
    cel = cell.detach()
    counts = torch.bincount(system_idx, minlength=cell.shape[0]).tolist()
    out_i, out_j, out_s = [], [], []
    start = 0
    for s, n in enumerate(counts):
        if n == 0:
            continue
        p = pos[start : start + n]
        c = cel[s]
        inv = torch.linalg.inv(c)
        frac = p @ inv
        dfrac = frac[None, :, :] - frac[:, None, :]  # (n, n, 3): j - i
        wrap = torch.round(dfrac)
        dfrac = dfrac - wrap
        recip_len = torch.linalg.norm(inv, dim=0)  # |b_k| for reciprocal vectors b_k
        nmax = [int(math.ceil(cutoff * float(r) + 0.5)) for r in recip_len]
        rng = [torch.arange(-m, m + 1, device=pos.device, dtype=pos.dtype) for m in nmax]
        images = torch.cartesian_prod(*rng)  # (M, 3)
        vec = (dfrac[:, :, None, :] + images[None, None, :, :]) @ c  # (n, n, M, 3)
        d2 = (vec * vec).sum(-1)
        mask = d2 < cutoff * cutoff
        ii, jj, mm = torch.nonzero(mask, as_tuple=True)
        shift = images[mm] - wrap[ii, jj]
        keep = ~((ii == jj) & (shift.abs().sum(-1) == 0))
        out_i.append(ii[keep] + start)
        out_j.append(jj[keep] + start)
        out_s.append(shift[keep])
        start += n
    if not out_i:
        empty = torch.zeros(0, dtype=torch.long, device=pos.device)
        return empty, empty, torch.zeros((0, 3), dtype=pos.dtype, device=pos.device)
    return torch.cat(out_i), torch.cat(out_j), torch.cat(out_s)
