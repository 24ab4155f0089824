"""MACE models behind the :class:`~lamcsp.potentials.base.Potential` seam: a model file the user
has (MACE-MP-0, MPA-0, OMAT, a fine-tuned model...), batched, with its heads.

``model: {backend: mace, path: MODEL.model, head: NAME}`` in a campaign, or
``--model mace:PATH[@HEAD]`` on the command line. Per call, for the whole batch of mixed sizes:

* one neighbour search (:func:`lamcsp.kernels.chgnet_graph.neighbor_pairs`, numba; the edges
  MACE's own ``get_neighborhood`` finds with matscipy, in another order);
* one input dictionary in MACE's batched layout (``positions``, one-hot ``node_attrs``,
  ``edge_index`` as ``[sender, receiver]``, integer ``unit_shifts``, ``cell``, ``batch``, ``ptr``,
  ``head``), as ``torch_geometric.Batch.from_data_list`` of MACE's ``AtomicData`` would make it;
* one call of the model's own ``forward(data, compute_stress=True)``, which takes forces and the
  stress (``-virial / V``, ASE's sign) from a single ``autograd.grad`` over positions and a
  symmetric displacement, as ``MACECalculator`` does for one structure.

**dtype.** A MACE file carries its dtype (its parameters'): MACE-MP-0's files are float64,
fine-tuned ones whatever they were trained in. ``dtype=None`` (default) runs the file's dtype, as
``MACECalculator(default_dtype="")`` does; ``dtype="float32"`` casts a float64 model down: for a
MACE-MP-small-shaped model on one CPU thread, 6.5 instead of 12.2 ms/atom in calls of ~40 atoms,
with energies within 1e-6 eV/atom and forces within 3e-6 eV/Å of float64 on 16 structures of
``benchmarks/structures.py`` (random weights; a trained model's may differ). float64 stays the
default because it is the file's own and the reference calculator's. The state's geometry is
cast to the model's dtype; the results come back in the state's dtype.

**Heads.** A multi-head model (``model.heads``) needs its head named unless one head is called
``Default`` (MACE's own rule); an unknown head is a :class:`~lamcsp.errors.SetupError` listing the
heads (``MACECalculator`` would fall back to the last head with a warning).

**Trust.** A ``.model`` file is a pickled ``torch.nn.Module`` (``torch.save(model)``), and every
one holds Python source that runs while it loads: e3nn's and MACE's code-generated modules are
``torch.fx`` graph modules, rebuilt by executing the code stored in the file. So a MACE model is
trusted like a script, as a DeePMD-kit frozen model is: load only files from people you trust.
Before anything runs, lamcsp lists the file's pickle globals (without running them) and refuses a
file that names anything outside the packages a MACE model is built from (mace, e3nn, torch,
numpy, opt_einsum_fx and a few builtins): a pickle that calls ``os.system`` or ``exec`` is refused
unless ``model.options.trusted: true`` (``--trust-model``). That catches a wrong or crude file,
not a careful attack, which can hide in the code the graph modules carry.

**Environment.** mace-torch 0.3.16 pins e3nn 0.4.4 while sevenn and DeePMD-kit's lamcsp extras
want e3nn 0.5+, so ``lamcsp[mace]`` installs into its own environment (README, "MACE models").
Importing mace sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the whole process (e3nn 0.4.4 needs
it to load its own constants under torch 2.6+); lamcsp restores the variable after the import, so
its other ``torch.load`` calls keep their ``weights_only`` default.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lamcsp.errors import SetupError
from lamcsp.extras import MACE_INSTALL
from lamcsp.kernels.chgnet_graph import neighbor_pairs
from lamcsp.potentials.base import Output, Potential, assemble_outputs, unevaluable
from lamcsp.potentials.deepmd import split_spec
from lamcsp.relax.state import BatchedState, select

__all__ = ["MACEPotential", "choose_head", "read_model", "split_spec"]

#: How to opt in to a model file whose pickle names more than a MACE model is built from.
TRUST_HINT = ("model.options.trusted: true in the campaign's model section, or --trust-model with "
              "lamcsp relax")

#: top-level packages a MACE model's pickle may name (its classes, e3nn's, torch's modules and
#: tensor rebuilders, numpy arrays in buffers) and the builtins seen in MACE-MP files
_MODEL_PACKAGES = ("mace", "e3nn", "torch", "numpy", "opt_einsum_fx", "collections")
_MODEL_BUILTINS = {"builtins.slice", "builtins.set", "builtins.frozenset", "builtins.getattr",
                   "builtins.dict", "builtins.list", "builtins.tuple", "builtins.object"}

DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: atoms per model call on the CPU: MACE's per-edge tensors (edges x channels x irreps) outgrow
#: the caches, and a MACE-MP-small-shaped model costs 12 ms/atom in calls of ~40 atoms but
#: 23 ms/atom in one call of 570 (float64, 1 thread; benchmarks/relax_throughput.py's mixture), so
#: a batch is evaluated in consecutive chunks of about this many atoms; on a GPU, one call
CPU_CHUNK_ATOMS = 48


def _import_mace() -> Any:
    """``mace.modules`` with the process's ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` left as it was."""
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    try:
        import mace.modules as modules  # sets the variable; e3nn 0.4.4 needs it while it imports
    except ImportError as exc:
        raise SetupError("model.backend", f"the mace backend needs mace-torch ({exc}); install it with "
                                          f"{MACE_INSTALL}. Nothing was run.") from None
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
    return modules


