"""The processes of one index build: ``accelerate launch --num_processes N -m jmlr index``.

Each process encodes its share of the collection (colbert-ai's chunks, assigned round-robin
by rank), the main process trains the centroids on the pooled sample and writes the inverted
file; they meet at barriers between those phases. This module is the only place the index
build talks to ``torch.distributed``: it joins the process group that the launcher describes
in the environment (gloo on CPUs, nccl on GPUs), or is a no-op for one process.

colbert-ai's own barrier names a CUDA device, so it cannot run on CPU processes; ours does not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jmlr.io import building_folder


@dataclass(frozen=True)
class Ranks:
    """The processes of one build: this one's ``rank`` among ``world``. A build inside another
    job's process group (the trainer re-indexing on its main process) is ``Ranks()``, one
    process, and never calls a collective."""

    rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        """Wait for every process of the build (nothing with one process)."""
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process (``obj`` itself with one process)."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def total(self, value: float) -> float:
        """The sum of ``value`` over the processes of the build."""
        if self.world == 1:
            return value
        summed = torch.tensor([float(value)], dtype=torch.float64)
        torch.distributed.all_reduce(summed)
        return float(summed.item())

    @contextlib.contextmanager
    def building_folder(self, target: Path) -> Iterator[Path]:
        """:func:`jmlr.io.building_folder` held by the main process, its path shared with the
        others: every process writes its chunks into the same temporary folder, which becomes
        ``target`` once all have finished and the main process's block ends without error."""
        if self.rank == 0:
            with building_folder(target) as tmp:
                self.broadcast(str(tmp))
                yield tmp
                self.barrier()          # every process has left the block: publish
        else:
            yield Path(self.broadcast(None))
            self.barrier()


def join() -> Ranks:
    """This process's place in the launcher's processes, joining their process group first
    when the environment names more than one (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``: what
    ``accelerate launch`` and ``torchrun`` set); ``Ranks()`` for one process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo",
                                         init_method="env://")
    return Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size())
