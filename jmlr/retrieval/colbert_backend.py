"""The ColBERT + PLAID retriever backend (``retriever.backend: colbert``).

Trainable scoring is colbert-ai's own model with gradient (``scorer.TrainableScorer``);
indexes are PLAID indexes built in-process (``plaid``); search encodes queries with the
index's checkpoint, or with a trained one against the indexed document vectors (candidate
refresh during training). colbert-ai itself is imported only by ``colbert.py`` and the
modules it serves.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from jmlr.data.schema import MCQ, Candidates
from jmlr.errors import ConfigError
from jmlr.registry import RETRIEVER_BACKENDS
from jmlr.retrieval.backends import RetrieverBackend
from jmlr.retrieval.candidates import self_match_extra

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.retrieval.plaid import IndexSettings, PlaidSearcher
    from jmlr.retrieval.scorer import TrainableScorer

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# The opened index (kept open across refreshes)


@dataclass
class _OpenIndex:
    """An opened PLAID index: what mining needs of a backend's index (``manifest``,
    ``checkpoint``, ``encode``, ``rank``)."""

    searcher: PlaidSearcher
    texts: dict[str, str]           # passage id -> text, for the self-match filter

    @property
    def manifest(self) -> dict[str, Any]:
        return self.searcher.manifest

    @property
    def checkpoint(self) -> Path:
        return self.searcher.checkpoint

    def encode(self, queries: list[str], batch_size: int) -> torch.Tensor:
        return self.searcher.encode(queries, batch_size)

    def rank(self, Q: torch.Tensor, questions: Sequence[MCQ], top_n: int,
             exclude_self_matches: bool) -> tuple[list[Candidates], list[float]]:
        return _rank(self, Q, questions, top_n, exclude_self_matches)


_OPEN: dict[tuple[Any, ...], _OpenIndex] = {}


def _settings(cfg: Config) -> IndexSettings:
    from jmlr.retrieval.plaid import IndexSettings

    r = cfg.retriever
    return IndexSettings(doc_maxlen=r.doc_maxlen, query_maxlen=r.query_maxlen, nbits=r.nbits,
                         kmeans_niters=r.kmeans_niters, batch_size=r.batch_size, seed=cfg.run.seed)


def _open_index(cfg: Config, checkpoint: str | Path | None = None) -> _OpenIndex:
    """Open ``cfg.index_dir`` once per (build, query encoder); the configured corpus must be
    the one it was built over."""
    from jmlr.data import load_corpus_from_config
    from jmlr.data.corpus import corpus_fingerprint, corpus_stamp
    from jmlr.resources import resolve_location
    from jmlr.retrieval import plaid

    index_dir = cfg.index_dir.expanduser().resolve()
    manifest = plaid.read_manifest(index_dir)
    encoder = resolve_location(str(checkpoint), "checkpoint").resolve() if checkpoint else None
    # an edited corpus (file, or a file of a corpus folder) is checked again
    stamp = corpus_stamp(resolve_location(cfg.data.corpus, "data.corpus"))
    key = (str(index_dir), manifest["build_id"], str(encoder), cfg.retriever.query_maxlen,
           repr(cfg.data), stamp)
    if key not in _OPEN:
        passages = load_corpus_from_config(cfg.data)
        plaid.check_corpus(manifest, passages, corpus_fingerprint(passages), index_dir)
        searcher = plaid.PlaidSearcher(index_dir, checkpoint=encoder,
                                       query_maxlen=cfg.retriever.query_maxlen)
        _OPEN.clear()  # one open index at a time: each holds the compressed index in memory
        _OPEN[key] = _OpenIndex(searcher, {p.id: p.text for p in passages})
    return _OPEN[key]


def _rank(index: _OpenIndex, Q: torch.Tensor, questions: Sequence[MCQ], top_n: int,
          exclude_self_matches: bool) -> tuple[list[Candidates], list[float]]:
    """Search Q [B, Lq, dim] (one row per question); returns candidates and search seconds."""
    from jmlr.data.corpus import is_self_match

    extra = self_match_extra(top_n) if exclude_self_matches else 0
    results = index.searcher.search(Q, top_n + extra)
    out = []
    for question, found in zip(questions, results, strict=True):
        pairs = list(zip(found.passage_ids, found.scores, strict=True))
        if exclude_self_matches:
            pairs = [(pid, s) for pid, s in pairs if not is_self_match(index.texts[pid], question)]
        pairs = pairs[:top_n]
        out.append(Candidates(question.id, [p for p, _ in pairs], [s for _, s in pairs]))
    return out, [r.seconds for r in results]


def search_questions(cfg: Config, questions: Sequence[MCQ], checkpoint: str | Path | None = None,
                     exclude_self_matches: bool = False) -> dict[str, Candidates]:
    """Top ``candidates.top_n`` passages for each question (``retriever.query_template``).

    ``checkpoint`` encodes the queries instead of the index's own checkpoint (e.g. a trained
    retriever: its query encoder against the indexed document vectors).
    """
    index = _open_index(cfg, checkpoint)
    return _search_all(cfg, index, questions, index.searcher.encode, exclude_self_matches)


def _search_all(cfg: Config, index: _OpenIndex, questions: Sequence[MCQ],
                encode: Callable[[list[str], int], torch.Tensor],
                exclude_self_matches: bool) -> dict[str, Candidates]:
    """Encode the questions' queries in batches with ``encode`` and search each batch."""
    out: dict[str, Candidates] = {}
    size = cfg.retriever.batch_size
    with tqdm(total=len(questions), desc="search", unit="q", leave=False,
              disable=len(questions) <= size) as bar:
        for start in range(0, len(questions), size):
            chunk = questions[start:start + size]
            Q = encode([q.query(cfg.retriever.query_template) for q in chunk], size)
            found, _ = _rank(index, Q, chunk, cfg.candidates.top_n, exclude_self_matches)
            out.update((c.question_id, c) for c in found)
            bar.update(len(chunk))
    return out


