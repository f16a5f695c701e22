"""The one prompt template, used verbatim by training and by inference.

Passages arrive best-first and are printed in reverse, so the best one sits right above the
question; then the question, one line per option, and the answer cue::

    Context:
    <third-best passage>
    <second-best passage>
    <best passage>

    Question: A child has fever and a rash. Which disease fits?
    A. Measles
    B. Gout
    Answer:

With no passages the ``Context:`` block is left out. The target continues the cue:
" B" (``letter``), " B: Gout" (``letter_text``, the default) or " B: Gout" followed by
"\\nExplanation: <rationale>" (``letter_text_rationale``, when the question has a rationale),
then the end-of-sequence token.

Token ids are built piece by piece (header, each passage, question, each option, cue, each
target part), every piece tokenised as it reads after a newline, and concatenated. So the
prompt's ids are the same whatever follows them, target and loss masks line up with the
text exactly, and passages can be cut in token space. Inference must use ``encode_prompt``
(not ``tokenizer(build_prompt(...))``) to get exactly the ids that training used.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jmlr.data.schema import MCQ

logger = logging.getLogger(__name__)

TARGETS = ("letter", "letter_text", "letter_text_rationale")
UTILITY_SPANS = ("option_text", "target", "rationale")
_ANCHOR = "\n"


@dataclass
class EncodedExample:
    """One training/scoring sequence: ids and two boolean masks of the same length."""

    input_ids: list[int]
    target_mask: list[bool]    # the target tokens: the generator's loss
    utility_mask: list[bool]   # the span whose loss is a passage's utility


# ---------------------------------------------------------------------------------------
# Text


def prompt_pieces(mcq: MCQ, passages: Sequence[str]) -> list[tuple[str, str]]:
    """(kind, text) pieces of the prompt; kinds: header, passage, passage_end, blank,
    question, option, cue. Passages are given best-first and come out best-last.

    >>> q = MCQ("q", "Which?", {"A": "x", "B": "y"}, "B")
    >>> [text for _, text in prompt_pieces(q, ["best", "second"])]
    ['Context:\\n', 'second', '\\n', 'best', '\\n', '\\n', 'Question: Which?\\n', 'A. x\\n', 'B. y\\n', 'Answer:']
    """
    pieces: list[tuple[str, str]] = []
    texts = [" ".join(p.split()) for p in passages]
    texts = [t for t in texts if t]
    if texts:
        pieces.append(("header", "Context:\n"))
        for text in reversed(texts):
            pieces.append(("passage", text))
            pieces.append(("passage_end", "\n"))
        pieces.append(("blank", "\n"))
    pieces.append(("question", f"Question: {mcq.question.strip()}\n"))
    pieces.extend(("option", f"{letter}. {text.strip()}\n") for letter, text in mcq.options.items())
    pieces.append(("cue", "Answer:"))
    return pieces


def build_prompt(mcq: MCQ, passages: Sequence[str]) -> str:
    """The prompt as text (passages best-first in, best nearest the question out).

    >>> q = MCQ("q", "Fever and rash?", {"A": "Measles", "B": "Gout"}, "A")
    >>> print(build_prompt(q, ["Measles causes rash.", "Gout hurts."]))
    Context:
    Gout hurts.
    Measles causes rash.
    <BLANKLINE>
    Question: Fever and rash?
    A. Measles
    B. Gout
    Answer:
    """
    return "".join(text for _, text in prompt_pieces(mcq, passages))


def target_pieces(mcq: MCQ, target: str) -> list[tuple[str, str]]:
    """(kind, text) pieces of the target; kinds: letter, option_text, rationale_cue, rationale.

    >>> q = MCQ("q", "Which?", {"A": "x", "B": "Gout"}, "B", rationale="Uric acid.")
    >>> target_pieces(q, "letter_text_rationale")
    [('letter', ' B:'), ('option_text', ' Gout'), ('rationale_cue', '\\nExplanation:'), ('rationale', ' Uric acid.')]
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if target == "letter":
        return [("letter", f" {mcq.answer}")]
    pieces = [("letter", f" {mcq.answer}:"), ("option_text", f" {mcq.answer_text.strip()}")]
    rationale = (mcq.rationale or "").strip()
    if target == "letter_text_rationale" and rationale:
        pieces += [("rationale_cue", "\nExplanation:"), ("rationale", f" {rationale}")]
    return pieces


