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
from jmlr.errors import ConfigError
from jmlr.io import write_json
from jmlr.retrieval.folders import folder_sha256

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
    """What produced mined rows, and what makes them reusable: the index build and the
    corpus it covers (fingerprint), the query encoder (path and content hash), the settings.
    ``<split>.meta.json`` records it; every reader checks the corpus fingerprint."""
    recorded = manifest["checkpoint"]
    same = Path(recorded["path"]) == Path(query_checkpoint)
    return {"index_build_id": manifest["build_id"],
            "corpus_fingerprint": manifest["corpus"]["fingerprint"],
            "query_checkpoint": str(query_checkpoint),
            "retriever_sha256": recorded["sha256"] if same else folder_sha256(Path(query_checkpoint)),
            "top_n": top_n, "self_matches_filtered": self_matches_filtered}


def check_mined_corpus(out_dir: Path, split: str, fingerprint: str) -> None:
    """ConfigError when the split's record says its candidates were mined over another corpus
    than the configured one (fingerprint ``fingerprint``). Candidates without a record (written
    by hand, or by an old version) are not checked here."""
    meta_path = out_dir / f"{split}.meta.json"
    if not meta_path.is_file():
        log.info("%s: no record of what mined them; their corpus is not checked", meta_path.name)
        return
    try:
        mined_over = json.loads(meta_path.read_text(encoding="utf-8")).get("corpus_fingerprint")
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError(f"{meta_path}: unreadable record of the {split} candidates ({err}); "
                          "run `jmlr mine` again") from None
    if mined_over is not None and mined_over != fingerprint:
        raise ConfigError(
            f"the {split} candidates in {out_dir} were mined over another corpus than data.corpus "
            "(a passage changed since `jmlr mine`); re-run `jmlr index --overwrite` and `jmlr mine`")


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