def read_model(path: str | os.PathLike, *, trusted: bool = False) -> torch.nn.Module:
    """The MACE module in a ``.model`` file (``torch.save(model)``), on the CPU.

    Raises:
        SetupError: a missing file, a pickle naming globals outside a MACE model's packages
            (unless ``trusted``), an unreadable file, or one that holds no MACE energy model.
    """
    import pickle

    p = Path(path).expanduser()
    if not p.is_file():
        raise SetupError("model.path", f"MACE model {str(p)!r} does not exist or is not a file; give the "
                                       "path of a MACE model file (.model, as MACE's trainer or "
                                       "torch.save(model) writes it; none are downloaded by lamcsp)")
    modules = _import_mace()
    if not trusted:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(p)
        except Exception as exc:  # noqa: BLE001 - not a torch zip file: a setup problem
            raise SetupError("model.path", f"could not read {str(p)!r} as a torch file ({type(exc).__name__}"
                                           f": {exc}); expected a MACE .model file") from None
        odd = sorted(n for n in names
                     if n.partition(".")[0] not in _MODEL_PACKAGES and n not in _MODEL_BUILTINS)
        if odd:
            raise SetupError("model.path", f"{str(p)!r} names {', '.join(odd)} besides a MACE model's own "
                                           "classes, so loading it may run code that is not a model; lamcsp "
                                           "refused it and nothing in it was run. Load only files you trust "
                                           f"like a script; to load this one anyway, set {TRUST_HINT}.")
    try:
        model = torch.load(p, map_location="cpu", weights_only=False)  # a pickled module (module docstring)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, ImportError, EOFError) as exc:
        raise SetupError("model.path", f"could not load a MACE model from {str(p)!r} "
                                       f"({type(exc).__name__}: {exc})") from None
    if not isinstance(model, modules.MACE):
        raise SetupError("model.path", f"{str(p)!r} holds a {type(model).__name__}, not a MACE energy model "
                                       "(MACE or ScaleShiftMACE); dipole and charge models have no "
                                       "energy to relax on")
    if getattr(model, "embedding_specs", None):
        raise SetupError("model.path", f"{p.name} is conditioned on {', '.join(model.embedding_specs)} "
                                       "(a charge/spin model); lamcsp's mace backend evaluates neutral "
                                       "crystals with plain MACE models only")
    return model


def choose_head(heads: list[str], head: str | None, name: str) -> str:
    """The head to evaluate (MACE's rule: the only one, or the one called ``Default``).

    Raises:
        SetupError: an unknown head, or none given where the model has several and no default.
    """
    if head is not None:
        if head not in heads:
            raise SetupError("model.head", f"{name} has no head {head!r}; its heads are: {', '.join(heads)} "
                                           "(choose one with model.head or mace:PATH@HEAD)")
        return head
    if len(heads) == 1:
        return heads[0]
    default = [h for h in heads if h.lower() == "default"]
    if default:
        return default[0]
    raise SetupError("model.head", f"{name} is a multi-head model with no Default head; choose a head with "
                                   f"model.head (or mace:PATH@HEAD): {', '.join(heads)}")


