"""Which file holds what: question formats told from a file's extension and first row's keys.

Questions (in which registered format), a passage corpus (jsonl, tsv, parquet) or knowledge-base
concepts; every refusal names the file and lists the known formats. The formats themselves are
registered in :mod:`jmlr.data.formats` (this module reads the registry when called).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jmlr.data.kb import is_kb_row
from jmlr.data.rows import JSON_SUFFIXES, first_row, require_file
from jmlr.errors import DataError
from jmlr.registry import QUESTION_FORMATS


def _format_list() -> str:
    return ", ".join(QUESTION_FORMATS.names())


def _kind_of_row(row: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, format) judged from one row's keys, or None when nothing fits."""
    keys = set(row)
    if is_kb_row(row):
        return "kb", "kb"
    detectors = sorted(((fmt.detect_order, name, fmt.detect) for name, fmt in QUESTION_FORMATS.items()
                        if fmt.detect is not None), key=lambda item: item[:2])
    for _, name, detect in detectors:
        if detect(keys):
            return "questions", name
    if keys & {"id", "_id", "pid", "docid"} and keys & {"text", "content", "contents"}:
        return "corpus", ""  # jsonl or parquet: the caller knows the extension
    return None


def sniff(path: str | Path) -> tuple[str, str]:
    """Whether ``path`` holds questions, passages or KB concepts, and in which format.

    Returns ("questions", question format), ("corpus", corpus format) or ("kb", "kb"). Raises DataError
    naming the file and listing the known formats when nothing fits.
    """
    path = require_file(path)
    suffix = path.suffix.lower()
    for name, fmt in QUESTION_FORMATS.items():
        if suffix in fmt.suffixes:
            return "questions", name
    if suffix == ".tsv":
        return "corpus", "tsv"
    if suffix == ".parquet" or suffix in JSON_SUFFIXES:
        judged = _kind_of_row(first_row(path))
        if judged is not None:
            kind, fmt = judged
            if kind == "corpus":
                fmt = "parquet" if suffix == ".parquet" else "jsonl"
            return kind, fmt
    raise DataError(path, None, "format",
                    "cannot tell the format from the extension and the first row's keys; "
                    f"name it with --format / data.format (question formats: {_format_list()}; "
                    "corpus formats: jsonl, tsv, parquet; knowledge base: kb)")


def detect_format(path: str | Path) -> str:
    """The question format of ``path`` from its extension and first row's keys."""
    kind, fmt = sniff(path)
    if kind != "questions":
        what = "a knowledge base" if kind == "kb" else f"a passage corpus ({fmt})"
        raise DataError(path, None, "format", f"looks like {what}, not a question file "
                        f"(question formats: {_format_list()})")
    return fmt


def check_format_name(fmt: str, where: str | Path) -> None:
    if fmt not in QUESTION_FORMATS:
        raise DataError(where, None, "format",
                        f"unknown question format {fmt!r} (known: auto, {_format_list()})")


def format_of_keys(keys: set[str], where: str | Path) -> str:
    """The question format that a row with these keys is in (a DataError when none is)."""
    judged = _kind_of_row(dict.fromkeys(keys))
    if judged is None or judged[0] != "questions":
        what = "no question format" if judged is None else f"a {judged[0]}, not questions"
        raise DataError(where, None, "format", f"its columns ({', '.join(sorted(keys))}) fit "
                        f"{what}; name one with --format / data.format "
                        f"(question formats: {_format_list()})")
    return judged[1]
