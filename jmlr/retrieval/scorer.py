"""The trainable ColBERT scorer: late interaction with gradient, on colbert-ai's own model,
tokenizers and masking (through ``jmlr.retrieval.colbert``, the one door to colbert-ai), and
checkpoints written in colbert-ai's format."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn import functional as F

from jmlr.batching import inverse_order, length_buckets
from jmlr.io import building_folder
from jmlr.retrieval.colbert import (
    ColBERT,
    DocTokenizer,
    QueryTokenizer,
    load_colbert_checkpoint,
    quiet_colbert,
    warn_query_overflow,
)


def late_interaction(Q: torch.Tensor, D: torch.Tensor, D_mask: torch.Tensor) -> torch.Tensor:
    """ColBERT's score s = Σ_t max_u <Q_t, D_u> for every (question, candidate) pair.

    Q [B, Lq, dim], D [B, N, Ld, dim], D_mask [B, N, Ld] (True for real doc tokens)
    -> [B, N]. Masked doc tokens get -9999 before the max, exactly as colbert-ai's
    ``colbert_score_reduce`` does.

    >>> Q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])            # 1 question, 2 tokens
    >>> D = torch.tensor([[[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [0.0, 0.0]]]])
    >>> late_interaction(Q, D, torch.tensor([[[True, True], [True, False]]]))
    tensor([[1.8000, 1.0000]])
    """
    sim = torch.einsum("bqd,bnld->bnql", Q, D.to(Q.dtype))
    sim = sim.masked_fill(~D_mask.bool().unsqueeze(2), -9999.0)
    return sim.max(-1).values.sum(-1)


class TrainableScorer(torch.nn.Module):
    """colbert-ai's ColBERT (encoder + projection) scoring questions against candidates,
    with gradient, on the same tokenizers ([Q]/[D] markers, [MASK] query augmentation)
    and the same masking (padding, punctuation) as indexing and search."""

    # Passages per encoder forward are cut to a padded-token budget (see ``encode_docs``).
    doc_tokens_per_forward: int = 4096

    def __init__(self, model: ColBERT, query_maxlen: int, doc_maxlen: int) -> None:
        super().__init__()
        self.colbert = model
        config = model.colbert_config
        config.configure(query_maxlen=query_maxlen, doc_maxlen=doc_maxlen)
        self.query_tokenizer = QueryTokenizer(config, verbose=0)
        self.doc_tokenizer = DocTokenizer(config)
        self.checkpoint_path = Path(config.checkpoint)
        self.query_maxlen, self.doc_maxlen = query_maxlen, doc_maxlen
        self._warned_lengths: set[int] = set()

    @classmethod
    def from_checkpoint(cls, path: str | Path, query_maxlen: int, doc_maxlen: int,
                        device: str | torch.device = "cpu") -> TrainableScorer:
        """Load in eval mode (as Hugging Face models load); call ``.train()`` to train."""
        model = load_colbert_checkpoint(path, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen)
        return cls(model, query_maxlen, doc_maxlen).to(device).eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.colbert.colbert_config.dim)

    def encode_queries(self, queries: Sequence[str]) -> torch.Tensor:
        """[B, query_maxlen, dim], L2-normalised; exactly colbert-ai's ``ColBERT.query``."""
        warn_query_overflow(self.query_tokenizer.tok, queries, self.query_maxlen,
                            self._warned_lengths)
        ids, mask = self.query_tokenizer.tensorize(list(queries))
        return self.colbert.query(ids.to(self.device), mask.to(self.device))

    def encode_docs(self, docs: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(D [n, Ld, dim], mask [n, Ld] bool): colbert-ai's ``ColBERT.doc``, except that
        it never casts to fp16 on a GPU (scores stay in the training precision).

        The passages are encoded in length buckets of at most ``doc_tokens_per_forward``
        padded tokens, each cut to its own longest passage: the vectors of real tokens are
        those of one padded batch, at the cost of the real tokens only.
        """
        ids, attention = self.doc_tokenizer.tensorize(list(docs))
        skiplist = getattr(self.colbert, "skiplist", {})
        keep = torch.tensor(self.colbert.mask(ids, skiplist=skiplist), device=self.device)
        lengths = attention.sum(1).tolist()
        parts, order = [], []
        for rows in length_buckets(lengths, self.doc_tokens_per_forward or None):
            index = torch.tensor(rows)
            width = max(lengths[i] for i in rows)   # right padded: the first `width` columns
            hidden = self.colbert.bert(ids[index, :width].to(self.device),
                                       attention_mask=attention[index, :width].to(self.device))[0]
            parts.append(F.pad(self.colbert.linear(hidden), (0, 0, 0, ids.shape[1] - width)))
            order.extend(rows)
        D = torch.cat(parts)[torch.tensor(inverse_order(order), device=self.device)]
        D = D * keep.unsqueeze(-1).to(D.dtype)
        return F.normalize(D, p=2, dim=-1), keep

    def score(self, queries: Sequence[str], docs: Sequence[Sequence[str]]) -> torch.Tensor:
        """Scores [B, N] of each question against its N candidate texts (with gradient)."""
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} questions but {len(docs)} candidate lists")
        n = len(docs[0]) if docs else 0
        if n == 0 or any(len(row) != n for row in docs):
            raise ValueError("every question needs the same, non-zero number of candidates")
        Q = self.encode_queries(queries)
        D, mask = self.encode_docs([text for row in docs for text in row])
        return late_interaction(Q, D.view(len(docs), n, *D.shape[1:]), mask.view(len(docs), n, -1))

    forward = score

    @torch.no_grad()
    def query_embeddings(self, queries: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """[B, query_maxlen, dim] float32 on the CPU, in eval mode: what PLAID search takes."""
        was_training = self.training
        self.eval()
        try:
            parts = [self.encode_queries(queries[i:i + batch_size]).float().cpu()
                     for i in range(0, len(queries), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(parts)

    def save(self, path: str | Path) -> Path:
        """Write a colbert-ai checkpoint folder (loads with colbert's Searcher/Indexer and
        :meth:`from_checkpoint`); written beside ``path`` and moved into place when done."""
        path = Path(path).expanduser().resolve()
        config = self.colbert.colbert_config
        recorded = config.model_name, config.checkpoint
        try:
            # Saved without a model name or source path: the folder stands on its own.
            config.configure(model_name=None, checkpoint=None)
            with building_folder(path) as tmp, quiet_colbert():
                self.colbert.save(str(tmp))
        finally:
            config.configure(model_name=recorded[0], checkpoint=recorded[1])
        return path
