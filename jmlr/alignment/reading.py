"""The passages a question is answered with during alignment, and the prompt they make: the
same retriever ordering and training template as evaluation, so that the generator is aligned
in the setting where it will answer.

``start_from`` names a trained run: its retriever orders the candidates, drawn from that run's
index and mined candidates unless the config names its own (:func:`reading_config`). Empty: the
configured retriever (``retriever.checkpoint``) does, over the configured index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.data.schema import MCQ


def reading_config(cfg: Config, start_from: str) -> Config:
    """``cfg`` with the start run's index and mined candidates where it names none of its own.

    Why: an alignment run writes to a new folder (``run.out_dir``), where the derived
    ``RUN/index`` and ``RUN/candidates`` do not exist; the passages it should read are those of
    the run it starts from. That run's ``config.yaml`` says where they are (an explicit
    ``retriever.index_dir`` / ``candidates.path``, else its own folder's ``index`` /
    ``candidates``), so a chain sft -> preferences -> dpo keeps reading from the first index.

    >>> from jmlr.config import load_config
    >>> cfg = load_config(None, ["run.out_dir=runs/b", "retriever.index_dir=elsewhere"])
    >>> out = reading_config(cfg, "runs/missing-a")     # no config.yaml there: its own folder
    >>> out.retriever.index_dir, out.candidates.path
    ('elsewhere', 'runs/missing-a/candidates')
    >>> reading_config(cfg, "") is cfg
    True
    """
    import dataclasses

    from jmlr.io import saved_section

    if not start_from:
        return cfg
    run_dir = Path(start_from)
    index = (cfg.retriever.index_dir or saved_section(run_dir, "retriever").get("index_dir")
             or str(run_dir / "index"))
    candidates = (cfg.candidates.path or saved_section(run_dir, "candidates").get("path")
                  or str(run_dir / "candidates"))
    return dataclasses.replace(
        cfg, retriever=dataclasses.replace(cfg.retriever, index_dir=index),
        candidates=dataclasses.replace(cfg.candidates, path=candidates))


def check_reading(cfg: Config, split: str) -> None:
    """Before any model loads: the passages can be found, as mined candidates of ``split`` or
    an index to search (ConfigError naming both places otherwise)."""
    from jmlr.errors import ConfigError
    from jmlr.retrieval.backends import backend_for

    if cfg.jmlr.r_read == 0:
        return
    mined = cfg.candidates_dir / f"{split}.jsonl"
    if not mined.is_file() and not backend_for(cfg).index_exists(cfg):
        raise ConfigError(f"no passages to read for the {split} questions: neither mined "
                          f"candidates ({mined}) nor an index ({cfg.index_dir}); name the run "
                          "they belong to (start_from) or set retriever.index_dir / candidates.path")


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