def refresh_candidates(cfg: Config, scorer: TrainableScorer, questions: Sequence[MCQ],
                       exclude_self_matches: bool | None = None) -> dict[str, Candidates]:
    """Re-search the index with the scorer's CURRENT query encoder (document vectors stay as
    indexed). Self-matches are dropped as ``data.filter_self_matches`` says (training
    questions are what this refreshes), unless ``exclude_self_matches`` says otherwise."""
    index = _open_index(cfg)
    if scorer.dim != index.searcher.manifest["checkpoint"]["dim"]:
        raise ConfigError(f"the scorer has dim {scorer.dim}, the index at {cfg.index_dir} "
                          f"has dim {index.searcher.manifest['checkpoint']['dim']}")
    exclude = cfg.data.filter_self_matches if exclude_self_matches is None else exclude_self_matches
    return _search_all(cfg, index, questions, scorer.query_embeddings, exclude)


# ---------------------------------------------------------------------------------------
# Building


def run_index(cfg: Config, overwrite: bool = False) -> dict[str, Any]:
    """``jmlr index``: PLAID index of ``data.corpus`` into ``cfg.index_dir``; the manifest."""
    from jmlr.data import load_corpus_from_config
    from jmlr.data.corpus import corpus_fingerprint
    from jmlr.resources import resolve_location
    from jmlr.retrieval import colbert, plaid
    from jmlr.training.distributed import ProcessRanks

    index_dir = cfg.index_dir.expanduser().resolve()
    plaid.check_can_build(index_dir, overwrite)   # before any slow step
    ranks = ProcessRanks(cfg.run.device)   # several processes under accelerate launch
    passages = load_corpus_from_config(cfg.data)
    checkpoint = colbert.prepare_checkpoint(cfg.retriever.checkpoint, cfg.retriever.dim,
                                            cfg.run.cache_dir)
    corpus_path = str(resolve_location(cfg.data.corpus, "data.corpus").resolve())
    manifest = plaid.build_index(checkpoint, passages, index_dir, _settings(cfg), corpus_path,
                                 corpus_fingerprint(passages), overwrite=overwrite, ranks=ranks)
    _OPEN.clear()
    if ranks.rank == 0:
        print(f"indexed {len(passages)} passages in {manifest['build_seconds']:.1f} s "
              f"({manifest['passages_per_second']:.1f} passages/s, {ranks.world} process(es)) "
              f"-> {index_dir}")
    return manifest


