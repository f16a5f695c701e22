"""Located row readers shared by the question and corpus loaders.

Every reader yields ``(line, row)`` pairs where ``line`` is what an error message should
point at: the 1-based line of a jsonl row, the line where an item of a JSON array starts,
the line where a CSV record starts, or the 1-based row number of a parquet table.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jmlr.errors import DataError
from jmlr.io import read_jsonl
from jmlr.textfile import check_file, escaped_path, json_field, read_text, too_deep, utf8_error

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def require_file(path: str | Path) -> Path:
    path = check_file(path)
    if path.stat().st_size == 0:
        raise DataError(path, None, None, "file is empty")
    return path


def _first_char(path: Path) -> str:
    try:
        with path.open(encoding="utf-8") as handle:
            while chunk := handle.read(4096):
                stripped = chunk.lstrip("\ufeff \t\r\n")
                if stripped:
                    return stripped[0]
    except UnicodeDecodeError:
        raise utf8_error(path, json_field) from None
    return ""


def iter_json_array(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Items of a file holding one JSON array of objects, each with the line it starts on.

    Decodes item by item so a malformed item is reported at its own line.
    """
    text = read_text(path, json_field)
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted_to, seen = 1, 0, 0

    def skip(p: int, chars: str) -> int:
        while p < len(text) and text[p] in chars:
            p += 1
        return p

    while True:
        pos = skip(pos, " \t\r\n")
        if pos < len(text) and text[pos] == "]":
            break
        if seen:  # items after the first are separated by a comma
            if pos >= len(text) or text[pos] != ",":
                line += text.count("\n", counted_to, pos)
                raise DataError(path, line, None, "malformed JSON (expected ',' or ']')")
            pos = skip(pos + 1, " \t\r\n")
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(path, err.lineno, None, f"malformed JSON ({err.msg})") from None
        except RecursionError:
            raise too_deep(path, line) from None
        if not isinstance(obj, dict):
            raise DataError(path, line, None, "expected a JSON object for each item of the list")
        seen += 1
        yield line, obj
        pos = end
    if seen == 0:
        raise DataError(path, None, None, "file is empty (an empty JSON list)")


def iter_json_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a jsonl file, or of a file holding one JSON array of objects."""
    path = require_file(path)
    if _first_char(path) == "[":
        yield from iter_json_array(path)
    else:
        yield from read_jsonl(path)


def iter_parquet_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a parquet file as dicts, numbered from 1."""
    path = require_file(path)
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise DataError(path, None, None, f"not a readable parquet file ({err})") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield number, row
    if number == 0:
        raise DataError(path, None, None, "file is empty (no rows)")


def iter_csv_records(path: str | Path, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """Records of a headerless CSV file with the line each starts on (quoted fields may span
    lines); blank records are skipped."""
    path = require_file(path)
    seen = 0
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            start = 1
            while True:
                try:
                    record = next(reader)
                except StopIteration:
                    break
                except csv.Error as err:
                    raise DataError(path, start, None, f"malformed CSV ({err})") from None
                line, start = start, reader.line_num + 1
                if not any(field.strip() for field in record):
                    continue
                seen += 1
                yield line, record
    except UnicodeDecodeError:
        raise utf8_error(path, functools.partial(csv_column, delimiter=delimiter)) from None
    if seen == 0:
        raise DataError(path, None, None, "file is empty")


def csv_column(line: str, delimiter: str = ",") -> str | None:
    """"column N" of a CSV line whose field N holds an undecodable byte (1-based).

    >>> csv_column('What?,caf\\udce9,b')
    'column 2'
    """
    for record in csv.reader([line], delimiter=delimiter):
        for number, field in enumerate(record, start=1):
            if escaped_path(field, "x"):
                return f"column {number}"
    return None


def first_row(path: str | Path) -> dict[str, Any]:
    """The first row of a jsonl / JSON-array / parquet file (for format detection)."""
    path = Path(path)
    rows = iter_parquet_rows(path) if path.suffix.lower() == ".parquet" else iter_json_rows(path)
    for _, row in rows:
        return row
    raise DataError(path, None, None, "file is empty")  # unreachable: the readers raise first
