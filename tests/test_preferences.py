"""Preference ranking (jmlr/alignment/preferences.py): hand-checked orderings and pairs."""

from __future__ import annotations

import pytest

from jmlr.alignment.preferences import (
    Sample,
    preference_pairs,
    preference_row,
    unsupported_concepts,
)


def test_without_a_reference_fewer_unsupported_concepts_win_among_equally_correct():
    samples = [Sample("grounded", True, None, 4, 0), Sample("invents", True, None, 4, 3),
               Sample("wrong", False, None, 2, 0)]
    # grounded (1, 0, 0) > invents (1, 0, -0.75) > wrong (0, 0, 0)
    assert preference_pairs(samples, "factuality", 10) == [(0, 2), (0, 1), (1, 2)]
    assert preference_pairs(samples, "correctness", 10) == [(0, 2), (1, 2)]


def test_when_every_answer_is_wrong_only_the_factuality_signal_has_pairs():
    samples = [Sample("a", False, 0.1, 3, 1), Sample("b", False, 0.7, 3, 0)]
    assert preference_pairs(samples, "correctness", 5) == []
    assert preference_pairs(samples, "factuality", 5) == [(1, 0)]
    assert preference_pairs(samples, "factuality", 0) == []


def test_unsupported_concepts_and_rows():
    rationale = {"C_fever", "C_rash", "C_made_up"}
    assert unsupported_concepts(rationale, {"C_fever"}, {"C_rash"}, set()) == {"C_made_up"}
    samples = [Sample(" B: Gout", True, 1.0, 1, 0), Sample(" A: Measles", False, 0.0, 3, 1)]
    row = preference_row("q7", "Question: ...", samples, (0, 1), "factuality")
    assert set(row) >= {"prompt", "chosen", "rejected"}           # trl's preference layout
    assert row["scores"]["chosen"] == {"correct": True, "umls_f1": 1.0, "concepts": 1,
                                       "unsupported": 0}
    with pytest.raises(ValueError, match="unknown preference signal 'vibes'"):
        preference_pairs(samples, "vibes", 1)
