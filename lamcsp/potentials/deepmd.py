"""DeePMD-kit v3 (PyTorch) models behind the :class:`~lamcsp.potentials.base.Potential` seam:
DPA-2/DPA-3, se_e2_a, multi-head OpenLAM checkpoints.

``model: {backend: deepmd, path: model.pt, head: NAME}`` in a campaign, or
``--model deepmd:PATH[@HEAD]`` on the command line. A checkpoint (``.pt``, as ``dp --pt train``
writes it) or a frozen model (``.pth``, ``dp --pt freeze``) is loaded with DeePMD-kit's own
:class:`deepmd.infer.DeepPot` (head selection, type map); the network it holds is then called
directly on torch tensors, on the potential's device, for whole batches:

* ``batching="group"``: one model call per distinct atom count in the batch;
* ``batching="pad"``: one model call for the whole batch, every structure padded to the largest
  with virtual atoms of type -1 (DeePMD-kit leaves them out of every neighbour list and every
  energy sum);
* ``batching="bucket"``: in between, structures within 25 % in atom count share a padded call;
* ``"auto"`` (default): the fastest measured with ``benchmarks/deepmd_eval.py`` on mixed sizes
  (``docs/deepmd.md``): padding on a GPU, where one call of the whole batch beats one call per
  size many times over; grouping on a CPU, where the padded atoms cost their full share of the
  neighbour search and descriptor work.

Energies are the model's total energy (eV), forces eV/Å, and the stress is ``-virial / V``
(ASE's sign convention, as DeePMD-kit's own ASE calculator gives it).

An element the model's ``type_map`` lacks is a :class:`~lamcsp.errors.SetupError` naming it
(before any model call); a multi-head model without a head, or with an unknown one, is a
``SetupError`` on ``model.head`` listing the heads.

The fine-tuning entry of the fine-tune loop is :func:`finetune` (``dp --pt train --finetune``,
then ``dp --pt freeze``); :func:`write_frames` writes labelled frames with dpdata.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lamcsp.errors import SetupError
from lamcsp.potentials.base import Output, Potential
from lamcsp.relax.state import BatchedState

#: how far each batching mode pads: structures whose atom counts lie within this ratio of each
#: other share a model call, padded to the largest (1: equal counts only; inf: one call)
PAD_RATIO = {"group": 1.0, "bucket": 1.25, "pad": float("inf")}
BATCHING = ("auto", *PAD_RATIO)


def call_groups(counts: Sequence[int], ratio: float) -> list[list[int]]:
    """Systems sharing a model call: sorted by atom count, a group grows while its largest count
    is at most ``ratio`` times its smallest. Returns lists of system indices."""
    order = sorted(range(len(counts)), key=lambda i: counts[i])
    groups: list[list[int]] = []
    lo = None
    for i in order:
        if groups and lo is not None and counts[i] <= ratio * lo:
            groups[-1].append(i)
        else:
            groups.append([i])
            lo = counts[i]
    return groups

INSTALL_HINT = (
    "install it with the project's torch: pip install 'lamcsp[deepmd]', then rebuild its C++ op "
    "against this torch: DP_VARIANT=cpu DP_ENABLE_TENSORFLOW=0 pip install --no-build-isolation "
    "--no-deps --force-reinstall --no-binary deepmd-kit deepmd-kit (see README)"
)


def _import_deeppot() -> Any:
    try:
        from deepmd.infer import DeepPot
    except ImportError as exc:
        raise SetupError("model.backend",
                         f"the deepmd backend needs deepmd-kit ({exc}); {INSTALL_HINT}") from exc
    except RuntimeError as exc:  # the C++ op was built for another torch
        raise SetupError("model.backend", f"deepmd-kit does not load with this torch ({exc}); "
                                          f"{INSTALL_HINT}") from exc
    return DeepPot


def checkpoint_params(path: str | os.PathLike) -> dict[str, Any]:
    """The model definition stored in a ``.pt`` checkpoint (``model_dict`` per head for a
    multi-head model)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if "model" in state:
        state = state["model"]
    return dict(state["_extra_state"]["model_params"])


def checkpoint_heads(path: str | os.PathLike) -> list[str] | None:
    """The heads of a multi-head ``.pt`` checkpoint, or ``None`` for a single-head model."""
    params = checkpoint_params(path)
    return list(params["model_dict"]) if "model_dict" in params else None


