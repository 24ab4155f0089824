"""CHGNet behind the :class:`~lamcsp.potentials.base.Potential` seam: one model call and one
backward pass per batch.

CHGNet's own ``CHGNet.forward(graphs, task="efs")`` converts each structure separately and
takes two ``autograd.grad`` calls with ``create_graph=True`` (forces, then stresses). Here:

* the crystal graphs of the whole batch come from one call of
  :func:`lamcsp.kernels.chgnet_graph.build_graph` (numba; the same edge sets as CHGNet's
  ``CrystalGraphConverter``, which stays available as ``graph_builder="chgnet"``);
* the bond vectors of all edges are formed at once as ``r_c - (r_n + image @ cell[system])``
  from positions and cells deformed by a zero strain, so one ``autograd.grad`` over
  (positions, strain) without a double-backward graph gives forces and stresses
  (:func:`~lamcsp.potentials.base.energy_forces_stress`);
* the radial and angular bases and the network are CHGNet's own modules; the message passing
  and readout run through ``CHGNet._compute`` with force and stress disabled;
* the composition (AtomRef) energy is added per system with one ``index_add``.

Geometry (bond vectors and lengths) is formed in the state's dtype and handed to the network in
the model's float32, so large cells lose no precision in the subtraction. CHGNet's energy is
per atom and its stress in GPa; this backend returns the contract's total energy (eV) and
stress in eV/Å³, ``(1/V) dE/dε`` (CHGNet's GPa value / 160.21766208, same sign).

A structure that cannot be evaluated (an atom with no neighbour within the model's atom-graph
cutoff, an element CHGNet does not cover, a singular or non-finite cell, a collapsed
structure) gets NaN energy, forces and stress and a reason in ``errors``; the rest of the batch
is evaluated normally.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lamcsp.errors import SetupError
from lamcsp.kernels.chgnet_graph import GraphArrays, build_graph
from lamcsp.potentials.base import Output, Potential, assemble_outputs, energy_forces_stress, unevaluable
from lamcsp.relax.state import BatchedState, select

#: CHGNet's stress unit: its GPa value is ``(1/V) dE/dε`` in eV/Å³ times this.
GPA_PER_EV_A3 = 160.21766208

#: Pretrained versions shipped in the chgnet package (``CHGNet.load(model_name=...)``).
KNOWN_VERSIONS = ("0.3.0", "0.2.0", "r2scan")

ISOLATED_POLICIES = ("fail", "ignore")
GRAPH_BUILDERS = ("fast", "chgnet")


#: How to opt in to a model file that needs more than weights to load (named in the refusal).
TRUST_HINT = ("model.options.trusted: true in the campaign's model section, or --trust-model with "
              "lamcsp relax")


def read_checkpoint(path: str | os.PathLike, *, trusted: bool = False) -> Any:
    """The contents of a CHGNet checkpoint file, read as data unless ``trusted``.

    CHGNet's checkpoints (the pretrained ones in the chgnet package, its trainer's ``.pth.tar``,
    and lamcsp's fine-tuned ``torch.save(model.as_dict())``) hold only dicts, lists, strings,
    numbers and tensors: pickle globals ``collections.OrderedDict``, ``torch.FloatStorage`` and
    ``torch._utils._rebuild_tensor_v2``, all on torch's own ``weights_only`` allow-list, so no
    class is added to it. A file that needs anything more could run code while it is unpickled:
    it is refused before anything in it runs, unless the user trusts it like a script
    (``trusted``).

    Raises:
        SetupError: naming the file: it needs more than the allow-list, or it is unreadable.
    """
    import pickle

    path = Path(path)
    if trusted:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only found a global outside the allow-list
        try:
            needs = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) or "?"
        except Exception:  # noqa: BLE001 - only for the message
            needs = str(exc).splitlines()[0]
        raise SetupError(
            "model",
            f"{str(path)!r} holds more than model weights (it needs {needs}), so loading it may run "
            f"code that the file contains; lamcsp refused it and nothing in it was run. Load only "
            f"files you trust like a script; to load this one anyway, set {TRUST_HINT}.",
        ) from None


def _pretrained_file(version: str) -> Path | None:
    """The checkpoint of a pretrained version in the chgnet package (its folder is named after
    the version), or None where the package lays its files out otherwise."""
    import chgnet

    found = sorted((Path(chgnet.__file__).parent / "pretrained" / version).glob("*.pth.tar"))
    return found[0] if len(found) == 1 else None


def _load_chgnet(model: str | os.PathLike, *, trusted: bool = False) -> tuple[Any, str]:
    """The CHGNet module and its model id; CHGNet's load-time prints are swallowed. Every
    checkpoint, the pretrained ones included, is read as data (:func:`read_checkpoint`)."""
    from chgnet.model import CHGNet

    spec = str(model)
    sink = io.StringIO()
    if spec in KNOWN_VERSIONS:
        path = _pretrained_file(spec)
        with contextlib.redirect_stdout(sink):
            if path is None:  # another chgnet layout: its own loader, on the files it installed
                net = CHGNet.load(model_name=spec, use_device="cpu", verbose=False)
            else:  # as CHGNet.load builds it
                net = CHGNet.from_dict(read_checkpoint(path)["model"], mlp_out_bias=spec == "0.2.0",
                                       version=spec)
        return net, f"chgnet-{spec}"
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SetupError(
            "model",
            f"CHGNet checkpoint {str(path)!r} does not exist or is not a file; give a "
            f"pretrained version ({', '.join(KNOWN_VERSIONS)}; the default is 0.3.0, shipped "
            "inside the chgnet package) or the path of a CHGNet checkpoint file as written by "
            "CHGNet's trainer (a .pth.tar holding 'model') or torch.save(model.as_dict()).",
        )
    try:
        with contextlib.redirect_stdout(sink):
            state = read_checkpoint(path, trusted=trusted)
            if isinstance(state, dict) and "model" in state:
                state = state["model"]
            net = CHGNet.from_dict(state)
    except SetupError:
        raise
    except Exception as exc:  # any failure to read is a setup problem
        raise SetupError(
            "model",
            f"could not read a CHGNet model from {str(path)!r} ({type(exc).__name__}: {exc}); "
            "expected a CHGNet checkpoint (a dict with 'model', or with 'state_dict' and "
            "'model_args').",
        ) from exc
    return net, f"chgnet:{path.name}"


class CHGNetPotential(Potential):
    """CHGNet, batched: energies, forces and stresses of a whole batch per call.

    Args:
        model: a pretrained version known to ``CHGNet.load`` (``"0.3.0"``, ``"0.2.0"``,
            ``"r2scan"``) or the path of a checkpoint file.
        device: where the network runs (the graph is built on the CPU).
        dtype: compute dtype of the network (CHGNet is trained in float32).
        on_isolated_atoms: ``"fail"``: a structure with an atom that has no neighbour within
            the atom-graph cutoff (6 Å for 0.3.0) gets NaN results and an error reason;
            ``"ignore"``: evaluate it anyway (that atom keeps its embedding energy and feels no
            force, as in CHGNet with ``on_isolated_atoms="ignore"``).
        graph_builder: ``"fast"`` (one numba call for the batch) or ``"chgnet"`` (CHGNet's own
            per-structure conversion; slower, for validation).
        max_bond_neighbors: a structure where an atom has more neighbours than this within the
            bond-graph cutoff (3 Å) is reported as collapsed instead of evaluated (its angle
            list would grow as the square and could exhaust memory); ``None`` disables it.
        trusted: load a checkpoint file that needs more than weights and plain data (one that
            may run code when loaded); by default such a file is refused
            (:func:`read_checkpoint`).

    Raises:
        SetupError: unknown version, missing or unreadable checkpoint, bad option.
    """

    name = "chgnet"

    def __init__(
        self,
        model: str | os.PathLike = "0.3.0",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        on_isolated_atoms: str = "fail",
        graph_builder: str = "fast",
        max_bond_neighbors: int | None = 128,
        trusted: bool = False,
    ):
        super().__init__(device=device, dtype=dtype)
        if on_isolated_atoms not in ISOLATED_POLICIES:
            raise SetupError(
                "on_isolated_atoms",
                f"unknown policy {on_isolated_atoms!r}; use one of {', '.join(ISOLATED_POLICIES)}",
            )
        if graph_builder not in GRAPH_BUILDERS:
            raise SetupError(
                "graph_builder",
                f"unknown graph builder {graph_builder!r}; use one of {', '.join(GRAPH_BUILDERS)}",
            )
        self.on_isolated_atoms = on_isolated_atoms
        self.graph_builder = graph_builder
        self.max_bond_neighbors = max_bond_neighbors
        net, self._model_id = _load_chgnet(model, trusted=trusted)
        net = net.to(device=self.device, dtype=dtype).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.model = net
        self.atom_cutoff = float(net.graph_converter.atom_graph_cutoff)
        self.bond_cutoff = float(net.graph_converter.bond_graph_cutoff)
        self.n_elements = int(net.atom_embedding.embedding.num_embeddings)

    # ---- metadata -----------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def supported_numbers(self) -> set[int]:
        return set(range(1, self.n_elements + 1))

    @property
    def bytes_per_atom(self) -> int:
        """Estimated peak memory per atom of one forward + backward pass, bytes.

        An estimate for sizing GPU batches, not a bound. It is dominated by the per-edge
        activations of the atom convolutions (about 60 directed edges per atom within 6 Å in
        ordinary crystals) and the angle list (``k (k - 1)`` rows per atom for ``k``
        neighbours within 3 Å), so it grows with density. Measured as peak CPU RSS growth over
        batches of 400-6400 atoms of rattled crystals (8-24 atoms per cell, ~60 edges and
        ~85 angles per atom): 1.9-2.4 MB per atom (CHGNet's own ``forward(task="efs")``,
        which keeps a double-backward graph: ~10 MB per atom). The constant leaves about 2x
        headroom for dense or compressed cells.
        """
        return 4_000_000

    # ---- graph ----------------------------------------------------------------------------
    def _screen(
        self, pos: np.ndarray, numbers: np.ndarray, cells: np.ndarray, counts: np.ndarray
    ) -> list[str | None]:
        """Reasons a structure cannot be evaluated, found before building its graph (CHGNet covers
        Z 1..n_elements)."""
        return unevaluable(pos, numbers, cells, counts, range(1, self.n_elements + 1), self.model_id)

    def _build_chgnet(self, pos: np.ndarray, cells: np.ndarray, counts: np.ndarray) -> GraphArrays:
        """The batch's graphs from CHGNet's own per-structure graph code (reference path)."""
        from pymatgen.optimization.neighbors import find_points_in_spheres

        conv = self.model.graph_converter
        pbc = np.ones(3, dtype=np.int64)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("c", "n", "img", "dist", "d2u", "u2d", "bg")}
        atom0 = dir0 = und0 = 0
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for s in range(len(counts)):
            p = np.ascontiguousarray(pos[bounds[s] : bounds[s + 1]], dtype=float)
            lat = np.ascontiguousarray(cells[s], dtype=float)
            ci, ni, img, dist = find_points_in_spheres(
                p, p, r=self.atom_cutoff, pbc=pbc, lattice=lat, tol=1e-8
            )
            keep = ~((ci == ni) & (dist <= 1e-8))
            ci, ni, img, dist = ci[keep], ni[keep], img[keep], dist[keep]
            graph = conv.create_graph(len(p), ci, ni, img, dist)
            adj, d2u = graph.adjacency_list()
            bg, u2d = graph.line_graph_adjacency_list(cutoff=self.bond_cutoff)
            adj = np.asarray(adj, dtype=np.int64).reshape(-1, 2)
            bg = np.asarray(bg, dtype=np.int64).reshape(-1, 5)
            parts["c"].append(adj[:, 0] + atom0)
            parts["n"].append(adj[:, 1] + atom0)
            parts["img"].append(np.asarray(img, dtype=np.int64).reshape(-1, 3))
            parts["dist"].append(np.asarray(dist, dtype=float))
            parts["d2u"].append(np.asarray(d2u, dtype=np.int64) + und0)
            parts["u2d"].append(np.asarray(u2d, dtype=np.int64) + dir0)
            parts["bg"].append(bg + np.array([atom0, und0, dir0, und0, dir0]))
            atom0 += len(p)
            dir0 += len(adj)
            und0 += len(u2d)
        cat = {k: np.concatenate(v) for k, v in parts.items()}
        return GraphArrays(cat["c"], cat["n"], cat["img"], cat["dist"], cat["d2u"], cat["u2d"], cat["bg"])

    def _build(self, pos: np.ndarray, cells: np.ndarray, counts: np.ndarray) -> GraphArrays:
        if self.graph_builder == "chgnet":
            return self._build_chgnet(pos, cells, counts)
        return build_graph(pos, cells, counts, self.atom_cutoff, self.bond_cutoff)

    def _graph_errors(self, graph: GraphArrays, counts: np.ndarray) -> list[str | None]:
        """Reasons found in a built graph: isolated atoms, collapsed neighbourhoods."""
        n_atoms = int(counts.sum())
        sys_of_atom = np.repeat(np.arange(len(counts)), counts)
        errors: list[str | None] = [None] * len(counts)
        if self.max_bond_neighbors is not None:
            short = np.bincount(graph.center[graph.distance < self.bond_cutoff], minlength=n_atoms)
            worst = np.zeros(len(counts), dtype=np.int64)
            np.maximum.at(worst, sys_of_atom, short)
            for s in np.nonzero(worst > self.max_bond_neighbors)[0]:
                errors[s] = (
                    f"collapsed structure: an atom has {worst[s]} neighbours within "
                    f"{self.bond_cutoff:g} Å (limit max_bond_neighbors={self.max_bond_neighbors})"
                )
        if self.on_isolated_atoms == "fail":
            isolated = np.bincount(graph.center, minlength=n_atoms) == 0
            n_iso = np.bincount(sys_of_atom, weights=isolated, minlength=len(counts))
            for s in np.nonzero(n_iso)[0]:
                errors[s] = errors[s] or (
                    f"{int(n_iso[s])} isolated atom(s): no neighbour within "
                    f"{self.atom_cutoff:g} Å (the CHGNet atom-graph cutoff)"
                )
        return errors

    # ---- model ------------------------------------------------------------------------------
    def _energy_fn(self, graph: GraphArrays, numbers: torch.Tensor, system_idx: torch.Tensor, n_systems: int):
        """Total energy ``(S,)`` as a function of (deformed) positions and cells."""
        from chgnet.model.model import BatchedGraph

        net = self.model
        dev, mdt = self.device, self.dtype

        def idx(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(dev)

        center, neighbor = idx(graph.center), idx(graph.neighbor)
        image = torch.from_numpy(graph.image).to(dev)
        d2u, u2d = idx(graph.directed2undirected), idx(graph.undirected2directed)
        bg = idx(graph.bond_graph)
        edge_sys = system_idx[center]
        counts = torch.bincount(system_idx, minlength=n_systems)
        z = numbers.to(torch.long)

        def energy_fn(pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
            shift = torch.einsum("ek,ekl->el", image.to(pos.dtype), cell[edge_sys])
            vec = pos[center] - (pos[neighbor] + shift)  # CHGNet's bond vector: centre - neighbour
            length = torch.linalg.norm(vec, dim=1)
            unit = (vec / length[:, None]).to(mdt)
            u_len = length[u2d].to(mdt)
            enc = net.bond_basis_expansion
            bases_ag = enc.rbf_expansion_ag(u_len)
            bases_bg = enc.rbf_expansion_bg(u_len)
            if bg.shape[0]:
                angle_bases = net.angle_basis_expansion(unit[bg[:, 2]], unit[bg[:, 4]])
                bond_graph = bg[:, [0, 1, 3]]
            else:
                angle_bases = torch.zeros(0, device=dev, dtype=mdt)
                bond_graph = torch.zeros(0, device=dev, dtype=torch.long)
            batched = BatchedGraph(
                atomic_numbers=z,
                bond_bases_ag=bases_ag,
                bond_bases_bg=bases_bg,
                angle_bases=angle_bases,
                batched_atom_graph=torch.stack([center, neighbor], dim=1),
                batched_bond_graph=bond_graph,
                atom_owners=system_idx,
                directed2undirected=d2u,
                atom_positions=[],
                strains=[],
                volumes=torch.zeros(0, device=dev, dtype=mdt),
            )
            pred = net._compute(batched, compute_force=False, compute_stress=False)
            energy = pred["e"]
            if net.is_intensive:
                energy = energy * counts.to(energy.dtype)
            return energy.to(pos.dtype) + self._composition_energy(z, system_idx, n_systems, pos.dtype)

        return energy_fn

    def _composition_energy(
        self, z: torch.Tensor, system_idx: torch.Tensor, n_systems: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """Total composition-model (AtomRef) energy per system, eV."""
        from chgnet.model.composition_model import AtomRef

        comp = self.model.composition_model
        out = torch.zeros(n_systems, dtype=dtype, device=z.device)
        if comp is None:
            return out
        if isinstance(comp, AtomRef):
            per_atom = comp.fc.weight[0, z - 1].to(dtype)
            return out.index_add(0, system_idx, per_atom)
        # another composition model: CHGNet's own call, on objects that carry atomic_number
        from types import SimpleNamespace

        counts = torch.bincount(system_idx, minlength=n_systems).tolist()
        graphs = [SimpleNamespace(atomic_number=part) for part in torch.split(z, counts)]
        energy = comp(graphs).to(dtype)
        if getattr(comp, "is_intensive", True):
            energy = energy * torch.as_tensor(counts, dtype=dtype, device=z.device)
        return energy

    # ---- the seam -------------------------------------------------------------------------
    def forward(self, state: BatchedState) -> Output:
        t0 = time.perf_counter()
        n_sys = state.n_systems
        pos = state.positions.detach().cpu().numpy().astype(np.float64, copy=False)
        cells = state.cell.detach().cpu().numpy().astype(np.float64, copy=False)
        counts = state.n_atoms_per_system.cpu().numpy()
        errors = self._screen(pos, state.numbers.detach().cpu().numpy(), cells, counts)
        good = [s for s in range(n_sys) if errors[s] is None]
        graph = None
        # Graphs of different structures are independent, so a second pass without the
        # structures the first one rejected is always clean.
        for _ in range(2):
            if not good:
                break
            sub_counts = counts[good]
            atom_keep = np.repeat(np.isin(np.arange(n_sys), good), counts)
            graph = self._build(pos[atom_keep], cells[good], sub_counts)
            found = self._graph_errors(graph, sub_counts)
            if not any(found):
                break
            for s, reason in zip(good, found, strict=True):
                errors[s] = errors[s] or reason
            good = [s for s in good if errors[s] is None]
            graph = None
        self._tick("graph", time.perf_counter() - t0)
        if graph is None:
            return assemble_outputs(state, None, good, errors)

        t1 = time.perf_counter()
        sub = (state if len(good) == n_sys else select(state, good)).to(self.device)
        energy_fn = self._energy_fn(graph, sub.numbers, sub.system_idx, sub.n_systems)
        with torch.enable_grad():  # forces and stresses need autograd even under no_grad()
            result = energy_forces_stress(sub, energy_fn)
        self._tick("model", time.perf_counter() - t1)
        for k in torch.nonzero(~torch.isfinite(result["energy"])).flatten().tolist():
            errors[good[k]] = "non-finite energy (overlapping atoms?)"
        return assemble_outputs(state, result, good, errors)