class MACEPotential(Potential):
    """A MACE model file, batched over structures of different sizes.

    Args:
        path: a MACE ``.model`` file.
        head: the head of a multi-head model (see :func:`choose_head`).
        device: where the network runs (the neighbour search runs on the CPU).
        dtype: ``"float32"`` or ``"float64"``: the model's compute dtype; ``None`` keeps the
            file's (module docstring).
        trusted: load a file whose pickle names more than a MACE model's packages.
        chunk_atoms: atoms per model call within a batch (:data:`CPU_CHUNK_ATOMS` on the CPU,
            the whole batch on a GPU, when ``None``).

    Raises:
        SetupError: mace-torch missing, a missing or refused file, head problems, bad dtype.
    """

    name = "mace"

    def __init__(self, path: str | os.PathLike, head: str | None = None, device: torch.device | str = "cpu",
                 dtype: str | None = None, trusted: bool = False, chunk_atoms: int | None = None):
        if dtype is not None and dtype not in DTYPES:
            raise SetupError("model.options.dtype", f"unknown dtype {dtype!r}; use float32 or float64, or "
                                                    "leave it out for the model file's own")
        self.path = Path(path).expanduser().absolute()
        model = read_model(self.path, trusted=trusted)
        heads = [str(h) for h in (getattr(model, "heads", None) or ["Default"])]
        self.head = choose_head(heads, head, self.path.name)
        self.heads = heads
        model_dtype = DTYPES[dtype] if dtype else next(model.parameters()).dtype
        super().__init__(device=device, dtype=model_dtype)
        model = model.to(device=self.device, dtype=model_dtype).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.r_max = float(model.r_max)
        self.numbers = [int(z) for z in model.atomic_numbers.tolist()]
        index = torch.full((119,), -1, dtype=torch.long)
        index[torch.as_tensor(self.numbers)] = torch.arange(len(self.numbers))
        self._index = index
        self._head_index = heads.index(self.head)
        self.chunk_atoms = chunk_atoms or (CPU_CHUNK_ATOMS if self.device.type == "cpu" else None)

    @property
    def model_id(self) -> str:
        return f"mace:{self.path.name}" + (f"@{self.head}" if len(self.heads) > 1 else "")

    @property
    def supported_numbers(self) -> set[int]:
        return set(self.numbers)

    # -- evaluation ------------------------------------------------------------------------

    def _screen(self, pos: np.ndarray, numbers: np.ndarray, cells: np.ndarray,
                counts: np.ndarray) -> list[str | None]:
        """Reasons a structure cannot be evaluated (found before the neighbour search)."""
        return unevaluable(pos, numbers, cells, counts, self.numbers, self.model_id)

    def batch_data(self, state: BatchedState) -> dict[str, torch.Tensor]:
        """MACE's batched input dictionary of ``state`` (every system evaluable), on the model's
        device and dtype: ``positions (N, 3)``, ``node_attrs (N, n_elements)``, ``edge_index
        (2, E)`` as ``[sender, receiver]``, ``unit_shifts``/``shifts (E, 3)``, ``cell (3S, 3)``,
        ``batch (N,)``, ``ptr (S + 1,)`` and ``head (S,)``."""
        dev, dt = self.device, self.dtype
        pos = state.positions.detach().cpu().numpy().astype(np.float64, copy=False)
        cells = state.cell.detach().cpu().numpy().astype(np.float64, copy=False)
        counts = state.n_atoms_per_system.cpu().numpy()
        sender, receiver, image, _ = neighbor_pairs(pos, cells, counts, self.r_max)
        sys_idx = state.system_idx.to(dev)
        cell = state.cell.detach().to(dev, dt)
        unit_shifts = torch.from_numpy(image).to(dev, dt)
        edge_index = torch.from_numpy(np.stack([sender, receiver])).to(dev)
        ptr = torch.zeros(state.n_systems + 1, dtype=torch.long, device=dev)
        ptr[1:] = torch.cumsum(state.n_atoms_per_system.to(dev), 0)
        node_attrs = torch.nn.functional.one_hot(self._index.to(dev)[state.numbers.to(dev)],
                                                 len(self.numbers)).to(dt)
        return {
            "positions": state.positions.detach().to(dev, dt),
            "node_attrs": node_attrs,
            "edge_index": edge_index,
            "unit_shifts": unit_shifts,
            "shifts": torch.einsum("ei,eij->ej", unit_shifts, cell[sys_idx[edge_index[0]]]),
            "cell": cell.reshape(-1, 3),
            "batch": sys_idx,
            "ptr": ptr,
            "head": torch.full((state.n_systems,), self._head_index, dtype=torch.long, device=dev),
        }

    def _chunks(self, counts: list[int]) -> list[list[int]]:
        """Consecutive systems per model call, at most :attr:`chunk_atoms` atoms each (a larger
        system alone)."""
        if self.chunk_atoms is None:
            return [list(range(len(counts)))]
        chunks: list[list[int]] = [[]]
        n = 0
        for s, c in enumerate(counts):
            if chunks[-1] and n + c > self.chunk_atoms:
                chunks.append([])
                n = 0
            chunks[-1].append(s)
            n += c
        return chunks

    def forward(self, state: BatchedState) -> Output:
        errors = self._screen(state.positions.detach().cpu().numpy(), state.numbers.cpu().numpy(),
                              state.cell.detach().cpu().numpy(), state.n_atoms_per_system.cpu().numpy())
        good = [s for s, e in enumerate(errors) if e is None]
        sub = state if len(good) == state.n_systems else select(state, good)
        result = None
        if good:
            parts = []
            for chunk in self._chunks(sub.n_atoms_per_system.tolist()):
                t0 = time.perf_counter()
                data = self.batch_data(sub if len(chunk) == sub.n_systems else select(sub, chunk))
                t1 = time.perf_counter()
                self._tick("graph", t1 - t0)
                with torch.enable_grad():  # forces and stress need autograd even under no_grad()
                    out = self.model(data, compute_force=True, compute_stress=True, training=False)
                parts.append({k: out[k].detach() for k in ("energy", "forces", "stress")})
                self._tick("model", time.perf_counter() - t1)
            result = {k: torch.cat([p[k] for p in parts]) for k in ("energy", "forces", "stress")}
            for k in torch.nonzero(~torch.isfinite(result["energy"])).flatten().tolist():
                errors[good[k]] = "non-finite energy (overlapping atoms?)"
        return assemble_outputs(state, result, good, errors)