def reindex(cfg: Config, scorer: TrainableScorer) -> dict[str, Any]:
    """Rebuild ``cfg.index_dir`` with the scorer's current weights; returns the manifest.

    The checkpoint is saved first, under ``<index_dir>-checkpoints/<hash>`` (the index refers
    to it); older ones there are removed once the new index is in place. Call it on one
    process only.
    """
    from jmlr.data import load_corpus_from_config
    from jmlr.data.corpus import corpus_fingerprint
    from jmlr.resources import resolve_location
    from jmlr.retrieval import plaid
    from jmlr.retrieval.folders import folder_sha256

    index_dir = cfg.index_dir.expanduser().resolve()
    store = index_dir.with_name(f"{index_dir.name}-checkpoints")
    saved = scorer.save(store / f".saving-{os.getpid()}")
    checkpoint = store / folder_sha256(saved)[:16]
    if checkpoint.exists():
        shutil.rmtree(saved)
    else:
        saved.rename(checkpoint)
    passages = load_corpus_from_config(cfg.data)
    corpus_path = str(resolve_location(cfg.data.corpus, "data.corpus").resolve())
    manifest = plaid.build_index(checkpoint, passages, index_dir, _settings(cfg), corpus_path,
                                 corpus_fingerprint(passages), overwrite=True)
    for old in store.iterdir():
        if old != checkpoint:
            shutil.rmtree(old, ignore_errors=True)
    _OPEN.clear()
    return manifest


# ---------------------------------------------------------------------------------------
# The backend


class ColbertBackend(RetrieverBackend):
    """ColBERT late interaction, PLAID indexes (colbert-ai)."""

    def check_checkpoint(self, cfg: Config) -> None:
        from jmlr.resources import resolve_location
        from jmlr.retrieval.folders import check_model_files

        path = resolve_location(cfg.retriever.checkpoint, "retriever.checkpoint")
        check_model_files(path.resolve(), "retriever.checkpoint")

    def initial_checkpoint(self, cfg: Config) -> Path:
        from jmlr.retrieval.colbert import prepare_checkpoint

        return prepare_checkpoint(cfg.retriever.checkpoint, cfg.retriever.dim, cfg.run.cache_dir)

    def load_scorer(self, cfg: Config, checkpoint: str | Path | None = None,
                    device: str = "cpu") -> TrainableScorer:
        from jmlr.retrieval.scorer import TrainableScorer

        path = checkpoint if checkpoint is not None else self.initial_checkpoint(cfg)
        return TrainableScorer.from_checkpoint(path, cfg.retriever.query_maxlen,
                                               cfg.retriever.doc_maxlen, device=device)

    def index_exists(self, cfg: Config) -> bool:
        from jmlr.retrieval.plaid import MANIFEST

        return (cfg.index_dir / MANIFEST).is_file()

    def build_index(self, cfg: Config, overwrite: bool = False) -> dict[str, Any]:
        return run_index(cfg, overwrite=overwrite)

    def open_index(self, cfg: Config) -> _OpenIndex:
        return _open_index(cfg)

    def search(self, cfg: Config, questions: Sequence[MCQ], checkpoint: str | Path | None = None,
               exclude_self_matches: bool = False) -> dict[str, Candidates]:
        return search_questions(cfg, questions, checkpoint, exclude_self_matches)

    def refresh(self, cfg: Config, retriever: Any, questions: Sequence[MCQ]) -> dict[str, Candidates]:
        return refresh_candidates(cfg, retriever, questions)

    def reindex(self, cfg: Config, retriever: Any) -> dict[str, Any]:
        return reindex(cfg, retriever)


RETRIEVER_BACKENDS.register("colbert", ColbertBackend())
