"""Which model's losses are the utilities that teach the retriever (``jmlr.utility_model``).

``current``: the generator being trained, as the paper does. Measured on a task built like the
demo, this teacher fails once the generator has learned the answer format: the passages stop
changing its loss (the gold passage lowered the loss by 0.75 nats before training and 0.045
after 24 steps), the pairs it ranks become noise, and the retriever trained on them ended
worse than it started (docs/METHOD.md, "Which model teaches the retriever").

``base``: the same generator as it was before training: its LoRA adapters switched off and the
parameters trained in place (embeddings and norms, LongLoRA style) swapped back to their initial
values for the utility forward only. It costs no second copy of the model (only of those
in-place parameters, when they train) and keeps the judgement of a model that still reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

UTILITY_MODELS = ("current", "base")


def _peft_model(model: nn.Module) -> Any:
    """The peft model inside ``model`` (itself, a TargetLogits wrapper or a DDP module)."""
    inner: Any = model
    for _ in range(4):
        if hasattr(inner, "disable_adapter"):
            return inner
        inner = getattr(inner, "lm", None) or getattr(inner, "module", None)
        if inner is None:
            break
    return None


class BaseTeacher:
    """Runs the generator as it was at construction time, inside :meth:`active`.

    ``model`` must carry LoRA adapters (peft). Parameters that train in place (requires_grad
    and not a LoRA weight: embeddings, norms) are copied once here and swapped in while
    active (``param.data`` exchanged, no copy per use), then swapped back.

    >>> from torch import nn
    >>> BaseTeacher(nn.Linear(2, 2))
    Traceback (most recent call last):
    ...
    ValueError: utilities from the base model (jmlr.utility_model=base) need a generator with LoRA adapters (generator.lora_r > 0)
    """

    def __init__(self, model: nn.Module) -> None:
        self.peft = _peft_model(model)
        if self.peft is None:
            raise ValueError("utilities from the base model (jmlr.utility_model=base) need a "
                             "generator with LoRA adapters (generator.lora_r > 0)")
        self.in_place = [(param, param.detach().clone())
                         for name, param in self.peft.named_parameters()
                         if param.requires_grad and "lora_" not in name]

    @contextmanager
    def active(self) -> Iterator[None]:
        swapped: list[tuple[nn.Parameter, torch.Tensor]] = []
        try:
            for param, initial in self.in_place:
                current = param.data
                param.data = initial
                swapped.append((param, current))
            with self.peft.disable_adapter():
                yield
        finally:
            for param, current in swapped:
                param.data = current


def teacher_context(teacher: BaseTeacher | None) -> Any:
    """The context the utility forward runs in: the base model's, or the current one's."""
    return teacher.active() if teacher is not None else nullcontext()
