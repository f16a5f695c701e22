"""The factuality knowledge base file, checked without spaCy.

A KB is scispaCy ``KnowledgeBase`` jsonl: one concept a line, ``concept_id`` and
``canonical_name`` (non-empty text), ``aliases`` (a list of text, may be empty), optional
``types`` (a list of text) and ``definition`` (text or null). Reading and checking it needs
no spaCy, so ``jmlr evaluate`` and ``jmlr factuality`` check the whole file when they start,
before any model is loaded, and ``jmlr check-data`` summarises one.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from jmlr.errors import DataError
from jmlr.io import read_jsonl

KB_FIELDS = ("concept_id", "canonical_name", "aliases", "types", "definition")


def is_kb_row(row: dict[str, Any]) -> bool:
    """Whether a row looks like a KB concept (for format detection).

    >>> is_kb_row({"concept_id": "C1", "canonical_name": "Fever", "aliases": []})
    True
    >>> is_kb_row({"id": "p1", "text": "Fever."})
    False
    """
    return {"concept_id", "canonical_name"} <= set(row)


def kb_row(row: dict[str, Any], path: str | Path, line: int) -> dict[str, Any]:
    """One validated KB row as scispaCy's ``Entity`` fields; blank aliases are dropped.

    >>> kb_row({"concept_id": "C1", "canonical_name": "Fever", "aliases": ["pyrexia", " "]},
    ...        "kb.jsonl", 1)["aliases"]
    ['pyrexia']
    """
    for key in row:
        if key not in KB_FIELDS:
            raise DataError(path, line, key, f"unknown field (a KB row has {', '.join(KB_FIELDS)})")
    for key in ("concept_id", "canonical_name"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise DataError(path, line, key, "missing or not a non-empty string")
    if "aliases" not in row:
        raise DataError(path, line, "aliases", "missing (a list of strings, may be empty)")
    for key in ("aliases", "types"):
        value = row.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataError(path, line, key, "expected a list of strings")
    definition = row.get("definition")
    if definition is not None and not isinstance(definition, str):
        raise DataError(path, line, "definition", "expected text or null")
    return {"concept_id": row["concept_id"], "canonical_name": row["canonical_name"],
            "aliases": [a for a in row["aliases"] if a.strip()],
            "types": list(row.get("types", [])), "definition": definition}


def read_kb(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a KB file, validated; DataError names the file, line and field (a
    repeated concept id is an error)."""
    rows: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    for line, raw in read_jsonl(path):
        row = kb_row(raw, path, line)
        concept = row["concept_id"]
        if concept in first_line:
            raise DataError(path, line, "concept_id", f"duplicate id {concept!r} "
                            f"(first on line {first_line[concept]})")
        first_line[concept] = line
        rows.append(row)
    return rows


def check_kb(path: str | Path) -> dict[str, Any]:
    """Validate a KB file and summarise it (what ``jmlr check-data`` prints for one)."""
    rows = read_kb(path)
    types = Counter(t for row in rows for t in row["types"])
    return {"kind": "kb", "format": "kb", "concepts": len(rows),
            "aliases": sum(len(row["aliases"]) for row in rows),
            "with_definition": sum(1 for row in rows if row["definition"]),
            "types": dict(sorted(types.items()))}
