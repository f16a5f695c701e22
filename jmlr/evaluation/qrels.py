"""Relevance judgements from a file: which passages answer which question.

Public question sets carry no gold passage ids; retrieval can still be measured against a
qrels file the user supplies (``eval.qrels``), in either common layout:

- BEIR / MTEB tsv: a header ``query-id  corpus-id  score``, then one judgement a line;
- TREC: ``query-id  iteration  corpus-id  relevance`` per line, no header.

A judgement with relevance > 0 makes the passage gold for that question. The judged
questions' gold passages replace whatever their question file says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from jmlr.data.schema import MCQ
from jmlr.errors import DataError
from jmlr.textfile import check_file, read_text


def read_qrels(path: str | Path) -> dict[str, list[str]]:
    """``{question id: [gold passage ids]}`` from a BEIR tsv or TREC qrels file.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "test.tsv"
    >>> _ = p.write_text("query-id\\tcorpus-id\\tscore\\nq1\\tp7\\t1\\nq1\\tp9\\t0\\nq2\\tp3\\t2\\n")
    >>> read_qrels(p)
    {'q1': ['p7'], 'q2': ['p3']}
    >>> _ = p.write_text("q1 0 p7 1\\nq3 0 p8 1\\n")
    >>> read_qrels(p)
    {'q1': ['p7'], 'q3': ['p8']}
    """
    path = check_file(path)
    gold: dict[str, list[str]] = {}
    seen = 0
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields or (line_no == 1 and fields[0].lower() in ("query-id", "query_id", "qid")):
            continue
        if len(fields) == 3:
            qid, pid, value = fields
        elif len(fields) == 4:
            qid, _, pid, value = fields
        else:
            raise DataError(path, line_no, None, f"expected 3 (BEIR: query-id corpus-id score) or "
                            f"4 (TREC: query-id iteration corpus-id relevance) columns, got {len(fields)}")
        try:
            relevance = float(value)
        except ValueError:
            raise DataError(path, line_no, "score", f"{value!r} is not a number") from None
        seen += 1
        if relevance > 0 and pid not in gold.setdefault(qid, []):
            gold[qid].append(pid)
    if not seen:
        raise DataError(path, None, None, "no judgements in the file")
    return {qid: pids for qid, pids in gold.items() if pids}


def with_qrels(questions: Sequence[MCQ], qrels: dict[str, list[str]]) -> list[MCQ]:
    """The questions with their gold passages taken from ``qrels`` where it judges them."""
    return [dataclasses.replace(q, gold_passage_ids=list(qrels[q.id])) if q.id in qrels else q
            for q in questions]
