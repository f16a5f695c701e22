"""Question readers: public benchmark files, as distributed, to validated ``MCQ`` objects.

Format names (``data.format`` in the config, ``--format`` for ``jmlr check-data``):

``jmlr``
    Our generic jsonl, one ``MCQ.to_json()`` object a line::

        {"id": "q1", "question": "...", "options": {"A": "...", "B": "..."}, "answer": "B",
         "rationale": "... (optional)", "gold_passage_ids": ["p7"] (optional),
         "metadata": {"subject": "..."} (optional)}

    Options are keyed by consecutive letters from "A"; ``answer`` is one of them. Any other
    question bank (e.g. an Amboss-style export) can be converted to it; ``write_questions``
    writes it.
``medqa``
    MedQA (USMLE) jsonl: ``question``, ``options`` {A..D} or {A..E}, ``answer_idx`` (letter),
    ``answer`` (must equal the option text at ``answer_idx``), ``meta_info`` (kept in metadata).
``medmcqa``
    MedMCQA json-lines: ``id``, ``question``, ``opa``..``opd``, ``cop`` (0-based as in the
    hub release; 1-based with the format option ``one_based``), ``exp`` (rationale), ``subject_name``,
    ``topic_name``. Rows without an answer (the test split) are rejected.
``mmlu``
    MMLU as on the hub, jsonl or parquet: ``question``, ``choices`` (list), ``answer``
    (index 0-3 or a letter), ``subject``.
``mmlu_csv``
    Original MMLU headerless CSV rows ``question,A,B,C,D,answer``; the subject comes from
    the file name (``anatomy_test.csv`` -> ``anatomy``).
``jmlr_ref``
    The JMLR authors' format, jsonl or one JSON list: ``input`` (question with its options
    written inside the text), ``output`` (starts with the answer letter; a rationale may
    follow), ``doc`` (candidate passages, kept as ``metadata["docs"]``).

Ids: the source's ``id`` when it has one, otherwise ``<file stem>-<line>`` (stable while the
file does not change). Every error names the file, the line and the field.

Each format is one :class:`QuestionFormat` in the registry (``jmlr.registry.QUESTION_FORMATS``):
its reader, how it is recognised (file suffix, or the keys of the first row, tried in
``detect_order``), and its own options (``data.format_options.<name>``). Adding a format is
one reader function plus one ``register`` call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from jmlr.data.format_detect import (  # noqa: F401  (re-exported: jmlr.data.formats was their home)
    check_format_name,
    detect_format,
    format_of_keys,
    sniff,
)
from jmlr.data.refparse import parse_output, split_options
from jmlr.data.rows import (
    iter_csv_records,
    iter_json_rows,
    iter_parquet_rows,
)
from jmlr.data.schema import LETTERS, MCQ, check_unique_ids, option_letters
from jmlr.errors import DataError
from jmlr.io import write_jsonl
from jmlr.registry import QUESTION_FORMATS

log = logging.getLogger(__name__)

MEDMCQA_OPTION_FIELDS = ("opa", "opb", "opc", "opd")


@dataclass(frozen=True)
class QuestionFormat:
    """A registry entry: ``read(row, options) → MCQ`` for one source row; ``detect(keys)``
    says whether a first row with these keys is this format (tried in ``detect_order``,
    lower first); ``suffixes`` are file suffixes that mean this format whatever the rows;
    ``csv``: rows are CSV records (``row.data["record"]``) instead of JSON objects;
    ``params``: the dataclass of the format's options (None: it takes none)."""

    read: Callable[[Any, Any], MCQ]
    detect: Callable[[set[str]], bool] | None = None
    detect_order: int = 100
    suffixes: tuple[str, ...] = ()
    csv: bool = False
    params: type | None = None


@dataclass
class MedMCQAOptions:
    one_based: bool = False       # the hub's json release numbers answers (cop) from 0


