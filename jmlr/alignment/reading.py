"""The passages a question is answered with during alignment, and the prompt they make: the
same retriever ordering and training template as evaluation, so that the generator is aligned
in the setting where it will answer.

``start_from`` names a trained run: its retriever orders the candidates. Empty: the configured
retriever (``retriever.checkpoint``) does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.data.schema import MCQ


def passages_read(cfg: Config, split: str, questions: Sequence[MCQ], start_from: str,
                  device: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(question id -> the top ``jmlr.r_read`` passage ids, corpus texts by id). The candidates
    are the mined ones of ``split`` when they cover the questions, else an index search."""
    from jmlr.evaluation import passages as passages_mod

    corpus = passages_mod.corpus_texts(cfg)
    if cfg.jmlr.r_read == 0 or not questions:
        return {q.id: [] for q in questions}, corpus
    pool = passages_mod.candidate_pool(cfg, split, questions, corpus, from_split=True)
    run_dir = Path(start_from) if start_from else Path(cfg.run.out_dir)
    scorer = passages_mod.load_scorer(cfg, run_dir, "trained" if start_from else "frozen", device)
    ranked = passages_mod.rerank(scorer, questions, pool, corpus, cfg.eval.batch_size,
                                 desc=f"{split} rerank", template=cfg.retriever.query_template)
    return {q.id: ranked[q.id].passage_ids[:cfg.jmlr.r_read] for q in questions}, corpus


def prompt_ids(cfg: Config, tokenizer: Any, mcq: MCQ, passages: Sequence[str]) -> list[int]:
    """The prompt's token ids exactly as evaluation builds them (passages cut to fit)."""
    from jmlr.evaluation.mcq import build_item

    return build_item(tokenizer, mcq, list(passages), cfg.generator.max_length,
                      cfg.jmlr.target).prompt_ids


def prompt_text(cfg: Config, tokenizer: Any, mcq: MCQ, passages: Sequence[str]) -> str:
    """The prompt as text (special tokens left out: a trainer's tokenizer adds its own)."""
    return tokenizer.decode(prompt_ids(cfg, tokenizer, mcq, passages), skip_special_tokens=True)