def target_text(mcq: MCQ, target: str = "letter_text") -> str:
    """What the generator learns to write after "Answer:".

    >>> q = MCQ("q", "Which?", {"A": "x", "B": "Gout", "C": "z"}, "C")
    >>> target_text(q, "letter"), target_text(q, "letter_text"), target_text(q, "letter_text_rationale")
    (' C', ' C: z', ' C: z')
    """
    return "".join(text for _, text in target_pieces(mcq, target))


# ---------------------------------------------------------------------------------------
# Token ids


def uses_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer starts every text with its BOS token."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


def tokenize_piece(tokenizer: Any, text: str, first: bool = False) -> list[int]:
    """Ids of ``text`` as it reads after a newline (or at the very start when ``first``).

    Tokenising "\\n" + text and dropping the newline's ids keeps sentencepiece from adding
    its word-start marker to a piece that continues a line; when the newline merges with the
    piece (byte-level BPE "\\n\\n"), the piece is tokenised on its own.
    """
    if not first:
        anchor = tokenizer(_ANCHOR, add_special_tokens=False)["input_ids"]
        joined = tokenizer(_ANCHOR + text, add_special_tokens=False)["input_ids"]
        if joined[:len(anchor)] == anchor:
            return list(joined[len(anchor):])
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_lengths(lengths: Sequence[int], budget: int) -> list[int]:
    """Cut lengths to fit ``budget``: one common cap for the longest, spare tokens to the
    first (best) ones; short items are untouched.

    >>> fit_lengths([10, 3, 8], 30), fit_lengths([10, 3, 8], 15), fit_lengths([10, 3, 8], 16)
    ([10, 3, 8], [6, 3, 6], [7, 3, 6])
    >>> fit_lengths([5, 5], -3)
    [0, 0]
    """
    if sum(lengths) <= budget:
        return list(lengths)
    budget = max(0, budget)
    low, high = 0, max(lengths)
    while low < high:  # largest cap whose total fits
        mid = (low + high + 1) // 2
        if sum(min(n, mid) for n in lengths) <= budget:
            low = mid
        else:
            high = mid - 1
    caps = [min(n, low) for n in lengths]
    spare = budget - sum(caps)
    for i, n in enumerate(lengths):
        if spare and n > caps[i]:
            caps[i] += 1
            spare -= 1
    return caps


def _pieces_ids(tokenizer: Any, pieces: list[tuple[str, str]]) -> list[tuple[str, list[int]]]:
    return [(kind, tokenize_piece(tokenizer, text, first=i == 0))
            for i, (kind, text) in enumerate(pieces)]


def _prompt_ids(tokenizer: Any, mcq: MCQ, passages: Sequence[str], budget: int) -> list[int]:
    """Prompt ids (BOS included) of at most ``budget`` tokens, passages cut as needed."""
    bos = [tokenizer.bos_token_id] if uses_bos(tokenizer) else []
    texts = [t for t in (" ".join(p.split()) for p in passages) if t]  # best-first
    pieces = _pieces_ids(tokenizer, prompt_pieces(mcq, texts))
    total = len(bos) + sum(len(ids) for _, ids in pieces)
    if total <= budget:
        return bos + [i for _, ids in pieces for i in ids]
    if not texts:
        ids = bos + [i for _, ids in pieces for i in ids]
        logger.warning("question %s: its prompt takes %d tokens where only %d are left "
                       "beside the target within max_length; kept whole (question, options "
                       "and target are never cut)", mcq.id, len(ids), budget)
        return ids
    lengths = [len(ids) for kind, ids in pieces if kind == "passage"][::-1]  # best-first
    caps = fit_lengths(lengths, budget - (total - sum(lengths)))
    if texts and not all(caps):  # drop what gets no room at all, then fit the rest again
        return _prompt_ids(tokenizer, mcq, [t for t, c in zip(texts, caps, strict=True) if c], budget)
    out, cap_iter = list(bos), iter(caps[::-1])  # pieces hold passages best-last
    for kind, ids in pieces:
        out.extend(ids[:next(cap_iter)] if kind == "passage" else ids)
    return out


