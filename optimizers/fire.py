"""Batched FIRE with ASE's parameter names, defaults and update rule, per-system state.

FIRE: E. Bitzek, P. Koskinen, F. Gähler, M. Moseler, P. Gumbsch, "Structural relaxation made
simple", Phys. Rev. Lett. 97, 170201 (2006). The update follows ASE's ``ase/optimize/fire.py``
step for step (velocity mixing, ``Nmin`` wait, ``finc``/``fdec``/``fa`` schedule, and a step
capped at ``maxstep`` in the norm of the whole generalised displacement), applied to every
system of the batch at once, with its own ``dt``, ``a`` and counters.

``fire_init(state, ...)`` adds the FIRE fields to a :class:`RelaxState`; ``fire_step(state,
filt)`` takes one step from the generalised forces already in the state (see
:mod:`lamcsp.optimizers.filters`) and returns the moved state. Systems with ``n_steps == 0``
take ASE's first step (zero velocity, no mixing).
"""

from __future__ import annotations

import dataclasses

import torch
from lamcsp.optimizers.common import system_dot
from lamcsp.optimizers.filters import CellFilter, RelaxState
from lamcsp.relax.state import ATOM, GLOBAL, SYSTEM


@dataclasses.dataclass(kw_only=True)
class FireState(RelaxState):
    """:class:`RelaxState` plus FIRE's velocities ``(N, 3)`` and ``(S, 3, 3)``, time step
    ``dt (S,)``, mixing ``a (S,)`` and ``n_pos (S,)`` (steps since the last uphill move)."""

    velocities: torch.Tensor = dataclasses.field(metadata=ATOM)
    cell_velocities: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    dt: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    a: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    n_pos: torch.Tensor = dataclasses.field(metadata=SYSTEM)
    params: dict = dataclasses.field(default_factory=dict, metadata=GLOBAL)


DEFAULTS = dict(
    dt=0.1, maxstep=0.2, dtmax=1.0, Nmin=5, finc=1.1, fdec=0.5, astart=0.1, fa=0.99, a=0.1
)


def fire_init(state: RelaxState, **params: float) -> FireState:
    """Add FIRE's per-system state (ASE's defaults unless given) to a relax state."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown FIRE parameter(s): {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    s, dev, dt = state.n_systems, state.device, state.dtype
    base = {f.name: getattr(state, f.name) for f in dataclasses.fields(RelaxState)}
    return FireState(
        **base,
        velocities=torch.zeros_like(state.positions),
        cell_velocities=torch.zeros_like(state.cell),
        dt=torch.full((s,), p["dt"], dtype=dt, device=dev),
        a=torch.full((s,), p["a"], dtype=dt, device=dev),
        n_pos=torch.zeros(s, dtype=torch.long, device=dev),
        params=p,
    )


def fire_step(state: FireState, filt: CellFilter) -> FireState:
    """One FIRE step for every system, from the generalised forces in ``state``."""
    p = state.params
    sys = state.system_idx
    ga, gc = state.atom_gforce, state.cell_gforce
    va, vc = state.velocities, state.cell_velocities

    first = state.n_steps == 0
    vf = system_dot(ga, va, gc, vc, sys)
    g2 = system_dot(ga, ga, gc, gc, sys)
    v2 = system_dot(va, va, vc, vc, sys)
    mix = (~first) & (vf > 0.0)
    reset = (~first) & ~(vf > 0.0)

    # ASE: v = (1 - a) v + a g/|g| |v|  when going downhill
    scale = state.a * torch.sqrt(v2) / torch.sqrt(g2).clamp_min(1e-300)
    keep = torch.where(mix, 1.0 - state.a, torch.ones_like(state.a))
    keep = torch.where(reset, torch.zeros_like(keep), keep)
    push = torch.where(mix, scale, torch.zeros_like(scale))
    va = keep[sys, None] * va + push[sys, None] * ga
    vc = keep[:, None, None] * vc + push[:, None, None] * gc

    grow = mix & (state.n_pos > p["Nmin"])
    dt = torch.where(grow, (state.dt * p["finc"]).clamp(max=p["dtmax"]), state.dt)
    a = torch.where(grow, state.a * p["fa"], state.a)
    n_pos = torch.where(mix, state.n_pos + 1, state.n_pos)
    a = torch.where(reset, torch.full_like(a, p["astart"]), a)
    dt = torch.where(reset, dt * p["fdec"], dt)
    n_pos = torch.where(reset, torch.zeros_like(n_pos), n_pos)

    va = va + dt[sys, None] * ga
    vc = vc + dt[:, None, None] * gc
    dra = dt[sys, None] * va
    drc = dt[:, None, None] * vc
    norm = torch.sqrt(system_dot(dra, dra, drc, drc, sys))
    cap = torch.where(
        norm > p["maxstep"], p["maxstep"] / norm.clamp_min(1e-300), torch.ones_like(norm)
    )
    xa, xc = filt.get_x(state)
    moved = filt.set_x(state, xa + cap[sys, None] * dra, xc + cap[:, None, None] * drc)
    return dataclasses.replace(
        moved,
        velocities=va,
        cell_velocities=vc,
        dt=dt,
        a=a,
        n_pos=n_pos,
        n_steps=state.n_steps + 1,
    )
