"""Registered training steps (``train.step``): the base class and the built-in steps.

``joint``: JMLR, a generator and a retriever trained together (``jmlr.training.steps.joint``).
``retriever_contrastive``: the retriever alone, InfoNCE on query/positive/negatives rows, the warm-up
before joint training (``jmlr.training.steps.retriever_contrastive``).
``retriever_distill``: the retriever alone, learning the base teacher's ordering from a file of its
utilities (``jmlr.training.steps.retriever_distill``).
"""

from jmlr.training.steps import joint, retriever_contrastive, retriever_distill
from jmlr.training.steps.base import ModelSet, StepOutput, TrainingStep

__all__ = ["ModelSet", "StepOutput", "TrainingStep", "joint", "retriever_contrastive",
           "retriever_distill"]
