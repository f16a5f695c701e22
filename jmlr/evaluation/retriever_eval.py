"""``jmlr eval-retriever``: retrievers side by side on a task in the standard IR layout.

Each retriever (the config's untrained one, a run's ``final/retriever``, any ColBERT folder)
ranks the whole corpus for every judged query by exact late interaction (no index: every
passage is encoded once per retriever, so the numbers carry no PLAID approximation), and its
top ``--top-k`` are scored with ``ir_measures`` (the trec_eval implementation BEIR and MTEB
report through pytrec_eval, behind a maintained interface). The only module that imports
``ir_measures``. Measures: nDCG@10, R@1, R@10, R@100, RR@10 (MRR@10).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from jmlr.config import Config
from jmlr.data.beir import BeirTask, read_beir
from jmlr.errors import ConfigError
from jmlr.io import write_json

log = logging.getLogger(__name__)

MEASURES = ("nDCG@10", "R@1", "R@10", "R@100", "RR@10")


def parse_retrievers(cfg: Config, runs: list[str], named: list[str]) -> list[tuple[str, Path | None]]:
    """(name, checkpoint) pairs: the config's own retriever ("untrained", None), each run's
    ``final/retriever`` (named after the run folder), then ``NAME=PATH`` items."""
    found: list[tuple[str, Path | None]] = [("untrained", None)]
    for run in runs:
        path = Path(run).expanduser() / "final" / "retriever"
        if not path.is_dir():
            raise ConfigError(f"--run {run}: no final/retriever (a run that `jmlr train` finished)")
        found.append((Path(run).name, path))
    for item in named:
        name, sep, location = item.partition("=")
        if not sep or not name or not location:
            raise ConfigError(f"--retriever {item!r}: expected NAME=PATH")
        path = Path(location).expanduser()
        if not path.is_dir():
            raise ConfigError(f"--retriever {item!r}: {path} is not a folder")
        found.append((name, path))
    names = [n for n, _ in found]
    if len(set(names)) != len(names):
        raise ConfigError(f"retriever names must differ: {names}")
    return found


@torch.no_grad()
def rank_corpus(scorer: Any, queries: dict[str, str], corpus: dict[str, str], top_k: int,
                doc_batch: int = 128, query_batch: int = 16) -> dict[str, dict[str, float]]:
    """Each query's ``top_k`` passages by exact late-interaction score ({qid: {pid: score}})."""
    qids, pids = list(queries), list(corpus)
    Q = torch.cat([scorer.encode_queries([queries[q] for q in qids[i:i + query_batch]])
                   for i in range(0, len(qids), query_batch)]).float()
    k = min(top_k, len(pids))
    best = torch.full((len(qids), 0), float("-inf")), torch.zeros((len(qids), 0), dtype=torch.long)
    for start in tqdm(range(0, len(pids), doc_batch), desc="corpus", unit="batch", leave=False):
        D, mask = scorer.encode_docs([corpus[p] for p in pids[start:start + doc_batch]])
        D, mask = D.float(), mask.bool()
        parts = []
        for i in range(0, len(qids), query_batch):
            sim = torch.einsum("bqd,nld->bnql", Q[i:i + query_batch], D)
            sim = sim.masked_fill(~mask[None, :, None, :], -9999.0)
            parts.append(sim.max(-1).values.sum(-1))
        scores = torch.cat(parts).cpu()
        ids = torch.arange(start, start + scores.shape[1]).expand_as(scores)
        merged_scores, merged_ids = torch.cat([best[0], scores], 1), torch.cat([best[1], ids], 1)
        top = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
        best = top.values, merged_ids.gather(1, top.indices)
    return {q: {pids[j]: float(s) for s, j in zip(best[0][row].tolist(), best[1][row].tolist(),
                                                  strict=True)}
            for row, q in enumerate(qids)}


def measure(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
            ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean of each measure, per query) by ir_measures."""
    import ir_measures

    measures = [ir_measures.parse_measure(m) for m in MEASURES]
    means = {str(m): float(v) for m, v in ir_measures.calc_aggregate(measures, qrels, run).items()}
    per_query: dict[str, dict[str, float]] = {}
    for metric in ir_measures.iter_calc(measures, qrels, run):
        per_query.setdefault(metric.query_id, {})[str(metric.measure)] = float(metric.value)
    return {m: means[m] for m in MEASURES}, per_query


def run_eval_retriever(cfg: Config, beir: str | Path | None, split: str = "test",
                       runs: list[str] | None = None, named: list[str] | None = None,
                       top_k: int = 100, out: str | Path | None = None, mteb: str | None = None,
                       mteb_data: str | Path | None = None) -> dict[str, Any]:
    """Every retriever on the task (a BEIR folder, or MTEB task ``mteb``); prints the table,
    writes ``out`` (JSON) when given."""
    from jmlr.device import resolve_device
    from jmlr.retrieval.backends import backend_for

    retrievers = parse_retrievers(cfg, runs or [], named or [])
    if mteb:
        from jmlr.evaluation.mteb_tasks import load_mteb_task

        task: BeirTask = load_mteb_task(mteb, split, mteb_data)
        source = f"MTEB {mteb}"
    else:
        task = read_beir(beir, split)                # every line checked before a model loads
        source = str(beir)
    backend_for(cfg).check_checkpoint(cfg)
    device = resolve_device(cfg.run.device)
    log.info("%s split %s: %d queries with judgements, %d passages", source, split,
             len(task.queries), len(task.corpus))
    results: dict[str, Any] = {}
    for name, checkpoint in retrievers:
        started = time.perf_counter()
        scorer = backend_for(cfg).load_scorer(cfg, checkpoint, device=device).eval()
        run = rank_corpus(scorer, task.queries, task.corpus, top_k)
        means, per_query = measure(task.qrels, run)
        results[name] = {"checkpoint": str(checkpoint) if checkpoint else cfg.retriever.checkpoint,
                         "measures": means, "per_query": per_query,
                         "seconds": round(time.perf_counter() - started, 1)}
        del scorer
    print(table(results))
    summary = {"beir": str(beir) if beir else None, "mteb": mteb, "split": split, "queries": len(task.queries),
               "passages": len(task.corpus), "top_k": top_k, "retrievers": results}
    if out:
        write_json(Path(out), summary)
    return summary


def table(results: dict[str, Any]) -> str:
    """A Markdown table: one row per retriever, one column per measure.

    >>> print(table({"untrained": {"measures": dict.fromkeys(MEASURES, 0.5)}}))
    | retriever | nDCG@10 | R@1 | R@10 | R@100 | RR@10 |
    |---|---|---|---|---|---|
    | untrained | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 |
    """
    lines = ["| retriever | " + " | ".join(MEASURES) + " |", "|---" * (len(MEASURES) + 1) + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['measures'][m]:.3f}" for m in MEASURES) + " |")
    return "\n".join(lines)
