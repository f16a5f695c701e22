"""What the efficacy benchmark measures per run, per question, and how it aggregates.

Retrieval is recorded per question as the rank of its first gold passage (None: not among the
candidates), so that every figure (R@k, MRR) and every paired comparison is computed from the
same numbers. Accuracy is recorded per question as correct or not, per scoring method.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jmlr.config import Config
from jmlr.data.schema import MCQ, Candidates

Ranks = dict[str, int | None]          # question id -> rank of the first gold passage (1-based)


# --------------------------------------------------------------------------- figures from ranks


def recall_at(ranks: Ranks, k: int) -> float:
    """Share of questions whose first gold passage is within the top ``k``.

    >>> recall_at({"a": 1, "b": 3, "c": None}, 1), recall_at({"a": 1, "b": 3, "c": None}, 7)
    (0.3333333333333333, 0.6666666666666666)
    """
    return sum(1 for r in ranks.values() if r is not None and r <= k) / max(len(ranks), 1)


def mrr(ranks: Ranks) -> float:
    """Mean reciprocal rank (0 for a question whose gold passage was not retrieved).

    >>> mrr({"a": 1, "b": 4, "c": None})
    0.4166666666666667
    """
    return sum(1.0 / r for r in ranks.values() if r) / max(len(ranks), 1)


def metric_fn(metric: str):
    """``"r@k"`` or ``"mrr"`` as a function of ranks.

    >>> metric_fn("r@1")({"a": 1, "b": 2}), metric_fn("mrr")({"a": 1, "b": 2})
    (0.5, 0.75)
    """
    if metric == "mrr":
        return mrr
    k = int(metric.split("@")[1])
    return lambda ranks: recall_at(ranks, k)


def per_question(ranks: Ranks, metric: str) -> dict[str, float]:
    """One value per question: ``r@k`` (0/1) or ``mrr`` (reciprocal rank)."""
    if metric == "mrr":
        return {q: (1.0 / r if r else 0.0) for q, r in ranks.items()}
    k = int(metric.split("@")[1])
    return {q: float(r is not None and r <= k) for q, r in ranks.items()}


def gold_ranks(ranked: Mapping[str, Sequence[str]], questions: Sequence[MCQ]) -> Ranks:
    """Rank of each question's first gold passage in its ranked passage ids."""
    out: Ranks = {}
    for q in questions:
        ids = list(ranked.get(q.id, []))
        out[q.id] = next((i + 1 for i, pid in enumerate(ids) if pid in q.gold_passage_ids), None)
    return out


