"""The retriever alone, learning the base teacher's ordering: registered as ``retriever_distill``.

With ``jmlr.utility_model=base`` the teacher of a joint run is the generator before training, so
what it says about a question's passages is fixed before the run starts, and a file of its
utilities (``jmlr utilities``, or ``jmlr.teacher_questions`` = N, which writes it for the first
N training questions) holds all of it. This step takes many cheap retriever steps over such a
file, no generator loaded: each micro-batch of rows scores every row's passages with the
retriever and applies ``distill.objective`` (a registered rank objective) to the scores and the
row's utilities. ``RUN/final/retriever`` is a colbert-ai checkpoint that a joint run starts
from (``retriever.train_from``; ``distill.before_joint_steps`` does both in one run); with
``train.eval_every`` the loop logs dev retrieval (gold recall and MRR over the mined dev
candidates) as the joint step does.

Why a step of its own: a joint step pays (k + 1) generator forwards per question for k
utilities and gives the retriever one update from a batch of two questions (~12 s on the
demo's 2-core CPU); the file's utilities were paid once, and a retriever step over eight of its
rows costs ~7 s there, with no generator in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from jmlr.errors import ConfigError
from jmlr.registry import RANK_OBJECTIVES, TRAINING_STEPS
from jmlr.training import components as parts
from jmlr.training.stats import combine, mean, total
from jmlr.training.steps.base import RetrieverStep, StepOutput

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.training.loop import TrainRecipe

log = logging.getLogger(__name__)


@TRAINING_STEPS.register("retriever_distill")
class DistillStep(RetrieverStep):
    """The retriever alone, on the rows of a teacher utilities file (module docstring)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.data: parts.TrainingData | None = None

    def check(self) -> None:
        from jmlr.training.teacher_file import teacher_path, write_teacher_file

        jmlr = self.cfg.jmlr
        if not teacher_path(self.cfg):
            raise ConfigError("train.step=retriever_distill needs the teacher's utilities: "
                              "jmlr.teacher_utilities=FILE (`jmlr utilities` writes one) or "
                              "jmlr.teacher_questions=N (written before training)")
        if jmlr.utility_model != "base":
            raise ConfigError("train.step=retriever_distill learns the base teacher's utilities: "
                              "set jmlr.utility_model=base")
        parts.check_inputs(self.cfg)
        if jmlr.teacher_questions > 0:
            write_teacher_file(self.cfg, jmlr.teacher_questions)

    def load_data(self) -> list[dict[str, Any]]:
        from jmlr.training.teacher_file import load_teacher_rows, teacher_path

        self.data = parts.load_training_data(self.cfg)
        self.by_id = {q.id: q for q in self.data.train}
        path = teacher_path(self.cfg)
        rows = load_teacher_rows(path, self.cfg, self.by_id, self.data.passages,
                                 self.data.corpus_fingerprint)
        rows = [r for r in rows if len(r["passage_ids"]) >= 2]      # one passage: no order
        if not rows:
            raise ConfigError(f"{path}: no question with two or more passages to order")
        log.info("the retriever learns the teacher's order of %d questions (%s)", len(rows), path)
        return rows

    def compute(self, models: Mapping[str, nn.Module], batch: list[dict[str, Any]],
                sampler: torch.Generator) -> StepOutput:
        assert self.data is not None
        retriever: Any = models["retriever"]
        entry = RANK_OBJECTIVES.get(self.cfg.distill.objective.name)
        params = self.cfg.distill.objective.params
        template, passages = self.cfg.retriever.query_template, self.data.passages
        groups: dict[int, list[dict[str, Any]]] = {}
        for row in batch:                       # rows of one length share a scorer call
            groups.setdefault(len(row["passage_ids"]), []).append(row)
        losses, stats = [], []
        for rows in groups.values():
            scores = retriever.score([self.by_id[r["question_id"]].query(template) for r in rows],
                                     [[passages[p].full_text for p in r["passage_ids"]]
                                      for r in rows])                               # [G, m]
            utilities = torch.tensor([r["utilities"] for r in rows], device=scores.device)
            baseline = torch.tensor([r["baseline"] for r in rows], device=scores.device)
            ranked = entry(scores, utilities, params, baseline)
            losses.append(ranked.loss * len(rows))
            stats.append(ranked.stats)
        loss = torch.stack(losses).sum() / len(batch)
        return StepOutput(loss, {"loss": mean(float(loss.detach())), "rows": total(len(batch)),
                                 **combine(stats)})

    def evaluate(self, loop: TrainRecipe) -> dict[str, Any]:
        assert self.data is not None
        return parts.dev_retrieval(loop, self.data, self.cfg) if self.data.dev else {}
