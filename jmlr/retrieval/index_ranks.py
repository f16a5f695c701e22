"""The processes of one index build: ``accelerate launch --num_processes N -m jmlr index``.

Each process encodes its share of the collection (colbert-ai's chunks, assigned round-robin
by rank), the main process trains the centroids on the pooled sample and writes the inverted
file; they meet at barriers between those phases. This module is the only place the index
build shares a folder across processes; their ranks, barrier and collectives are
``training.distributed.ProcessRanks`` (gloo on CPUs, nccl on GPUs), as mining's are.

colbert-ai's own barrier names a CUDA device, so it cannot run on CPU processes; ours does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from jmlr.io import building_folder
from jmlr.training.distributed import ProcessRanks


@contextlib.contextmanager
def shared_building_folder(ranks: ProcessRanks, target: Path) -> Iterator[Path]:
    """:func:`jmlr.io.building_folder` held by the main process, its path shared with the
    others: every process writes its chunks into the same temporary folder, which becomes
    ``target`` once all have finished and the main process's block ends without error."""
    if ranks.rank == 0:
        with building_folder(target) as tmp:
            ranks.broadcast(str(tmp))
            yield tmp
            ranks.barrier()             # every process has left the block: publish
    else:
        yield Path(ranks.broadcast(None))
        ranks.barrier()
