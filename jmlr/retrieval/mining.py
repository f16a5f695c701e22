"""Bookkeeping for resumable, multi-process mining: partial files, shards, timings.

While a split is mined, every finished chunk of candidates is appended to
``<split>.jsonl.partial`` (``.partial.<rank>`` under several processes), next to
``<split>.partial.json`` naming what they were mined with. A restart keeps the rows of a
matching run and mines only the remaining questions; rows of another index, encoder or
top-N are discarded. The final ``<split>.jsonl`` is written atomically at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from jmlr.data.schema import Candidates
from jmlr.io import write_json

log = logging.getLogger(__name__)
T = TypeVar("T")


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The items process ``rank`` of ``world`` handles: every world-th from its rank.

    >>> shard(list("abcdefg"), 1, 3)
    ['b', 'e']
    """
    return list(items[rank::world])


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence.

    >>> percentile([4.0, 1.0, 3.0, 2.0], 50), percentile([4.0, 1.0, 3.0, 2.0], 95)
    (2.0, 4.0)
    """
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float], name: str = "latency") -> dict[str, Any]:
    """p50/p95 of per-query times in milliseconds (None when nothing was timed).

    >>> latency_summary([0.002, 0.001, 0.004], "search")
    {'search_p50_ms': 2.0, 'search_p95_ms': 4.0}
    """
    if not seconds:
        return {f"{name}_p50_ms": None, f"{name}_p95_ms": None}
    return {f"{name}_p50_ms": round(1000 * percentile(seconds, 50), 3),
            f"{name}_p95_ms": round(1000 * percentile(seconds, 95), 3)}


def mining_identity(manifest: dict[str, Any], query_checkpoint: Path, top_n: int,
                    self_matches_filtered: bool) -> dict[str, Any]:
    """What makes mined rows reusable: the same index build, encoder and settings."""
    return {"index_build_id": manifest["build_id"],
            "corpus_fingerprint": manifest["corpus"]["fingerprint"],
            "query_checkpoint": str(query_checkpoint), "top_n": top_n,
            "self_matches_filtered": self_matches_filtered}


def partial_path(out_dir: Path, split: str, rank: int, world: int) -> Path:
    """``<split>.jsonl.partial`` for one process, ``.partial.<rank>`` for several."""
    name = f"{split}.jsonl.partial" + (f".{rank}" if world > 1 else "")
    return out_dir / name


def _partial_files(out_dir: Path, split: str) -> list[Path]:
    return sorted(out_dir.glob(f"{split}.jsonl.partial*"))


def _meta_path(out_dir: Path, split: str) -> Path:
    return out_dir / f"{split}.partial.json"


def remove_partials(out_dir: Path, split: str) -> None:
    for path in [*_partial_files(out_dir, split), _meta_path(out_dir, split)]:
        path.unlink(missing_ok=True)


def _good_length(path: Path) -> int:
    """Bytes of ``path`` up to the end of its last complete, parseable row."""
    good = 0
    with path.open("rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                Candidates.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                break
            good += len(line)
    return good


def prepare_partials(out_dir: Path, split: str, identity: dict[str, Any]) -> None:
    """Keep the partial rows of a matching interrupted run, cut after the last whole row;
    drop those of any other run. Then record ``identity`` for this one (one process)."""
    meta = _meta_path(out_dir, split)
    previous = None
    if meta.is_file():
        try:
            previous = json.loads(meta.read_text(encoding="utf-8"))
        except ValueError:
            previous = None
    if previous != identity:
        if _partial_files(out_dir, split):
            log.info("%s: discarding partial candidates mined with other settings", split)
        remove_partials(out_dir, split)
    for path in _partial_files(out_dir, split):
        good = _good_length(path)
        if good < path.stat().st_size:
            log.info("%s: dropping an incomplete row at the end of %s", split, path)
            with path.open("r+b") as handle:
                handle.truncate(good)
                os.fsync(handle.fileno())
    write_json(meta, identity)


def read_partials(out_dir: Path, split: str) -> dict[str, Candidates]:
    """Every complete row of the split's partial files, by question id."""
    rows: dict[str, Candidates] = {}
    for path in _partial_files(out_dir, split):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break
                row = Candidates.from_json(json.loads(line))
                rows[row.question_id] = row
    return rows
