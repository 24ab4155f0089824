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
oracle before and after every iteration). Serial only: under MPI, run the campaigns apart.
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

__all__ = ["CampaignSet", "SUMMARY"]

SUMMARY = "summary.json"


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

    Args:
        campaigns: the campaigns (distinct names: their run directories and heads).
        run_dir: the set's folder (``RUNSET``).
        resume: continue every campaign (and the shared training) where it stopped.
        progress: as :class:`lamcsp.search.Search`'s.
        steps: DeePMD-kit training steps per shared iteration (default: the largest
            ``finetune.steps`` of the campaigns).
        keep_pretrained: ``(head, deepmd/npy folders)``: a head kept on pretraining data
            (:class:`~lamcsp.multitask.MultitaskDeePMDTrainer`).
    """

    def __init__(self, campaigns: Sequence[Any], run_dir: str | os.PathLike, *, resume: bool = False,
                 progress: Any = None, steps: int | None = None,
                 keep_pretrained: tuple[str, Sequence[str]] | None = None):
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
        model = campaigns[0].model
        if model.backend == "deepmd":
            from lamcsp.multitask import MultitaskDeePMDTrainer

            spec = campaigns[0].finetune
            self.trainer: Any = MultitaskDeePMDTrainer(
                model.path, {self.heads[c.name]: c.model.head for c in campaigns},
                steps=steps or max(c.finetune.steps for c in campaigns),
                learning_rate=(spec.learning_rate, spec.learning_rate / 100),
                keep_pretrained=keep_pretrained, save_every=max(1, (steps or spec.steps) // 4))
            views = {c.name: HeadView(self.trainer, self.heads[c.name], self.root) for c in campaigns}
        elif model.backend == "chgnet":
            from lamcsp.trainers import CHGNetTrainer

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
        self.searches = [Search(c, self.root / c.name, resume=resume, progress=progress,
                                trainer=views[c.name]) for c in campaigns]

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