def encode_prompt(tokenizer: Any, mcq: MCQ, passages: Sequence[str], max_length: int,
                  reserve: int = 0) -> list[int]:
    """Prompt ids for inference, cut exactly as in training when ``reserve`` is the target's
    length (``reserve_for_options`` gives the one that training-like scoring uses)."""
    return _prompt_ids(tokenizer, mcq, passages, max_length - reserve)


def _target_ids(tokenizer: Any, mcq: MCQ, target: str, add_eos: bool
                ) -> list[tuple[str, list[int]]]:
    pieces = [(kind, tokenize_piece(tokenizer, text)) for kind, text in target_pieces(mcq, target)]
    if add_eos and tokenizer.eos_token_id is not None:
        pieces.append(("eos", [tokenizer.eos_token_id]))
    return pieces


def _utility_kinds(pieces: list[tuple[str, list[int]]], utility_span: str, mcq: MCQ) -> set[str]:
    kinds = {kind for kind, _ in pieces}
    if utility_span == "rationale":
        return {"rationale"} if "rationale" in kinds else _utility_kinds(pieces, "option_text", mcq)
    if utility_span == "option_text":
        if "option_text" in kinds:
            return {"option_text"}
        logger.debug("question %s: no option text in the target; utility over the target", mcq.id)
        return kinds - {"eos"}
    if utility_span == "target":
        return kinds - {"eos"}
    raise ValueError(f"utility_span must be one of {UTILITY_SPANS}, got {utility_span!r}")


def encode_example(tokenizer: Any, mcq: MCQ, passages: Sequence[str], target: str = "letter_text",
                   utility_span: str = "option_text", max_length: int = 2048,
                   add_eos: bool = True, reserve: int = 0) -> EncodedExample:
    """Prompt + target ids with the target and utility masks.

    Passages (best-first) are cut from their ends, evenly, so that the whole fits
    ``max_length``; the question, options and target never are. ``utility_span``:
    "option_text" (the answer's text, letter left out; the whole target when the target is
    the letter alone), "target" (all of it, without EOS) or "rationale" (falls back to
    option_text when the question has none). ``reserve``: keep at least
    this many tokens for the target when cutting (so every option of a question gets the
    same prompt; see ``encode_options``).
    """
    target_ids = _target_ids(tokenizer, mcq, target, add_eos)
    target_len = sum(len(ids) for _, ids in target_ids)
    prompt = _prompt_ids(tokenizer, mcq, passages, max_length - max(target_len, reserve))
    utility_kinds = _utility_kinds(target_ids, utility_span, mcq)
    input_ids, target_mask, utility_mask = list(prompt), [False] * len(prompt), [False] * len(prompt)
    for kind, ids in target_ids:
        input_ids += ids
        target_mask += [True] * len(ids)
        utility_mask += [kind in utility_kinds] * len(ids)
    return EncodedExample(input_ids, target_mask, utility_mask)


def encode_utility_example(tokenizer: Any, mcq: MCQ, passages: Sequence[str],
                           target: str = "letter_text", utility_span: str = "option_text",
                           max_length: int = 2048) -> EncodedExample:
    """The sequence whose loss is one passage's utility ℓ_j (docs/METHOD.md, step 4).

    For "option_text" the answer's text follows "Answer:" directly, with no letter before it:
    after the gold letter the text is a copy of an option line, which a generator learns
    within a few steps, so every passage's loss goes to zero and the rank loss trains on noise
    (docs/METHOD.md measured 71% of pairs ordered right with the letter in the sequence but out of
    the loss, 99% with the text alone). Other spans use the training sequence
    (``encode_example``). Both masks mark the utility span.
    """
    if utility_span != "option_text" or target == "letter":
        return encode_example(tokenizer, mcq, passages, target, utility_span, max_length,
                              add_eos=False)
    text_ids = tokenize_piece(tokenizer, f" {mcq.answer_text.strip()}")
    prompt = _prompt_ids(tokenizer, mcq, passages, max_length - len(text_ids))
    mask = [False] * len(prompt) + [True] * len(text_ids)
    return EncodedExample(list(prompt) + text_ids, mask, list(mask))


