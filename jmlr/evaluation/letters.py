"""Letter answers that cannot mislead: which letters a model predicts, and letter scoring
freed of a favourite letter.

A small model scored by the likelihood of each option letter often answers one letter to
every question; when that letter's share among the gold answers changes, accuracy moves
without any reading. :func:`letter_distribution` reports what was predicted beside every
accuracy and flags a degenerate distribution; ``letter_debiased`` scoring averages each
option's letter probability over every cyclic rotation of the options (each content is shown
under every letter once), so a prior on letters cancels out.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from jmlr.data.schema import MCQ

# A predicted-letter distribution is flagged as degenerate when one letter takes at least this
# share of the answers and at least twice its share among the gold answers.
DEGENERATE_SHARE = 0.5


def letter_distribution(predicted: Sequence[str | None], gold: Sequence[str]) -> dict[str, Any]:
    """Counts of predicted and gold letters, the most predicted letter's share, the accuracy
    of always answering it (the prior's accuracy) and whether the predictions are degenerate.

    >>> d = letter_distribution(["A", "A", "A", "B"], ["A", "B", "C", "B"])
    >>> d["predicted"], d["top_letter"], d["top_share"], d["top_letter_accuracy"], d["degenerate"]
    ({'A': 3, 'B': 1}, 'A', 0.75, 0.25, True)
    >>> letter_distribution(["A", "B", "C"], ["A", "B", "C"])["degenerate"]
    False
    """
    answered = [p for p in predicted if p is not None]
    counts = Counter(answered)
    gold_counts = Counter(gold)
    out: dict[str, Any] = {"predicted": dict(sorted(counts.items())),
                           "gold": dict(sorted(gold_counts.items()))}
    if not answered:
        return {**out, "top_letter": None, "top_share": 0.0, "top_letter_accuracy": 0.0,
                "degenerate": False}
    top, top_count = max(counts.items(), key=lambda item: (item[1], item[0] == min(counts)))
    share = top_count / len(answered)
    gold_share = gold_counts.get(top, 0) / max(len(gold), 1)
    return {**out, "top_letter": top, "top_share": round(share, 4),
            "top_letter_accuracy": round(gold_share, 4),
            "degenerate": share >= DEGENERATE_SHARE and share >= 2 * gold_share}


def rotated(mcq: MCQ, shift: int) -> tuple[MCQ, list[int]]:
    """The question with its option texts shifted by ``shift`` positions, and for each shown
    position the index of the original option shown there.

    >>> q = MCQ("q", "?", {"A": "x", "B": "y", "C": "z"}, "A")
    >>> shown, order = rotated(q, 1)
    >>> list(shown.options.values()), order
    (['y', 'z', 'x'], [1, 2, 0])
    """
    texts = list(mcq.options.values())
    n = len(texts)
    order = [(i + shift) % n for i in range(n)]
    options = {letter: texts[j] for letter, j in zip(mcq.options, order, strict=True)}
    return dataclasses.replace(mcq, options=options, answer=next(iter(mcq.options))), order


def _log_softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    total = math.log(sum(math.exp(v - top) for v in values)) + top
    return [v - total for v in values]


def debiased_scores(per_rotation: Sequence[Sequence[float]], orders: Sequence[Sequence[int]]
                    ) -> list[float]:
    """Mean over rotations of each original option's letter log-probability, normalised over
    the letters within each rotation: ``per_rotation[s][i]`` is the score of the letter at
    position i under rotation s, ``orders[s][i]`` the original option shown there.

    A model that always prefers the first letter gives every option the same mean:

    >>> [round(x, 4) for x in debiased_scores([[0.0, -5.0], [0.0, -5.0]], [[0, 1], [1, 0]])]
    [-2.5067, -2.5067]
    """
    n = len(orders[0])
    sums = [0.0] * n
    for scores, order in zip(per_rotation, orders, strict=True):
        for position, value in enumerate(_log_softmax(scores)):
            sums[order[position]] += value
    return [s / len(orders) for s in sums]
