"""Predictions and the numbers computed from them: accuracy, bootstrap interval, tables.

A predictions file has one JSON object a line (see :class:`Prediction`); ``jmlr evaluate``
writes it, ``jmlr factuality`` and ``jmlr report`` read it. Accuracy and its bootstrap
interval are computed by the ``evaluate`` metric module shipped in the package
(``metric_modules/mcq_accuracy``, loaded by path: evaluate's hub ``accuracy`` script cannot
be fetched offline).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jmlr.errors import DataError
from jmlr.io import read_jsonl

MODES = ("none", "frozen", "trained")
SCORINGS = ("letter", "letter_debiased", "option_text", "generate")
MODE_LABELS = {"none": "no retrieval", "frozen": "frozen retriever (RAG)",
               "trained": "trained retriever (JMLR)"}


@dataclass
class Prediction:
    """One answered question under one mode and one scoring method."""

    id: str
    dataset: str
    mode: str
    scoring: str
    gold: str
    predicted: str | None
    correct: bool
    option_scores: dict[str, float] = field(default_factory=dict)
    retrieved: list[dict[str, Any]] = field(default_factory=list)  # passages read: [{"id", "score"}], best first
    generated: str | None = None
    rationale: str | None = None
    reference_rationale: str | None = None
    # every candidate the retriever ranked (the read ones first): [{"id", "score"}], best first
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any], path: str | Path = "<memory>",
                  line: int | None = None) -> Prediction:
        """Validate one predictions row; DataError names the file, line and field."""
        text_fields = ("id", "dataset", "mode", "gold")
        for key in text_fields:
            if not isinstance(row.get(key), str) or not row[key]:
                raise DataError(path, line, key, "missing or not a non-empty string")
        if row["mode"] not in MODES:
            raise DataError(path, line, "mode", f"{row['mode']!r} is not one of {', '.join(MODES)}")
        scoring = row.get("scoring", "letter")
        if scoring not in SCORINGS:
            raise DataError(path, line, "scoring", f"{scoring!r} is not one of {', '.join(SCORINGS)}")
        if row.get("predicted") is not None and not isinstance(row["predicted"], str):
            raise DataError(path, line, "predicted", "must be a letter or null")
        if not isinstance(row.get("correct"), bool):
            raise DataError(path, line, "correct", "missing or not true/false")
        scores = row.get("option_scores") or {}
        if not isinstance(scores, dict) or not all(
                isinstance(v, int | float) for v in scores.values()):
            raise DataError(path, line, "option_scores", "must map letters to numbers")
        for key in ("retrieved", "candidates"):
            listed = row.get(key) or []
            if not isinstance(listed, list) or not all(
                    isinstance(r, dict) and "id" in r for r in listed):
                raise DataError(path, line, key, "must be a list of {\"id\", \"score\"} objects")
        for key in ("generated", "rationale", "reference_rationale"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise DataError(path, line, key, "must be text or null")
        return cls(id=row["id"], dataset=row["dataset"], mode=row["mode"], scoring=scoring,
                   gold=row["gold"], predicted=row.get("predicted"), correct=row["correct"],
                   option_scores={str(k): float(v) for k, v in scores.items()},
                   retrieved=row.get("retrieved") or [], candidates=row.get("candidates") or [],
                   generated=row.get("generated"),
                   rationale=row.get("rationale"), reference_rationale=row.get("reference_rationale"))


def read_predictions(path: str | Path) -> list[Prediction]:
    """All rows of a predictions file, validated (DataError on the first bad line)."""
    return [Prediction.from_json(row, path, line) for line, row in read_jsonl(path)]


# ---------------------------------------------------------------------------------------
# Accuracy and its uncertainty


def accuracy(correct: Sequence[bool]) -> float:
    """Share of correct answers (0.0 for no answers).

    >>> accuracy([True, False, True, True])
    0.75
    """
    return float(np.mean(np.asarray(correct, dtype=float))) if len(correct) else 0.0


def bootstrap_interval(correct: Sequence[bool], samples: int, seed: int,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy: the questions resampled with
    replacement ``samples`` times, seeded (``mcq_accuracy``'s own computation).

    >>> bootstrap_interval([True] * 5, samples=100, seed=0)
    (1.0, 1.0)
    >>> low, high = bootstrap_interval([True, False] * 50, samples=500, seed=0)
    >>> 0.35 < low < 0.5 < high < 0.65
    True
    """
    found = mcq_accuracy(["A" if c else "" for c in correct], ["A"] * len(correct), samples,
                         seed, level)
    return found["ci_low"], found["ci_high"]


def mcq_accuracy(predicted: Sequence[str | None], gold: Sequence[str], samples: int, seed: int,
                 level: float = 0.95) -> dict[str, Any]:
    """accuracy, ci_low, ci_high, n, n_correct through the shipped ``mcq_accuracy`` metric."""
    from jmlr.evaluation.metric_modules import load_metric

    if not gold:        # evaluate refuses an empty batch
        return {"accuracy": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 0, "n_correct": 0}
    return load_metric("mcq_accuracy").compute(
        predictions=[p or "" for p in predicted], references=list(gold),
        bootstrap_samples=samples, seed=seed, level=level)


