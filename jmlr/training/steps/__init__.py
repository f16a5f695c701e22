"""Registered training steps (``train.step``): the base class and the built-in steps.

``joint``: JMLR, a generator and a retriever trained together (``jmlr.training.steps.joint``).
"""

from jmlr.training.steps import joint
from jmlr.training.steps.base import ModelSet, StepOutput, TrainingStep

__all__ = ["ModelSet", "StepOutput", "TrainingStep", "joint"]
