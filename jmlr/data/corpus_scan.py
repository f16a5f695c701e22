"""``jmlr check-data`` of a corpus, streamed: counts without holding the passages.

A corpus file or folder (``corpus.py``) is read row by row; what is kept per passage is a
16-byte digest of its id and of its text (to count duplicates and refuse repeated ids), so a
corpus far larger than memory is checked in the memory of its digests.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from jmlr.data.corpus import read_corpus
from jmlr.errors import DataError


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def scan_corpus(path: str | Path, fmt: str = "auto") -> dict[str, Any]:
    """Passages, duplicate texts and passages per source of a corpus file or folder; a
    DataError at the first bad row or repeated id (naming its file and line)."""
    ids: dict[bytes, tuple[Path, int]] = {}
    texts: set[bytes] = set()
    sources: Counter[str] = Counter()
    passages = duplicates = 0
    for file, line, passage in read_corpus(path, fmt):
        key = _digest(passage.id)
        if key in ids:
            where = ids[key]
            seen = f"line {where[1]}" if where[0] == file else f"{where[0]}:{where[1]}"
            raise DataError(file, line, "id", f"duplicate passage id {passage.id!r} (first on {seen})")
        ids[key] = (file, line)
        text = _digest(passage.text)
        duplicates += text in texts
        texts.add(text)
        passages += 1
        if passage.source:
            sources[passage.source] += 1
    summary: dict[str, Any] = {"kind": "corpus", "format": fmt, "passages": passages,
                               "duplicate_texts": duplicates}
    if sources:
        summary["sources"] = dict(sorted(sources.items()))
    return summary
