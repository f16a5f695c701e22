"""Top-N candidate passages per question: mine, cache, measure.

``jmlr mine`` writes ``<candidates_dir>/<split>.jsonl`` (``run_mine``) by searching the
configured retriever backend's index (``jmlr.retrieval.backends``); training and evaluation
read those files (``load_candidates``). Index building, search and refresh are the
backend's (ColBERT + PLAID: ``jmlr.retrieval.colbert_backend``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from jmlr.data import SPLITS
from jmlr.data.schema import MCQ, Candidates, read_candidates, write_candidates
from jmlr.errors import ConfigError, DataError
from jmlr.io import write_json
from jmlr.retrieval.mining import (
    check_mined_corpus,
    latency_summary,
    mining_identity,
    partial_path,
    prepare_partials,
    read_partials,
    remove_partials,
    shard,
)

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.training.distributed import ProcessRanks

log = logging.getLogger(__name__)


def self_match_extra(top_n: int) -> int:
    """How many more passages to search for when self-matches will be dropped.

    >>> self_match_extra(30), self_match_extra(8)
    (10, 5)
    """
    return max(5, top_n // 3)


def retrieval_metrics(cands: dict[str, Candidates], questions: Iterable[MCQ],
                      ks: Sequence[int] = (1, 7, 30)) -> dict[str, float]:
    """Recall@k and MRR of the gold passages, over the questions that have gold ids.

    recall@k of a question is the fraction of its gold passages among its top k candidates;
    its reciprocal rank is 1/rank of the first gold passage (0 when none was retrieved). A
    question missing from ``cands`` counts as retrieving nothing. {} when no question has
    gold ids.

    >>> qs = [MCQ("q1", "?", {"A": "x", "B": "y"}, "A", gold_passage_ids=["p2"]),
    ...       MCQ("q2", "?", {"A": "x", "B": "y"}, "A", gold_passage_ids=["p9"]),
    ...       MCQ("q3", "?", {"A": "x", "B": "y"}, "A")]
    >>> c = {"q1": Candidates("q1", ["p1", "p2", "p3"], [3.0, 2.0, 1.0]),
    ...      "q2": Candidates("q2", ["p4"], [1.0])}
    >>> retrieval_metrics(c, qs, ks=(1, 2))
    {'n_questions': 2, 'recall@1': 0.0, 'recall@2': 0.5, 'mrr': 0.25}
    >>> retrieval_metrics(c, qs[2:])
    {}
    """
    rows = [(q, cands.get(q.id)) for q in questions if q.gold_passage_ids]
    if not rows:
        return {}
    recall = {k: 0.0 for k in ks}
    reciprocal = 0.0
    for question, found in rows:
        gold = set(question.gold_passage_ids)
        ranked = found.passage_ids if found else []
        for k in ks:
            recall[k] += len(gold & set(ranked[:k])) / len(gold)
        first = next((rank for rank, pid in enumerate(ranked, 1) if pid in gold), None)
        reciprocal += 1.0 / first if first else 0.0
    out: dict[str, float] = {"n_questions": len(rows)}
    out.update({f"recall@{k}": round(recall[k] / len(rows), 6) for k in ks})
    out["mrr"] = round(reciprocal / len(rows), 6)
    return out


def _report_ks(top_n: int) -> tuple[int, ...]:
    """recall@1/7/30 as the paper reports, capped at the number of candidates mined."""
    return tuple(sorted({min(k, top_n) for k in (1, 7, 30)}))


# ---------------------------------------------------------------------------------------
# Mining


def load_candidates(cfg: Config, split: str,
                    corpus_fingerprint: str | None = None) -> dict[str, Candidates]:
    """The mined candidates of one split, by question id; ConfigError when their record says
    they were mined over another corpus than the one of fingerprint ``corpus_fingerprint``."""
    path = cfg.candidates_dir / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(path, None, None, f"no candidates for split {split!r}; "
                        "run `jmlr mine -c CONFIG` first")
    if corpus_fingerprint is not None:
        check_mined_corpus(cfg.candidates_dir, split, corpus_fingerprint)
    return {c.question_id: c for c in read_candidates(path)}


def _mine_split(cfg: Config, index: Any, split: str, questions: list[MCQ],
                exclude_self: bool, ranks: ProcessRanks) -> dict[str, Any]:
    out_dir = cfg.candidates_dir
    top_n, size = cfg.candidates.top_n, cfg.retriever.batch_size
    identity = mining_identity(index.manifest, index.checkpoint, top_n,
                               exclude_self)
    if ranks.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        prepare_partials(out_dir, split, identity)
    ranks.barrier()
    done = read_partials(out_dir, split)
    ranks.barrier()  # everyone has read the finished rows before anyone appends
    todo = shard([q for q in questions if q.id not in done], ranks.rank, ranks.world)
    if done and ranks.rank == 0:
        log.info("%s: resuming, %d of %d questions already mined", split, len(done), len(questions))
    latencies: list[float] = []     # per query: its share of the batch encoding + its search
    searches: list[float] = []      # per query: the PLAID search alone
    started = time.perf_counter()
    with partial_path(out_dir, split, ranks.rank, ranks.world).open("a", encoding="utf-8") as handle, \
            tqdm(total=len(todo), desc=f"mine {split}", unit="q", disable=ranks.rank > 0) as bar:
        for start in range(0, len(todo), size):
            chunk = todo[start:start + size]
            encode_started = time.perf_counter()
            Q = index.encode([q.query(cfg.retriever.query_template) for q in chunk], size)
            encode_each = (time.perf_counter() - encode_started) / len(chunk)
            found, seconds = index.rank(Q, chunk, top_n, exclude_self)
            latencies.extend(encode_each + s for s in seconds)
            searches.extend(seconds)
            handle.writelines(json.dumps(c.to_json(), ensure_ascii=False) + "\n" for c in found)
            handle.flush()
            os.fsync(handle.fileno())  # a finished chunk survives an interruption
            bar.update(len(chunk))
    elapsed = time.perf_counter() - started
    ranks.barrier()
    summary: dict[str, Any] = {"split": split, "n_questions": len(questions), "top_n": top_n,
                               "self_matches_filtered": exclude_self,
                               "mined_now": len(todo), "seconds": round(elapsed, 3),
                               **latency_summary(latencies), **latency_summary(searches, "search")}
    if ranks.rank == 0:
        rows = read_partials(out_dir, split)
        missing = [q.id for q in questions if q.id not in rows]
        if missing:
            raise RuntimeError(f"{split}: {len(missing)} questions were not mined (e.g. {missing[0]})")
        path = out_dir / f"{split}.jsonl"
        write_candidates(path, (rows[q.id] for q in questions))
        summary["path"] = str(path)
        summary["metrics"] = retrieval_metrics(rows, questions, _report_ks(top_n))
        summary["short_rows"] = sum(len(rows[q.id].passage_ids) < top_n for q in questions)
        if summary["short_rows"]:
            log.warning("%s: %d questions got fewer than %d candidates (small corpus, or "
                        "self-matches dropped)", split, summary["short_rows"], top_n)
        write_json(out_dir / f"{split}.meta.json", {**identity, **summary})
        remove_partials(out_dir, split)
    ranks.barrier()
    return summary


def _print_summary(index_manifest: dict[str, Any], splits: list[dict[str, Any]]) -> None:
    print(f"index: {index_manifest['corpus']['n_passages']} passages, built in "
          f"{index_manifest['build_seconds']:.1f} s "
          f"({index_manifest['passages_per_second']:.1f} passages/s)")
    for s in splits:
        line = f"{s['split']}: {s['n_questions']} questions, top-{s['top_n']} -> {s['path']}; "
        line += (f"latency per query p50 {s['latency_p50_ms']:.1f} ms, p95 "
                 f"{s['latency_p95_ms']:.1f} ms (PLAID search alone p50 {s['search_p50_ms']:.1f} "
                 f"ms, p95 {s['search_p95_ms']:.1f} ms)"
                 if s["latency_p50_ms"] is not None else "all rows resumed, nothing searched")
        if s["metrics"]:
            metrics = ", ".join(f"{k} {v:.3f}" for k, v in s["metrics"].items() if k != "n_questions")
            line += f"; gold passage {metrics} (over {s['metrics']['n_questions']} questions)"
        print(line)


def run_mine(cfg: Config, splits: Sequence[str] = SPLITS) -> dict[str, Any]:
    """``jmlr mine``: top-N candidates for each split that has a question file.

    Resumable (finished chunks are kept in ``<split>.jsonl.partial``); under
    ``accelerate launch`` rank r mines questions r::world and rank 0 writes the file.
    """
    from jmlr.data import load_split

    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ConfigError(f"unknown split {unknown[0]!r} (known: {', '.join(SPLITS)})")
    wanted = [s for s in splits if getattr(cfg.data, s)]
    for skipped in sorted(set(splits) - set(wanted)):
        log.info("no question file for split %r (data.%s): skipped", skipped, skipped)
    if not wanted:
        raise ConfigError(f"no question file is set for {', '.join(splits)} "
                          f"(data.{' / data.'.join(splits)})")
    from jmlr.retrieval.backends import backend_for
    from jmlr.training.distributed import ProcessRanks

    # Every question file is read (and checked) before the index opens, which takes
    # minutes on a large corpus: a bad file fails at once.
    questions = {split: load_split(cfg.data, split) for split in wanted}
    ranks = ProcessRanks(cfg.run.device)
    index = backend_for(cfg).open_index(cfg)
    results = []
    for split in wanted:
        exclude_self = split == "train" and cfg.data.filter_self_matches
        results.append(_mine_split(cfg, index, split, questions[split], exclude_self, ranks))
    if ranks.rank == 0:
        _print_summary(index.manifest, results)
    return {"index": index.manifest, "splits": {r["split"]: r for r in results}}
