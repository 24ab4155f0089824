"""Batched L-BFGS over generalised coordinates (atoms + Fréchet cell), per-system history.

The two-loop recursion of J. Nocedal, "Updating quasi-Newton matrices with limited storage",
Math. Comp. 35, 773 (1980), as ASE's ``ase/optimize/lbfgs.py`` runs it (``memory``,
``alpha`` (initial Hessian ``alpha·I``), ``maxstep`` on the largest row, ``damping``), with two
safeguards ASE leaves out, both per system: a pair ``(s, y)`` with ``y·s <= 0`` (negative
curvature, common far from a minimum) is not stored, and a step that would go uphill
(``p·f <= 0``) clears that system's history and falls back to ``f / alpha``.

History is kept newest-last in per-atom ``(N, m, 3)`` and per-system ``(S, m, 3, 3)`` fields, so
systems can leave and join a running batch like any other field.
"""

from __future__ import annotations

import dataclasses

import torch
from lamcsp.optimizers.common import system_dot, system_max_row_norm
from lamcsp.optimizers.filters import CellFilter, RelaxState
from lamcsp.relax.state import ATOM, GLOBAL, SYSTEM


@dataclasses.dataclass(kw_only=True)
class LbfgsState(RelaxState):
    """:class:`RelaxState` plus L-BFGS history: steps ``s`` and force changes ``y`` for atoms
    ``(N, m, 3)`` and cell ``(S, m, 3, 3)``, ``rho (S, m)`` (zero where empty), and the
    previous generalised coordinates and forces."""

    s_atoms: torch.Tensor = dataclasses.field(metadata=ATOM)
    y_atoms: torch.Tensor = dataclasses.field(metadata=ATOM)
    x0_atoms: torch.Tensor = dataclasses.field(metadata=ATOM)
    f0_atoms: torch.Tensor = dataclasses.field(metadata=ATOM)
    s_cell: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    y_cell: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    x0_cell: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    f0_cell: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    rho: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    params: dict = dataclasses.field(default_factory=dict, metadata=GLOBAL)


DEFAULTS = dict(maxstep=0.2, memory=100, damping=1.0, alpha=70.0)


def lbfgs_init(state: RelaxState, **params: float) -> LbfgsState:
    """Add empty L-BFGS history (ASE's defaults unless given) to a relax state."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown L-BFGS parameter(s): {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    m = int(p["memory"])
    n, s, dev, dt = state.n_atoms, state.n_systems, state.device, state.dtype
    base = {f.name: getattr(state, f.name) for f in dataclasses.fields(RelaxState)}
    return LbfgsState(
        **base,
        s_atoms=torch.zeros((n, m, 3), dtype=dt, device=dev),
        y_atoms=torch.zeros((n, m, 3), dtype=dt, device=dev),
        x0_atoms=torch.zeros((n, 3), dtype=dt, device=dev),
        f0_atoms=torch.zeros((n, 3), dtype=dt, device=dev),
        s_cell=torch.zeros((s, m, 3, 3), dtype=dt, device=dev),
        y_cell=torch.zeros((s, m, 3, 3), dtype=dt, device=dev),
        x0_cell=torch.zeros((s, 3, 3), dtype=dt, device=dev),
        f0_cell=torch.zeros((s, 3, 3), dtype=dt, device=dev),
        rho=torch.zeros((s, m), dtype=dt, device=dev),
        params=p,
    )


def _push(hist: torch.Tensor, new: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Append ``new`` as the newest entry (dim 1) where ``mask`` holds."""
    shifted = torch.cat([hist[:, 1:], new.unsqueeze(1)], dim=1)
    shape = (-1,) + (1,) * (hist.dim() - 1)
    return torch.where(mask.view(shape), shifted, hist)


def lbfgs_step(state: LbfgsState, filt: CellFilter) -> LbfgsState:
    """One L-BFGS step for every system, from the generalised forces in ``state``."""
    p = state.params
    sys = state.system_idx
    fa, fc = state.atom_gforce, state.cell_gforce
    xa, xc = filt.get_x(state)

    # -- update history with the last step (not on a system's first step) --
    sa, sc = xa - state.x0_atoms, xc - state.x0_cell
    ya, yc = state.f0_atoms - fa, state.f0_cell - fc  # gradient change = -(force change)
    ys = system_dot(ya, sa, yc, sc, sys)
    store = (state.n_steps > 0) & (ys > 1e-12)
    s_atoms = _push(state.s_atoms, sa, store[sys])
    y_atoms = _push(state.y_atoms, ya, store[sys])
    s_cell = _push(state.s_cell, sc, store)
    y_cell = _push(state.y_cell, yc, store)
    rho = _push(state.rho, torch.where(store, 1.0 / ys.clamp_min(1e-12), torch.zeros_like(ys)), store)

    # -- two-loop recursion on q = gradient = -f; entries with rho == 0 are inert --
    m = rho.shape[1]
    used = int((rho != 0).sum(1).max().item()) if rho.numel() else 0
    qa, qc = -fa, -fc
    alphas = []
    for i in range(m - 1, m - 1 - used, -1):
        ai = rho[:, i] * system_dot(s_atoms[:, i], qa, s_cell[:, i], qc, sys)
        qa = qa - ai[sys, None] * y_atoms[:, i]
        qc = qc - ai[:, None, None] * y_cell[:, i]
        alphas.append((i, ai))
    h0 = 1.0 / p["alpha"]
    za, zc = h0 * qa, h0 * qc
    for i, ai in reversed(alphas):
        bi = rho[:, i] * system_dot(y_atoms[:, i], za, y_cell[:, i], zc, sys)
        za = za + (ai - bi)[sys, None] * s_atoms[:, i]
        zc = zc + (ai - bi)[:, None, None] * s_cell[:, i]
    pa, pc = -za, -zc

    # -- uphill guard: restart from steepest descent and forget the history --
    uphill = system_dot(pa, fa, pc, fc, sys) <= 0.0
    pa = torch.where(uphill[sys, None], h0 * fa, pa)
    pc = torch.where(uphill[:, None, None], h0 * fc, pc)
    rho = torch.where(uphill[:, None], torch.zeros_like(rho), rho)

    # -- ASE's determine_step: cap the longest row at maxstep --
    longest = system_max_row_norm(pa, pc, sys)
    cap = torch.where(longest >= p["maxstep"], p["maxstep"] / longest.clamp_min(1e-300),
                      torch.ones_like(longest)) * p["damping"]
    moved = filt.set_x(state, xa + cap[sys, None] * pa, xc + cap[:, None, None] * pc)
    return dataclasses.replace(
        moved,
        s_atoms=s_atoms, y_atoms=y_atoms, s_cell=s_cell, y_cell=y_cell, rho=rho,
        x0_atoms=xa, x0_cell=xc, f0_atoms=fa, f0_cell=fc,
        n_steps=state.n_steps + 1,
    )
