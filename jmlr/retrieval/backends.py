"""Retriever backends: one interface for everything the pipeline asks of a retriever.

Training, mining and evaluation obtain the retriever through :func:`backend_for`
(``retriever.backend`` in the config), never by building a model class themselves. A
backend provides:

- ``check_checkpoint(cfg)``: ``retriever.checkpoint`` checked from its files, before any load;
- ``load_scorer(cfg, checkpoint)``: a ``torch.nn.Module`` whose ``score(queries[B],
  docs[B][N]) → [B, N]`` carries gradient, with ``save(path)`` writing a checkpoint that
  ``load_scorer`` reads back (the initial checkpoint when ``checkpoint`` is None);
- ``build_index`` / ``index_exists`` / ``open_index``: the index over ``data.corpus`` under
  ``cfg.index_dir``; an opened index has ``manifest``, ``checkpoint``,
  ``encode(queries, batch_size)`` and ``rank(Q, questions, top_n, exclude_self_matches)``;
- ``search``: top-N candidates per question (optionally with another query encoder);
- ``refresh`` / ``reindex``: the same with a retriever being trained.

The first entry is ColBERT + PLAID (``jmlr.retrieval.colbert_backend``); an LLM-based
dense retriever with a FAISS index would be a second module registering ``"dense"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jmlr.registry import RETRIEVER_BACKENDS

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.data.schema import MCQ, Candidates


class RetrieverBackend:
    """The interface (see the module docstring); subclasses register an instance."""

    def check_checkpoint(self, cfg: Config) -> None:
        """ConfigError unless ``retriever.checkpoint`` names something to load, checked from
        files alone (no model is built): commands call it before they load anything heavy."""
        from jmlr.resources import resolve_location

        resolve_location(cfg.retriever.checkpoint, "retriever.checkpoint")

    def initial_checkpoint(self, cfg: Config) -> Path:
        raise NotImplementedError

    def load_scorer(self, cfg: Config, checkpoint: str | Path | None = None,
                    device: str = "cpu") -> Any:
        raise NotImplementedError

    def index_exists(self, cfg: Config) -> bool:
        raise NotImplementedError

    def build_index(self, cfg: Config, overwrite: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def open_index(self, cfg: Config) -> Any:
        raise NotImplementedError

    def search(self, cfg: Config, questions: Sequence[MCQ], checkpoint: str | Path | None = None,
               exclude_self_matches: bool = False) -> dict[str, Candidates]:
        raise NotImplementedError

    def refresh(self, cfg: Config, retriever: Any, questions: Sequence[MCQ]) -> dict[str, Candidates]:
        raise NotImplementedError

    def reindex(self, cfg: Config, retriever: Any) -> dict[str, Any]:
        raise NotImplementedError


def backend_for(cfg: Config) -> RetrieverBackend:
    """The configured backend (``retriever.backend``)."""
    return RETRIEVER_BACKENDS.get(cfg.retriever.backend)


def _load_builtins() -> None:
    from jmlr.retrieval import colbert_backend  # noqa: F401  (registers "colbert")


_load_builtins()
