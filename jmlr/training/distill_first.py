"""Distil the teacher into the retriever before a joint run (``distill.before_joint_steps``).

A joint run whose config asks for it first runs ``train.step=retriever_distill`` into
``RUN/distill`` (the base teacher's utilities of the first ``distill.questions`` training
questions, written when missing; ``distill.batch_size`` rows and ``distill.lr`` per step), then
trains with ``retriever.train_from`` set to what that run exported
(jmlr/training/before_joint.py: kept when finished, continued when interrupted).

Why: on the demo, 16 joint steps give the retriever 16 updates from two questions each, and
where it ended up depended on the seed (benchmarks/RESULTS.md, section 5); the teacher's
utilities of 160 questions, paid once (~30 min of a 2-core CPU for the demo's 135M generator,
seconds on a GPU), give it many cheap steps first. Measured there: every distil run above the
untrained retriever on test, on two demo tasks over three seeds; 64 questions were too few.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jmlr.training.before_joint import FirstRun, retriever_run_config

if TYPE_CHECKING:
    from jmlr.config import Config


def distill_config(cfg: Config) -> Config:
    """The config of the distil run before ``cfg``'s joint run (``RUN/distill``).

    >>> from jmlr.config import load_config
    >>> d = distill_config(load_config(None, ["run.out_dir=runs/x", "distill.before_joint_steps=40",
    ...                                          "jmlr.utility_model=base", "generator.lora_r=8"]))
    >>> d.train.step, d.train.max_steps, d.train.batch_size, d.jmlr.teacher_questions, d.run.out_dir
    ('retriever_distill', 40, 8, 64, 'runs/x/distill')
    >>> distill_config(load_config(None, ["distill.before_joint_steps=4", "distill.top=5",
    ...                                   "jmlr.utility_model=base"])).jmlr.teacher_top
    5
    >>> str(d.candidates_dir), str(d.index_dir)       # the joint run's, not under runs/x/distill
    ('runs/x/candidates', 'runs/x/index')
    """
    section = cfg.distill
    return retriever_run_config(cfg, "distill", "retriever_distill", section.before_joint_steps,
                                section.batch_size, section.lr,
                                [("jmlr.teacher_questions", section.questions),
                                 ("jmlr.teacher_top", section.top or cfg.jmlr.teacher_top)])


DISTILL = FirstRun(name="distill", noun="distil", section="distill",
                   what="distilling the teacher into the retriever", sub_config=distill_config)