def reserve_for_options(tokenizer: Any, mcq: MCQ, target: str, add_eos: bool = True) -> int:
    """The longest target over all options: the room every option's prompt leaves."""
    return max(sum(len(ids) for _, ids in _target_ids(
        tokenizer, dataclasses.replace(mcq, answer=letter), target, add_eos))
        for letter in mcq.options)


def encode_options(tokenizer: Any, mcq: MCQ, passages: Sequence[str], target: str = "letter_text",
                   utility_span: str = "option_text", max_length: int = 2048,
                   add_eos: bool = True) -> dict[str, EncodedExample]:
    """One example per option, as if it were the answer, all with the same prompt ids: for
    scoring options by their loss (letter, option text) exactly as training sees them."""
    reserve = reserve_for_options(tokenizer, mcq, target, add_eos)
    return {letter: encode_example(tokenizer, dataclasses.replace(mcq, answer=letter), passages,
                                   target, utility_span, max_length, add_eos, reserve)
            for letter in mcq.options}


def collate(examples: Iterable[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids [B, T] long; attention_mask, target_mask, utility_mask
    [B, T] bool (False on padding).

    >>> batch = collate([EncodedExample([5, 6, 7], [False, True, True], [False, False, True]),
    ...                  EncodedExample([8], [True], [True])], pad_id=0)
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[True, True, True], [True, False, False]])
    """
    examples = list(examples)
    width = max(len(e.input_ids) for e in examples)
    batch = {key: torch.zeros(len(examples), width, dtype=torch.bool)
             for key in ("attention_mask", "target_mask", "utility_mask")}
    batch["input_ids"] = torch.full((len(examples), width), pad_id, dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        batch["input_ids"][row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        batch["attention_mask"][row, :n] = True
        batch["target_mask"][row, :n] = torch.tensor(ex.target_mask, dtype=torch.bool)
        batch["utility_mask"][row, :n] = torch.tensor(ex.utility_mask, dtype=torch.bool)
    return batch


# ---------------------------------------------------------------------------------------
# Reading an answer back

_LEADING = re.compile(r"^\s*[(\[]?\s*([A-Za-z])\s*(?:[)\].:,]|$)")
_STATED = re.compile(r"\banswer\s*(?:is|:|=|-)?\s*(?:option\s*)?[(\[]?\s*([A-Za-z])(?![A-Za-z])",
                     re.IGNORECASE)
_OPTION = re.compile(r"\boption\s+[(\[]?([A-Z])\b", re.IGNORECASE)


def parse_answer_letter(text: str | None, letters: Iterable[str]) -> str | None:
    """The option letter a generated answer names, or None.

    >>> L = "ABCDE"
    >>> [parse_answer_letter(t, L) for t in ["B", "(B)", "Answer: B. because...", "b)",
    ...                                     "The answer is C", " C: Measles", "answer: (d)"]]
    ['B', 'B', 'B', 'B', 'C', 'C', 'D']
    >>> [parse_answer_letter(t, L) for t in ["A patient with fever", "I do not know", "",
    ...                                     "the answer is a rash", "F.", None]]
    [None, None, None, None, None, None]
    >>> parse_answer_letter("I think option E fits best", L)
    'E'
    """
    if not text:
        return None
    allowed = {letter.upper() for letter in letters}
    match = _LEADING.match(text)
    if match and match.group(1).upper() in allowed:
        return match.group(1).upper()
    for pattern in (_STATED, _OPTION):
        for found in pattern.finditer(text):
            letter = found.group(1)
            end = text[found.end():found.end() + 1]
            # a lowercase letter must be delimited, or "the answer is a rash" would read "A"
            if letter.islower() and end not in (")", "]", ".", ":", ","):
                continue
            if letter.upper() in allowed:
                return letter.upper()
    return None
