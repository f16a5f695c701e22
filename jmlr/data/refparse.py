"""Parse questions whose options are written inside the text, as in the ``jmlr_ref`` format.

The JMLR authors' training files keep a question and its options in one ``input`` string
and put the answer letter first in ``output``. Options appear in several layouts, all
handled here:

- one per line: ``A. text`` / ``A: text`` / ``A) text`` / ``(A) text``;
- the letter alone on a line and the option text on the next line(s);
- inline on one line: ``... ? A. text B. text C. text``.

The option block is the run of consecutive letter markers A, B, C, ... that gives the most
options (the latest such run when several tie, so that a stray "vitamin A." in the
question stem is not taken for the start of the options). Markers at line starts are
preferred over inline ones whenever they give at least two options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Each alternative holds exactly one named group: the option letter.
_MARKER = re.compile(
    r"^[ \t]*(?:\((?P<lone_paren>[A-Z])\)|(?P<lone>[A-Z])[.):\]]?)[ \t]*$"  # letter alone on a line
    r"|(?<!\S)\((?P<paren>[A-Z])\)[ \t]*"                                    # (A) text
    r"|(?<!\S)(?P<punct>[A-Z])[.:)\]][ \t]+",                                # A. / A: / A) text
    re.MULTILINE,
)
# Trailing prompt lines ("Answer:", "Please only give the correct option.") are not option text.
_TRAILER = re.compile(
    r"(?:\n[ \t]*(?:(?i:please\b[^\n]*)|(?i:(?:the\s+)?(?:correct\s+)?answer(?:\s+is)?)\s*[:：]?)[ \t]*)+\s*\Z")
# A label line just before the options ("Options:") belongs to neither question nor options.
_OPTIONS_LABEL = re.compile(r"\n[ \t]*(?i:options|answer choices|choices)[ \t]*:?[ \t]*\Z")
_ANSWER = re.compile(
    r"^\s*(?:(?i:(?:the\s+)?(?:correct\s+)?answer(?:\s+is)?)\s*[:：\-]?\s*)?"
    r"\(?(?P<letter>[A-Z])(?![A-Za-z0-9])\)?")


@dataclass(frozen=True)
class _Marker:
    letter: str
    start: int
    end: int
    at_line_start: bool


def _markers(text: str) -> list[_Marker]:
    found = []
    for match in _MARKER.finditer(text):
        letter = match.group(match.lastgroup or "")
        line_start = text.rfind("\n", 0, match.start()) + 1
        at_line_start = not text[line_start:match.start()].strip()
        found.append(_Marker(letter, match.start(), match.end(), at_line_start))
    return found


def _best_chain(text: str, markers: list[_Marker]) -> list[_Marker] | None:
    """The longest run A, B, C, ... (latest start on ties) whose options are all non-empty."""
    best: list[_Marker] | None = None
    for i, first in enumerate(markers):
        if first.letter != "A" or not text[:first.start].strip():
            continue
        chain = [first]
        for marker in markers[i + 1:]:
            if marker.letter == chr(ord(chain[-1].letter) + 1):
                chain.append(marker)
        bounds = [m.start for m in chain[1:]] + [len(text)]
        if len(chain) < 2 or any(not text[m.end:b].strip() for m, b in zip(chain, bounds, strict=True)):
            continue
        if best is None or len(chain) >= len(best):
            best = chain
    return best


def split_options(text: str) -> tuple[str, dict[str, str]] | None:
    """Split a question with embedded options into (question, {letter: option}); None if no
    option block of at least two options is found.

    >>> split_options("Which drug?\\nA. Aspirin\\nB. Heparin\\nC. Warfarin")
    ('Which drug?', {'A': 'Aspirin', 'B': 'Heparin', 'C': 'Warfarin'})
    >>> split_options("Best treatment?\\nA\\nSurgery\\nB\\nObservation\\nAnswer:")
    ('Best treatment?', {'A': 'Surgery', 'B': 'Observation'})
    >>> split_options("Lack of vitamin A. causes? (A) Night blindness (B) Scurvy")
    ('Lack of vitamin A. causes?', {'A': 'Night blindness', 'B': 'Scurvy'})
    >>> split_options("A 45-year-old man has chest pain.") is None
    True
    """
    if "\n" not in text and "\\n" in text:  # newlines stored as the two characters "\n"
        text = text.replace("\\n", "\n")
    text = _TRAILER.sub("", text.strip())
    markers = _markers(text)
    chain = _best_chain(text, [m for m in markers if m.at_line_start]) or _best_chain(text, markers)
    if chain is None:
        return None
    question = _OPTIONS_LABEL.sub("", text[:chain[0].start].rstrip()).strip()
    bounds = [m.start for m in chain[1:]] + [len(text)]
    options = {m.letter: " ".join(text[m.end:b].split()) for m, b in zip(chain, bounds, strict=True)}
    return question, options


def parse_output(output: str, options: dict[str, str]) -> tuple[str | None, str | None]:
    """The answer letter that ``output`` starts with, and the rationale after it.

    Separators after the letter and a restatement of the chosen option's text are dropped;
    what remains is the rationale. Text that does not restate the option counts as a
    rationale only when it is longer than the option text (a shorter tail is most likely
    the option in other words). The letter is None when ``output`` does not start with one.

    >>> opts = {"A": "Measles", "B": "Gout"}
    >>> parse_output("B", opts)
    ('B', None)
    >>> parse_output("B: Gout.", opts)
    ('B', None)
    >>> parse_output("B: Gout. Urate crystals deposit in the joint.", opts)
    ('B', 'Urate crystals deposit in the joint.')
    >>> parse_output("Correct Answer: (A)", opts)
    ('A', None)
    >>> parse_output("Because of fever", opts)
    (None, None)
    """
    match = _ANSWER.match(output)
    if match is None:
        return None, None
    letter = match.group("letter")
    rest = output[match.end():].lstrip(" \t\r\n.:;,-–—")
    option = options.get(letter, "")
    if option:
        restated = re.match(r"\s+".join(map(re.escape, option.split())), rest, re.IGNORECASE)
        if restated:
            rest = rest[restated.end():].lstrip(" \t\r\n.:;,-–—")
        elif len(rest.strip()) <= len(option):
            rest = ""
    rest = rest.strip()
    return letter, rest or None