class _Row:
    """One source row with the location that its errors report."""

    def __init__(self, data: dict[str, Any], path: Path, line: int) -> None:
        self.data, self.path, self.line = data, path, line

    def error(self, field: str | None, message: str) -> DataError:
        return DataError(self.path, self.line, field, message)

    def text(self, field: str, required: bool = True) -> str | None:
        value = self.data.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise self.error(field, "missing" if value is None else "is empty")
            return None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise self.error(field, f"must be text, got {type(value).__name__}")
        return str(value).strip()

    def item_id(self) -> str:
        source_id = self.text("id", required=False)
        return source_id or f"{self.path.stem}-{self.line}"


def _letter(row: _Row, field: str, value: Any, options: dict[str, str]) -> str:
    """Check an answer letter against the options; errors name the source field."""
    if not isinstance(value, str) or not value.strip():
        raise row.error(field, "missing" if value is None else "must be an option letter")
    letter = value.strip().upper()
    if letter not in options:
        letters = list(options)
        span = f"{letters[0]}-{letters[-1]}" if letters else "(none)"
        raise row.error(field, f"letter {value.strip()!r} is not among the options {span}")
    return letter


def _lettered(row: _Row, field: str, texts: list[Any]) -> dict[str, str]:
    if not 2 <= len(texts) <= len(LETTERS):
        raise row.error(field, f"need between 2 and {len(LETTERS)} options (A-Z), got {len(texts)}")
    options = {}
    for letter, text in zip(option_letters(len(texts)), texts, strict=True):
        if not isinstance(text, str | int | float) or not str(text).strip():
            raise row.error(field, f"option {letter} is empty or not text")
        options[letter] = str(text).strip()
    return options


def _from_medqa(row: _Row, options: Any = None) -> MCQ:
    raw = row.data.get("options")
    if raw is None:
        raise row.error("options", "missing")
    if isinstance(raw, list):  # some mirrors store [{"key": "A", "value": "..."}, ...]
        try:
            raw = {str(o["key"]): o["value"] for o in raw}
        except (KeyError, TypeError):
            raise row.error("options", "a list of options must hold {key, value} objects") from None
    if not isinstance(raw, dict):
        raise row.error("options", "must be an object {letter: text}")
    keys = sorted(raw, key=str)  # order by letter, whatever order the file lists them in
    if not 2 <= len(keys) <= 26 or keys != option_letters(len(keys)):
        raise row.error("options", "keys must be consecutive letters from A, got "
                                   f"{', '.join(map(str, raw)) or 'none'}")
    options = _lettered(row, "options", [raw[k] for k in keys])
    letter = _letter(row, "answer_idx", row.data.get("answer_idx"), options)
    answer_text = row.text("answer", required=False)
    if answer_text is not None and " ".join(answer_text.split()) != " ".join(options[letter].split()):
        raise row.error("answer", f"{answer_text!r} is not the text of option {letter} "
                                  f"({options[letter]!r})")
    meta = {"meta_info": row.data["meta_info"]} if row.data.get("meta_info") else {}
    return MCQ(row.item_id(), row.text("question"), options, letter, metadata=meta)


def _from_medmcqa(row: _Row, options: MedMCQAOptions | None = None) -> MCQ:
    one_based = bool(options and options.one_based)
    options = {letter: row.text(name) for letter, name in zip("ABCD", MEDMCQA_OPTION_FIELDS, strict=True)}
    cop = row.data.get("cop")
    if cop is None or cop == "" or cop == -1 or cop == "-1":
        raise row.error("cop", "no answer (the MedMCQA test split is released without answers)")
    try:
        index = int(cop)
    except (TypeError, ValueError):
        raise row.error("cop", f"must be an integer, got {cop!r}") from None
    base = 1 if one_based else 0
    if not base <= index <= base + 3:
        hint = ("; this file looks 0-based: drop --one-based / set "
                "data.format_options.medmcqa.one_based=false"
                if one_based and index == 0 else
                "; this file looks 1-based: pass --one-based / set "
                "data.format_options.medmcqa.one_based=true"
                if not one_based and index == 4 else "")
        raise row.error("cop", f"{index} is out of range {base}-{base + 3}{hint}")
    meta = {key: row.data[src] for key, src in
            (("subject", "subject_name"), ("topic", "topic_name"), ("choice_type", "choice_type"))
            if isinstance(row.data.get(src), str) and row.data[src].strip()}
    return MCQ(row.item_id(), row.text("question"), options, "ABCD"[index - base],
               rationale=row.text("exp", required=False), metadata=meta)


