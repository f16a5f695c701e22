"""This process's place among the processes of a launch, for stages outside the training
loop that split work across ``accelerate launch`` processes (mining, index encoding).

The training package owns accelerate; other stages ask here.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def is_sharded(accelerator: Any) -> bool:
    """Whether each process holds only a shard of the parameters (FSDP, DeepSpeed).

    >>> class Acc: distributed_type = "DistributedType.FSDP"
    >>> is_sharded(Acc())
    True
    """
    return str(accelerator.distributed_type).upper().endswith(("FSDP", "DEEPSPEED"))


class ProcessRanks:
    """Rank and world size under ``accelerate launch`` / ``torchrun`` (or 0 of 1 alone),
    with a barrier. The process group is created here, on first use, never at import."""

    @classmethod
    def alone(cls) -> ProcessRanks:
        """This process on its own, whatever job it belongs to (the trainer re-indexing on
        its main process): rank 0 of 1, never a collective."""
        ranks = cls.__new__(cls)
        ranks.state, ranks.rank, ranks.world = None, 0, 1
        return ranks

    def __init__(self, device: str = "auto") -> None:
        self.state = None
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
            self.rank, self.world = self.state.process_index, self.state.num_processes

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process (``obj`` itself alone)."""
        if self.state is None:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def total(self, value: float) -> float:
        """The sum of ``value`` over the processes."""
        if self.state is None:
            return value
        summed = torch.tensor([float(value)], dtype=torch.float64, device=self.state.device)
        torch.distributed.all_reduce(summed)
        return float(summed.item())
