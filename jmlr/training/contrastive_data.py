"""Contrastive retriever data: rows of ``{query, positive, negatives[]}`` and the ``contrastive``
config section of the retriever warm-up step (``train.step: retriever_contrastive``).

One JSON object per line, the layout sentence-transformers and PyLate train from (a query, its
positive passage, hard negatives), with ids and provenance kept beside the texts::

    {"query_id": "syn-OMIM:1-0", "query": "A 6-year-old boy has ...",
     "positive_id": "OMIM:1", "positive": "Disease X. ...",
     "negative_ids": ["OMIM:7", "ORPHA:3"], "negatives": ["...", "..."],
     "provenance": {"passage": "OMIM:1", "prompt": "...", "model": "..."}}

``jmlr synthesize`` writes it; any tool's rows in this layout train the same way. Reading
checks every line (file, line and field in the message) before a model loads. This module
imports no torch: the config section is registered when configs load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jmlr.errors import ConfigError, DataError
from jmlr.registry import CONFIG_SECTIONS


@CONFIG_SECTIONS.register("contrastive")
@dataclass
class ContrastiveConfig:
    # The rows to train on (jmlr synthesize writes them); paths are relative to the working dir.
    data: str = ""
    # InfoNCE temperature on late-interaction scores: ColBERT scores are sums of up to
    # query_maxlen cosine maxima, so their spread is tokens wide; 1.0 keeps them as they are.
    temperature: float = 1.0
    hard_negatives: int = 3                 # per row: its first N negatives (0: in-batch only)
    in_batch_negatives: bool = True         # the other rows' passages are negatives too
    # > 0: a joint run (`jmlr train`, `jmlr demo`) first takes this many retriever_contrastive
    # steps into RUN/warmup, over `data`, or when it is empty over the rows `jmlr synthesize`
    # writes for the config (synthesize.out; written first when missing), and its retriever
    # starts from what they learned (jmlr/training/warmup_first.py). 0: no warm-up.
    before_joint_steps: int = 0
    batch_size: int = 16                    # rows per warm-up step: more rows, more in-batch negatives
    lr: float = 1.0e-4

    def validate(self, key: str) -> None:
        for ok, message in [(self.temperature > 0, "temperature must be > 0"),
                            (self.hard_negatives >= 0, "hard_negatives must be >= 0"),
                            (self.before_joint_steps >= 0, "before_joint_steps must be >= 0"),
                            (self.batch_size >= 1, "batch_size must be >= 1"),
                            (self.lr > 0, "lr must be > 0")]:
            if not ok:
                raise ConfigError(f"{key}.{message}")


@dataclass(frozen=True)
class ContrastiveRow:
    query_id: str
    query: str
    positive_id: str
    positive: str
    negative_ids: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"query_id": self.query_id, "query": self.query, "positive_id": self.positive_id,
                "positive": self.positive, "negative_ids": list(self.negative_ids),
                "negatives": list(self.negatives), "provenance": self.provenance}


def _text(path: Path, line: int, row: dict[str, Any], key: str, required: bool = True) -> str:
    value = row.get(key, "" if not required else None)
    if not isinstance(value, str) or (required and not value.strip()):
        raise DataError(path, line, key, "expected a non-empty string" if required else
                        "expected a string")
    return value


def parse_row(path: Path, line: int, row: dict[str, Any]) -> ContrastiveRow:
    """One line's row, every field checked.

    >>> parse_row(Path("r.jsonl"), 3, {"query": "q", "positive": "p", "negatives": ["n"]})
    ContrastiveRow(query_id='r.jsonl:3', query='q', positive_id='r.jsonl:3+', positive='p', negative_ids=('r.jsonl:3-0',), negatives=('n',), provenance={})
    >>> parse_row(Path("r.jsonl"), 3, {"query": "q", "positive": "p", "negatives": "n"})
    Traceback (most recent call last):
    ...
    jmlr.errors.DataError: r.jsonl:3: field 'negatives': expected a list of non-empty strings
    """
    query, positive = _text(path, line, row, "query"), _text(path, line, row, "positive")
    negatives = row.get("negatives", [])
    if not isinstance(negatives, list) or not all(isinstance(n, str) and n.strip() for n in negatives):
        raise DataError(path, line, "negatives", "expected a list of non-empty strings")
    where = f"{path.name}:{line}"
    ids = row.get("negative_ids") or [f"{where}-{i}" for i in range(len(negatives))]
    if not isinstance(ids, list) or len(ids) != len(negatives):
        raise DataError(path, line, "negative_ids", f"expected {len(negatives)} ids, one per negative")
    provenance = row.get("provenance", {})
    if not isinstance(provenance, dict):
        raise DataError(path, line, "provenance", "expected an object")
    return ContrastiveRow(str(row.get("query_id") or where), query,
                          str(row.get("positive_id") or f"{where}+"), positive,
                          tuple(map(str, ids)), tuple(negatives), provenance)


def read_contrastive_rows(path: str | Path) -> list[ContrastiveRow]:
    """Every row of a contrastive file; DataError naming the first bad line and field."""
    from jmlr.io import read_jsonl

    path = Path(path)
    return [parse_row(path, line, row) for line, row in read_jsonl(path)]
