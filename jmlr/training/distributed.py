"""This process's place among the processes of a launch, for stages outside the training
loop that split work across ``accelerate launch`` processes (mining, index encoding).

The training package owns accelerate; other stages ask here.
"""

from __future__ import annotations

import os

import torch


class ProcessRanks:
    """Rank and world size under ``accelerate launch`` / ``torchrun`` (or 0 of 1 alone),
    with a barrier. The process group is created here, on first use, never at import."""

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
