"""Data layer: questions and passages in, validated schema objects out.

``formats`` reads question files (MedQA, MedMCQA, MMLU, the JMLR authors' format, our generic
jsonl), ``corpus`` reads passage corpora; this module reads them as a config names them.
"""

from __future__ import annotations

from pathlib import Path
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
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    return read_questions(getattr(data_cfg, split), f"data.{split}", data_cfg, split)


def read_questions(location: str, key: str, data_cfg: DataConfig, split: str | None) -> list[MCQ]:
    """Questions from a file, a ``pkg:`` location or a ``datasets`` source (a save_to_disk
    folder, a folder of data files, a hub id: ``hf_source.py``); ``key`` names the config key
    in errors, ``split`` is the split a ``datasets`` source gives when it names none."""
    from jmlr.data.formats import load_questions

    where = locate_questions(location, key)
    return load_questions(where, fmt=data_cfg.format, format_options=data_cfg.format_options,
                          split=split)


def locate_questions(location: str, key: str) -> str | Path:
    """Where questions are read from: a ``datasets`` source as given, or the path of a file
    (``pkg:`` resolved). ConfigError when ``key`` is unset or names nothing; nothing is read,
    so a command can check all its inputs before it loads anything heavy."""
    from jmlr.data.hf_source import dataset_source

    if not location:
        raise ConfigError(f"{key} is not set")
    return location if dataset_source(location) else resolve_location(location, key)


def load_corpus_from_config(data_cfg: DataConfig) -> list[Passage]:
    """The corpus that ``data.corpus`` names, chunked and deduplicated as the config says."""
    from jmlr.data.corpus import load_corpus

    path = resolve_location(data_cfg.corpus, "data.corpus")
    return load_corpus(path, fmt=data_cfg.corpus_format, chunk_words=data_cfg.chunk_words,
                       chunk_overlap=data_cfg.chunk_overlap, dedup=data_cfg.dedup)
