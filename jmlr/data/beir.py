"""The standard IR layout of BEIR and MTEB's retrieval tasks, read and written.

A folder holds ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl``
(``{"_id", "text"}``) and ``qrels/<split>.tsv`` (a header line, then ``query-id``,
``corpus-id``, ``score`` separated by tabs; score > 0 is relevant). ``jmlr prepare-demo``
writes the demo task in it (``DIR/beir``), and ``jmlr eval-retriever`` reads it.
Reading checks every line before anything else runs: errors name the file, line and field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jmlr.data.schema import DEFAULT_QUERY_TEMPLATE, MCQ, Passage
from jmlr.errors import DataError
from jmlr.io import read_jsonl, write_jsonl

QRELS_HEADER = "query-id\tcorpus-id\tscore"


@dataclass
class BeirTask:
    corpus: dict[str, str]                      # id -> "title | text" (jmlr's passage text)
    queries: dict[str, str]                     # id -> text, only those with judgements
    qrels: dict[str, dict[str, int]]            # query id -> {passage id: relevance}


def _text_field(row: dict[str, Any], key: str, path: Path, line: int, required: bool = True) -> str:
    value = row.get(key, "" if not required else None)
    if value is None or not isinstance(value, str) or (required and not value.strip()):
        raise DataError(path, line, key, "missing or not a non-empty string" if required
                        else "must be text")
    return value.strip()


def _rows_with_ids(path: Path) -> Iterable[tuple[int, str, dict[str, Any]]]:
    for line, row in read_jsonl(path):
        row_id = str(row.get("_id", "")).strip()
        if not row_id:
            raise DataError(path, line, "_id", "missing")
        yield line, row_id, row


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``query-id<TAB>corpus-id<TAB>score`` lines after a header (BEIR's layout)."""
    if not path.is_file():
        raise DataError(path, None, "qrels", "no such file (BEIR keeps judgements in qrels/<split>.tsv)")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        for line, raw in enumerate(handle, start=1):
            fields = raw.rstrip("\r\n").split("\t")
            if line == 1 and fields[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            if not raw.strip():
                continue
            if len(fields) != 3:
                raise DataError(path, line, "line", f"expected 3 tab-separated fields "
                                f"({QRELS_HEADER.replace(chr(9), ', ')}), got {len(fields)}")
            try:
                score = int(float(fields[2]))
            except ValueError:
                raise DataError(path, line, "score", f"not a number: {fields[2]!r}") from None
            qrels.setdefault(fields[0].strip(), {})[fields[1].strip()] = score
    if not qrels:
        raise DataError(path, None, "qrels", "no judgements")
    return qrels


def read_beir(folder: str | Path, split: str = "test") -> BeirTask:
    """The corpus, the queries judged in ``split`` and their judgements, all checked: every
    judged query and passage must exist."""
    folder = Path(folder).expanduser()
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / name).is_file():
            raise DataError(folder / name, None, "file", "missing: a BEIR folder holds "
                            "corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
    corpus: dict[str, str] = {}
    path = folder / "corpus.jsonl"
    for line, pid, row in _rows_with_ids(path):
        text, title = _text_field(row, "text", path, line), _text_field(row, "title", path, line, False)
        corpus[pid] = Passage(pid, text, title or None).full_text
    path = folder / "queries.jsonl"
    queries = {qid: _text_field(row, "text", path, line)
               for line, qid, row in _rows_with_ids(path) if qid in qrels}
    qrels_path = folder / "qrels" / f"{split}.tsv"
    missing_q = sorted(set(qrels) - set(queries))
    if missing_q:
        raise DataError(qrels_path, None, "query-id", f"{len(missing_q)} judged queries are not in "
                        f"queries.jsonl (e.g. {missing_q[0]!r})")
    missing_p = sorted({p for judged in qrels.values() for p in judged} - set(corpus))
    if missing_p:
        raise DataError(qrels_path, None, "corpus-id", f"{len(missing_p)} judged passages are not "
                        f"in corpus.jsonl (e.g. {missing_p[0]!r})")
    return BeirTask(corpus, queries, qrels)


def write_beir(folder: Path, passages: Iterable[Passage], splits: dict[str, list[MCQ]],
               query_template: str = DEFAULT_QUERY_TEMPLATE) -> dict[str, int]:
    """The task in BEIR's layout: queries are the retriever's queries (``query_template``),
    judgements the questions' gold passages. Returns the rows written per file."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    counts = {"corpus": write_jsonl(folder / "corpus.jsonl", (
        {"_id": p.id, "title": p.title or "", "text": p.text} for p in passages))}
    judged = [q for questions in splits.values() for q in questions if q.gold_passage_ids]
    counts["queries"] = write_jsonl(folder / "queries.jsonl", (
        {"_id": q.id, "text": q.query(query_template)} for q in judged))
    for split, questions in splits.items():
        lines = [f"{q.id}\t{pid}\t1" for q in questions for pid in q.gold_passage_ids]
        (folder / "qrels" / f"{split}.tsv").write_text(
            "\n".join([QRELS_HEADER, *lines]) + "\n", encoding="utf-8")
        counts[f"qrels/{split}"] = len(lines)
    return counts
