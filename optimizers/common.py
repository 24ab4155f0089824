"""Per-system reductions over generalised vectors (atoms part + cell part)."""

from __future__ import annotations

import torch


def system_dot(
    a_atoms: torch.Tensor,
    b_atoms: torch.Tensor,
    a_cell: torch.Tensor,
    b_cell: torch.Tensor,
    system_idx: torch.Tensor,
) -> torch.Tensor:
    """``<a, b>`` per system over atoms ``(N, 3)`` and cell ``(S, 3, 3)`` parts, ``(S,)``."""
    out = (a_cell * b_cell).sum((-2, -1))
    return out.index_add(0, system_idx, (a_atoms * b_atoms).sum(-1))


def system_max_row_norm(
    atoms: torch.Tensor, cell: torch.Tensor, system_idx: torch.Tensor
) -> torch.Tensor:
    """Largest row norm per system over atoms ``(N, 3)`` and cell rows ``(S, 3, 3)``."""
    out = torch.linalg.norm(cell, dim=-1).amax(-1)
    return out.scatter_reduce(0, system_idx, torch.linalg.norm(atoms, dim=-1), "amax")
