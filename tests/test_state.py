import dataclasses

import numpy as np
import pytest
import torch
from ase.build import bulk
from lamcsp.relax.state import (
    EV_PER_A3_PER_GPA,
    BatchedState,
    atom_field,
    concatenate,
    from_structures,
    select,
    split,
    system_field,
    to_atoms,
    to_structures,
)
from pymatgen.core import Lattice, Structure


def _mixed():
    si = bulk("Si", "diamond", 5.43, cubic=True)
    nacl = bulk("NaCl", "rocksalt", 5.64)
    pmg = Structure(Lattice.hexagonal(3.2, 5.2), ["Mg", "Mg"], [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    return [si, nacl, pmg]


def test_roundtrip_ase_and_pymatgen():
    structs = _mixed()
    state = from_structures(structs, pressure_gpa=[0.0, 1.0, 2.0])
    assert state.positions.shape == (8 + 2 + 2, 3)
    assert state.cell.shape == (3, 3, 3)
    assert state.system_idx.tolist() == [0] * 8 + [1] * 2 + [2] * 2
    assert torch.allclose(state.pressure, torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64) * EV_PER_A3_PER_GPA)
    back = to_atoms(state)
    for a, b in zip(back[:2], structs[:2]):
        assert np.allclose(a.positions, b.positions) and np.allclose(a.cell, b.cell)
        assert (a.numbers == b.numbers).all()
    pmg_back = to_structures(state)[2]
    assert pmg_back.matches(structs[2])
    assert np.allclose(state.volume.numpy(), [a.get_volume() for a in back])


def test_select_concatenate_split_are_generic():
    @dataclasses.dataclass(kw_only=True)
    class Extra(BatchedState):
        vel: torch.Tensor = atom_field()
        dt: torch.Tensor = system_field()

    base = from_structures(_mixed())
    st = Extra(**{f.name: getattr(base, f.name) for f in dataclasses.fields(BatchedState)},
               vel=torch.arange(base.n_atoms * 3, dtype=torch.float64).view(-1, 3),
               dt=torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    sub = select(st, [2, 0])
    assert isinstance(sub, Extra)
    assert sub.n_systems == 2 and sub.n_atoms == 2 + 8
    assert sub.system_idx.tolist() == [0, 0] + [1] * 8
    assert torch.equal(sub.vel[:2], st.vel[10:12]) and torch.equal(sub.vel[2:], st.vel[:8])
    assert sub.dt.tolist() == [0.3, 0.1]
    parts = split(st)
    assert [p.n_atoms for p in parts] == [8, 2, 2]
    again = concatenate(parts)
    for f in dataclasses.fields(Extra):
        assert torch.equal(getattr(again, f.name), getattr(st, f.name)), f.name
    mask = select(st, torch.tensor([False, True, True]))
    assert mask.n_systems == 2 and torch.equal(mask.cell, st.cell[1:])


def test_to_device_and_dtype():
    st = from_structures(_mixed(), dtype=torch.float32)
    assert st.dtype == torch.float32
    st64 = st.to("cpu", torch.float64)
    assert st64.positions.dtype == torch.float64 and st64.numbers.dtype == torch.long
    if torch.cuda.is_available():  # pragma: no cover - CI has no GPU
        assert st.to("cuda").device.type == "cuda"


def test_frac_positions():
    st = from_structures(_mixed())
    frac = st.frac_positions().numpy()
    expect = np.concatenate([a.get_scaled_positions(wrap=False) for a in to_atoms(st)])
    assert np.allclose(frac, expect)


def test_empty_input_rejected():
    with pytest.raises(ValueError):
        from_structures([])
