"""Passage corpora: readers, word chunking, duplicate removal, fingerprint, self-match test.

Corpus formats (``data.corpus_format``):

``jsonl``
    One passage a line: ``id`` (also ``_id``, ``pid`` or ``docid``), ``text`` (also
    ``content`` or ``contents``, in that order of preference) and an optional ``title``.
    A file holding one JSON list of such objects is read too.
``tsv``
    ColBERT's collection layout: ``pid<TAB>text`` or ``pid<TAB>text<TAB>title``, one passage
    a line, no quoting; a header line (``id``/``pid`` first) is optional.
``parquet``
    The same columns as jsonl.

``data.corpus`` may also name a folder of such files (``pubmed.jsonl``, ``statpearls.parquet``,
``textbooks.tsv``...): every file is read, in name order, and each passage is tagged with its
file's stem as ``source`` (a row's own ``source`` field wins); ids must be unique across the
files. Files are read row by row (parquet in record batches), so ``jmlr check-data`` of a
corpus larger than memory streams it (``corpus_scan.py``).

Chunking splits long passages into windows of ``chunk_words`` words overlapping by
``chunk_overlap`` words; a passage that is split gets ids ``<id>#0``, ``<id>#1``, ...
(``source_passage_id`` recovers ``<id>``), one that fits keeps its id.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from jmlr.data.rows import JSON_SUFFIXES, iter_json_rows, iter_parquet_rows, require_file
from jmlr.data.schema import MCQ, Passage
from jmlr.errors import ConfigError, DataError
from jmlr.io import write_jsonl
from jmlr.textfile import escaped_path, utf8_error

log = logging.getLogger(__name__)

CORPUS_FORMATS = ("jsonl", "tsv", "parquet")
ID_FIELDS = ("id", "_id", "pid", "docid")
TEXT_FIELDS = ("text", "content", "contents")
# A passage or question shorter than this is not evidence of leakage by being contained in
# (or containing) the other: short strings ("Fever and rash.") recur by chance.
SELF_MATCH_MIN_WORDS = 8


def chunk_text(text: str, size: int, overlap: int = 0) -> list[str]:
    """Split ``text`` into windows of ``size`` words, consecutive windows sharing ``overlap``.

    ``size`` <= 0, or a text of at most ``size`` words, gives the text unchanged. The last
    window ends at the last word (no window lies wholly inside the previous one). Words are
    re-joined with single spaces.

    >>> chunk_text("a b c d e f g", 3, 1)
    ['a b c', 'c d e', 'e f g']
    >>> chunk_text("a b c d e f", 4, 2)
    ['a b c d', 'c d e f']
    >>> chunk_text("a b c d e", 2)
    ['a b', 'c d', 'e']
    >>> chunk_text("keep  this\\ttext", 5)
    ['keep  this\\ttext']
    """
    if size <= 0:
        return [text]
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size), got overlap={overlap}, size={size}")
    words = text.split()
    if len(words) <= size:
        return [text]
    step = size - overlap
    chunks = []
    for start in range(0, len(words), step):
        chunks.append(" ".join(words[start:start + size]))
        if start + size >= len(words):
            break
    return chunks


def source_passage_id(passage_id: str) -> str:
    """The id of the passage a chunk came from.

    >>> source_passage_id("pmid123#4"), source_passage_id("pmid123")
    ('pmid123', 'pmid123')
    """
    return passage_id.rsplit("#", 1)[0] if re.search(r"#\d+$", passage_id) else passage_id


def _field(row: dict[str, Any], names: tuple[str, ...]) -> tuple[str, Any] | None:
    for name in names:
        if row.get(name) is not None:
            return name, row[name]
    return None


def _passage_from_row(row: dict[str, Any], path: Path, line: int) -> Passage:
    found_id = _field(row, ID_FIELDS)
    if found_id is None:
        raise DataError(path, line, "id", f"missing (expected one of {', '.join(ID_FIELDS)})")
    found_text = _field(row, TEXT_FIELDS)
    if found_text is None:
        raise DataError(path, line, "text", f"missing (expected one of {', '.join(TEXT_FIELDS)})")
    id_name, passage_id = found_id
    text_name, text = found_text
    if isinstance(passage_id, bool) or not isinstance(passage_id, str | int) or not str(passage_id).strip():
        raise DataError(path, line, id_name, "must be a non-empty string or integer")
    if not isinstance(text, str) or not text.strip():
        raise DataError(path, line, text_name, "must be non-empty text")
    title = row.get("title")
    if title is not None and not isinstance(title, str):
        raise DataError(path, line, "title", "must be text")
    source = row.get("source")
    if source is not None and not isinstance(source, str):
        raise DataError(path, line, "source", "must be text")
    return Passage(str(passage_id).strip(), text.strip(), (title or "").strip() or None,
                   (source or "").strip() or None)


def _tsv_field(line: str) -> str | None:
    """The field (id, text, title) of a TSV corpus line that holds an undecodable byte.

    >>> _tsv_field("p2\\tbad \\udcff")
    'text'
    """
    fields = dict(zip(("id", "text", "title"), line.rstrip("\r\n").split("\t"), strict=False))
    return escaped_path(fields)


def _tsv_rows(path: Path) -> Iterator[tuple[int, Passage]]:
    path = require_file(path)
    seen = 0
    try:
        # utf-8-sig: a byte-order mark (Excel, Notepad) would glue itself to the header's "id"
        with path.open(encoding="utf-8-sig") as handle:
            for line, raw in enumerate(handle, start=1):
                raw = raw.rstrip("\r\n")
                if not raw.strip():
                    continue
                fields = raw.split("\t")
                if seen == 0 and fields[0].strip().lower() in ID_FIELDS and len(fields) in (2, 3):
                    continue  # header line
                if len(fields) not in (2, 3):
                    raise DataError(path, line, None,
                                    f"expected 2 or 3 tab-separated fields (pid, text[, title]), got {len(fields)}")
                row = {"id": fields[0], "text": fields[1]}
                if len(fields) == 3:
                    row["title"] = fields[2]
                seen += 1
                yield line, _passage_from_row(row, path, line)
    except UnicodeDecodeError:
        raise utf8_error(path, _tsv_field) from None
    if seen == 0:
        raise DataError(path, None, None, "file is empty (no passages)")


def detect_corpus_format(path: str | Path) -> str:
    """The corpus format from the file extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".tsv":
        return "tsv"
    if suffix == ".parquet":
        return "parquet"
    if suffix in JSON_SUFFIXES:
        return "jsonl"
    raise DataError(path, None, "format",
                    f"cannot tell the corpus format from the extension {suffix or '(none)'!r}; "
                    f"name it with data.corpus_format / --format (known: {', '.join(CORPUS_FORMATS)})")


