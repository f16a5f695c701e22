"""Replay of the teacher's utilities: many retriever updates per generator forward.

With ``jmlr.utility_model=base`` the teacher is the generator as it was before training, so a
passage's utility for a question never changes: what one step computed stays exact for the
rest of the run. :class:`UtilityCache` keeps every utility the steps computed (per question:
the passages drawn so far, their utilities and the no-passage baseline), and each step the
retriever also learns from ``jmlr.replay_questions`` earlier questions drawn from it, at the
cost of scoring their cached passages (no generator forward).

Why: one step's rank loss comes from B questions and k passages each; measured on the
benchmark tasks, 40 such steps left the retriever's end point to the seed (test R@1 0.28 to
0.58 over three seeds from 0.30), while the teacher's own ordering of the same candidates
reached 0.65. The replayed rows average that noise out of each update and revisit every
question the run has paid for several times.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from jmlr.training.rank_objectives import RankLoss
from jmlr.training.stats import combine, total


@dataclass
class CachedRow:
    """One question's utilities so far: passage id → ℓ (lower is better), and ℓ with no passage."""

    utilities: dict[str, float] = field(default_factory=dict)
    baseline: float = float("nan")


class UtilityCache:
    """Utilities by question id and passage id, in the order questions were first seen.

    >>> cache = UtilityCache()
    >>> cache.add("q1", ["p1", "p2"], [0.5, 1.5], 2.0)
    >>> cache.add("q1", ["p3"], [0.1], 2.0)
    >>> cache.rows["q1"].utilities
    {'p1': 0.5, 'p2': 1.5, 'p3': 0.1}
    >>> cache.add("q2", ["p1"], [0.3], 1.0)     # one passage: no pair to learn from yet
    >>> cache.replayable(exclude={"q1"})
    []
    """

    def __init__(self) -> None:
        self.rows: dict[str, CachedRow] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, question_id: str, passage_ids: Sequence[str], utilities: Sequence[float],
            baseline: float) -> None:
        row = self.rows.setdefault(question_id, CachedRow())
        row.utilities.update({pid: float(u) for pid, u in zip(passage_ids, utilities, strict=True)})
        row.baseline = float(baseline)

    def replayable(self, exclude: Collection[str] = ()) -> list[str]:
        """Question ids with at least two cached passages, not in ``exclude``, in first-seen order."""
        return [qid for qid, row in self.rows.items() if len(row.utilities) >= 2 and qid not in exclude]

    def draw(self, n: int, generator: torch.Generator, exclude: Collection[str] = ()) -> list[str]:
        """Up to ``n`` distinct replayable question ids, uniformly, by ``generator``.

        >>> cache = UtilityCache()
        >>> for q in "abc":
        ...     cache.add(q, ["p1", "p2"], [0.0, 1.0], 1.0)
        >>> sorted(cache.draw(5, torch.Generator().manual_seed(0), exclude={"b"}))
        ['a', 'c']
        """
        pool = self.replayable(exclude)
        if n <= 0 or not pool:
            return []
        order = torch.randperm(len(pool), generator=generator).tolist()
        return [pool[i] for i in order[:n]]

    def state_dict(self) -> dict[str, Any]:
        return {qid: {"utilities": row.utilities, "baseline": row.baseline}
                for qid, row in self.rows.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = {qid: CachedRow(dict(row["utilities"]), float(row["baseline"]))
                     for qid, row in state.items()}


ObjectiveFn = Callable[[Tensor, Tensor, Tensor], RankLoss]
"""(scores[G, m], utilities[G, m], baseline[G]) -> RankLoss: the configured rank objective."""
RowScoreFn = Callable[[list[str], list[list[str]]], Tensor]
"""(question ids[G], passage ids[G][m]) -> scores[G, m], with gradient."""


def replay_loss(cache: UtilityCache, question_ids: Sequence[str], score_fn: RowScoreFn,
                objective: ObjectiveFn) -> tuple[Tensor | None, dict[str, Any]]:
    """The rank objective over cached rows: rows of the same length go through the scorer and
    the objective together; the result is the mean over rows of the groups' losses (each
    group weighted by its number of rows). Returns ``(loss or None when no row, stats)``.

    >>> cache = UtilityCache()
    >>> cache.add("q", ["good", "bad"], [0.1, 2.0], 2.0)
    >>> fixed = {"good": 0.0, "bad": 1.0}
    >>> score = lambda qids, pids: torch.tensor([[fixed[p] for p in row] for row in pids])
    >>> from jmlr.registry import RANK_OBJECTIVES
    >>> pairwise = lambda s, u, b: RANK_OBJECTIVES.get("pairwise")(s, u, None, b)
    >>> loss, stats = replay_loss(cache, ["q"], score, pairwise)
    >>> round(float(loss), 4), int(stats["replay_rows"].total)     # -log σ(0 − 1)
    (1.3133, 1)
    """
    groups: dict[int, list[str]] = {}
    for qid in question_ids:
        groups.setdefault(len(cache.rows[qid].utilities), []).append(qid)
    losses, group_stats, n_rows = [], [], 0
    for qids in groups.values():
        passage_ids = [list(cache.rows[q].utilities) for q in qids]
        scores = score_fn(qids, passage_ids)                                  # [G, m]
        utilities = torch.tensor([[cache.rows[q].utilities[p] for p in row]
                                  for q, row in zip(qids, passage_ids, strict=True)])
        baseline = torch.tensor([cache.rows[q].baseline for q in qids])
        ranked = objective(scores, utilities.to(scores.device), baseline.to(scores.device))
        losses.append(ranked.loss * len(qids))
        group_stats.append({f"replay_{name}": stat for name, stat in ranked.stats.items()})
        n_rows += len(qids)
    if not losses:
        return None, {}
    stats = {**combine(group_stats), "replay_rows": total(n_rows)}
    return sum(losses) / n_rows, stats


def replay_weight(batch_rows: int, replay_rows: int) -> tuple[float, float]:
    """Weights of the batch's rank loss and the replay loss in the retriever's loss: the mean
    over all ``batch_rows + replay_rows`` questions, as one larger retriever batch.

    >>> replay_weight(2, 8)
    (0.2, 0.8)
    >>> replay_weight(2, 0)
    (1.0, 0.0)
    """
    n = batch_rows + replay_rows
    return batch_rows / n, replay_rows / n
