"""The retriever warm-up, registered as ``retriever_contrastive``: InfoNCE on late-interaction scores.

Each micro-batch of rows ``{query, positive, negatives[]}`` (``contrastive.data``; ``jmlr
synthesize`` writes them) scores every query against the passages of the batch: its own
positive, its first ``contrastive.hard_negatives`` negatives and, with
``contrastive.in_batch_negatives``, every other row's positive and negatives. The loss is the
cross-entropy of the own positive under ``softmax(scores / temperature)``. Every distinct
passage text is encoded once per micro-batch, so B queries against M passages cost M document
forwards, not B x M. No generator is loaded; the output ``RUN/final/retriever`` is a colbert-ai
checkpoint that ``retriever.checkpoint`` of a joint run (or ``jmlr index``) starts from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jmlr.errors import ConfigError
from jmlr.registry import TRAINING_STEPS
from jmlr.training.stats import mean
from jmlr.training.steps.base import RetrieverStep, StepOutput

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.training.contrastive_data import ContrastiveRow


def batch_passages(rows: Sequence[ContrastiveRow], hard_negatives: int, in_batch: bool
                   ) -> tuple[list[str], list[int], list[list[bool]]]:
    """The micro-batch's distinct passage texts, each row's positive (an index into them), and
    which passages each row's query is scored against (``[B][M]``).

    >>> from jmlr.training.contrastive_data import ContrastiveRow as R
    >>> rows = [R("a", "qa", "p1", "P1", ("n1",), ("N1",)), R("b", "qb", "p1", "P1", ("n2",), ("N2",))]
    >>> texts, positive, seen = batch_passages(rows, 1, in_batch=True)
    >>> texts, positive, seen                    # the shared positive is one passage
    (['P1', 'N1', 'N2'], [0, 0], [[True, True, True], [True, True, True]])
    >>> batch_passages(rows, 1, in_batch=False)[2]
    [[True, True, False], [True, False, True]]
    """
    texts: list[str] = []
    where: dict[str, int] = {}

    def index(text: str) -> int:
        if text not in where:
            where[text] = len(texts)
            texts.append(text)
        return where[text]

    own = [[index(r.positive), *(index(n) for n in r.negatives[:hard_negatives])] for r in rows]
    seen = [[in_batch or j in mine for j in range(len(texts))] for mine in own]
    return texts, [mine[0] for mine in own], seen


def info_nce(scores: Tensor, positive: Tensor, seen: Tensor, temperature: float) -> Tensor:
    """Mean over queries of ``−log softmax(scores / T)[positive]`` over the passages each
    query sees. ``scores[B, M]``, ``positive[B]`` (indices), ``seen[B, M]`` bool → scalar.

    >>> s = torch.tensor([[2.0, 0.0, 5.0]])
    >>> round(float(info_nce(s, torch.tensor([0]), torch.tensor([[True, True, False]]), 1.0)), 4)
    0.1269
    """
    logits = (scores / temperature).masked_fill(~seen, float("-inf"))
    return F.cross_entropy(logits, positive)


@TRAINING_STEPS.register("retriever_contrastive")
class ContrastiveStep(RetrieverStep):
    """The retriever alone, by InfoNCE over ``contrastive.data`` (module docstring)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.section = cfg.contrastive

    def check(self) -> None:
        from jmlr.retrieval.backends import backend_for

        if not self.section.data:
            raise ConfigError("train.step=retriever_contrastive needs contrastive.data: a jsonl of "
                              "{query, positive, negatives} rows (jmlr synthesize writes one)")
        if not Path(self.section.data).expanduser().is_file():
            raise ConfigError(f"contrastive.data: no file at {self.section.data}")
        backend_for(self.cfg).check_checkpoint(self.cfg)

    def load_data(self) -> list[ContrastiveRow]:
        from jmlr.training.contrastive_data import read_contrastive_rows

        return read_contrastive_rows(Path(self.section.data).expanduser())

    def compute(self, models: Mapping[str, nn.Module], batch: list[ContrastiveRow],
                sampler: torch.Generator) -> StepOutput:
        from jmlr.retrieval.scorer import late_interaction

        retriever: Any = models["retriever"]
        texts, positive, seen = batch_passages(batch, self.section.hard_negatives,
                                               self.section.in_batch_negatives)
        Q = retriever.encode_queries([row.query for row in batch])            # [B, Lq, dim]
        D, mask = retriever.encode_docs(texts)                                # [M, Ld, dim]
        B, M = len(batch), len(texts)
        scores = late_interaction(Q, D.unsqueeze(0).expand(B, *D.shape),
                                  mask.unsqueeze(0).expand(B, *mask.shape))   # [B, M]
        target = torch.tensor(positive, device=scores.device)
        seen_mask = torch.tensor(seen, device=scores.device)
        loss = info_nce(scores.float(), target, seen_mask, self.section.temperature)
        with torch.no_grad():
            masked = scores.float().masked_fill(~seen_mask, float("-inf"))
            hits = int((masked.argmax(-1) == target).sum())
            margin = (masked.gather(1, target.view(-1, 1)).squeeze(1)
                      - masked.scatter(1, target.view(-1, 1), float("-inf")).max(-1).values)
        finite = margin[margin.isfinite()]
        return StepOutput(loss, {"loss": mean(float(loss.detach())),
                                 "positive_top1": mean(hits, B),
                                 "passages": mean(M),
                                 "margin": mean(float(finite.sum()), int(finite.numel()))})