def _mmlu_answer(row: _Row, value: Any, options: dict[str, str]) -> str:
    if isinstance(value, bool):
        raise row.error("answer", f"must be an index or a letter, got {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int):
        if not 0 <= value < len(options):
            raise row.error("answer", f"index {value} is out of range 0-{len(options) - 1}")
        return list(options)[value]
    return _letter(row, "answer", value, options)


def _from_mmlu(row: _Row, options: Any = None) -> MCQ:
    choices = row.data.get("choices")
    if choices is None:
        raise row.error("choices", "missing")
    if not isinstance(choices, list | tuple):
        raise row.error("choices", "must be a list of option texts")
    options = _lettered(row, "choices", list(choices))
    if row.data.get("answer") is None:
        raise row.error("answer", "missing")
    letter = _mmlu_answer(row, row.data["answer"], options)
    subject = row.text("subject", required=False)
    return MCQ(row.item_id(), row.text("question"), options, letter,
               metadata={"subject": subject} if subject else {})


def mmlu_subject(path: str | Path) -> str:
    """The MMLU subject named by an original CSV file name.

    >>> mmlu_subject("data/test/clinical_knowledge_test.csv")
    'clinical_knowledge'
    """
    return re.sub(r"_(test|dev|val)$", "", Path(path).stem)


def _from_mmlu_csv(row: _Row, options: Any = None) -> MCQ:
    record = row.data["record"]
    if len(record) != 6:
        raise row.error("columns", f"expected 6 columns (question, A, B, C, D, answer), got {len(record)}")
    options = _lettered(row, "options", record[1:5])
    letter = _letter(row, "answer", record[5], options)
    question = record[0].strip()
    if not question:
        raise row.error("question", "is empty")
    return MCQ(f"{row.path.stem}-{row.line}", question, options, letter,
               metadata={"subject": mmlu_subject(row.path)})


def _from_jmlr_ref(row: _Row, options: Any = None) -> MCQ:
    text = row.text("input")
    split = split_options(text or "")
    if split is None:
        raise row.error("input", "found no options in the text (expected lines like 'A. ...', "
                                 "'A: ...', '(A) ...' or a letter alone on a line)")
    question, options = split
    output = row.text("output")
    letter, rationale = parse_output(output or "", options)
    if letter is None:
        raise row.error("output", f"must start with the answer letter, got {output[:40]!r}")
    letter = _letter(row, "output", letter, options)
    docs = row.data.get("doc")
    if docs is not None and (not isinstance(docs, list) or not all(isinstance(d, str) for d in docs)):
        raise row.error("doc", "must be a list of passage texts")
    return MCQ(row.item_id(), question, options, letter, rationale=rationale,
               metadata={"docs": docs} if docs else {})


def _from_jmlr(row: _Row, options: Any = None) -> MCQ:
    return MCQ.from_json(row.data, row.path, row.line)


# Listed in this order; detection tries the key rules by detect_order (most specific first).
QUESTION_FORMATS.register("jmlr", QuestionFormat(
    _from_jmlr, lambda keys: {"id", "question", "options", "answer"} <= keys, detect_order=90))
QUESTION_FORMATS.register("medqa", QuestionFormat(
    _from_medqa, lambda keys: {"question", "answer_idx"} <= keys, detect_order=30))
# not "cop": test-split rows lack it and get a clear error from the reader
QUESTION_FORMATS.register("medmcqa", QuestionFormat(
    _from_medmcqa, lambda keys: {"opa", "opb"} <= keys, detect_order=20, params=MedMCQAOptions))
QUESTION_FORMATS.register("mmlu", QuestionFormat(
    _from_mmlu, lambda keys: {"question", "choices"} <= keys, detect_order=40))
QUESTION_FORMATS.register("mmlu_csv", QuestionFormat(_from_mmlu_csv, suffixes=(".csv",), csv=True))
QUESTION_FORMATS.register("jmlr_ref", QuestionFormat(
    _from_jmlr_ref, lambda keys: {"input", "output"} <= keys, detect_order=10))


def _rows(path: Path, fmt: QuestionFormat) -> Iterator[tuple[int, dict[str, Any]]]:
    if fmt.csv:
        for line, record in iter_csv_records(path):
            yield line, {"record": record}
    elif path.suffix.lower() == ".parquet":
        yield from iter_parquet_rows(path)
    else:
        yield from iter_json_rows(path)


def options_of(fmt: str, given: dict[str, Any] | None) -> Any:
    """The options object of question format ``fmt``: ``given[fmt]`` (a mapping, or an
    already built options object), else the format's defaults; None when it takes none."""
    from jmlr.config_fields import make_component

    entry = QUESTION_FORMATS.get(fmt)
    value = (given or {}).get(fmt)
    if entry.params is not None and isinstance(value, entry.params):
        return value
    if hasattr(value, "params") and hasattr(value, "name"):      # a config Component
        return value.params
    return make_component("question format", {"name": fmt, **(value or {})},
                          f"data.format_options.{fmt}").params


def load_questions(path: str | Path, fmt: str = "auto",
                   format_options: dict[str, Any] | None = None,
                   split: str | None = None) -> list[MCQ]:
    """Read a question file in any registered format: validated MCQs with unique ids.

    ``fmt`` is a registered format name or "auto" (detect from the extension and first
    row); ``format_options`` maps format names to their options (``data.format_options``).
    ``path`` may also name a ``datasets`` source (``hf_source.py``: a save_to_disk folder, a
    folder of data files, a hub id), read through the same readers; ``split`` is then the
    split taken when the location names none.
    """
    from jmlr.data import hf_source

    source = hf_source.dataset_source(str(path))
    if source is not None:
        return hf_source.load_questions_from(source, fmt, format_options, split)
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path)
    check_format_name(fmt, path)
    rows = tqdm(_rows(path, QUESTION_FORMATS.get(fmt)), desc=f"reading {path.name}",
                unit=" rows", disable=None, leave=False)
    return read_rows(rows, path, fmt, format_options)


def read_rows(rows: Iterable[tuple[int, dict[str, Any]]], path: str | Path, fmt: str,
              format_options: dict[str, Any] | None = None) -> list[MCQ]:
    """Validated MCQs with unique ids from ``(line, row)`` pairs of question format ``fmt``;
    errors name ``path``, the line (or row number) and the field."""
    path = Path(path)
    entry = QUESTION_FORMATS.get(fmt)
    options = options_of(fmt, format_options)
    questions: list[MCQ] = []
    lines: list[int] = []
    for line, data in rows:
        row = _Row(data, path, line)
        questions.append(entry.read(row, options).validate(path, line))
        lines.append(line)
    check_unique_ids(zip(lines, (q.id for q in questions), strict=True), path, "question")
    log.info("read %d questions from %s (format %s)", len(questions), path, fmt)
    return questions


def write_questions(path: str | Path, questions: Iterable[MCQ]) -> int:
    """Write questions atomically as our generic jsonl (format "jmlr"); returns the count."""
    return write_jsonl(path, (q.to_json() for q in questions))