def summarise(predictions: Sequence[Prediction], samples: int, seed: int,
              subjects: dict[str, str] | None = None) -> dict[str, Any]:
    """Accuracy, 95% interval, counts and per-subject accuracy of one (dataset, mode,
    scoring) group. Unparseable answers (``predicted`` null) count as wrong and are listed.

    >>> rows = [Prediction("q1", "d", "none", "letter", "A", "A", True),
    ...         Prediction("q2", "d", "none", "letter", "B", None, False)]
    >>> s = summarise(rows, samples=50, seed=0, subjects={"q1": "anatomy", "q2": "anatomy"})
    >>> s["accuracy"], s["n"], s["unparseable"], s["unparseable_ids"], s["per_subject"]
    (0.5, 2, 1, ['q2'], {'anatomy': {'accuracy': 0.5, 'n': 2}})
    """
    from jmlr.evaluation.letters import letter_distribution

    found = mcq_accuracy([p.predicted for p in predictions], [p.gold for p in predictions],
                         samples, seed)
    unparseable = [p.id for p in predictions if p.predicted is None]
    summary: dict[str, Any] = {
        "accuracy": found["accuracy"], "ci_low": found["ci_low"], "ci_high": found["ci_high"],
        "n": found["n"], "n_correct": found["n_correct"],
        "unparseable": len(unparseable), "unparseable_ids": unparseable,
        # what was predicted: a change of favourite letter is not a gain in reading
        "letters": letter_distribution([p.predicted for p in predictions],
                                       [p.gold for p in predictions]),
    }
    if subjects:
        by_subject: dict[str, list[bool]] = defaultdict(list)
        for p in predictions:
            if p.id in subjects:
                by_subject[subjects[p.id]].append(p.correct)
        if by_subject:
            summary["per_subject"] = {name: {"accuracy": accuracy(v), "n": len(v)}
                                      for name, v in sorted(by_subject.items())}
    return summary


def group_predictions(predictions: Iterable[Prediction]
                      ) -> dict[str, dict[str, dict[str, list[Prediction]]]]:
    """``{dataset: {mode: {scoring: [predictions]}}}``, in first-seen order."""
    groups: dict[str, dict[str, dict[str, list[Prediction]]]] = {}
    for p in predictions:
        groups.setdefault(p.dataset, {}).setdefault(p.mode, {}).setdefault(p.scoring, []).append(p)
    return groups


# ---------------------------------------------------------------------------------------
# The paper's table: datasets as columns plus their average, one row per mode and scoring


def mode_labels(trained_generator: bool = True, trained_retriever: bool = True) -> dict[str, str]:
    """What each mode's row is called, by what the run actually trained.

    >>> mode_labels(trained_retriever=False)["trained"]
    'trained generator, frozen retriever (RAG run)'
    """
    labels = dict(MODE_LABELS)
    if not trained_retriever:
        labels["trained"] = "trained generator, frozen retriever (RAG run)"
    elif not trained_generator:
        labels["trained"] = "base generator, trained retriever"
    return labels


def accuracy_table(results: dict[str, dict[str, dict[str, dict[str, Any]]]],
                   labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Build ``{"columns": [...datasets, "Average"], "rows": [{"mode", "scoring", "values"}]}``
    from ``results[dataset][mode][scoring]["accuracy"]``. Values are percentages (None where
    a dataset lacks that row); the average is over the datasets present in the row.

    >>> t = accuracy_table({"MedQA": {"none": {"letter": {"accuracy": 0.5}}},
    ...                     "MedMCQA": {"none": {"letter": {"accuracy": 0.25}}}})
    >>> t["columns"], t["rows"][0]["values"]
    (['MedQA', 'MedMCQA', 'Average'], [50.0, 25.0, 37.5])
    """
    datasets = list(results)
    keys: list[tuple[str, str]] = []
    for mode in MODES:
        for dataset in datasets:
            for scoring in results[dataset].get(mode, {}):
                if (mode, scoring) not in keys:
                    keys.append((mode, scoring))
    rows = []
    for mode, scoring in keys:
        values, flags = [], []
        for dataset in datasets:
            entry = results[dataset].get(mode, {}).get(scoring)
            values.append(None if entry is None else round(100.0 * entry["accuracy"], 2))
            letters = (entry or {}).get("letters") or {}
            flags.append(f"{letters['top_letter']} {100 * letters['top_share']:.0f}%"
                         if letters.get("degenerate") else None)
        present = [v for v in values if v is not None]
        average = round(sum(present) / len(present), 2) if present else None
        rows.append({"mode": mode, "label": (labels or MODE_LABELS).get(mode, mode),
                     "scoring": scoring, "values": [*values, average],
                     "degenerate": [*flags, None]})
    return {"columns": [*datasets, "Average"], "rows": rows}


def markdown_table(table: dict[str, Any]) -> str:
    """The accuracy table as Markdown (percentages with one decimal, "–" where missing).

    >>> print(markdown_table({"columns": ["MedQA", "Average"],
    ...     "rows": [{"mode": "trained", "scoring": "letter", "values": [62.5, 62.5]}]}))
    | mode | scoring | MedQA | Average |
    |---|---|---:|---:|
    | trained retriever (JMLR) | letter | 62.5 | 62.5 |
    """
    header = ["mode", "scoring", *table["columns"]]
    lines = ["| " + " | ".join(header) + " |",
             "|---|---|" + "---:|" * len(table["columns"])]
    flagged = False
    for row in table["rows"]:
        flags = row.get("degenerate") or [None] * len(row["values"])
        cells = ["–" if v is None else f"{v:.1f}" + (f" (⚠ {flag})" if flag else "")
                 for v, flag in zip(row["values"], flags, strict=True)]
        flagged = flagged or any(flags)
        label = row.get("label") or MODE_LABELS.get(row["mode"], row["mode"])
        lines.append("| " + " | ".join([label, row["scoring"], *cells]) + " |")
    if flagged:
        lines.append("\n⚠ one letter is at least half of the answers and at least twice its "
                     "share among the gold answers: that accuracy measures a favourite letter, "
                     "not reading (see letter_debiased and option_text).")
    return "\n".join(lines)
