"""Trainers of the fine-tune loop: K committee members per iteration, each saved the moment it
is trained (atomically: a temporary file moved into place), so that ``--resume`` after a kill
during training retrains only the members that were not saved.

A trainer has ``backend`` (the model backend its members load with), ``train(data, workdir,
members, parents) -> [model paths]`` and ``spec(path) -> campaign model section``.

How members differ (``diversity``; the fine-tune loop's committee must disagree where it is
wrong, not only where its seeds happen to differ; ``benchmarks/committee_diversity.py`` measures
the three):

* ``bootstrap``: member k > 0 trains on a bootstrap resample of the labels (bagging), member 0
  on all of them; seeds 1..K.
* ``seeds``: every member on all labels, seeds 1..K.
* ``fresh_head``: every member on all labels from a freshly initialised readout (CHGNet: the
  last layer of its readout MLP; DeePMD-kit: the fitting net, ``--model-branch RANDOM``), seeds
  1..K.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lamcsp.faults import fault
from lamcsp.log import stage

log = logging.getLogger(__name__)

DIVERSITY = ("bootstrap", "seeds", "fresh_head")


def bootstrap_indices(n: int, member: int, diversity: str) -> np.ndarray:
    """The frames member ``member`` trains on: all of them, or (``bootstrap``, member > 0) a
    resample with replacement drawn with seed ``member + 1``."""
    if diversity != "bootstrap" or member == 0:
        return np.arange(n)
    return np.random.default_rng(member + 1).integers(0, n, n)


class DeePMDTrainer:
    """Fine-tunes a DeePMD-kit model into K committee members (seeds 1..K), through
    :func:`lamcsp.potentials.deepmd.finetune`: the first iteration fine-tunes the pretrained
    checkpoint (``--finetune``, ``--model-branch HEAD`` for a multi-head model, ``RANDOM`` for a
    fresh fitting net), later ones continue each member from its last checkpoint
    (``--init-model``) on all data so far."""

    backend = "deepmd"

    def __init__(self, model: str | os.PathLike, head: str | None = None, *, steps: int = 1000,
                 learning_rate: tuple[float, float] = (1e-3, 1e-5), threads: int | None = None,
                 diversity: str = "seeds"):
        self.model = Path(model)
        self.head = head
        self.steps = steps
        self.learning_rate = learning_rate
        self.threads = threads
        self.diversity = diversity

    def train(self, systems: Sequence[Path], workdir: Path, members: int,
              parents: Sequence[str] | None = None) -> list[str]:
        from lamcsp.potentials.deepmd import finetune

        out = []
        progress = stage("  training (deepmd)", members, write=log.info, every=0.0)
        for k in range(members):
            work = workdir / f"member-{k}"
            if (work / "model.pth").is_file():  # trained before a kill
                out.append(str(work / "model.pth"))
                progress.step(detail=f"member {k} trained before")
                continue
            data = self._resample(systems, work, k)
            if parents:
                finetune(Path(parents[k]).parent / "model.ckpt.pt", data, work, init=True, steps=self.steps,
                         seed=k + 1, learning_rate=self.learning_rate, threads=self.threads)
            else:
                finetune(self.model, data, work, head=self.head, fresh_fitting=self.diversity == "fresh_head",
                         steps=self.steps, seed=k + 1, learning_rate=self.learning_rate, threads=self.threads)
            fault("member-trained")
            out.append(str(work / "model.pth"))
            progress.step(detail=f"member {k}")
        return out

    def _resample(self, systems: Sequence[Path], work: Path, k: int) -> list[Path]:
        """The member's data: the systems as they are, or a bootstrap resample of each one's
        frames written under ``work/data``."""
        if self.diversity != "bootstrap" or k == 0:
            return list(systems)
        import dpdata

        out = []
        for j, path in enumerate(systems):
            system = dpdata.LabeledSystem(str(path), fmt="deepmd/npy")
            idx = bootstrap_indices(len(system), k + 100 * j, self.diversity)
            dest = work / "data" / f"{j:03d}-{Path(path).name}"
            system.sub_system(idx.tolist()).to("deepmd/npy", str(dest))
            out.append(dest)
        return out

    def spec(self, path: str) -> dict[str, Any]:
        """The campaign ``model`` section of a trained member."""
        return {"backend": "deepmd", "path": path, "head": None}


class CHGNetTrainer:
    """Fine-tunes CHGNet (its own ``chgnet.trainer.Trainer``, energy + forces + stress and the
    composition model, from the pretrained weights each iteration, on all data so far) into K
    members with torch and data seeds 1..K (``diversity``: see the module docstring); each
    member is saved with ``torch.save(model.as_dict())``, which the ``chgnet`` backend loads as
    ``chgnet:PATH``.

    The loss weights: energy per atom (eV) 1, forces (eV/Å) 1, stress (GPa) 0.001, not
    CHGNet's pretraining 0.1. The labels a search produces hold stresses of several GPa
    (relaxation starts, structures far from the oracle's volume); weighted 0.1 the stress
    dominates the loss and the energies, which decide the ranking, are left unfitted; without
    stress labels the cell relaxations go wrong (measured in docs/verify.md)."""

    backend = "chgnet"

    def __init__(self, model: str = "0.3.0", *, epochs: int = 30, learning_rate: float = 3e-4,
                 batch_size: int = 8, stress_loss_ratio: float = 0.001, energy_loss_ratio: float = 1.0,
                 device: str | None = None, diversity: str = "bootstrap", trusted: bool = False):
        self.model = model
        self.trusted = trusted  # model.options.trusted: the parent file may need more than weights
        self.energy_loss_ratio = energy_loss_ratio
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.device = device  # None: CHGNet picks (a GPU when there is one)
        self.stress_loss_ratio = stress_loss_ratio
        self.batch_size = batch_size
        self.diversity = diversity

    def train(self, frames: Sequence[Any], workdir: Path, members: int,
              parents: Sequence[str] | None = None) -> list[str]:
        import contextlib
        import io

        import torch
        from chgnet.data.dataset import StructureData, collate_graphs
        from chgnet.trainer import Trainer
        from pymatgen.io.ase import AseAtomsAdaptor
        from torch.utils.data import DataLoader

        from lamcsp.potentials.chgnet import GPA_PER_EV_A3, _load_chgnet

        structures = [AseAtomsAdaptor.get_structure(a) for a in frames]
        energies = [a.get_potential_energy() / len(a) for a in frames]
        forces = [a.get_forces().tolist() for a in frames]
        # CHGNet's StructureData takes VASP's stress (kBar, compressive positive) and converts it
        # with x(-0.1) to its own GPa, which is ASE's sign convention: so -10 x ASE's in GPa
        stresses = [(-10.0 * GPA_PER_EV_A3 * a.get_stress(voigt=False)).tolist() for a in frames]
        out = []
        progress = stage("  training (chgnet)", members, write=log.info, every=0.0)
        for k in range(members):
            work = workdir / f"member-{k}"
            path = work / "model.pt"
            if path.is_file():  # trained before a kill
                out.append(str(path))
                progress.step(detail=f"member {k} trained before")
                continue
            work.mkdir(parents=True, exist_ok=True)
            net, _ = _load_chgnet(self.model, trusted=self.trusted)
            if self.diversity == "fresh_head":
                torch.manual_seed(k + 1)
                net.mlp.layers[-1].reset_parameters()
            chatter = io.StringIO()
            with contextlib.redirect_stdout(chatter):
                data = StructureData(structures, energies, forces, stresses=stresses, shuffle=False)
            idx = bootstrap_indices(len(frames), k, self.diversity)
            g = torch.Generator().manual_seed(k + 1)
            loader = DataLoader(torch.utils.data.Subset(data, idx.tolist()), batch_size=self.batch_size,
                                shuffle=True, collate_fn=collate_graphs, generator=g)
            trainer = Trainer(model=net, targets="efs", stress_loss_ratio=self.stress_loss_ratio,
                              energy_loss_ratio=self.energy_loss_ratio,
                              optimizer="Adam", scheduler="CosLR", criterion="MSE", epochs=self.epochs,
                              learning_rate=self.learning_rate, use_device=self.device, torch_seed=k + 1,
                              data_seed=k + 1, print_freq=10**6)
            with contextlib.redirect_stdout(chatter):
                _refit_atom_ref(net, structures, energies)
                trainer.train(loader, loader, save_dir=str(work), train_composition_model=False)
            (work / "train.log").write_text(chatter.getvalue())
            tmp = work / "model.pt.tmp"
            torch.save(net.as_dict(), tmp)  # the trainer trained `net` in place
            os.replace(tmp, path)
            fault("member-trained")
            out.append(str(path))
            progress.step(detail=f"member {k}, {self.epochs} epochs on {len(idx)} frames")
        return out

    def spec(self, path: str) -> dict[str, Any]:
        return {"backend": "chgnet", "path": path, "head": None}


def _refit_atom_ref(net: Any, structures: Sequence[Any], energies: Sequence[float]) -> None:
    """Shift CHGNet's per-element reference energies (its composition model, energy per atom
    linear in the element fractions) by the least-squares fit of the oracle's energies minus
    the model's: the oracle's energy zero is not the pretrained data's (another functional, a
    pseudopotential set, or EMT), and training the network on that offset would wreck it."""
    import torch

    pred = net.predict_structure(list(structures), task="e", batch_size=16)
    pred = pred if isinstance(pred, list) else [pred]
    residual = np.asarray(energies, dtype=float) - np.array([float(p["e"]) for p in pred])
    zs = sorted({site.specie.Z for s in structures for site in s})
    X = np.array([[sum(1 for site in s if site.specie.Z == z) / len(s) for z in zs] for s in structures])
    delta, *_ = np.linalg.lstsq(X, residual, rcond=None)
    with torch.no_grad():
        w = net.composition_model.fc.weight
        for z, d in zip(zs, delta):
            w[0, z - 1] += float(d)