CORPUS_SUFFIXES = (".tsv", ".parquet", *JSON_SUFFIXES)


def corpus_files(path: str | Path) -> list[tuple[Path, str | None]]:
    """``(file, source tag)`` of a corpus: the file itself (no tag), or each corpus file of a
    folder in name order, tagged with its stem."""
    path = Path(path)
    if not path.is_dir():
        return [(path, None)]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
    if not files:
        raise DataError(path, None, None, "a folder with no corpus file "
                        f"({', '.join(CORPUS_SUFFIXES)})")
    return [(file, file.stem) for file in files]


def corpus_stamp(path: str | Path) -> tuple[int, int, int]:
    """(newest mtime, total size, file count) of a corpus file or folder: changes when it is
    edited, so an open index checks the corpus again."""
    stats = [file.stat() for file, _ in corpus_files(path)]
    return max(s.st_mtime_ns for s in stats), sum(s.st_size for s in stats), len(stats)


def read_corpus(path: str | Path, fmt: str = "auto") -> Iterator[tuple[Path, int, Passage]]:
    """``(file, line, Passage)`` for every passage of a corpus file or folder, streamed, each
    tagged with its file's source (unless its row names one)."""
    for file, tag in corpus_files(path):
        for line, passage in read_passages(file, "auto" if tag else fmt):
            if tag and not passage.source:
                passage.source = tag
            yield file, line, passage


def read_passages(path: str | Path, fmt: str = "auto") -> Iterator[tuple[int, Passage]]:
    """``(line, Passage)`` for every passage of a corpus file, as written (no chunking)."""
    path = Path(path)
    if fmt == "auto":
        fmt = detect_corpus_format(path)
    if fmt == "tsv":
        yield from _tsv_rows(path)
    elif fmt in ("jsonl", "parquet"):
        rows = iter_parquet_rows(path) if fmt == "parquet" else iter_json_rows(path)
        for line, row in rows:
            yield line, _passage_from_row(row, path, line)
    else:
        raise DataError(path, None, "format",
                        f"unknown corpus format {fmt!r} (known: auto, {', '.join(CORPUS_FORMATS)})")