# --------------------------------------------------------------------------- statistics


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation over seeds (sd 0 for one value).

    >>> mean_sd([0.5, 0.7])
    {'mean': 0.6, 'sd': 0.1414, 'n': 2}
    """
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "sd": round(sd, 4), "n": len(values)}


def paired_bootstrap(a: Sequence[Mapping[str, float]], b: Sequence[Mapping[str, float]],
                     samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Difference ``a − b`` of per-question values, each side averaged over its seeds (the
    lists hold one mapping per seed, question id → value), with a 95% percentile bootstrap
    interval over questions (the questions resampled with replacement, pairs kept).

    >>> out = paired_bootstrap([{"q1": 1.0, "q2": 1.0}], [{"q1": 0.0, "q2": 1.0}], samples=200)
    >>> out["diff"], out["n_questions"]
    (0.5, 2)
    """
    ids = sorted(set.intersection(*(set(m) for m in [*a, *b])))
    if not ids:
        return {"diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "n_questions": 0}
    first = np.array([[m[q] for q in ids] for m in a]).mean(axis=0)
    second = np.array([[m[q] for q in ids] for m in b]).mean(axis=0)
    diff = first - second
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(ids), size=(samples, len(ids)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": round(float(diff.mean()), 4), "ci_low": round(float(low), 4),
            "ci_high": round(float(high), 4), "n_questions": len(ids)}


def mean_interval(values: Sequence[float], samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of per-question values with a 95% percentile bootstrap interval over questions.

    >>> out = mean_interval([1.0, 0.0, 1.0, 1.0], samples=200)
    >>> out["mean"], out["n"], out["ci_low"] <= 0.75 <= out["ci_high"]
    (0.75, 4, True)
    """
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(samples, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(data.mean()), 4), "ci_low": round(float(low), 4),
            "ci_high": round(float(high), 4), "n": len(data)}


# --------------------------------------------------------------------------- measuring a retriever


def rerank_ranks(cfg: Config, checkpoint: str | Path | None, questions: Sequence[MCQ],
                 pools: Mapping[str, Candidates], corpus: Mapping[str, str]) -> Ranks:
    """Gold ranks after the retriever at ``checkpoint`` (None: the initial one) re-scores
    each question's mined candidates."""
    from jmlr.evaluation.passages import rerank
    from jmlr.retrieval.backends import backend_for

    scorer = backend_for(cfg).load_scorer(cfg, checkpoint).eval()
    with torch.no_grad():
        ranked = rerank(scorer, questions, dict(pools), dict(corpus), cfg.eval.batch_size,
                        desc="rerank", template=cfg.retriever.query_template)
    return gold_ranks({q: c.passage_ids for q, c in ranked.items()}, questions)


def research_ranks(cfg: Config, checkpoint: str | Path, questions: Sequence[MCQ],
                   corpus: Mapping[str, str]) -> Ranks:
    """Gold ranks when the index is searched again with the trained query encoder and the
    new top-N is re-scored by the trained retriever (gains beyond the first top-N show here)."""
    from jmlr.retrieval.backends import backend_for

    found = backend_for(cfg).search(cfg, list(questions), checkpoint=checkpoint)
    return rerank_ranks(cfg, checkpoint, questions, found, corpus)


def reindexed_ranks(cfg: Config, checkpoint: str | Path, index_dir: str | Path,
                    questions: Sequence[MCQ], corpus: Mapping[str, str]) -> Ranks:
    """Gold ranks when the corpus is indexed again with the trained retriever (its document
    and query vectors both, as a deployment would serve it) and searched, the new top-N
    re-scored by it. ``research_ranks`` keeps the old document vectors: ColBERT's query and
    document encoders share their weights, so training moves both."""
    import dataclasses

    from jmlr.retrieval.backends import backend_for

    trained = dataclasses.replace(cfg, retriever=dataclasses.replace(
        cfg.retriever, checkpoint=str(checkpoint), index_dir=str(index_dir)))
    backend = backend_for(trained)
    if not backend.index_exists(trained):
        backend.build_index(trained)
    found = backend.search(trained, list(questions))
    return rerank_ranks(trained, checkpoint, questions, found, corpus)


def teacher_ranks(cfg: Config, questions: Sequence[MCQ], pools: Mapping[str, Candidates],
                  corpus: Mapping[str, str], top: int = 0) -> Ranks:
    """Gold ranks when the base generator's own utilities (the configured ``jmlr.utility``)
    order the mined candidates: the ceiling of what the teacher can teach (lower first).
    ``top`` > 0: only the first ``top`` candidates are re-ordered (the pool the joint step
    draws from), the rest keep their mined order after them."""
    from jmlr.training import components as parts
    from jmlr.training.utilities import utility_fn

    gen, tokenizer = parts.load_generator_for_training(cfg)
    utilities = utility_fn(cfg, tokenizer)
    ranked = {}
    with torch.no_grad():
        for q in questions:
            ids, rest = pools[q.id].passage_ids[:top or None], pools[q.id].passage_ids[top or len(pools[q.id].passage_ids):]
            with gen.disable_adapter():
                values = utilities(gen, [q] * len(ids), [[corpus[pid]] for pid in ids]).losses.tolist()
            order = sorted(range(len(ids)), key=values.__getitem__)
            ranked[q.id] = [ids[i] for i in order] + list(rest)
    return gold_ranks(ranked, questions)


# --------------------------------------------------------------------------- reading a run


def correct_by_scoring(run_dir: Path, split: str = "test", mode: str = "trained"
                       ) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Per scoring method, question id → 1.0 / 0.0 in the given mode; and the metrics'
    predicted-letter summaries for those groups."""
    from jmlr.evaluation.metrics import read_predictions

    folder = run_dir / "eval" / split
    out: dict[str, dict[str, float]] = {}
    for p in read_predictions(folder / "predictions.jsonl"):
        if p.mode == mode:
            out.setdefault(p.scoring, {})[p.id] = float(p.correct)
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    letters = {scoring: summary.get("letters")
               for by_mode in metrics["results"].values()
               for scoring, summary in by_mode.get(mode, {}).items()}
    return out, letters


def training_diagnostics(run_dir: Path) -> dict[str, Any]:
    """From ``metrics.jsonl``: usable pairs per step, the teacher's and the retriever's
    gold-pair accuracy over steps (pooled by thirds of the run), and the dev rows."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    train = [r for r in rows if "split" not in r]
    dev = [r for r in rows if r.get("split") == "dev"]

    def pooled(key: str, part: Sequence[dict[str, Any]]) -> float | None:
        pairs = sum(r.get("gold_pairs") or 0 for r in part)
        right = sum((r.get(key) or 0) * (r.get("gold_pairs") or 0) for r in part)
        return round(right / pairs, 4) if pairs else None

    thirds = [train[i * len(train) // 3:(i + 1) * len(train) // 3] for i in range(3)]
    return {
        "steps": len(train),
        "n_pairs_per_step": [r.get("n_pairs") for r in train],
        "steps_without_pairs": sum(1 for r in train if r.get("n_pairs") == 0),
        "llm_gold_accuracy_by_third": [pooled("llm_gold_accuracy", t) for t in thirds],
        "retriever_gold_accuracy_by_third": [pooled("retriever_gold_accuracy", t) for t in thirds],
        "gen_loss_first_last": [train[0].get("gen_loss"), train[-1].get("gen_loss")] if train else None,
        "dev": [{k: r.get(k) for k in ("step", "recall@1", "mrr", "reading_gain",
                                        "reading_gain_base")} for r in dev],
    }
