"""SevenNet behind the :class:`~lamcsp.potentials.base.Potential` seam: one model call and one
backward pass per batch of structures of any sizes.

``model: {backend: sevennet, name: 7net-mf-0, modal: PBE}`` in a campaign, or
``--model sevennet:7net-0`` (``sevennet:NAME[@MODAL]``, ``sevennet:PATH[@MODAL]``) on the
command line. The pretrained checkpoints that ship inside the ``sevenn`` wheel load offline:
:data:`KNOWN_MODELS`; any other name is refused, never downloaded.

SevenNet's ASE calculator (``sevenn.calculator.SevenNetCalculator``) builds one graph per
structure (matscipy's neighbour list) and calls the model once per structure; its TorchSim
wrapper builds a ``torch_geometric`` Data object per structure and collates them. Here:

* the edges of the whole batch come from one call of the numba pair search
  :func:`lamcsp.kernels.chgnet_graph.build_graph` (every ordered pair ``(i, j, n)`` within the
  model's cutoff, the atom itself at ``n = 0`` excluded: SevenNet's edge set);
* the edge vectors ``r_j + n @ cell - r_i`` are formed in the state's dtype (no precision lost
  in the subtraction for large or unwrapped cells) and handed to the float32 network;
* one batched ``AtomGraphData`` (``batch`` index per atom, the modal per system) goes through
  SevenNet's own network, whose last module (``ForceStressOutputFromEdge``) takes one
  ``autograd.grad`` of the energy with respect to the edge vectors: forces are the sums of the
  edge gradients, the virial their outer product with the edge vectors, per system.

SevenNet's stress (``inferred_stress``, Voigt ``xx yy zz xy yz zx``) is ``-virial / V``; the
contract's stress (ASE's sign, as SevenNet's calculator returns it) is its negative.

A structure that cannot be evaluated (non-finite or singular cell, a collapsed cell, an
element outside the model's type map, an atom with more than ``max_neighbors`` neighbours
within the cutoff) gets NaN energy, forces and stress and a reason in ``errors``; the rest of
the batch is evaluated normally.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lamcsp.errors import SetupError
from lamcsp.extras import SEVENNET_INSTALL as INSTALL_HINT
from lamcsp.kernels.chgnet_graph import build_graph
from lamcsp.potentials.base import Output, Potential, assemble_outputs, unevaluable
from lamcsp.relax.state import BatchedState

#: the pretrained checkpoints shipped inside the sevenn 0.13 wheel: name -> sevenn._const entry
KNOWN_MODELS = {"7net-0": "SEVENNET_0_11Jul2024", "7net-mf-0": "SEVENNET_MF_0", "7net-l3i5": "SEVENNET_l3i5"}

#: How to opt in to a model file that needs more than weights to load (named in the refusal).
TRUST_HINT = "model.options.trusted: true in the campaign's model section"


def split_spec(arg: str) -> tuple[str, str | None]:
    """``NAME[@MODAL]`` -> ``(NAME, MODAL or None)`` (the last ``@``; paths may hold one)."""
    name, sep, modal = arg.rpartition("@")
    if not sep or not modal or "/" in modal:
        return arg, None
    return name, modal


def _import_sevenn() -> Any:
    try:
        import sevenn.util
    except ImportError as exc:
        raise SetupError("model.backend", f"the sevennet backend needs the sevenn package ({exc}); "
                                          f"install it with {INSTALL_HINT}") from exc
    return sevenn.util


def _numpy_globals() -> list[Any]:
    """What SevenNet's checkpoints pickle beside tensors: NumPy arrays of numbers (the shift and
    scale of the atomic energies). Arrays are rebuilt by NumPy from raw bytes; an object array
    would need more globals and is refused."""
    from numpy._core.multiarray import _reconstruct

    return [(_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            *{type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}]


def check_checkpoint(path: str | os.PathLike, *, trusted: bool = False) -> None:
    """Refuse a SevenNet checkpoint that needs more than weights and plain data to unpickle.

    SevenNet's own loader unpickles the whole file (``weights_only=False``): a file that holds
    more than tensors, NumPy arrays of numbers, dicts, lists, strings and numbers could run code
    while it is read. This reads it first with torch's ``weights_only`` unpickler and NumPy's
    array globals allowed (:func:`_numpy_globals`; the pretrained checkpoints need nothing
    more), so SevenNet's loader only ever sees a file that holds data, unless ``trusted``.

    Raises:
        SetupError: naming the file: it needs more than the allow-list, or it is unreadable.
    """
    import pickle

    if trusted:
        return
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SetupError(
            "model.path",
            f"{str(path)!r} holds more than model weights ({str(exc).splitlines()[0][:200]}), so loading "
            f"it may run code that the file contains; lamcsp refused it and nothing in it was run. Load "
            f"only files you trust like a script; to load this one anyway, set {TRUST_HINT}.",
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure to read is a setup problem
        raise SetupError("model.path", f"could not read a SevenNet checkpoint from {str(path)!r} "
                                       f"({type(exc).__name__}: {exc})") from None


def checkpoint_file(model: str | os.PathLike) -> tuple[Path, str]:
    """The checkpoint file of a pretrained name (:data:`KNOWN_MODELS`) or a path, and its model
    id (``sevennet-7net-0``, ``sevennet:FILE``).

    Raises:
        SetupError: an unknown name that is no file either, or a pretrained file missing from
            the installed sevenn.
    """
    spec = str(model)
    if spec.lower() in KNOWN_MODELS:
        import sevenn._const

        path = Path(getattr(sevenn._const, KNOWN_MODELS[spec.lower()]))
        if not path.is_file():
            raise SetupError("model.name", f"the pretrained SevenNet checkpoint {spec} is not in the "
                                           f"installed sevenn package ({path}); reinstall it: {INSTALL_HINT}")
        return path, f"sevennet-{spec.lower()}"
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SetupError(
            "model.name",
            f"{spec!r} is neither a pretrained SevenNet model nor a checkpoint file; give one of "
            f"{', '.join(KNOWN_MODELS)} (shipped inside the sevenn package, loaded offline; the default "
            "is 7net-0) or the path of a SevenNet checkpoint (.pth, as sevenn train writes it). Other "
            "pretrained SevenNet models are downloaded by sevenn on first use, which lamcsp does not do: "
            "download the checkpoint yourself and give its path.",
        )
    return path.absolute(), f"sevennet:{path.name}"


def resolve_modal(modal_map: dict[str, int] | None, modal: str | None, model_id: str) -> str | None:
    """The model's own spelling of ``modal`` (matched case-insensitively), or None for a model
    without modals.

    Raises:
        SetupError: a multi-fidelity model without a modal or with an unknown one, or a modal
            given to a model that has none, listing the model's modals.
    """
    modals = list(modal_map or {})
    if not modals:
        if modal is not None:
            raise SetupError("model.modal", f"{model_id} is a single-fidelity model without modals; leave "
                                            f"model.modal out (got {modal!r})")
        return None
    choices = ", ".join(modals)
    if modal is None:
        raise SetupError("model.modal", f"{model_id} is a multi-fidelity model: choose the fidelity its "
                                        f"energies reproduce with model.modal (or sevennet:NAME@MODAL): "
                                        f"{choices}")
    found = [m for m in modals if m.lower() == str(modal).lower()]
    if not found:
        raise SetupError("model.modal", f"{model_id} has no modal {modal!r}; its modals are: {choices}")
    return found[0]


class SevenNetPotential(Potential):
    """SevenNet, batched: energies, forces and stresses of a whole batch per model call.

    Args:
        model: a pretrained name (:data:`KNOWN_MODELS`, default ``7net-0``) or the path of a
            SevenNet checkpoint.
        modal: the fidelity of a multi-fidelity model (``7net-mf-0``: ``PBE`` or ``R2SCAN``),
            required there and refused elsewhere; matched case-insensitively.
        device: where the network runs (the edge list is built on the CPU).
        max_neighbors: a structure where an atom has more neighbours than this within the cutoff
            is reported as collapsed instead of evaluated (its edges would exhaust memory);
            ``None`` disables it.
        trusted: load a checkpoint file that needs more than weights and plain data (one that
            may run code when loaded); by default such a file is refused
            (:func:`check_checkpoint`).

    Raises:
        SetupError: unknown name, missing or unreadable checkpoint, modal problems, sevenn not
            installed.
    """

    name = "sevennet"

    def __init__(self, model: str | os.PathLike = "7net-0", modal: str | None = None,
                 device: torch.device | str = "cpu", max_neighbors: int | None = 400,
                 trusted: bool = False):
        # SevenNet's networks are float32 (its TorchSim wrapper refuses any other dtype)
        super().__init__(device=device, dtype=torch.float32)
        util = _import_sevenn()
        path, self._model_id = checkpoint_file(model)
        check_checkpoint(path, trusted=trusted)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # "no tensor-product accelerator": none exists on a CPU
            try:
                net = util.load_checkpoint(str(path)).build_model()
            except Exception as exc:  # noqa: BLE001 - any failure to build is a setup problem
                raise SetupError("model.path", f"could not build a SevenNet model from {str(path)!r} "
                                               f"({type(exc).__name__}: {exc})") from None
        self.modal = resolve_modal(net.modal_map, modal, self._model_id)
        if self.modal is not None:
            self._model_id += f"@{self.modal}"
        net.set_is_batch_data(True)
        net = net.to(self.device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.model = net
        self.cutoff = float(net.cutoff)
        self.max_neighbors = max_neighbors
        self._numbers = {int(z) for z in net.type_map}
        self.n_model_calls = 0

    # ---- metadata -----------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def supported_numbers(self) -> set[int]:
        return set(self._numbers)

    # ---- screens --------------------------------------------------------------------------
    def _screen(self, pos: np.ndarray, numbers: np.ndarray, cells: np.ndarray,
                counts: np.ndarray) -> list[str | None]:
        """Reasons a structure cannot be evaluated, found before its edges are built."""
        return unevaluable(pos, numbers, cells, counts, self._numbers, self.model_id)

    def _edges(self, pos: np.ndarray, cells: np.ndarray, counts: np.ndarray,
               good: list[int], errors: list[str | None]) -> tuple[list[int], Any]:
        """The directed edges of the structures in ``good``; structures whose atoms have too
        many neighbours join ``errors`` and are left out (edges of different structures are
        independent, so the second pass is clean)."""
        n_sys = len(counts)
        for _ in range(2):
            if not good:
                return good, None
            sub = counts[good]
            atoms = np.repeat(np.isin(np.arange(n_sys), good), counts)
            # bond_cutoff 0: no angle list, only the pairs (SevenNet has no bond graph)
            graph = build_graph(pos[atoms], cells[good], sub, self.cutoff, 0.0)
            if self.max_neighbors is None:
                return good, graph
            deg = np.bincount(graph.center, minlength=int(sub.sum()))
            worst = np.zeros(len(good), dtype=np.int64)
            np.maximum.at(worst, np.repeat(np.arange(len(good)), sub), deg)
            over = np.nonzero(worst > self.max_neighbors)[0]
            if not len(over):
                return good, graph
            for k in over:
                errors[good[k]] = (f"collapsed structure: an atom has {worst[k]} neighbours within "
                                   f"{self.cutoff:g} Å (limit max_neighbors={self.max_neighbors})")
            good = [s for s in good if errors[s] is None]
        return good, None  # pragma: no cover - the second pass has no structure over the limit

    # ---- the seam -------------------------------------------------------------------------
    def forward(self, state: BatchedState) -> Output:
        t0 = time.perf_counter()
        pos = state.positions.detach().cpu().numpy().astype(np.float64, copy=False)
        cells = state.cell.detach().cpu().numpy().astype(np.float64, copy=False)
        counts = state.n_atoms_per_system.cpu().numpy()
        numbers = state.numbers.detach().cpu().numpy()
        errors = self._screen(pos, numbers, cells, counts)
        good, graph = self._edges(pos, cells, counts, [s for s in range(len(counts)) if errors[s] is None],
                                  errors)
        self._tick("graph", time.perf_counter() - t0)
        if graph is None:
            return assemble_outputs(state, None, good, errors)
        t1 = time.perf_counter()
        result = self._evaluate(pos, numbers, cells, counts, good, graph)
        self._tick("model", time.perf_counter() - t1)
        for k in torch.nonzero(~torch.isfinite(result["energy"])).flatten().tolist():
            errors[good[k]] = "non-finite energy (overlapping atoms?)"
        return assemble_outputs(state, result, good, errors)

    def _evaluate(self, pos: np.ndarray, numbers: np.ndarray, cells: np.ndarray, counts: np.ndarray,
                  good: list[int], graph: Any) -> Output:
        """One model call on the structures ``good`` and their edges."""
        import sevenn._keys as KEY
        from sevenn.atom_graph_data import AtomGraphData

        self.n_model_calls += 1
        dev = self.device
        n_sys = len(counts)
        if len(good) < n_sys:
            atoms = np.repeat(np.isin(np.arange(n_sys), good), counts)
            pos, numbers, cells, counts = pos[atoms], numbers[atoms], cells[good], counts[good]
        n_good = len(good)
        batch = np.repeat(np.arange(n_good), counts)
        # edge vectors in float64 (the state's precision), then the network's float32
        vec = pos[graph.neighbor] + np.einsum("ek,ekl->el", graph.image, cells[batch[graph.center]]) \
            - pos[graph.center]
        vol = np.abs(np.linalg.det(cells))
        z = torch.from_numpy(np.ascontiguousarray(numbers, dtype=np.int64)).to(dev)
        data = AtomGraphData(
            x=z,
            edge_index=torch.from_numpy(np.stack([graph.center, graph.neighbor])).to(dev),
            **{
                KEY.ATOMIC_NUMBERS: z,
                KEY.EDGE_VEC: torch.from_numpy(vec).to(dev, torch.float32),
                KEY.CELL_VOLUME: torch.from_numpy(vol).to(dev, torch.float32),
                KEY.NUM_ATOMS: torch.from_numpy(np.asarray(counts, dtype=np.int64)).to(dev),
                KEY.BATCH: torch.from_numpy(batch).to(dev),
            },
        )
        if self.modal is not None:
            data[KEY.DATA_MODALITY] = [self.modal] * n_good
        with torch.enable_grad():  # forces and stresses need autograd even under no_grad()
            out = self.model(data)
        voigt = out[KEY.PRED_STRESS].detach()  # xx yy zz xy yz zx, -virial / V
        stress = torch.empty((n_good, 3, 3), dtype=voigt.dtype, device=voigt.device)
        for k, (a, b) in enumerate(((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2))):
            stress[:, a, b] = stress[:, b, a] = -voigt[:, k]
        return {"energy": out[KEY.PRED_TOTAL_ENERGY].detach().reshape(n_good),
                "forces": out[KEY.PRED_FORCE].detach(), "stress": stress}