def load_corpus(path: str | Path, fmt: str = "auto", chunk_words: int = 0,
                chunk_overlap: int = 0, dedup: bool = True) -> list[Passage]:
    """Read a corpus: validated passages with unique ids, optionally chunked and deduplicated.

    Deduplication keeps the first passage (or chunk) of each exact text and drops the rest.
    """
    path = Path(path)
    if chunk_words < 0 or chunk_overlap < 0 or (chunk_words and chunk_overlap >= chunk_words):
        raise ConfigError("data.chunk_overlap must be >= 0 and smaller than data.chunk_words "
                          f"(got chunk_words={chunk_words}, chunk_overlap={chunk_overlap})")
    located = list(tqdm(read_corpus(path, fmt), desc=f"reading {path.name}", unit=" passages",
                        disable=None, leave=False))
    first: dict[str, tuple[Path, int]] = {}
    for file, line, passage in located:
        if passage.id in first:
            where = first[passage.id]
            seen = f"line {where[1]}" if where[0] == file else f"{where[0]}:{where[1]}"
            raise DataError(file, line, "id", f"duplicate passage id {passage.id!r} (first on {seen})")
        first[passage.id] = (file, line)
    passages: list[Passage] = []
    for _, _, passage in located:
        pieces = chunk_text(passage.text, chunk_words, chunk_overlap)
        if len(pieces) == 1:
            passages.append(passage)
        else:
            passages.extend(Passage(f"{passage.id}#{k}", piece, passage.title, passage.source)
                            for k, piece in enumerate(pieces))
    if len(passages) != len(located):
        log.info("chunked %d passages into %d chunks of <= %d words", len(located),
                 len(passages), chunk_words)
        ids: set[str] = set()
        for passage in passages:
            if passage.id in ids:
                raise DataError(path, None, "id", f"chunk id {passage.id!r} collides with a "
                                "passage id of the file; rename that passage")
            ids.add(passage.id)
    if dedup:
        passages = drop_duplicate_texts(passages)
    log.info("read %d passages from %s", len(passages), path)
    return passages


def drop_duplicate_texts(passages: Iterable[Passage]) -> list[Passage]:
    """Keep the first passage of each exact text; logs how many were dropped.

    >>> kept = drop_duplicate_texts([Passage("a", "x"), Passage("b", "y"), Passage("c", "x")])
    >>> [p.id for p in kept]
    ['a', 'b']
    """
    seen: set[str] = set()
    kept, dropped = [], 0
    for passage in passages:
        if passage.text in seen:
            dropped += 1
            continue
        seen.add(passage.text)
        kept.append(passage)
    if dropped:
        log.info("dropped %d passages whose text repeats an earlier one", dropped)
    return kept


def write_corpus(path: str | Path, passages: Iterable[Passage]) -> int:
    """Write passages atomically as corpus jsonl (``id``, ``text``, ``title``); returns the count."""
    return write_jsonl(path, (p.to_json() for p in passages))


def corpus_fingerprint(passages: Iterable[Passage]) -> str:
    """sha256 (hex) over the passages' ids and indexed texts (``full_text``), in order.

    Any change of an id, a text, a title or the order changes it, so an index built from
    other passages is never reused.

    >>> a = corpus_fingerprint([Passage("p1", "Fever."), Passage("p2", "Rash.")])
    >>> a == corpus_fingerprint([Passage("p2", "Rash."), Passage("p1", "Fever.")])
    False
    """
    digest = hashlib.sha256()
    for passage in passages:
        digest.update(json.dumps([passage.id, passage.full_text], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


@functools.lru_cache(maxsize=65536)  # the same questions are compared with many passages
def normalise_for_match(text: str) -> str:
    """Lower case, punctuation dropped, single spaces: what self-matching compares.

    >>> normalise_for_match("  The  Answer:\\nGout. ")
    'the answer gout'
    """
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _contains(outer: str, inner: str) -> bool:
    """Whole-word containment of normalised ``inner`` in normalised ``outer``."""
    return len(inner.split()) >= SELF_MATCH_MIN_WORDS and f" {inner} " in f" {outer} "


def is_self_match(passage_text: str, mcq: MCQ) -> bool:
    """Whether a passage is (part of) the question itself or its reference rationale.

    Such a passage leaks the answer when rationales were added to the corpus (as the JMLR
    authors did with MedQA rationales), so it must not be retrieved for its own question.
    After normalising case, whitespace and punctuation, a passage self-matches when it
    contains the question text or the rationale, or is contained in either (a chunk of
    them). The contained side must have at least SELF_MATCH_MIN_WORDS words: short strings
    recur by chance and prove nothing.

    >>> q = MCQ("q1", "A 4-year-old boy has fever, rash and swollen lymph nodes for two days.",
    ...         {"A": "Measles", "B": "Kawasaki disease"}, "B",
    ...         rationale="Fever for five days with rash and lymphadenopathy suggests Kawasaki disease.")
    >>> is_self_match("Case: a 4-year-old boy has FEVER, rash and swollen lymph nodes for two days. ...", q)
    True
    >>> is_self_match("for five days with rash and lymphadenopathy suggests Kawasaki disease", q)
    True
    >>> is_self_match("Kawasaki disease", q)
    False
    >>> is_self_match("Measles is a viral illness with fever, cough and a maculopapular rash.", q)
    False
    """
    passage = normalise_for_match(passage_text)
    if not passage:
        return False
    for target in (mcq.question, mcq.rationale or ""):
        norm = normalise_for_match(target)
        if norm and (_contains(passage, norm) or _contains(norm, passage)):
            return True
    return False
