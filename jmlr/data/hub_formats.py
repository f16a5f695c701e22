"""Question layouts of datasets as the Hugging Face hub serves them, one reader each.

``medqa_hf``
    ``GBaker/MedQA-USMLE-4-options-hf`` (SWAG-style columns): ``sent1`` (the question;
    ``sent2``, when not empty, continues it), ``ending0``..``ending3`` (the options A-D),
    ``label`` (0-based index of the answer), ``id``.
``bigbio_qa``
    BigBIO's QA schema (``bigbio/med_qa``, ``bigbio/pubmed_qa``... with the ``*_bigbio_qa``
    config): ``id``, ``question_id``, ``document_id``, ``question``, ``type``, ``choices``
    (option texts), ``context``, ``answer`` (a list holding the text of the right choice).
    Only ``type`` ``multiple_choice`` (or ``yesno`` with choices) rows are questions here.

Each reader gets one row (``formats._Row``: its data and where its errors point) and returns
an ``MCQ``; registering it is one ``QUESTION_FORMATS.register`` call.
"""

from __future__ import annotations

from typing import Any

from jmlr.data.formats import QuestionFormat, _lettered, _Row
from jmlr.data.schema import MCQ
from jmlr.registry import QUESTION_FORMATS

MEDQA_HF_ENDINGS = ("ending0", "ending1", "ending2", "ending3")


def _index(row: _Row, field: str, value: Any, count: int) -> int:
    """A 0-based answer index checked against ``count`` options."""
    if isinstance(value, bool) or value is None or value == "":
        raise row.error(field, "missing" if value in (None, "") else f"must be an index, got {value!r}")
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise row.error(field, f"must be an integer index, got {value!r}") from None
    if not 0 <= index < count:
        raise row.error(field, f"index {index} is out of range 0-{count - 1}")
    return index


def _from_medqa_hf(row: _Row, options: Any = None) -> MCQ:
    lettered = _lettered(row, "ending0", [row.text(field) for field in MEDQA_HF_ENDINGS])
    index = _index(row, "label", row.data.get("label"), len(lettered))
    question = row.text("sent1") or ""
    more = row.text("sent2", required=False)
    if more:
        question = f"{question} {more}"
    return MCQ(row.item_id(), question, lettered, "ABCD"[index])


def _from_bigbio_qa(row: _Row, options: Any = None) -> MCQ:
    kind = row.text("type", required=False) or ""
    choices = row.data.get("choices")
    if kind not in ("multiple_choice", "yesno") or not choices:
        raise row.error("type", f"{kind or 'empty'!r} rows are not multiple-choice questions "
                                "(only multiple_choice, or yesno with choices)")
    if not isinstance(choices, list | tuple):
        raise row.error("choices", "must be a list of option texts")
    lettered = _lettered(row, "choices", list(choices))
    answer = row.data.get("answer")
    if isinstance(answer, list | tuple):
        if len(answer) != 1:
            raise row.error("answer", f"must hold one choice, got {len(answer)}")
        answer = answer[0]
    if not isinstance(answer, str) or not answer.strip():
        raise row.error("answer", "missing" if answer is None else "must be the text of a choice")
    by_text = {" ".join(text.split()).lower(): letter for letter, text in lettered.items()}
    letter = by_text.get(" ".join(answer.split()).lower())
    if letter is None:
        raise row.error("answer", f"{answer.strip()!r} is not one of the choices")
    source_id = row.text("question_id", required=False) or row.item_id()
    context = row.text("context", required=False)
    meta = {"document_id": row.data["document_id"]} if row.data.get("document_id") else {}
    if context:
        meta["context"] = context
    return MCQ(source_id, row.text("question"), lettered, letter, metadata=meta)


QUESTION_FORMATS.register("medqa_hf", QuestionFormat(
    _from_medqa_hf, lambda keys: {"sent1", "ending0", "ending1", "label"} <= keys, detect_order=25))
QUESTION_FORMATS.register("bigbio_qa", QuestionFormat(
    _from_bigbio_qa, lambda keys: {"question_id", "question", "type", "choices", "answer"} <= keys,
    detect_order=15))
