"""Preference pairs that reward grounded, factual rationales (the ranking behind ``jmlr
preferences``): pure functions over already-scored samples, no model and no spaCy here.

For one training question, several answers with rationales are sampled from the model with its
retrieved passages. Each :class:`Sample` carries whether its answer is correct, the UMLS-F F1 of
its rationale against the reference rationale (None when the question has none), and the
concepts of its rationale that appear in neither the question, nor the passages read, nor the
reference (:func:`unsupported_concepts`: a hallucination proxy). Samples are ranked

- ``factuality``: by correctness, then UMLS-F F1, then the share of unsupported concepts
  (fewer is better);
- ``correctness``: by correctness alone (the baseline the factuality signal must beat);

and pairs are drawn strictly better → worse (:func:`preference_pairs`), written in trl's
preference layout ``{prompt, chosen, rejected}`` with the scores beside them
(:func:`preference_row`), so that other tools can train on the rows too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

SIGNALS = ("factuality", "correctness")


@dataclass(frozen=True)
class Sample:
    text: str                       # the sampled completion (answer and rationale)
    correct: bool
    umls_f1: float | None           # rationale vs reference; None without a reference
    concepts: int                   # concepts linked in the rationale
    unsupported: int                # of those, in neither question, passages nor reference

    @property
    def unsupported_share(self) -> float:
        return self.unsupported / self.concepts if self.concepts else 0.0


def unsupported_concepts(rationale: set[str], question: set[str], passages: set[str],
                         reference: set[str]) -> set[str]:
    """The rationale's concepts that nothing the model was given, nor the reference, has.

    >>> sorted(unsupported_concepts({"C1", "C2", "C3", "C4"}, {"C1"}, {"C2"}, {"C3"}))
    ['C4']
    """
    return rationale - question - passages - reference


def preference_key(sample: Sample, signal: str) -> tuple[float, ...]:
    """What ranks a sample (higher is better) under ``signal``.

    >>> s = Sample("x", True, 0.5, 4, 1)
    >>> preference_key(s, "factuality"), preference_key(s, "correctness")
    ((1.0, 0.5, -0.25), (1.0,))
    """
    if signal == "correctness":
        return (float(sample.correct),)
    if signal != "factuality":
        raise ValueError(f"unknown preference signal {signal!r} ({', '.join(SIGNALS)})")
    return (float(sample.correct), sample.umls_f1 if sample.umls_f1 is not None else 0.0,
            -sample.unsupported_share)


def preference_pairs(samples: Sequence[Sample], signal: str, max_pairs: int
                     ) -> list[tuple[int, int]]:
    """Up to ``max_pairs`` (chosen, rejected) index pairs whose chosen sample ranks strictly
    above the rejected one: best against worst first, then best against the next worst, then
    the second best against the worst, ... (the widest gaps first). Identical texts never pair.

    >>> s = [Sample("a", False, 0.9, 2, 0), Sample("b", True, 0.2, 5, 4),
    ...      Sample("c", True, 0.6, 4, 0), Sample("d", False, 0.1, 3, 3)]
    >>> preference_pairs(s, "factuality", 3)      # c > b > a > d
    [(2, 3), (2, 0), (1, 3)]
    >>> preference_pairs(s, "correctness", 3)     # {b, c} > {a, d}: ties never pair
    [(1, 3), (1, 0), (2, 3)]
    >>> preference_pairs([Sample("a", True, None, 0, 0)] * 2, "factuality", 5)
    []
    """
    keys = [preference_key(s, signal) for s in samples]
    order = sorted(range(len(samples)), key=lambda i: (tuple(-k for k in keys[i]), i))
    candidates = []
    for a, chosen in enumerate(order):
        for b in range(len(order) - 1, a, -1):
            rejected = order[b]
            if keys[chosen] > keys[rejected] and samples[chosen].text != samples[rejected].text:
                candidates.append((a + (len(order) - 1 - b), a, chosen, rejected))
    candidates.sort()
    return [(chosen, rejected) for _, _, chosen, rejected in candidates[:max_pairs]]


def preference_row(question_id: str, prompt: str, samples: Sequence[Sample],
                   pair: tuple[int, int], signal: str) -> dict[str, Any]:
    """One row in trl's preference layout, with the two samples' scores and the signal.

    >>> s = [Sample(" B: Gout", True, 0.5, 2, 0), Sample(" A: Measles", False, 0.0, 2, 2)]
    >>> row = preference_row("q1", "Question: ...\\nAnswer:", s, (0, 1), "factuality")
    >>> row["chosen"], row["rejected"], row["scores"]["rejected"]["unsupported"]
    (' B: Gout', ' A: Measles', 2)
    """
    chosen, rejected = samples[pair[0]], samples[pair[1]]
    return {"question_id": question_id, "prompt": prompt, "chosen": chosen.text,
            "rejected": rejected.text, "signal": signal,
            "scores": {"chosen": {k: v for k, v in asdict(chosen).items() if k != "text"},
                       "rejected": {k: v for k, v in asdict(rejected).items() if k != "text"}}}
