"""Whole models to export when training shards the parameters (FSDP, DeepSpeed ZeRO-3).

Exports (``final/``, a checkpoint's model folders) and candidate refresh read a model's
weights on the main process. Under DDP every process holds them whole, and the unwrapped
modules are used as they are. Under FSDP and ZeRO-3 each process holds a shard, and a module
saved from one process would write its shard (or hang in a collective the others never
enter). There, every process takes part in ``accelerator.get_state_dict`` (accelerate's
documented way to gather a full state dict for either backend: FSDP's full state dict,
DeepSpeed's consolidated 16-bit weights, ``zero3_save_16bit_model: true``), and the main
process loads the gathered weights into an unsharded copy of each model, built once by the
training step (:meth:`~jmlr.training.steps.base.TrainingStep.export_copies`). The savers
then run on those copies unchanged.

The copies cost one more model in the main process's CPU memory for the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from jmlr.training.checkpoint import clean_name
from jmlr.training.distributed import is_sharded


def split_state(full_state: Mapping[str, torch.Tensor], names: list[str]
                ) -> dict[str, dict[str, torch.Tensor]]:
    """A gathered state dict of the model set, per model: ``{"generator.x.w": t}`` →
    ``{"generator": {"x.w": t}}``, wrapper segments removed from the names.

    >>> t = torch.zeros(1)
    >>> sorted(split_state({"generator._fsdp_wrapped_module.lm.w": t, "retriever.b": t},
    ...                    ["generator", "retriever"])["generator"])
    ['lm.w']
    """
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    for key, tensor in full_state.items():
        model, _, rest = clean_name(key).partition(".")
        if model in out:
            out[model][rest] = tensor
    return out


class ExportCopies:
    """Unsharded copies of the step's models on the main process, refreshed from the
    gathered weights before each export (see the module docstring)."""

    def __init__(self, build: Callable[[], dict[str, nn.Module]]) -> None:
        self.build = build
        self.copies: dict[str, nn.Module] | None = None

    def models(self, accelerator: Any, prepared: nn.Module,
               live: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """The models to export from: ``live`` when not sharded; otherwise (every process
        must call this: the gather is collective) the main process's copies with the
        gathered weights, and ``live`` elsewhere (not to be saved from)."""
        if not is_sharded(accelerator):
            return live
        full = accelerator.get_state_dict(prepared)
        if not accelerator.is_main_process:
            return live
        return self.load(full)

    def load(self, full_state: Mapping[str, torch.Tensor]) -> dict[str, nn.Module]:
        """The copies (built on first use) with ``full_state``'s weights, every tensor of
        every copy accounted for."""
        if self.copies is None:
            self.copies = self.build()
        for name, state in split_state(full_state, list(self.copies)).items():
            copy = self.copies[name]
            own = copy.state_dict()
            missing, unexpected = set(own) - set(state), set(state) - set(own)
            if missing or unexpected:
                raise RuntimeError(f"gathered weights of {name} do not match its copy: missing "
                                   f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
            with torch.no_grad():
                copy.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
            copy.eval()
        return self.copies
