"""The factuality knowledge base file, checked without spaCy.

A KB is scispaCy ``KnowledgeBase`` jsonl: one concept a line, ``concept_id`` and
``canonical_name`` (non-empty text), ``aliases`` (a list of text, may be empty), optional
``types`` (a list of text) and ``definition`` (text or null). Reading and checking it needs
no spaCy, so ``jmlr evaluate`` and ``jmlr factuality`` check the whole file when they start,
before any model is loaded, and ``jmlr check-data`` summarises one.

``factuality.kb`` is a path or one of scispaCy's linker names (``umls``, ``mesh``, ``rxnorm``,
``go``, ``hpo``): :func:`resolve_kb` finds that KB's jsonl in scispaCy's own download cache
(``$SCISPACY_CACHE/datasets``, default ``~/.scispacy/datasets``) without going online.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

from jmlr.errors import ConfigError, DataError
from jmlr.io import read_jsonl
from jmlr.resources import resolve_location

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


# ---------------------------------------------------------------------------------------
# scispaCy's named knowledge bases

# The KB file behind each linker name of scispaCy 0.6.2 (tests/test_kb_names.py checks them
# against the installed scispaCy). Only this jsonl is read: scispaCy's released alias index
# comes with a pickled (joblib) TF-IDF vectorizer, which would run code when loaded, so the
# index is built from the KB instead (jmlr.evaluation.alias_index; what that costs at 1M
# aliases: benchmarks/alias_index.py).
_S3 = "https://ai2-s2-scispacy.s3-us-west-2.amazonaws.com/data/kbs/2023-04-23/"
SCISPACY_KBS: dict[str, str] = {
    "umls": "https://s3-us-west-2.amazonaws.com/ai2-s2-scispacy/data/kbs/2023-04-23/"
            "umls_2022_ab_cat0129.jsonl",
    "mesh": _S3 + "umls_mesh_2022.jsonl",
    "rxnorm": _S3 + "umls_rxnorm_2022.jsonl",
    "go": _S3 + "umls_go_2022.jsonl",
    "hpo": _S3 + "umls_hpo_2022.jsonl",
}


def scispacy_cache() -> Path:
    """scispaCy's download folder: ``$SCISPACY_CACHE/datasets`` (default ``~/.scispacy``)."""
    return Path(os.environ.get("SCISPACY_CACHE", "~/.scispacy")).expanduser() / "datasets"


def cached_kb_file(url: str, cache: Path) -> Path | None:
    """The newest file scispaCy's cache holds for ``url``, or None.

    scispaCy names a download ``sha256(url).sha256(etag).<last part of the url>`` (the etag
    part only when the server sent one), with its metadata in the same name plus ``.json``.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> url = "https://example.org/kbs/umls_mesh_2022.jsonl"
    >>> cached_kb_file(url, folder) is None
    True
    >>> stem = hashlib.sha256(url.encode()).hexdigest()
    >>> _ = (folder / f"{stem}.0f1e.umls_mesh_2022.jsonl").write_text("{}")
    >>> _ = (folder / f"{stem}.0f1e.umls_mesh_2022.jsonl.json").write_text("{}")
    >>> cached_kb_file(url, folder).name.endswith(".umls_mesh_2022.jsonl")
    True
    """
    stem = hashlib.sha256(url.encode("utf-8")).hexdigest()
    last = url.rsplit("/", 1)[-1]
    found = [p for p in cache.glob(f"{stem}*.{last}") if p.is_file()] if cache.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve_kb(location: str, what: str = "factuality.kb") -> Path:
    """A KB location as a file: a path (or ``pkg:``), or a scispaCy linker name found in
    scispaCy's cache. Offline, a name that is not there fails at once, saying how to get it."""
    name = location.strip().lower()
    if name not in SCISPACY_KBS:
        return resolve_location(location, what)
    url, cache = SCISPACY_KBS[name], scispacy_cache()
    found = cached_kb_file(url, cache)
    if found is None:
        raise ConfigError(
            f"{what}: scispaCy's {name!r} knowledge base is not in its cache ({cache}); "
            f"download {url} there once (scispaCy does so on its first online use, or set "
            f"SCISPACY_CACHE to where it is), or set {what} to the jsonl's path")
    return found
