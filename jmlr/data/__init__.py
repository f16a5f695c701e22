"""Data layer: questions and passages in, validated schema objects out.

``formats`` reads question files (MedQA, MedMCQA, MMLU, the JMLR authors' format, our generic
jsonl), ``corpus`` reads passage corpora; this module reads them as a config names them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jmlr.errors import ConfigError
from jmlr.resources import resolve_location

if TYPE_CHECKING:
    from jmlr.config import DataConfig
    from jmlr.data.schema import MCQ, Passage

SPLITS = ("train", "dev", "test")


def load_split(data_cfg: DataConfig, split: str) -> list[MCQ]:
    """The questions of one split (``data.train`` / ``data.dev`` / ``data.test``).

    Uses ``data.format`` and ``data.format_options``; ConfigError when the path is unset.
    """
    from jmlr.data.formats import load_questions

    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    path = resolve_location(getattr(data_cfg, split), f"data.{split}")
    return load_questions(path, fmt=data_cfg.format, format_options=data_cfg.format_options)


def load_corpus_from_config(data_cfg: DataConfig) -> list[Passage]:
    """The corpus that ``data.corpus`` names, chunked and deduplicated as the config says."""
    from jmlr.data.corpus import load_corpus

    path = resolve_location(data_cfg.corpus, "data.corpus")
    return load_corpus(path, fmt=data_cfg.corpus_format, chunk_words=data_cfg.chunk_words,
                       chunk_overlap=data_cfg.chunk_overlap, dedup=data_cfg.dedup)