def split_spec(arg: str) -> tuple[str, str | None]:
    """``PATH[@HEAD]`` -> ``(PATH, HEAD or None)`` (the last ``@``; paths may hold one)."""
    path, sep, head = arg.rpartition("@")
    if not sep or not head or "/" in head:
        return arg, None
    return path, head


def load_deeppot(path: str | os.PathLike, head: str | None = None) -> Any:
    """DeePMD-kit's ``DeepPot`` of a ``.pt``/``.pth`` file, with head checks as SetupErrors."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SetupError("model.path", f"DeePMD-kit model {str(p)!r} does not exist or is not a file; give a "
                                       "checkpoint (.pt, from dp --pt train) or a frozen model (.pth, from "
                                       "dp --pt freeze)")
    if p.suffix not in (".pt", ".pth"):
        raise SetupError("model.path", f"{str(p)!r} is not a DeePMD-kit PyTorch model: expected a .pt "
                                       "checkpoint or a .pth frozen model (TensorFlow .pb models are not "
                                       "supported; convert them with dp convert-backend)")
    DeepPot = _import_deeppot()
    heads = None
    if p.suffix == ".pt":
        try:
            heads = checkpoint_heads(p)
        except Exception as exc:  # noqa: BLE001 - unreadable file: a setup problem
            raise SetupError("model.path", f"could not read a DeePMD-kit checkpoint from {str(p)!r} "
                                           f"({type(exc).__name__}: {exc})") from exc
        if heads is not None:
            if head is None:
                raise SetupError("model.head", f"{p.name} is a multi-head model; choose a head with "
                                               f"model.head (or deepmd:PATH@HEAD): {', '.join(heads)}")
            if head not in heads:
                raise SetupError("model.head", f"{p.name} has no head {head!r}; its heads are: "
                                               f"{', '.join(heads)}")
        elif head is not None:
            raise SetupError("model.head", f"{p.name} has a single head; leave model.head out (got {head!r})")
    elif head is not None:
        raise SetupError("model.head", f"{p.name} is a frozen model, which has one head (the one chosen "
                                       f"with dp --pt freeze --head); leave model.head out (got {head!r})")
    try:
        return DeepPot(str(p), head=head, auto_batch_size=False)
    except Exception as exc:  # noqa: BLE001
        raise SetupError("model.path", f"could not load DeePMD-kit model {str(p)!r} "
                                       f"({type(exc).__name__}: {exc})") from exc


class DeePMDPotential(Potential):
    """A DeePMD-kit PyTorch model, batched over structures of different sizes.

    Args:
        path: a ``.pt`` checkpoint or a ``.pth`` frozen model.
        head: the head of a multi-head checkpoint (required there, refused elsewhere).
        device: where the network runs.
        batching: ``"auto"``, ``"group"`` (one call per atom count), ``"bucket"`` (one padded
            call per 25 % range of atom counts) or ``"pad"`` (one call, virtual atoms of type
            -1).

    Raises:
        SetupError: missing or unreadable file, head problems, unknown batching, deepmd-kit
            missing or built for another torch.
    """

    name = "deepmd"

    def __init__(self, path: str | os.PathLike, head: str | None = None, device: torch.device | str = "cpu",
                 batching: str = "auto", dtype: torch.dtype = torch.float64):
        super().__init__(device=device, dtype=dtype)
        if batching not in BATCHING:
            raise SetupError("model.options.batching", f"unknown batching {batching!r}; use one of "
                                                       f"{', '.join(BATCHING)}")
        self.batching = batching
        self.path = Path(path).expanduser().absolute()
        self.head = head
        self.deeppot = load_deeppot(self.path, head)
        self._net = self.deeppot.deep_eval.dp.to(self.device)
        self._net.eval()
        from ase.data import atomic_numbers

        self.type_map = list(self.deeppot.get_type_map())
        unknown = [t for t in self.type_map if t not in atomic_numbers]
        types = torch.full((119,), -1, dtype=torch.long)
        for i, sym in enumerate(self.type_map):
            if sym in atomic_numbers:
                types[atomic_numbers[sym]] = i
        self._types = types.to(self.device)
        self._numbers = {atomic_numbers[t] for t in self.type_map if t not in unknown}
        from deepmd.pt.utils.env import GLOBAL_PT_FLOAT_PRECISION

        self._model_dtype = GLOBAL_PT_FLOAT_PRECISION
        self.rcut = float(self.deeppot.get_rcut())
        self.n_model_calls = 0

    @property
    def model_id(self) -> str:
        return f"deepmd:{self.path.name}" + (f"@{self.head}" if self.head else "")

    @property
    def supported_numbers(self) -> set[int]:
        return set(self._numbers)

    def check_numbers(self, numbers: Any, field: str = "structures") -> None:
        """Raise :class:`SetupError` naming the elements outside the model's ``type_map``."""
        from ase.data import chemical_symbols

        present = {int(z) for z in torch.as_tensor(numbers).flatten().tolist()}
        missing = sorted(present - self._numbers)
        if missing:
            names = ", ".join(chemical_symbols[z] if 0 < z < 119 else str(z) for z in missing)
            raise SetupError(field, f"the DeePMD-kit model {self.model_id} does not cover element(s) "
                                    f"{names}: its type_map is {', '.join(self.type_map)}")

    # -- evaluation ------------------------------------------------------------------------

    def forward(self, state: BatchedState) -> Output:
        types = self._types[state.numbers.to(self.device)]
        if bool((types < 0).any()):  # an element outside the type map (the relaxer checks first)
            self.check_numbers(state.numbers)
        counts = state.n_atoms_per_system
        S, N = state.n_systems, state.n_atoms
        energy = torch.empty(S, dtype=state.dtype, device=state.device)
        forces = torch.empty((N, 3), dtype=state.dtype, device=state.device)
        stress = torch.empty((S, 3, 3), dtype=state.dtype, device=state.device)
        starts = torch.cumsum(counts, 0) - counts
        local = torch.arange(N, device=state.device) - starts[state.system_idx]
        mode = self.batching
        if mode == "auto":  # the fastest measured (benchmarks/deepmd_eval.py): one padded call on
            # a GPU (48-80x DeePMD-kit's DeepPot.eval per structure on an H100), grouping on a CPU,
            # where padded atoms cost their full share of the neighbour search and descriptor
            mode = "pad" if self.device.type == "cuda" else "group"
        for systems in call_groups(counts.tolist(), PAD_RATIO[mode]):
            sel = torch.as_tensor(systems, device=state.device)
            n = int(counts[sel].max())
            if bool((counts[sel] == n).all()):  # equal sizes: no padding
                atoms = (starts[sel][:, None] + torch.arange(n, device=state.device)).flatten()
                e, f, v = self._call(state.positions[atoms].reshape(len(systems), n, 3),
                                     types[atoms.to(self.device)].reshape(len(systems), n), state.cell[sel])
                forces[atoms] = f.reshape(-1, 3).to(state.device, state.dtype)
            else:  # padded to the largest with virtual atoms (type -1)
                where = torch.full((S,), -1, dtype=torch.long, device=state.device)
                where[sel] = torch.arange(len(systems), device=state.device)
                atoms = torch.nonzero(where[state.system_idx] >= 0).flatten()
                row, col = where[state.system_idx[atoms]], local[atoms]
                coord = torch.zeros((len(systems), n, 3), dtype=state.positions.dtype, device=state.device)
                coord[row, col] = state.positions[atoms]
                atype = torch.full((len(systems), n), -1, dtype=torch.long, device=self.device)
                atype[row.to(self.device), col.to(self.device)] = types[atoms.to(self.device)]
                e, f, v = self._call(coord, atype, state.cell[sel])
                forces[atoms] = f.to(state.device)[row, col].to(state.dtype)
            energy[sel] = e.to(state.device, state.dtype)
            stress[sel] = v.to(state.device, state.dtype)
        return {"energy": energy, "forces": forces, "stress": stress}

    def _call(self, coord: torch.Tensor, atype: torch.Tensor,
              cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One model call on ``nf`` frames of ``n`` atoms: energies ``(nf,)``, forces
        ``(nf, n, 3)`` and stresses ``(nf, 3, 3)``."""
        self.n_model_calls += 1
        dt, dev = self._model_dtype, self.device
        coord = coord.detach().to(device=dev, dtype=dt)
        box = cell.detach().to(device=dev, dtype=dt)
        ev = self.deeppot.deep_eval
        lower = getattr(ev, "_nlist_builder", None) is not None and hasattr(ev, "_eval_lower_strategy")
        if lower and not bool((atype < 0).any()):
            # DeePMD-kit's own O(N) neighbour search (vesin), as DeepPot.eval uses it; the
            # model's forward would build a dense all-pairs list instead. Not for padded frames:
            # vesin counts the virtual atoms (all at the origin) as points, and on a GPU their
            # pairs overflow its fixed capacity (measured on an H100)
            out = ev._eval_lower_strategy(coord, atype.to(dev), box.reshape(-1, 3, 3), None, None, None,
                                          False)
        else:
            out = self._net(coord, atype.to(dev), box=box.reshape(-1, 9), do_atomic_virial=False)
        if isinstance(out, tuple):
            out = out[0]
        nf = coord.shape[0]
        energy = out["energy"].detach().reshape(nf)
        force = out["force"].detach().reshape(nf, -1, 3)
        virial = out["virial"].detach().reshape(nf, 3, 3)
        volume = torch.linalg.det(box).abs()
        return energy, force, -virial / volume[:, None, None]


# -- data and fine-tuning ------------------------------------------------------------------------


def write_frames(frames: Sequence[Any], out_dir: str | os.PathLike, type_map: Sequence[str]) -> list[Path]:
    """Write labelled frames (ASE ``Atoms`` with energy, forces and stress results) as
    dpdata's ``deepmd/npy``, one system folder per formula; returns the folders (absolute).

    Every frame keeps the full ``type_map`` (so every folder's ``type_map.raw`` is the model's)."""
    import dpdata

    out = Path(out_dir)
    missing = sorted({s for a in frames for s in a.get_chemical_symbols()} - set(type_map))
    if missing:
        raise SetupError("type_map", f"elements {', '.join(missing)} are not in the model's type map "
                                     f"({', '.join(type_map)})")
    ms = dpdata.MultiSystems(type_map=list(type_map))
    for a in frames:
        ms.append(dpdata.LabeledSystem(a, fmt="ase/structure"))
    ms.to_deepmd_npy(str(out))
    return sorted(p.resolve() for p in out.iterdir() if (p / "type.raw").is_file())


def run_dp(args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
    """Run DeePMD-kit's command line, ``dp --pt ARGS``, in ``cwd`` and wait for it (``dp`` on
    the ``PATH``, else ``python -m deepmd.main`` of this interpreter).

    Args:
        args: the arguments after ``--pt`` (``["train", "input.json", "--finetune", ...]``).
        cwd: the working directory (DeePMD-kit writes its checkpoints there).
        log: the file its output and errors are appended to.
        env: its environment (default: this process's).

    Raises:
        SetupError: ``dp`` exited non-zero; the message quotes the end of ``log``.
    """
    exe = shutil.which("dp")
    cmd = [exe] if exe else [sys.executable, "-m", "deepmd.main"]
    with open(log, "a") as fh:
        rc = subprocess.run([*cmd, "--pt", *args], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                            env=env).returncode
    if rc:
        tail = log.read_text(errors="replace").strip().splitlines()[-8:]
        raise SetupError("finetune", f"dp --pt {' '.join(args)} failed (exit {rc}) in {cwd}; its log "
                                     f"{log} ends with: " + " | ".join(tail))


def finetune(
    model: str | os.PathLike,
    data: Sequence[str | os.PathLike],
    workdir: str | os.PathLike,
    *,
    head: str | None = None,
    init: bool = False,
    steps: int = 1000,
    learning_rate: tuple[float, float] = (1e-3, 1e-5),
    validation: Sequence[str | os.PathLike] | None = None,
    seed: int = 1,
    batch_size: Any = "auto",
    threads: int | None = None,
    fresh_fitting: bool = False,
) -> Path:
    """Fine-tune a DeePMD-kit model on labelled frames; returns the frozen ``.pth`` model.

    The first iteration of the fine-tune loop fine-tunes the pretrained model
    (``dp --pt train input.json --finetune model.pt [--model-branch HEAD]``: the descriptor and,
    for a multi-head model, the chosen head's fitting net are kept, the energy bias refitted to
    the new data); later iterations continue from the last checkpoint (``init=True``:
    ``--init-model``). The model definition comes from the checkpoint (``--use-pretrain-script``),
    so only training settings are written to ``workdir/input.json``. The result is frozen with
    ``dp --pt freeze`` to ``workdir/model.pth``; ``workdir`` keeps ``train.log``,
    ``lcurve.out`` (the learning curve) and the checkpoints (``model.ckpt.pt``).

    Args:
        model: the ``.pt`` checkpoint to start from.
        data: ``deepmd/npy`` system folders (:func:`write_frames`).
        workdir: created if needed.
        head: the head of a multi-head ``model`` to start from.
        init: continue training ``model`` (``--init-model``) instead of fine-tuning it.
        steps: training steps.
        learning_rate: start and stop learning rates (exponential decay).
        validation: ``deepmd/npy`` folders for the validation error in ``lcurve.out``.
        seed: training seed.
        batch_size: DeePMD-kit's ``batch_size`` (``"auto"``: frames per batch from atom counts).
        threads: torch threads of the training process (``OMP_NUM_THREADS``).
        fresh_fitting: keep the descriptor but start from a freshly initialised fitting net
            (``--model-branch RANDOM``; a committee member that does not share the pretrained
            fitting net's mistakes).

    Raises:
        SetupError: no data, a missing model, or a failed ``dp`` command (quoting its log).
    """
    model = Path(model).expanduser().resolve()
    if not model.is_file() or model.suffix != ".pt":
        raise SetupError("finetune.model", f"fine-tuning starts from a .pt checkpoint; {str(model)!r} "
                                           "is not one")
    systems = [str(Path(d).resolve()) for d in data]
    if not systems:
        raise SetupError("finetune.data", "no labelled data to fine-tune on")
    work = Path(workdir)
    decay = max(1, steps // 20)
    start, stop = learning_rate
    training: dict[str, Any] = {
        "training_data": {"systems": systems, "batch_size": batch_size},
        "numb_steps": int(steps), "seed": int(seed), "disp_file": "lcurve.out",
        "disp_freq": max(1, steps // 20), "save_freq": int(steps),
    }
    if validation:
        training["validation_data"] = {"systems": [str(Path(d).resolve()) for d in validation],
                                       "batch_size": batch_size, "numb_btch": 1}
    params = checkpoint_params(model)
    if init and "model_dict" in params:
        raise SetupError("finetune.init", f"{model.name} is a multi-head model: fine-tune one of its heads "
                                          "first (init=False), then continue from that checkpoint")
    if "model_dict" in params:
        heads = list(params["model_dict"])
        if head not in heads:
            raise SetupError("finetune.head", f"{model.name} is a multi-head model; fine-tune one of its "
                                              f"heads: {', '.join(heads)} (got {head!r})")
        params = params["model_dict"][head]
    elif head is not None:
        raise SetupError("finetune.head", f"{model.name} has a single head; leave head out (got {head!r})")
    config = {
        "model": params,
        "learning_rate": {"type": "exp", "start_lr": start, "stop_lr": stop, "decay_steps": decay},
        "loss": {"type": "ener", "start_pref_e": 0.2, "limit_pref_e": 1, "start_pref_f": 100,
                 "limit_pref_f": 1, "start_pref_v": 0.02, "limit_pref_v": 0.2},
        "training": training,
    }
    if init:
        extra = ["--init-model", str(model), "--use-pretrain-script"]
    else:
        extra = ["--finetune", str(model), "--use-pretrain-script"]
        if fresh_fitting:
            extra += ["--model-branch", "RANDOM"]
        elif head is not None:
            extra += ["--model-branch", head]
    return train(config, work, extra=extra, threads=threads)


def train(config: dict[str, Any], workdir: str | os.PathLike, *, extra: Sequence[str] = (),
          threads: int | None = None, freeze_head: str | None = None) -> Path:
    """Train a DeePMD-kit model from a full ``input.json`` (``config``) in ``workdir`` and
    freeze it; returns ``workdir/model.pth`` (the checkpoint is ``workdir/model.ckpt.pt``).

    ``extra`` adds arguments of ``dp --pt train``; ``freeze_head`` picks the head to freeze of a
    multi-task run; ``threads`` sets ``OMP_NUM_THREADS`` of the ``dp`` processes."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "input.json").write_text(json.dumps(config, indent=1))
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    run_dp(["train", "input.json", *extra], work, work / "train.log", env)
    # frozen under a temporary name and moved into place: a model.pth is always a whole one
    run_dp(["freeze", "-o", "model.tmp.pth", *(["--head", freeze_head] if freeze_head else [])], work,
        work / "freeze.log", env)
    os.replace(work / "model.tmp.pth", work / "model.pth")
    return work / "model.pth"


def learning_curve(workdir: str | os.PathLike) -> dict[str, list[float]]:
    """The columns of ``workdir/lcurve.out`` by name (``step``, ``rmse_e_trn``, ``rmse_f_trn``,
    ``rmse_f_val``, ...)."""
    path = Path(workdir) / "lcurve.out"
    lines = path.read_text().splitlines()
    names = lines[0].lstrip("#").split()
    rows = np.loadtxt(path, ndmin=2)
    return {n: rows[:, i].tolist() for i, n in enumerate(names[: rows.shape[1]])}
