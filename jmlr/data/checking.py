"""``jmlr check-data``: validate a question set, a passage corpus or a knowledge base and
summarise it, with the same readers training uses (files, corpus folders, ``datasets``
sources)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from jmlr.data.format_detect import _format_list, _kind_of_row, sniff
from jmlr.data.formats import QUESTION_FORMATS, load_questions
from jmlr.data.kb import check_kb
from jmlr.data.rows import first_row
from jmlr.data.schema import MCQ
from jmlr.errors import DataError


def summarise_questions(questions: list[MCQ], fmt: str) -> dict[str, Any]:
    """Counts that ``jmlr check-data`` prints for a question file."""
    option_counts = Counter(str(len(q.options)) for q in questions)
    summary: dict[str, Any] = {
        "kind": "questions",
        "format": fmt,
        "questions": len(questions),
        "with_rationale": sum(1 for q in questions if q.rationale),
        "option_counts": dict(sorted(option_counts.items(), key=lambda kv: int(kv[0]))),
        "answers": dict(sorted(Counter(q.answer for q in questions).items())),
    }
    gold = sum(1 for q in questions if q.gold_passage_ids)
    if gold:
        summary["with_gold_passages"] = gold
    subjects = Counter(q.metadata["subject"] for q in questions if q.metadata.get("subject"))
    if subjects:
        summary["subjects"] = dict(sorted(subjects.items()))
    return summary


def _corpus_folder(path: str | Path) -> bool:
    """Whether a folder holds corpus files (its first file's first row looks like a passage),
    rather than a question set that ``datasets`` reads."""
    from jmlr.data.corpus import CORPUS_SUFFIXES

    files = sorted(p for p in Path(path).iterdir() if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)
    if not files or (Path(path) / "dataset_dict.json").is_file() or (Path(path) / "state.json").is_file():
        return False
    if files[0].suffix.lower() == ".tsv":
        return True
    try:
        judged = _kind_of_row(first_row(files[0]))
    except DataError:
        return False
    return judged is not None and judged[0] == "corpus"


def check_data(path: str | Path, fmt: str = "auto",
               format_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate a question file, a passage corpus or a knowledge base and summarise it
    (``jmlr check-data``)."""
    from jmlr.data import corpus, hf_source

    if Path(path).is_dir() and (fmt in ("auto", *corpus.CORPUS_FORMATS)) and _corpus_folder(path):
        from jmlr.data.corpus_scan import scan_corpus

        return {**scan_corpus(path), "format": "folder"}
    source = hf_source.dataset_source(str(path))
    if source is not None:
        return hf_source.check_dataset(source, fmt, format_options)
    if fmt == "auto":
        kind, fmt = sniff(path)
    elif fmt in QUESTION_FORMATS:
        kind = "questions"
    elif fmt in corpus.CORPUS_FORMATS:
        kind = "corpus"
    elif fmt == "kb":
        kind = "kb"
    else:
        raise DataError(path, None, "format",
                        f"unknown format {fmt!r} (question formats: {_format_list()}; "
                        f"corpus formats: {', '.join(corpus.CORPUS_FORMATS)}; knowledge base: kb)")
    if kind == "kb":
        return check_kb(path)
    if kind == "corpus":
        from jmlr.data.corpus_scan import scan_corpus

        return scan_corpus(path, fmt)
    questions = load_questions(path, fmt=fmt, format_options=format_options)
    return summarise_questions(questions, fmt)
