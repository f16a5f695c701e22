"""The retriever's losses: how the utilities of the drawn passages become a ranking target.

Each objective is one function ``(scores[B, k], utilities[B, k], params, baseline[B]) →
RankLoss`` plus one registry entry with its parameter dataclass (``jmlr.objective: {name:
..., <params>}`` in the config). Utilities are the generator's losses ℓ (lower is better) and
carry no gradient; ``baseline`` is the loss with no passage, so ``baseline − ℓ`` is how much a
passage *helps* (its gain). The loss is differentiable in the scores. Each objective reports
its own diagnostics as named statistics.

Why the gain matters: most drawn passages do not help at all, and among those the teacher
still ranks some above others (a passage about another disease hurts the right answer more
than a neutral definition). Ordering unhelpful passages against each other teaches the
retriever to prefer passages that say nothing; measured on a demo-like task, 50 steps of that
took the retriever's test R@1 from 0.40 to 0.10. With ``min_gain`` an objective learns only
from rows and pairs where some passage actually helps.

Adding one::

    @dataclass
    class MarginParams:
        margin: float = 1.0

    def margin_loss(scores, utilities, params, baseline):
        ...
        return RankLoss(loss, {"violations": stats.total(n)})

    RANK_OBJECTIVES.register("margin", RankObjective(margin_loss, MarginParams))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from jmlr.errors import ConfigError
from jmlr.registry import RANK_OBJECTIVES
from jmlr.training.stats import Stat, mean, total


@dataclass
class RankLoss:
    loss: Tensor                        # scalar, differentiable in the scores
    stats: dict[str, Stat] = field(default_factory=dict)


@dataclass(frozen=True)
class RankObjective:
    """A registry entry: the loss function and the dataclass of its parameters."""

    fn: Callable[[Tensor, Tensor, Any, Tensor | None], RankLoss]
    params: type | None = None

    def __call__(self, scores: Tensor, utilities: Tensor, params: Any = None,
                 baseline: Tensor | None = None) -> RankLoss:
        if params is None and self.params is not None:
            params = self.params()              # the entry's defaults
        return self.fn(scores, utilities, params, baseline)


def helpful(utilities: Tensor, baseline: Tensor | None, min_gain: float) -> Tensor:
    """``[B, k]`` bool: passages whose gain ``baseline − ℓ`` is at least ``min_gain`` (every
    passage when ``min_gain`` is 0 or there is no baseline).

    >>> helpful(torch.tensor([[1.0, 2.0, 2.9]]), torch.tensor([3.0]), 0.5)
    tensor([[ True,  True, False]])
    """
    if min_gain <= 0 or baseline is None:
        return torch.ones_like(utilities, dtype=torch.bool)
    gain = baseline.detach().to(utilities.device).view(-1, 1) - utilities.detach()
    return gain >= min_gain


def _check_shapes(scores: Tensor, losses: Tensor) -> None:
    if scores.shape != losses.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and losses {tuple(losses.shape)} must both be [B, k]")


# --------------------------------------------------------------------------- pairwise


@dataclass
class PairwiseParams:
    # Pairs whose utilities differ by at most this many nats are ties, left out of the rank
    # loss: the LLM cannot tell those passages apart, and ordering them trains on noise.
    tie_tolerance: float = 1e-6
    # A pair is used only when its better passage lowers the no-passage loss by at least this
    # many nats (0: every pair, as the paper).
    min_gain: float = 0.0

    def validate(self, key: str) -> None:
        if self.tie_tolerance < 0 or self.min_gain < 0:
            raise ConfigError(f"{key}.tie_tolerance and {key}.min_gain must be >= 0")


@dataclass
class PairwiseResult:
    loss: Tensor        # scalar, differentiable in the scores
    n_pairs: int        # pairs used (ties in the utilities left out)
    accuracy: float     # share of used pairs whose scores order them as the utilities do


def pairwise_rank_loss(scores: Tensor, losses: Tensor, tie_tolerance: float = 1e-6,
                       eligible: Tensor | None = None) -> PairwiseResult:
    """The LLM-rank loss: ``scores[B, k]``, ``losses[B, k]`` (utilities ℓ, lower is better).

    For every pair a < b within a row with ``|ℓ_a − ℓ_b| > tie_tolerance`` (and, when
    ``eligible[B, k]`` is given, whose better passage is eligible): target
    ``y = 1[ℓ_a < ℓ_b]`` and ``BCE(σ(s_a − s_b), y)``, computed as ``−log σ(±(s_a − s_b))``.
    The loss is the mean over the pairs actually used, over the whole batch; with no usable
    pair it is 0 and still connected to the scores (zero gradient). In ``accuracy``, a pair the
    scores tie counts half (as in AUC); it is 0 when no pair is used (weight it by n_pairs).

    >>> out = pairwise_rank_loss(torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[0.1, 0.5, 0.5]]))
    >>> out.n_pairs, out.accuracy, round(float(out.loss), 4)
    (2, 1.0, 0.2201)
    """
    _check_shapes(scores, losses)
    first, second = torch.triu_indices(scores.shape[1], scores.shape[1], offset=1,
                                       device=scores.device)
    scores = scores.float()          # fp32 margins: half-precision scores tie too often
    margin = scores[:, first] - scores[:, second]                       # [B, P]
    utility_gap = (losses[:, first] - losses[:, second]).detach().to(scores.device)
    used = utility_gap.abs() > tie_tolerance
    first_better = utility_gap < 0
    if eligible is not None:
        eligible = eligible.to(scores.device)
        better_ok = torch.where(first_better, eligible[:, first], eligible[:, second])
        used = used & better_ok
    bce = -torch.where(first_better, F.logsigmoid(margin), F.logsigmoid(-margin))
    n_pairs = int(used.sum())
    loss = torch.where(used, bce, torch.zeros_like(bce)).sum() / max(n_pairs, 1)
    with torch.no_grad():
        agree = torch.where(first_better, margin > 0, margin < 0).float()
        agree = torch.where(margin == 0, torch.full_like(agree, 0.5), agree)
        accuracy = float(agree[used].sum()) / n_pairs if n_pairs else 0.0
    return PairwiseResult(loss=loss, n_pairs=n_pairs, accuracy=accuracy)


def _pairwise(scores: Tensor, utilities: Tensor, params: PairwiseParams,
              baseline: Tensor | None = None) -> RankLoss:
    eligible = helpful(utilities, baseline, params.min_gain) if params.min_gain > 0 else None
    out = pairwise_rank_loss(scores, utilities, params.tie_tolerance, eligible)
    return RankLoss(out.loss, {"n_pairs": total(out.n_pairs),
                               "rank_accuracy": mean(out.accuracy * out.n_pairs, out.n_pairs)})


RANK_OBJECTIVES.register("pairwise", RankObjective(_pairwise, PairwiseParams))


# --------------------------------------------------------------------------- listwise


@dataclass
class ListwiseParams:
    beta: float = 1.0       # temperature of the target softmax(-ℓ / beta)
    tau: float = 1.0        # temperature of the retriever's softmax(s / tau)
    # A row is used only when one of its passages lowers the no-passage loss by at least this
    # many nats (0: every row).
    min_gain: float = 0.0

    def validate(self, key: str) -> None:
        if self.beta <= 0 or self.tau <= 0:
            raise ConfigError(f"{key}.beta and {key}.tau must be > 0")
        if self.min_gain < 0:
            raise ConfigError(f"{key}.min_gain must be >= 0")


def listwise_kl_loss(scores: Tensor, losses: Tensor, tau: float = 1.0, beta: float = 1.0,
                     rows: Tensor | None = None) -> Tensor:
    """``KL(softmax(−ℓ/β) ‖ softmax(s/τ))`` per row, averaged over rows (REPLUG / Atlas);
    only the rows where ``rows[B]`` is true when given (0, still connected, when none is).

    ``scores[B, k]``, ``losses[B, k]`` → scalar; the target distribution carries no gradient.

    >>> listwise_kl_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])).abs() < 1e-6
    tensor(True)
    """
    _check_shapes(scores, losses)
    log_target = F.log_softmax(-losses.detach().float().to(scores.device) / beta, dim=-1)
    log_model = F.log_softmax(scores.float() / tau, dim=-1)
    per_row = F.kl_div(log_model, log_target, log_target=True, reduction="none").sum(-1)
    if rows is None:
        return per_row.mean()
    rows = rows.to(per_row.device)
    return torch.where(rows, per_row, torch.zeros_like(per_row)).sum() / rows.sum().clamp_min(1)


def top_agreement(scores: Tensor, losses: Tensor) -> tuple[int, int]:
    """Rows whose best-scored passage is the one with the lowest utility: (agreeing, rows).

    >>> top_agreement(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.1, 0.5], [0.1, 0.5]]))
    (1, 2)
    """
    return int((scores.detach().argmax(-1) == losses.detach().argmin(-1).to(scores.device)).sum()), \
        scores.shape[0]


def _listwise(scores: Tensor, utilities: Tensor, params: ListwiseParams,
              baseline: Tensor | None = None) -> RankLoss:
    rows = helpful(utilities, baseline, params.min_gain).any(-1) if params.min_gain > 0 else None
    loss = listwise_kl_loss(scores, utilities, params.tau, params.beta, rows)
    agreeing, n_rows = top_agreement(scores, utilities)
    stats = {"top1_agreement": mean(agreeing, n_rows)}
    if rows is not None:
        stats["rows_used"] = total(int(rows.sum()))
    return RankLoss(loss, stats)


RANK_OBJECTIVES.register("listwise", RankObjective(_listwise, ListwiseParams))
