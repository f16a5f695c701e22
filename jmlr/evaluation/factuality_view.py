"""Reading the UMLS-F report that ``jmlr factuality`` writes, for the run report.

Kept apart from :mod:`jmlr.evaluation.factuality` so that rendering a report never imports
spaCy: this module only reads the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jmlr.errors import DataError

REPORT_NAMES = ("report.json", "factuality.json")


def find_report(eval_dir: Path) -> dict[str, Any] | None:
    """The factuality report of one evaluation folder (beside the predictions or in a
    ``factuality/`` subfolder), or None."""
    for folder in (eval_dir, eval_dir / "factuality"):
        for name in REPORT_NAMES:
            path = folder / name
            if path.is_file():
                try:
                    return json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as err:
                    raise DataError(path, err.lineno, None, f"malformed JSON ({err.msg})") from None
    return None


def examples(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-example rows (each with at least ``id`` and ``f1``)."""
    rows = report.get("examples") or report.get("per_example") or []
    return [r for r in rows if isinstance(r, dict)]


def summaries(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Macro precision / recall / F1 rows, one per group the report gives (overall first)."""
    out = []
    overall = report.get("summary") or report.get("macro")
    if isinstance(overall, dict):
        out.append({"group": "all", **overall})
    for name, values in (report.get("by_group") or {}).items():
        if isinstance(values, dict):
            out.append({"group": name, **values})
    return out


def records_by_prediction(report: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Per-example records keyed by ``(dataset, mode, id)``, as the predictions are."""
    return {(str(ex.get("dataset", "")), str(ex.get("mode", "")), str(ex.get("id", ""))): ex
            for ex in examples(report)}


def concept_kinds(record: dict[str, Any]) -> dict[str, str]:
    """Concept id → matched / missed / extra for one example record.

    >>> concept_kinds({"matched": [{"cui": "C1"}], "missed": [{"cui": "C2"}], "extra": []})
    {'C1': 'matched', 'C2': 'missed'}
    """
    kinds: dict[str, str] = {}
    for kind in ("matched", "missed", "extra"):
        for concept in record.get(kind) or []:
            if isinstance(concept, dict) and "cui" in concept:
                kinds.setdefault(str(concept["cui"]), kind)
    return kinds


def highlighted(record: dict[str, Any], side: str) -> str:
    """The generated (``side="generated"``) or reference text of a record as HTML, each
    linked concept mention marked matched / missed / extra."""
    from jmlr.evaluation.umls_f import highlight

    text = str(record.get(side) or "")
    concepts = [c for c in record.get(f"{side}_concepts") or []
                if isinstance(c, dict) and {"cui", "start", "end"} <= set(c)]
    concepts = [{"name": "", "score": 0.0, **c} for c in concepts]
    return highlight(text, concepts, concept_kinds(record))


def record_summary(record: dict[str, Any]) -> str:
    """One line: P / R / F1 and the matched / missed / extra counts.

    >>> record_summary({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "matched": [{}],
    ...                 "missed": [], "extra": [{}]})
    'UMLS-F: P 0.500 · R 1.000 · F1 0.667 · 1 matched, 0 missed, 1 extra'
    """
    def num(key: str) -> str:
        value = record.get(key)
        return f"{float(value):.3f}" if isinstance(value, int | float) else "–"

    counts = ", ".join(f"{len(record.get(k) or [])} {k}" for k in ("matched", "missed", "extra"))
    return f"UMLS-F: P {num('precision')} · R {num('recall')} · F1 {num('f1')} · {counts}"
