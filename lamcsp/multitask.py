"""Multi-task fine-tuning: one DeePMD-kit model for several chemical systems, one head each.

DeePMD-kit v3 trains one model with several fitting nets ("heads", its ``model_dict``) that
share a descriptor (``shared_dict``); each training step draws one head with probability
``model_prob`` and a batch of that head's data. :class:`MultitaskDeePMDTrainer` writes that
input for the labelled data of N campaigns and runs ``dp --pt train``:

* the first iteration fine-tunes the pretrained checkpoint (``--finetune MODEL
  --use-pretrain-script``): every head takes the pretrained descriptor, shared, and the fitting
  net of the head it starts from (``finetune_head``: ``Default`` for a single-head model, which
  becomes multi-head this way; the head the user names per campaign for a multi-head one;
  ``RANDOM``: a fresh fitting net); DeePMD-kit refits each head's energy bias to its data;
* later iterations continue from the last multi-head checkpoint (``--finetune PARENT``: every
  head already in it resumes as it is, a new head starts from a fresh fitting net);
* ``keep_pretrained``: one more head, trained on data the user gives (a piece of the
  pretraining set) from the pretrained fitting net, so the shared descriptor does not forget
  what it knew (DeePMD-kit's recipe against forgetting).

Each committee member is one multi-head training (seeds 1..K); campaign ``c``'s committee is
head ``c`` of every member, loaded as ``deepmd:member-k/model.pt@c`` (a ``.pt`` checkpoint
with a head; no freeze is needed). A member's final checkpoint is copied to ``model.pt``
atomically when its training ends; a training killed before that restarts from DeePMD-kit's
last periodic checkpoint (``--restart model.ckpt-N.pt``; ``save_every`` steps), so ``--resume``
neither relabels (the labels are journaled by :class:`lamcsp.finetune.FinetuneLoop`) nor
retrains what was saved.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lamcsp.errors import SetupError
from lamcsp.faults import fault
from lamcsp.log import stage

log = logging.getLogger(__name__)

__all__ = ["MultitaskDeePMDTrainer", "head_name", "latest_checkpoint", "model_prob", "multitask_input"]

#: DeePMD-kit's name of a single-head model's only branch (``finetune_head`` of a new head)
SINGLE_HEAD = "Default"


def head_name(campaign: str) -> str:
    """The head of a campaign: its name with every character other than letters, digits and
    ``_`` replaced by ``_`` (a head name is a key of DeePMD-kit's input and of ``@HEAD``)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", str(campaign))
    if not name or name == "RANDOM":  # DeePMD-kit reserves RANDOM
        raise SetupError("campaigns", f"{campaign!r} cannot name a head (DeePMD-kit refuses empty names and "
                                      "RANDOM); rename the campaign")
    return name


def model_prob(counts: Mapping[str, int], given: Mapping[str, float] | None = None) -> dict[str, float]:
    """The probability of each head per training step: ``given`` (normalised), or the label
    counts (normalised): a head's share of the steps is its share of the frames, so every frame
    is seen about equally often whichever system it belongs to."""
    if given:
        missing = sorted(set(counts) - set(given))
        if missing:
            raise SetupError("model_prob", f"no weight for head(s) {', '.join(missing)}; give one for each "
                                           f"of {', '.join(counts)}")
        weights = {k: float(given[k]) for k in counts}
    else:
        weights = {k: float(v) for k, v in counts.items()}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise SetupError("model_prob", f"weights must be >= 0 and not all 0 (got {weights})")
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def multitask_input(
    pretrained: Mapping[str, Any],
    data: Mapping[str, Sequence[str | os.PathLike]],
    *,
    start: Mapping[str, str | None],
    prob: Mapping[str, float],
    steps: int,
    learning_rate: tuple[float, float] = (1e-3, 1e-5),
    seed: int = 1,
    save_every: int | None = None,
    batch_size: Any = "auto",
) -> dict[str, Any]:
    """DeePMD-kit's multi-task ``input.json`` (a plain dict; writes nothing).

    Args:
        pretrained: the model definition of the checkpoint fine-tuned
            (:func:`lamcsp.potentials.deepmd.checkpoint_params`): single-head, or multi-head
            with ``model_dict``.
        data: head -> its ``deepmd/npy`` system folders.
        start: head -> the pretrained head its fitting net starts from (``None``: the model's
            only head, ``Default``, for a single-head model; ``"RANDOM"``: a fresh fitting net).
            A head absent here is resumed (it must be in ``pretrained``).
        prob: head -> probability per step (:func:`model_prob`).
        steps: training steps (all heads together).
        learning_rate: start and stop learning rates (exponential decay).
        save_every: steps between DeePMD-kit's checkpoints (what a killed training restarts
            from); default ``steps``.
    """
    if "model_dict" in pretrained:
        branches = pretrained["model_dict"]
        first = next(iter(branches.values()))
        descriptor, type_map = first["descriptor"], first["type_map"]
        if isinstance(descriptor, str) or isinstance(type_map, str):  # kept as shared_dict names
            shared = pretrained.get("shared_dict", {})
            descriptor = shared.get(descriptor, descriptor) if isinstance(descriptor, str) else descriptor
            type_map = shared.get(type_map, type_map) if isinstance(type_map, str) else type_map
    else:
        branches = {SINGLE_HEAD: pretrained}
        descriptor, type_map = pretrained["descriptor"], pretrained["type_map"]
    model_dict: dict[str, Any] = {}
    for head in data:
        origin = start.get(head) if head in start else head
        if origin is None:
            origin = SINGLE_HEAD
        if origin != "RANDOM" and origin not in branches:
            raise SetupError("finetune.head", f"the pretrained model has no head {origin!r} to start "
                                              f"{head!r} from; its heads are: {', '.join(branches)}")
        fitting = dict(branches[origin if origin != "RANDOM" else next(iter(branches))]["fitting_net"])
        entry: dict[str, Any] = {"type_map": "type_map", "descriptor": "descriptor", "fitting_net": fitting}
        if head in start:
            entry["finetune_head"] = origin
        model_dict[head] = entry
    decay = max(1, steps // 20)
    loss = {"type": "ener", "start_pref_e": 0.2, "limit_pref_e": 1, "start_pref_f": 100, "limit_pref_f": 1,
            "start_pref_v": 0.02, "limit_pref_v": 0.2}
    return {
        "model": {"shared_dict": {"type_map": list(type_map), "descriptor": dict(descriptor)},
                  "model_dict": model_dict},
        "learning_rate": {"type": "exp", "start_lr": learning_rate[0], "stop_lr": learning_rate[1],
                          "decay_steps": decay},
        "loss_dict": {head: dict(loss) for head in data},
        "training": {
            "model_prob": {head: float(prob[head]) for head in data},
            "data_dict": {head: {"training_data": {"systems": [str(Path(p).resolve()) for p in systems],
                                                   "batch_size": batch_size}}
                          for head, systems in data.items()},
            "numb_steps": int(steps), "seed": int(seed), "disp_file": "lcurve.out",
            "disp_freq": max(1, steps // 20), "save_freq": int(save_every or steps),
        },
    }


def latest_checkpoint(work: Path) -> Path | None:
    """DeePMD-kit's last whole periodic checkpoint in ``work`` (``model.ckpt-N.pt``, largest N
    that loads: DeePMD-kit writes it in place, so a kill can leave the newest one cut short)."""
    import torch

    found = []
    for p in work.glob("model.ckpt-*.pt"):
        m = re.fullmatch(r"model\.ckpt-(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    for _, p in sorted(found, reverse=True):
        try:
            torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a file cut short by the kill: the one before it
            log.warning("%s does not load (cut short by a kill?); trying an earlier checkpoint", p)
            continue
        return p
    return None


class MultitaskDeePMDTrainer:
    """Fine-tunes one DeePMD-kit model with a head per chemical system into K committee members
    (seeds 1..K); see the module docstring.

    Args:
        model: the pretrained ``.pt`` checkpoint.
        start: head -> the pretrained head it starts from (``None``: a single-head model's only
            head; required for a multi-head model, ``"RANDOM"`` for a fresh fitting net).
        steps: training steps per iteration (all heads together).
        learning_rate: start and stop learning rates.
        prob: head -> weight per step (default: the label counts, :func:`model_prob`); the
            kept pretrained head's weight is the mean of the others' unless given here.
        keep_pretrained: ``(head, systems)``: one more head named ``head``, started from the
            pretrained head of that name (``Default`` for a single-head model's) and trained on
            ``systems`` (``deepmd/npy`` folders of the pretraining data), kept against
            forgetting.
        save_every: steps between DeePMD-kit's checkpoints (restart points after a kill).
        threads: ``OMP_NUM_THREADS`` of the ``dp`` processes.
    """

    backend = "deepmd"

    def __init__(self, model: str | os.PathLike, start: Mapping[str, str | None] | None = None, *,
                 steps: int = 1000, learning_rate: tuple[float, float] = (1e-3, 1e-5),
                 prob: Mapping[str, float] | None = None,
                 keep_pretrained: tuple[str, Sequence[str | os.PathLike]] | None = None,
                 save_every: int | None = None, threads: int | None = None):
        from lamcsp.potentials.deepmd import checkpoint_params

        self.model = Path(model).expanduser().resolve()
        if not self.model.is_file() or self.model.suffix != ".pt":
            raise SetupError("model.path", f"multi-task fine-tuning starts from a .pt checkpoint; "
                                           f"{str(self.model)!r} is not one")
        self.params = checkpoint_params(self.model)
        self.start = dict(start or {})
        if "model_dict" in self.params:
            heads = list(self.params["model_dict"])
            unnamed = [h for h, s in self.start.items() if s is None]
            if unnamed:
                raise SetupError("model.head", f"{self.model.name} is a multi-head model: name the head each "
                                               f"campaign starts from ({', '.join(unnamed)} name none); its "
                                               f"heads are: {', '.join(heads)}")
        self.steps = steps
        self.learning_rate = learning_rate
        self.prob = dict(prob) if prob else None
        self.keep_pretrained = keep_pretrained
        self.save_every = save_every
        self.threads = threads

    def heads(self) -> list[str]:
        """The heads trained: one per campaign, then the kept pretrained one."""
        return list(self.start) + ([self.keep_pretrained[0]] if self.keep_pretrained else [])

    def config(self, data: Mapping[str, Sequence[Path]], counts: Mapping[str, int], seed: int,
               parent: bool) -> dict[str, Any]:
        """The ``input.json`` of one member: all heads with data (``counts``: frames per head)."""
        data = {h: list(s) for h, s in data.items() if s}
        prob_counts = {h: int(counts.get(h, 0)) for h in data}
        given = {h: self.prob[h] for h in data if h in self.prob} if self.prob else None
        if self.keep_pretrained:
            name, systems = self.keep_pretrained
            data[name] = [Path(p) for p in systems]
            # unless weighted, the kept head gets the mean of the campaigns' weights (counts)
            prob_counts[name] = max(1, sum(prob_counts.values()) // max(1, len(prob_counts)))
            if given is not None:
                given[name] = self.prob.get(name, sum(given.values()) / max(1, len(given)))
        prob = model_prob(prob_counts, given)
        if parent:  # every head in the parent resumes; a new one gets a fresh fitting net
            start: dict[str, str | None] = {}
        else:
            start = {h: self.start.get(h) for h in data}
            if self.keep_pretrained:
                start[self.keep_pretrained[0]] = (self.keep_pretrained[0] if "model_dict" in self.params
                                                  else None)
        return multitask_input(self.params, data, start=start, prob=prob, steps=self.steps,
                               learning_rate=self.learning_rate, seed=seed, save_every=self.save_every)

    def train(self, data: Mapping[str, Sequence[Path]], workdir: Path, members: int,
              parents: Sequence[str] | None = None,
              counts: Mapping[str, int] | None = None) -> list[str]:
        """Train K multi-head members on ``data`` (head -> its ``deepmd/npy`` folders, all
        iterations so far); returns the members' checkpoints (``member-k/model.pt``), each with
        every head. ``parents``: the last iteration's members (continued, member k from
        parent k). ``counts``: frames per head (``model_prob``; default: folders per head)."""
        import json

        from lamcsp.potentials.deepmd import checkpoint_params, run_dp

        unknown = sorted(set(data) - set(self.start))
        if unknown:
            raise SetupError("campaigns", f"no head was set up for {', '.join(unknown)}; the heads are "
                                          f"{', '.join(self.start)}")
        counts = dict(counts) if counts else {h: len(s) for h, s in data.items()}
        out = []
        progress = stage("  training (deepmd, multi-task)", members, write=log.info, every=0.0)
        env = dict(os.environ)
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        for k in range(members):
            work = Path(workdir) / f"member-{k}"
            final = work / "model.pt"
            if final.is_file():  # trained before a kill
                out.append(str(final))
                progress.step(detail=f"member {k} trained before")
                continue
            work.mkdir(parents=True, exist_ok=True)
            restart = latest_checkpoint(work)
            if restart is not None:  # killed during training: DeePMD-kit's own restart
                log.info("member %d: restarting from %s", k, restart.name)
                # the data folders where they are now (the set may have moved since input.json)
                config = json.loads((work / "input.json").read_text())
                for head, systems in data.items():
                    if head in config["training"]["data_dict"] and systems:
                        config["training"]["data_dict"][head]["training_data"]["systems"] = [
                            str(Path(p).resolve()) for p in systems]
                tmp = work / "input.json.tmp"
                tmp.write_text(json.dumps(config, indent=1))
                os.replace(tmp, work / "input.json")
                run_dp(["train", "input.json", "--restart", restart.name], work, work / "train.log", env)
            else:
                parent = Path(parents[k]) if parents else None
                if parent is not None and "model_dict" not in checkpoint_params(parent):
                    parent = None  # a single-head parent (not this trainer's): start over
                config = self.config(data, counts, seed=k + 1, parent=parent is not None)
                tmp = work / "input.json.tmp"
                tmp.write_text(json.dumps(config, indent=1))
                os.replace(tmp, work / "input.json")
                source = parent if parent is not None else self.model
                run_dp(["train", "input.json", "--finetune", str(source), "--use-pretrain-script"], work,
                    work / "train.log", env)
            last = latest_checkpoint(work)
            if last is None:
                raise SetupError("finetune", f"dp --pt train wrote no checkpoint in {work}")
            tmp = work / "model.pt.tmp"
            shutil.copyfile(last, tmp)
            os.replace(tmp, final)
            fault("member-trained")
            out.append(str(final))
            progress.step(detail=f"member {k}")
        return out

    def spec(self, path: str, head: str) -> dict[str, Any]:
        """The campaign ``model`` section of head ``head`` of a trained member."""
        return {"backend": "deepmd", "path": path, "head": head}
