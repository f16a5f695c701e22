"""What a kind of training is, for the one training loop (``jmlr.training.loop``).

A :class:`TrainingStep` names its models (``{"generator": ..., "retriever": ...}`` for JMLR,
``{"policy": ..., "reference": ...}`` for DPO), says which of them train and at what
learning rate, loads the items the loop batches over, and computes one micro-batch:
its loss and a dict of named statistics (``jmlr.training.stats``). The loop owns everything
else: accelerate, accumulation, schedules, clipping per model, checkpoints, exact resume,
signals, logging and the final export, which it asks the step to write.

The models travel as one :class:`ModelSet` module, so that a single ``accelerator.prepare``
covers them all (DeepSpeed takes one model) and a whole step is one forward of the wrapper
(DDP syncs gradients and FSDP gathers weights in that forward): the loop calls
``model_set(step.compute, batch, sampler)``.

A new kind of training is one subclass plus one registry entry::

    @TRAINING_STEPS.register("my_step")
    class MyStep(TrainingStep):
        def load_data(self): ...
        def build_models(self): return {"retriever": ...}
        def learning_rates(self): return {"retriever": self.cfg.train.retriever_lr}
        def compute(self, models, batch, sampler): return StepOutput(loss, {"loss": mean(loss)})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from jmlr.errors import ConfigError
from jmlr.training.stats import Stat

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.training.loop import TrainRecipe


@dataclass
class StepOutput:
    loss: Tensor                                    # backward this (no graph when nothing trains)
    stats: dict[str, Stat] = field(default_factory=dict)   # logged by name (see stats.py)


class ModelSet(nn.Module):
    """Named models as one module; ``forward(fn, *args)`` runs ``fn(models, *args)``.

    Each model is a direct submodule under its name, so parameter names read
    ``generator.…`` / ``retriever.…`` in checkpoints and optimizer groups.
    """

    def __init__(self, models: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.names = list(models)
        for name, model in models.items():
            self.add_module(name, model)

    def as_dict(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in self.names}

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.as_dict(), *args, **kwargs)


class TrainingStep:
    """Base class of the registered steps (see the module docstring). ``cfg`` is the whole
    resolved config; a step reads its own section(s)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    # ------------------------------------------------------------ set-up

    @classmethod
    def before_run(cls, cfg: Config, resume: bool) -> Config:
        """Work that comes before this step's run, and the config the run then takes (default:
        none, ``cfg`` itself). Must leave ``cfg`` unchanged (return a copy)."""
        return cfg

    def check(self) -> None:
        """Cheap checks of the inputs this step needs, before any model loads (files exist,
        settings agree). Raise a UserError."""

    def load_data(self) -> Sequence[Any]:
        """The items the loop batches over (one item per question, row, pair...)."""
        raise NotImplementedError

    def build_models(self) -> dict[str, nn.Module]:
        """The named models this step needs (only those), on the CPU; the parameters meant to
        train have ``requires_grad`` set. The loop freezes models that do not train. It runs
        on the main process first, then on the others: no collective operations here."""
        raise NotImplementedError

    def learning_rates(self) -> dict[str, float]:
        """``{model name: learning rate}`` for the models that train (in optimizer-group
        order); models left out are frozen and run in eval mode."""
        raise NotImplementedError

    def flops_params(self, models: Mapping[str, nn.Module]) -> int:
        """Parameters that the throughput estimate counts against the ``tokens`` statistic."""
        return sum(p.numel() for m in models.values() for p in m.parameters())

    # ------------------------------------------------------------ one micro-batch

    def compute(self, models: Mapping[str, nn.Module], batch: list[Any],
                sampler: torch.Generator) -> StepOutput:
        """Loss and statistics of one micro-batch; runs inside the wrapper's forward."""
        raise NotImplementedError

    # ------------------------------------------------------------ around the steps (optional)

    def after_step(self, loop: TrainRecipe) -> None:
        """Called after every optimizer step (e.g. to refresh retrieval candidates)."""

    def evaluate(self, loop: TrainRecipe) -> dict[str, Any]:
        """Dev metrics at ``train.eval_every`` (every rank calls it); {} when there are none."""
        return {}

    def restore(self, checkpoint: Path, loop: TrainRecipe) -> None:
        """Restore what :meth:`exporters` saved beside a checkpoint, on resume."""

    # ------------------------------------------------------------ saving

    def save_model(self, name: str, model: nn.Module, path: Path) -> None:
        """Write one model (unwrapped) into ``path`` in its own loadable format."""
        raise NotImplementedError

    def exporters(self, models: Mapping[str, nn.Module], loop: TrainRecipe
                  ) -> dict[str, Callable[[Path], None]]:
        """What a checkpoint carries besides the trainable tensors: ``{sub-folder: writer}``.
        Default: each training model in its own format."""
        return {name: (lambda path, n=name, m=model: self.save_model(n, m, path))
                for name, model in models.items() if name in self.learning_rates()}

    def export_copies(self) -> dict[str, nn.Module]:
        """Fresh, unsharded instances of :meth:`build_models`'s models (same names, same
        structure, no side effects on the step): under FSDP / DeepSpeed ZeRO-3 the main
        process loads the gathered weights into them to export (``training/sharded.py``)."""
        raise ConfigError(f"training step {self.cfg.train.step!r} cannot export its models "
                          "when the parameters are sharded (FSDP, DeepSpeed): run it under DDP")

    def export_final(self, models: Mapping[str, nn.Module], folder: Path) -> None:
        """``RUN/final``: every model, each in ``folder/<name>`` (main process)."""
        for name, model in models.items():
            self.save_model(name, model, folder / name)


class RetrieverStep(TrainingStep):
    """A step that trains the retriever alone (``retriever.train_from`` or
    ``retriever.checkpoint``), no generator loaded, exported as a colbert-ai checkpoint."""

    def build_models(self) -> dict[str, nn.Module]:
        from jmlr.training import components as parts

        return {"retriever": parts.load_retriever_for_training(self.cfg)}

    def export_copies(self) -> dict[str, nn.Module]:
        return self.build_models()

    def learning_rates(self) -> dict[str, float]:
        return {"retriever": self.cfg.train.retriever_lr}

    def save_model(self, name: str, model: nn.Module, path: Path) -> None:
        model.save(path)                                  # type: ignore[operator]
