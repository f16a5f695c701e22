"""The ``distill`` config section of the ``retriever_distill`` step (registered when configs load)."""

from __future__ import annotations

from dataclasses import dataclass, field

from jmlr.config_fields import Component, make_component
from jmlr.errors import ConfigError
from jmlr.registry import CONFIG_SECTIONS


def _default_objective() -> Component:
    # A near one-hot target on the teacher's best passage (beta 0.1 nats) against the
    # retriever's softmax at tau 4 (ColBERT scores of a question's top 10 spread ~12 points on
    # the demo, sd ~4): on a demo task, the joint step's pairwise loss and the listwise loss
    # at tau 1 lowered dev R@1 over 160 questions (one reading each); this one raised test R@1
    # in all six runs on two tasks (benchmarks/RESULTS.md, "Distilling the teacher into the
    # retriever").
    return make_component("rank objective", {"name": "listwise", "beta": 0.1, "tau": 4.0,
                                             "min_gain": 0.1}, "distill.objective")


@CONFIG_SECTIONS.register("distill")
@dataclass
class DistillConfig:
    # The retriever's loss over each file row's passages: a registered rank objective
    # (jmlr.training.rank_objectives) with its parameters.
    objective: Component = field(default_factory=_default_objective,
                                 metadata={"registry": "rank objective", "also": ()})
    # > 0: a joint run (`jmlr train`, `jmlr demo`) first takes this many retriever_distill steps
    # into RUN/distill, over the base teacher's utilities of the first `questions` training
    # questions (the file of jmlr.teacher_utilities, or candidates.path/train.utilities.jsonl,
    # written when missing), and its retriever starts from what they learned
    # (jmlr/training/distill_first.py). 0: the joint run starts from retriever.checkpoint.
    before_joint_steps: int = 0
    questions: int = 64
    # Mined candidates per question the teacher scores (jmlr.teacher_top of the distil run; 0:
    # jmlr.teacher_top, else jmlr.sample_pool): the file costs questions x (top + 1) forwards.
    top: int = 0
    batch_size: int = 8                     # file rows per retriever step
    lr: float = 1.0e-4

    def validate(self, key: str) -> None:
        for ok, message in [
            (self.before_joint_steps >= 0, "before_joint_steps must be >= 0"),
            (self.questions >= 1, "questions must be >= 1"),
            (self.top == 0 or self.top >= 2, "top must be 0 (jmlr.teacher_top) or at least 2"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
        ]:
            if not ok:
                raise ConfigError(f"{key}.{message}")
