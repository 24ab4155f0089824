"""A campaign set: several campaigns (chemical systems) searched as one job, their fine-tune
iterations shared (``lamcsp search a.yaml b.yaml --shared-finetune -o RUNSET``).

Every campaign keeps its own run directory (``RUNSET/<name>``: database, checkpoint, report,
``finetune/`` with its labels and data) and resumes from it; the set interleaves their
generations and, when every campaign whose loop goes on has reached its next iteration
(``finetune.every`` generations of its own), runs one shared iteration:

1. each campaign rates, selects and labels as alone (:meth:`FinetuneStep.begin_iteration`; its
   labels journaled in its own ``finetune/labels.jsonl``);
2. one training on all campaigns' labels (``RUNSET/shared/iter-NNN``):
   DeePMD-kit: :class:`lamcsp.multitask.MultitaskDeePMDTrainer`, one head per campaign named
   after it (:func:`lamcsp.multitask.head_name`); CHGNet, which has no heads: one shared model
   fine-tuned on every campaign's frames, its per-element reference energies refitted by one
   least-squares fit over all of them (an element in two systems gets one reference);
3. each campaign registers the members (with its head) and goes on with its head
   (:meth:`FinetuneStep.end_iteration`; its rows' ``model_id`` is ``deepmd:model.pt@HEAD``).

The set writes ``RUNSET/summary.json`` (labels per system, each head's error against the
oracle before and after every iteration).

Under MPI (``mpiexec -n N lamcsp search A.yaml B.yaml --shared-finetune -o RUNSET``) the
campaigns share one :class:`~lamcsp.mpi.MPIExecutor`: each relaxes, rates and labels through
its own view of it (:class:`~lamcsp.mpi.CampaignExecutor`, the campaign's model and relax
settings), and the workers keep the models they loaded by spec, so going from one campaign's
generation to the next campaign's reloads nothing. The shared training itself runs on rank 0
(DeePMD-kit's ``dp`` as a child process, CHGNet's trainer in it) while the workers wait.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lamcsp.errors import SetupError

log = logging.getLogger(__name__)

__all__ = ["CampaignSet", "SUMMARY", "check_alone", "shared_options"]

SUMMARY = "summary.json"


def shared_options(campaigns: Sequence[Any], sources: Sequence[str]) -> tuple[dict[str, float] | None, Any]:
    """The set's options from its campaigns' ``finetune.shared`` sections: the weight of each
    campaign's head (by campaign name; ``None``: from the label counts) and the kept pretrained
    head (a :class:`~lamcsp.campaign.loop.KeepPretrainedSpec`, or ``None``).

    Raises:
        SetupError: weights given by some campaigns and not others, kept heads that differ
            between campaigns, or a kept head's weight without the campaigns' (each names the
            field and the files).
    """
    shared = {c.name: c.finetune.shared for c in campaigns}
    where = dict(zip((c.name for c in campaigns), sources))
    weighted = [n for n, sh in shared.items() if sh is not None and sh.weight is not None]
    weights = None
    if weighted:
        missing = [where[n] for n in shared if n not in weighted]
        if missing:
            raise SetupError("finetune.shared.weight",
                             f"given in {', '.join(where[n] for n in weighted)} but not in "
                             f"{', '.join(missing)}; a set's heads are weighted all by the campaigns' "
                             "weights or all by their label counts: give one in every campaign or in none")
        weights = {n: float(shared[n].weight) for n in weighted}
    kept = {n: sh.keep_pretrained for n, sh in shared.items()
            if sh is not None and sh.keep_pretrained is not None}
    keep = None
    if kept:
        first = next(iter(kept))
        other = [n for n, k in kept.items() if k != kept[first]]
        if other:
            raise SetupError("finetune.shared.keep_pretrained",
                             f"{where[first]} and {where[other[0]]} keep different pretrained heads "
                             "(head, data or weight); a set keeps one: give the same section in both, or in "
                             "one only")
        keep = kept[first]
        if keep.weight is not None and weights is None:
            raise SetupError("finetune.shared.keep_pretrained.weight",
                             f"given in {where[first]}, but the campaigns' heads are weighted by their label "
                             "counts; give finetune.shared.weight in every campaign too, or leave this null "
                             "(the kept head then gets the mean of the counts)")
    return weights, keep


def check_alone(campaign: Any, source: str) -> None:
    """A campaign run alone has no ``finetune.shared`` options (they are a set's).

    Raises:
        SetupError: it has some (names the field and ``source``).
    """
    if campaign.finetune.shared is not None:
        raise SetupError("finetune.shared", f"{source} runs alone, but finetune.shared holds the options "
                                            "of a campaign set (lamcsp search A.yaml B.yaml "
                                            "--shared-finetune -o RUNSET); remove it, or run it in a set")


class HeadView:
    """What one campaign's fine-tune loop sees of the set's training: the backend, the model
    section of its head of a member (``train`` is the set's, not the loop's) and the set's
    folder ``root`` (its registry stores the shared members relative, so a moved set resumes)."""

    def __init__(self, shared: Any, head: str | None, root: Path):
        self.shared = shared
        self.head = head
        self.backend = shared.backend
        self.root = root

    def train(self, *args: Any, **kwargs: Any) -> list[str]:
        raise SetupError("finetune", "a campaign of a set is trained by the set (CampaignSet.iteration)")

    def spec(self, path: str) -> dict[str, Any]:
        return {"backend": self.backend, "path": path, "head": self.head}


class CampaignSet:
    """Campaigns run together with shared fine-tune iterations (see the module docstring).

    The set's options come from its campaigns' ``finetune.shared`` sections
    (:func:`shared_options`): each head's ``model_prob`` weight, and the pretrained head kept.

    Args:
        campaigns: the campaigns (distinct names: their run directories and heads).
        run_dir: the set's folder (``RUNSET``).
        resume: continue every campaign (and the shared training) where it stopped.
        progress: as :class:`lamcsp.search.Search`'s.
        steps: DeePMD-kit training steps per shared iteration (default: the largest
            ``finetune.steps`` of the campaigns).
        sources: the campaigns' files, named in errors (default: the campaigns' names).
        executor: the one executor every campaign's work runs on (an
            :class:`~lamcsp.mpi.MPIExecutor`: each campaign gets a view with its own model,
            :class:`~lamcsp.mpi.CampaignExecutor`); default: each campaign its own serial one.
        potentials: campaign name -> its model loaded here (the MPI coordinator's, on the CPU).
    """

    def __init__(self, campaigns: Sequence[Any], run_dir: str | os.PathLike, *, resume: bool = False,
                 progress: Any = None, steps: int | None = None, sources: Sequence[str] | None = None,
                 executor: Any = None, potentials: dict[str, Any] | None = None):
        from lamcsp.multitask import head_name
        from lamcsp.search import Search

        names = [c.name for c in campaigns]
        if len(set(names)) != len(names) or len(campaigns) < 2:
            raise SetupError("campaigns", f"a campaign set needs two or more campaigns with distinct names "
                                          f"(got {', '.join(names)})")
        models = {(c.model.backend, str(c.model.path)) for c in campaigns}
        if len(models) != 1:
            raise SetupError("model", "the campaigns of a set fine-tune one model: give them the same "
                                      f"model.backend and model.path (got {sorted(models)})")
        off = [c.name for c in campaigns if not c.finetune.enabled]
        if off:
            raise SetupError("finetune.enabled", f"--shared-finetune shares the fine-tune iterations; "
                                                 f"{', '.join(off)} has none (finetune.enabled: false)")
        self.root = Path(run_dir).absolute()
        self.heads = {c.name: head_name(c.name) for c in campaigns}
        weights, keep = shared_options(campaigns, sources or names)
        model = campaigns[0].model
        if keep is not None and keep.head in self.heads.values():
            raise SetupError("finetune.shared.keep_pretrained.head",
                             f"{keep.head!r} is the head of a campaign of the set; name the kept head "
                             "otherwise")
        if model.backend == "deepmd":
            from lamcsp.multitask import MultitaskDeePMDTrainer

            spec = campaigns[0].finetune
            prob = None
            if weights is not None:
                prob = {self.heads[n]: w for n, w in weights.items()}
                if keep is not None and keep.weight is not None:
                    prob[keep.head] = keep.weight
            self.trainer: Any = MultitaskDeePMDTrainer(
                model.path, {self.heads[c.name]: c.model.head for c in campaigns},
                steps=steps or max(c.finetune.steps for c in campaigns),
                learning_rate=(spec.learning_rate, spec.learning_rate / 100), prob=prob,
                keep_pretrained=(keep.head, list(keep.data)) if keep is not None else None,
                save_every=max(1, (steps or spec.steps) // 4))
            views = {c.name: HeadView(self.trainer, self.heads[c.name], self.root) for c in campaigns}
        elif model.backend == "chgnet":
            from lamcsp.trainers import CHGNetTrainer

            given = [f"{src}: finetune.shared.{key}" for c, src in zip(campaigns, sources or names)
                     for key in ("weight", "keep_pretrained")
                     if c.finetune.shared is not None and getattr(c.finetune.shared, key) is not None]
            if given:  # one model on all labels: no heads to weigh or keep
                raise SetupError("finetune.shared", "a CHGNet set fine-tunes one model on every campaign's "
                                                    f"labels (no heads to weigh or keep); remove "
                                                    f"{', '.join(given)}")

            spec = campaigns[0].finetune
            self.trainer = CHGNetTrainer(model.path or model.options.get("version", "0.3.0"),
                                         epochs=spec.epochs, learning_rate=spec.learning_rate,
                                         diversity=spec.diversity,
                                         trusted=bool(model.options.get("trusted", False)))
            views = {c.name: HeadView(self.trainer, None, self.root) for c in campaigns}
        else:
            raise SetupError("model.backend", f"a campaign set fine-tunes deepmd (a head per campaign) or "
                                              f"chgnet (one shared model), not {model.backend}")
        self.members = max(c.finetune.committee for c in campaigns)
        if not resume:
            self.root.mkdir(parents=True, exist_ok=True)
        self.executor = executor
        potentials = potentials or {}
        self.searches = [Search(c, self.root / c.name, resume=resume, progress=progress,
                                trainer=views[c.name], potential=potentials.get(c.name),
                                executor=executor.view(c) if executor is not None else None)
                         for c in campaigns]

    # -- the loop ---------------------------------------------------------------------------

    def run(self, report: bool = True) -> dict[str, Any]:
        """Run (or resume) every campaign to its end with shared iterations; returns the
        summary (also ``RUNSET/summary.json``)."""
        from lamcsp.store import hold_run

        with contextlib.ExitStack() as stack:
            for s in self.searches:
                stack.enter_context(hold_run(s.paths))
            for s in self.searches:
                s.begin()
            while True:
                self.catch_up()
                live = [s for s in self.searches if self.live(s)]
                if not live:
                    break
                moving = [s for s in live if not s.finetune.due()]
                if not moving:  # every live campaign waits for an iteration catch_up did not run
                    raise RuntimeError("campaign set: no campaign can move (a bug)")
                for s in moving:
                    s.step_generation()
            self.catch_up()
            for s in self.searches:
                s.finish(report)
        return self.write_summary()

    def loops(self) -> dict[str, Any]:
        """Every campaign's fine-tune loop, by campaign name."""
        return {s.campaign.name: s.finetune.loop for s in self.searches if s.finetune.loop is not None}

    @staticmethod
    def live(search: Any) -> bool:
        """The search has generations left."""
        return not search.done and search.budget_left()

    def catch_up(self) -> None:
        """Run the shared iterations every campaign is ready for: the lowest iteration of the
        loops that go on, once none of its campaigns is still searching towards it."""
        while True:
            # a loop whose search has ended and whose iteration is not due will not run again
            active = [s for s in self.searches if s.finetune.loop is not None and not s.finetune.loop.done
                      and (s.finetune.due() or self.live(s))]
            if not active:
                return
            it = min(s.finetune.loop.iteration for s in active)
            group = [s for s in active if s.finetune.loop.iteration == it]
            due = [s for s in group if s.finetune.due()]
            if not due or any(s not in due for s in group):  # one still searching towards it
                return
            self.iteration(it, due)

    def iteration(self, it: int, group: Sequence[Any]) -> None:
        """One shared iteration of the campaigns in ``group`` (all at iteration ``it``)."""
        results = {s.campaign.name: s.finetune.begin_iteration() for s in group}
        new = [s for s in group if s.finetune.loop.has_new_data]
        models: list[str] = []
        if new:
            workdir = self.root / "shared" / f"iter-{it:03d}"
            parent = self.root / "shared" / f"iter-{it - 1:03d}"
            parents = [str(parent / f"member-{k}" / "model.pt") for k in range(self.members)]
            if not all(Path(p).is_file() for p in parents):
                parents = []
            if self.trainer.backend == "deepmd":
                data = {self.heads[lp_name]: lp.data.systems() for lp_name, lp in self.loops().items()
                        if lp.data.systems()}
                counts = {self.heads[lp_name]: len(lp.data.frames()) for lp_name, lp in self.loops().items()
                          if self.heads[lp_name] in data}
                models = self.trainer.train(data, workdir, self.members, parents or None, counts=counts)
            else:  # one shared CHGNet on every campaign's frames, from the pretrained weights
                frames = [f for lp in self.loops().values() for f in lp.data.frames()]
                models = self.trainer.train(frames, workdir, self.members)
        for s in group:
            result = results[s.campaign.name]
            head = self.heads[s.campaign.name] if self.trainer.backend == "deepmd" else None
            before: dict[str, float] = {}
            after: dict[str, float] = {}
            if s.finetune.loop.has_new_data:  # the model in use, then the new head, on these labels
                # the model in use, twice: a Committee takes two or more (its deviation unused)
                before = s.finetune.loop.errors_on(it, [s.model, s.model])
                result = s.finetune.loop.register(result, models, head=head, shared=str(self.root))
                after = s.finetune.loop.errors_on(it)
            shared = {"set": str(self.root), "head": head, "backend": self.trainer.backend,
                      "campaigns": [x.campaign.name for x in group]}
            s.finetune.end_iteration(result, errors_in_use=before, errors_after=after, shared=shared)
        self.write_summary()

    # -- the summary ------------------------------------------------------------------------

    def write_summary(self) -> dict[str, Any]:
        """``RUNSET/summary.json``: per campaign its head, labels per iteration and in all, and
        its head's error against the oracle's labels of each iteration, before (the model in
        use when they were selected: the pretrained model at the first iteration) and after
        (the new head on the same labels: a training error, not a held-out one; the next
        iteration's ``errors_before`` in its log is the held-out one, on new labels)."""
        out: dict[str, Any] = {"backend": self.trainer.backend, "campaigns": {}}
        if self.trainer.backend == "chgnet":
            out["note"] = ("CHGNet has no heads: one shared model was fine-tuned on every campaign's labels, "
                           "its per-element reference energies refitted by one least-squares fit over all of "
                           "them")
        for s in self.searches:
            loop = s.finetune.loop
            entry: dict[str, Any] = {"head": self.heads[s.campaign.name] if self.trainer.backend == "deepmd"
                                     else None, "run": str(s.run_dir), "iterations": []}
            if loop is not None:
                for e in loop.log:
                    entry["iterations"].append({"iteration": e["iteration"], "labelled": e["labelled"],
                                                "free_labels": e.get("free_labels", 0),
                                                "errors_before": e.get("errors_in_use", {}),
                                                "errors_after": e.get("errors_after", {}),
                                                "converged": e["converged"]})
                entry["labels"] = len(loop.data.frames())
            out["campaigns"][s.campaign.name] = entry
        tmp = self.root / f".{SUMMARY}.tmp"
        tmp.write_text(json.dumps(out, indent=1, default=float))
        os.replace(tmp, self.root / SUMMARY)
        return out
