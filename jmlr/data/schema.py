"""The only shapes that cross stage boundaries: questions, passages, candidate lists.

Each is a dataclass with ``to_json`` / ``from_json`` for our own jsonl files (stable ids, one
object a line), so every stage can be rerun alone and its files read by a person.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jmlr.errors import DataError
from jmlr.io import read_jsonl, write_jsonl

LETTERS = string.ascii_uppercase
DEFAULT_QUERY_TEMPLATE = "{question} {options}"


def option_letters(n: int) -> list[str]:
    """The first ``n`` option letters.

    >>> option_letters(4)
    ['A', 'B', 'C', 'D']
    """
    if not 1 <= n <= len(LETTERS):
        raise ValueError(f"an MCQ needs between 1 and 26 options, got {n}")
    return list(LETTERS[:n])


@dataclass
class MCQ:
    """One multiple-choice question.

    ``options`` is ordered and keyed by consecutive letters from "A"; ``answer`` is one of
    those letters. ``gold_passage_ids`` names corpus passages known to support the answer
    (the demo task has them; public benchmarks usually do not).
    """

    id: str
    question: str
    options: dict[str, str]
    answer: str
    rationale: str | None = None
    gold_passage_ids: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str | Path = "<memory>", line: int | None = None) -> MCQ:
        """Check the invariants; raise DataError located at ``path:line`` otherwise."""
        if not isinstance(self.id, str) or not self.id:
            raise DataError(path, line, "id", "must be a non-empty string")
        if not isinstance(self.question, str) or not self.question.strip():
            raise DataError(path, line, "question", "must be non-empty text")
        if not isinstance(self.options, dict) or len(self.options) < 2:
            raise DataError(path, line, "options", "need at least two options")
        if len(self.options) > len(LETTERS):
            raise DataError(path, line, "options", f"at most {len(LETTERS)} options (A-Z), "
                            f"got {len(self.options)}")
        expected = option_letters(len(self.options))
        if list(self.options) != expected:
            raise DataError(
                path, line, "options",
                f"keys must be {''.join(expected)} in order, got {''.join(self.options)}",
            )
        for letter, text in self.options.items():
            if not isinstance(text, str) or not text.strip():
                raise DataError(path, line, "options", f"option {letter} is empty")
        if self.answer not in self.options:
            raise DataError(
                path, line, "answer",
                f"letter {self.answer!r} is not among the options {expected[0]}-{expected[-1]}",
            )
        return self

    @property
    def answer_text(self) -> str:
        return self.options[self.answer]

    @property
    def retrieval_query(self) -> str:
        """What the retriever searches with by default: the question and its options (options
        carry most of the lexical match, as in the authors' ``input`` field).

        >>> MCQ("q1", "Fever and rash?", {"A": "Measles", "B": "Gout"}, "A").retrieval_query
        'Fever and rash? A: Measles B: Gout'
        """
        return self.query(DEFAULT_QUERY_TEMPLATE)

    def query(self, template: str) -> str:
        """The retriever's query from a template with ``{question}`` and ``{options}``
        (``retriever.query_template``).

        >>> MCQ("q1", "Fever and rash?", {"A": "Measles", "B": "Gout"}, "A").query("{question}")
        'Fever and rash?'
        """
        opts = " ".join(f"{letter}: {text}" for letter, text in self.options.items())
        return template.replace("{question}", self.question).replace("{options}", opts).strip()

    @classmethod
    def from_json(cls, row: dict[str, Any], path: str | Path = "<memory>",
                  line: int | None = None) -> MCQ:
        """Read our own jsonl row (the generic format); validated, errors located."""
        for key in ("id", "question", "options", "answer"):
            if key not in row:
                raise DataError(path, line, key, "missing")
        gold = row.get("gold_passage_ids") or []
        if not isinstance(gold, list):
            raise DataError(path, line, "gold_passage_ids", "must be a list of passage ids")
        meta = row.get("metadata") or {}
        if not isinstance(meta, dict):
            raise DataError(path, line, "metadata", "must be an object")
        return cls(id=str(row["id"]), question=row["question"], options=row["options"],
                   answer=str(row["answer"]).strip().upper(), rationale=row.get("rationale") or None,
                   gold_passage_ids=[str(g) for g in gold], metadata=meta).validate(path, line)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "options": self.options,
            "answer": self.answer,
        }
        if self.rationale:
            row["rationale"] = self.rationale
        if self.gold_passage_ids:
            row["gold_passage_ids"] = self.gold_passage_ids
        if self.metadata:
            row["metadata"] = self.metadata
        return row


@dataclass
class Passage:
    """One retrievable unit of the corpus."""

    id: str
    text: str
    title: str | None = None
    source: str | None = None      # which corpus file of a corpus folder it came from

    @property
    def full_text(self) -> str:
        """What the retriever indexes and the generator reads: "title | text" when titled."""
        return f"{self.title} | {self.text}" if self.title else self.text

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "text": self.text}
        if self.title:
            row["title"] = self.title
        if self.source:
            row["source"] = self.source
        return row


@dataclass
class Candidates:
    """Top-N passages for one question, best first, with the retriever's scores."""

    question_id: str
    passage_ids: list[str]
    scores: list[float]

    def __post_init__(self) -> None:
        if len(self.passage_ids) != len(self.scores):
            raise ValueError("passage_ids and scores must have the same length")

    def to_json(self) -> dict[str, Any]:
        return {"question_id": self.question_id, "passage_ids": self.passage_ids,
                "scores": [round(float(s), 6) for s in self.scores]}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Candidates:
        return cls(str(row["question_id"]), [str(p) for p in row["passage_ids"]],
                   [float(s) for s in row["scores"]])


def check_unique_ids(items: Iterable[tuple[int, str]], path: str | Path, what: str) -> None:
    """Raise DataError at the first repeated id; ``items`` yields (line, id)."""
    first_seen: dict[str, int] = {}
    for line, item_id in items:
        if item_id in first_seen:
            raise DataError(path, line, "id",
                            f"duplicate {what} id {item_id!r} (first on line {first_seen[item_id]})")
        first_seen[item_id] = line


def write_candidates(path: str | Path, rows: Iterable[Candidates]) -> int:
    return write_jsonl(path, (c.to_json() for c in rows))


def read_candidates(path: str | Path) -> Iterator[Candidates]:
    for line, row in read_jsonl(path):
        try:
            yield Candidates.from_json(row)
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(path, line, None, f"not a candidates row ({err})") from None
