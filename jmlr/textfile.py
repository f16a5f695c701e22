"""Text files a user gives us: a wrong path, bytes that are not UTF-8, nesting too deep.

Every problem becomes one :class:`~jmlr.errors.DataError` naming the file, and the line and
field where they can be told, instead of a ``UnicodeDecodeError`` or ``RecursionError``
traceback. The happy path reads as before; the bytes are only looked at again, line by
line, once a decoding error has been raised.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jmlr.errors import DataError

# What ``bytes.decode("utf-8", "surrogateescape")`` turns each undecodable byte into.
_ESCAPED = re.compile("[\udc80-\udcff]")
FieldOf = Callable[[str], "str | None"]


def check_file(path: str | Path) -> Path:
    """``path`` when it names a file; DataError saying what it is otherwise.

    >>> import tempfile
    >>> try:
    ...     check_file(tempfile.gettempdir())
    ... except DataError as err:
    ...     print(err.message)
    is a directory, not a file
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(path, None, None, "is a directory, not a file")
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    return path


def escaped_path(obj: Any, prefix: str = "") -> str | None:
    """Dotted path of the first key or string value holding an undecodable byte.

    >>> escaped_path({"id": "q1", "options": {"A": "ok", "B": "caf\\udce9"}})
    'options.B'
    >>> escaped_path({"items": ["fine", "\\udcff"]})
    'items.1'
    >>> escaped_path({"id": "q1"}) is None
    True
    """
    if isinstance(obj, str):
        return prefix or None if _ESCAPED.search(obj) else None
    if isinstance(obj, dict):
        pairs = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, list):
        pairs = [(str(i), v) for i, v in enumerate(obj)]
    else:
        return None
    for key, value in pairs:
        path = f"{prefix}.{key}" if prefix else key
        if _ESCAPED.search(key):
            return path
        found = escaped_path(value, path)
        if found:
            return found
    return None


def json_field(line: str) -> str | None:
    """The field of a JSON line that holds an undecodable byte (None when unparseable).

    >>> json_field('{"question": "caf\\udce9?", "answer": "A"}')
    'question'
    """
    try:
        return escaped_path(json.loads(line))
    except (ValueError, RecursionError):
        return None


def _describe(raw: bytes, err: UnicodeDecodeError, binary: bool = False) -> str:
    """What is wrong with a line of bytes, for the error message.

    >>> _describe(b"caf\\xe9", UnicodeDecodeError("utf-8", b"caf\\xe9", 3, 4, "invalid"))
    'byte 0xe9 at column 4 is not UTF-8 text; save the file as UTF-8'
    """
    if binary:
        return "binary data, not text (is this the right file?)"
    column = len(raw[:err.start].decode("utf-8", "replace")) + 1
    return (f"byte 0x{raw[err.start]:02x} at column {column} is not UTF-8 text; "
            "save the file as UTF-8")


def utf8_error(path: str | Path, field_of: FieldOf | None = None) -> DataError:
    """A DataError at the first line of ``path`` that is not UTF-8, naming the field that
    ``field_of`` finds in that line (decoded with undecodable bytes escaped)."""
    with Path(path).open("rb") as handle:
        binary = b"\x00" in handle.read(8192)   # text files hold no NUL bytes
        handle.seek(0)
        for lineno, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                if binary:
                    return DataError(path, lineno, None, _describe(raw, err, binary))
                field = field_of(raw.decode("utf-8", "surrogateescape")) if field_of else None
                return DataError(path, lineno, field, _describe(raw, err))
    return DataError(path, None, None, "is not UTF-8 text; save the file as UTF-8")


def read_text(path: str | Path, field_of: FieldOf | None = None) -> str:
    """The whole text of a UTF-8 file (a leading byte-order mark dropped); located
    DataError for a missing file, a directory or bytes that are not UTF-8."""
    path = check_file(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise utf8_error(path, field_of) from None


def yaml_key(line: str) -> str | None:
    """The key of a YAML ``key: value`` line.

    >>> yaml_key("  corpus: data/caf\\udce9.jsonl")
    'corpus'
    """
    match = re.match(r"\s*-?\s*([^\s:#][^:#]*?)\s*:", line)
    return match.group(1) if match else None


def too_deep(path: str | Path, line: int | None) -> DataError:
    return DataError(path, line, None, "JSON nested too deeply to read")
