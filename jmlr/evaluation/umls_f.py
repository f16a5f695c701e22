"""UMLS-F: concept-set precision, recall and F1 of a generated rationale against a reference.

Pure functions over concept ids and already-extracted concepts (no spaCy here): reading
the rationale pairs of a predictions file, the per-example scores, their macro averages, the per-example report records, and a
self-contained HTML page (inline SVG histogram, concepts highlighted in three colours).
:mod:`jmlr.evaluation.factuality` extracts the concepts and calls these.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jmlr.errors import DataError
from jmlr.io import read_jsonl


@dataclass(frozen=True)
class Concept:
    """One linked mention: the concept id, its canonical name, the mention's character span
    ``text[start:end]`` and surface text, and the linker's similarity score."""

    cui: str
    name: str
    start: int
    end: int
    text: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "score": round(float(self.score), 4)}


@dataclass(frozen=True)
class SetScores:
    precision: float
    recall: float
    f1: float


def set_scores(generated: set[str], reference: set[str]) -> SetScores:
    """UMLS-F of one example: G = generated concept ids, R = reference concept ids.

    P = |G∩R|/|G|, R = |G∩R|/|R|, F1 = 2PR/(P+R). Conventions: P is 0 when G is empty,
    R is 0 when R is empty, F1 is 0 when P+R is 0; so when BOTH sets are empty all three are
    0 (saying nothing is never rewarded).

    >>> set_scores({"C1", "C2"}, {"C1", "C2"})
    SetScores(precision=1.0, recall=1.0, f1=1.0)
    >>> set_scores({"C1"}, {"C2"})
    SetScores(precision=0.0, recall=0.0, f1=0.0)
    >>> s = set_scores({"C1", "C2"}, {"C2", "C3", "C4"})   # P 1/2, R 1/3, F1 2/5
    >>> s.precision, round(s.recall, 4), round(s.f1, 4)
    (0.5, 0.3333, 0.4)
    >>> set_scores(set(), {"C1"}), set_scores({"C1"}, set()), set_scores(set(), set())
    (SetScores(precision=0.0, recall=0.0, f1=0.0), SetScores(precision=0.0, recall=0.0, f1=0.0), SetScores(precision=0.0, recall=0.0, f1=0.0))
    """
    common = len(generated & reference)
    precision = common / len(generated) if generated else 0.0
    recall = common / len(reference) if reference else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return SetScores(precision, recall, f1)


def macro_average(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Macro P / R / F1 over per-example records (their generated_concepts and
    reference_concepts), with n and the empty-set counts.

    >>> rows = [{"generated_concepts": ["C1"], "reference_concepts": ["C1", "C2"]},
    ...         {"generated_concepts": [], "reference_concepts": [{"cui": "C3"}]}]
    >>> macro_average(rows)
    {'n': 2, 'precision': 0.5, 'recall': 0.25, 'f1': 0.333333, 'n_empty_generated': 1, 'n_empty_reference': 0}
    >>> macro_average([])["f1"]
    0.0
    """
    from jmlr.evaluation.metric_modules import load_metric

    if not records:     # evaluate refuses an empty batch
        return {"n": 0, "precision": 0.0, "recall": 0.0, "f1": 0.0,
                "n_empty_generated": 0, "n_empty_reference": 0}
    # computed by the shipped evaluate module (metric_modules/umls_f) from the concept ids
    return load_metric("umls_f").compute(
        predictions=[_cuis(r["generated_concepts"]) for r in records],
        references=[_cuis(r["reference_concepts"]) for r in records])


def _cuis(concepts: Sequence[Any]) -> list[str]:
    """The concept ids of a record's concept list (concept objects as JSON, or bare ids)."""
    return [str(c["cui"]) if isinstance(c, dict) else str(c) for c in concepts]


def _concept_list(cuis: Iterable[str], names: dict[str, str],
                  mentions: dict[str, list[str]]) -> list[dict[str, Any]]:
    return [{"cui": c, "name": names.get(c, ""), "mentions": mentions.get(c, [])}
            for c in sorted(cuis)]


def _mentions(*concept_lists: Sequence[Concept]) -> dict[str, list[str]]:
    """Distinct surface texts per concept id, in order of appearance."""
    out: dict[str, list[str]] = {}
    for concepts in concept_lists:
        for c in concepts:
            texts = out.setdefault(c.cui, [])
            if c.text not in texts:
                texts.append(c.text)
    return out


def example_record(meta: dict[str, Any], generated_text: str, reference_text: str,
                   generated: Sequence[Concept], reference: Sequence[Concept]) -> dict[str, Any]:
    """One example of the report: texts, the concepts found in each (with spans), the
    matched / missed / extra concept ids with names and surface mentions, and P / R / F1.

    >>> g = [Concept("C1", "fever", 0, 5, "fever", 1.0), Concept("C9", "rash", 10, 14, "rash", 0.9)]
    >>> r = [Concept("C1", "fever", 4, 11, "pyrexia", 1.0), Concept("C2", "cough", 16, 21, "cough", 1.0)]
    >>> rec = example_record({"id": "q1"}, "fever and rash", "has pyrexia and cough", g, r)
    >>> [m["cui"] for m in rec["matched"]], [m["cui"] for m in rec["missed"]], rec["extra"][0]["mentions"]
    (['C1'], ['C2'], ['rash'])
    >>> rec["matched"][0]["mentions"], rec["precision"], rec["recall"]
    (['fever', 'pyrexia'], 0.5, 0.5)
    """
    g_set, r_set = {c.cui for c in generated}, {c.cui for c in reference}
    names = {c.cui: c.name for c in (*generated, *reference)}
    scores = set_scores(g_set, r_set)
    both = _mentions(generated, reference)
    return {
        **meta,
        "generated": generated_text,
        "reference": reference_text,
        "generated_concepts": [c.to_json() for c in generated],
        "reference_concepts": [c.to_json() for c in reference],
        "matched": _concept_list(g_set & r_set, names, both),
        "missed": _concept_list(r_set - g_set, names, _mentions(reference)),
        "extra": _concept_list(g_set - r_set, names, _mentions(generated)),
        "precision": round(scores.precision, 6),
        "recall": round(scores.recall, 6),
        "f1": round(scores.f1, 6),
    }


@dataclass
class RationalePair:
    meta: dict[str, Any]     # id, dataset, mode, scoring (those present)
    generated: str
    reference: str


def read_predictions(path: str | Path) -> tuple[list[RationalePair], dict[str, int]]:
    """Generated / reference rationale pairs of a predictions jsonl, and skip counts.

    The generated text is ``rationale``, or ``generated`` where ``rationale`` is null. Rows
    with neither (answer-scoring rows) count as ``skipped_no_generated``; rows whose
    ``reference_rationale`` is null or blank count as ``skipped_no_reference``.
    """
    path = Path(path)
    pairs: list[RationalePair] = []
    skipped = {"skipped_no_generated": 0, "skipped_no_reference": 0}
    seen: dict[tuple[str, ...], int] = {}
    for line, row in read_jsonl(path):
        qid = row.get("id")
        if isinstance(qid, bool) or not isinstance(qid, str | int) or str(qid) == "":
            raise DataError(path, line, "id", "missing or not a non-empty string")
        for key in ("dataset", "mode", "scoring", "rationale", "generated", "reference_rationale"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise DataError(path, line, key, "expected text or null")
        if "reference_rationale" not in row:
            raise DataError(path, line, "reference_rationale", "missing (null where there is none)")
        if "rationale" not in row and "generated" not in row:
            raise DataError(path, line, "rationale", "missing (need 'rationale' or 'generated')")
        generated = row["rationale"] if row.get("rationale") is not None else row.get("generated")
        reference = row["reference_rationale"]
        if generated is None:
            skipped["skipped_no_generated"] += 1
            continue
        if not reference or not reference.strip():
            skipped["skipped_no_reference"] += 1
            continue
        meta = {"id": str(qid), **{k: row[k] for k in ("dataset", "mode", "scoring") if row.get(k)}}
        key = tuple(str(meta.get(k, "")) for k in ("dataset", "mode", "scoring", "id"))
        if key in seen:
            raise DataError(path, line, "id", f"duplicate example {'/'.join(key)} (first on line {seen[key]})")
        seen[key] = line
        pairs.append(RationalePair(meta, generated, reference))
    return pairs, skipped


def group_name(record: dict[str, Any]) -> str:
    """Examples are grouped by dataset and mode (a trained vs frozen vs no-retrieval run).

    >>> group_name({"dataset": "medqa", "mode": "trained"}), group_name({})
    ('medqa/trained', 'all')
    """
    parts = [str(record[k]) for k in ("dataset", "mode") if record.get(k)]
    return "/".join(parts) or "all"


def summarize(records: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(overall macro scores, {group: macro scores}) over per-example records."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(group_name(rec), []).append(rec)
    return macro_average(records), {name: macro_average(rows) for name, rows in sorted(groups.items())}


# ---------------------------------------------------------------------------------------
# HTML


COLOURS = {"matched": "#a8e6a3", "missed": "#ffd08a", "extra": "#f7a6a6"}


def f1_histogram_svg(values: Sequence[float], bins: int = 10, width: int = 420,
                     height: int = 180) -> str:
    """An inline SVG bar chart of per-example F1 over ``bins`` equal bins of [0, 1]
    (the last bin includes 1.0).

    >>> svg = f1_histogram_svg([0.0, 0.05, 1.0], bins=2)
    >>> svg.startswith("<svg") and svg.count("<rect") == 2 and ">2</text>" in svg
    True
    """
    counts = [0] * bins
    for v in values:
        counts[min(int(float(v) * bins), bins - 1)] += 1
    top = max(counts) or 1
    left, bottom, plot_h = 30, 24, height - 40
    bar_w = (width - left - 10) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="histogram of per-example F1">']
    for i, count in enumerate(counts):
        h = plot_h * count / top
        x, y = left + i * bar_w, height - bottom - h
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                     f'fill="#4a78b5"><title>F1 in [{i / bins:.1f}, {(i + 1) / bins:.1f}'
                     f'{"]" if i == bins - 1 else ")"}: {count}</title></rect>')
        parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}" font-size="10" '
                     f'text-anchor="middle">{count}</text>')
    axis_y = height - bottom
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{width - 10}" y2="{axis_y}" stroke="#333"/>')
    for i in range(bins + 1):
        x = left + i * bar_w
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 14}" font-size="10" '
                     f'text-anchor="middle">{i / bins:.1f}</text>')
    parts.append(f'<text x="{width / 2:.0f}" y="{height - 1}" font-size="11" '
                 f'text-anchor="middle">per-example F1</text></svg>')
    return "".join(parts)


def highlight(text: str, concepts: Sequence[dict[str, Any]], kind_of: dict[str, str]) -> str:
    """Escape ``text`` and wrap each concept span in ``<mark class=KIND>`` where KIND is
    ``kind_of[cui]``; a span linked to several concepts takes the first kind in
    matched, missed, extra order; overlapping later spans are left plain.

    >>> highlight("fever & rash", [{"cui": "C1", "name": "Fever", "start": 0, "end": 5,
    ...           "score": 1.0}], {"C1": "matched"})
    '<mark class="matched" title="C1 Fever (1.00)">fever</mark> &amp; rash'
    """
    by_span: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for c in concepts:
        by_span.setdefault((int(c["start"]), int(c["end"])), []).append(c)
    out, pos = [], 0
    rank = {"matched": 0, "missed": 1, "extra": 2}
    for (start, end), linked in sorted(by_span.items()):
        if start < pos:
            continue
        kind = min((kind_of.get(c["cui"], "extra") for c in linked), key=lambda k: rank.get(k, 3))
        title = "; ".join(f'{c["cui"]} {c["name"]} ({float(c["score"]):.2f})' for c in linked)
        out.append(html.escape(text[pos:start]))
        out.append(f'<mark class="{kind}" title="{html.escape(title)}">'
                   f"{html.escape(text[start:end])}</mark>")
        pos = end
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _score_row(name: str, s: dict[str, Any]) -> str:
    cells = [html.escape(name), str(s["n"]), f'{s["precision"]:.3f}', f'{s["recall"]:.3f}',
             f'{s["f1"]:.3f}', str(s["n_empty_generated"]), str(s["n_empty_reference"])]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_html(report: dict[str, Any]) -> str:
    """The whole report as one self-contained HTML page (no external resources)."""
    summary, groups, records = report["summary"], report["by_group"], report["examples"]
    style = "".join(f"mark.{k}{{background:{v};padding:0 2px;border-radius:3px}}"
                    for k, v in COLOURS.items())
    head = ["group", "n", "precision", "recall", "F1", "empty generated", "empty reference"]
    rows = [_score_row("all", summary)] + [_score_row(g, s) for g, s in groups.items()]
    settings = report.get("settings", {})
    facts = [f"knowledge base: {html.escape(str(report.get('kb', '')))} "
             f"({report.get('kb_concepts', '?')} concepts)",
             f"pipeline: {html.escape(str(report.get('pipeline', '')))}",
             "linker settings: " + html.escape(", ".join(f"{k}={v}" for k, v in settings.items())),
             f"skipped rows: {report.get('skipped_no_reference', 0)} without a reference, "
             f"{report.get('skipped_no_generated', 0)} without a generated text"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>UMLS-F report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto;padding:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px}"
        ".example{border-top:1px solid #ccc;margin-top:1em}.text{line-height:1.7}"
        f"{style}</style></head><body>",
        "<h1>UMLS-F of generated rationales</h1>",
        "<p>Per example: G = concept ids of the generated rationale, R = of the reference; "
        "P = |G∩R|/|G|, R = |G∩R|/|R|, F1 = 2PR/(P+R) (0 when a set is empty); "
        "macro averages over examples.</p>",
        '<table id="summary"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
        + "".join(rows) + "</table>",
        "<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>",
        "<h2>Per-example F1</h2>", f1_histogram_svg([r["f1"] for r in records]),
        '<h2>Examples</h2><p class="legend">'
        '<mark class="matched">matched</mark> in both texts · '
        '<mark class="missed">missed</mark> in the reference only · '
        '<mark class="extra">extra</mark> in the generated text only</p>',
    ]
    for rec in records:
        kind = {m["cui"]: "matched" for m in rec["matched"]}
        kind.update({m["cui"]: "missed" for m in rec["missed"]})
        kind.update({m["cui"]: "extra" for m in rec["extra"]})
        title = " / ".join(str(rec[k]) for k in ("dataset", "mode", "id") if rec.get(k))
        parts.append(
            f'<div class="example"><h3>{html.escape(title)}</h3>'
            f'<p>P {rec["precision"]:.3f} · R {rec["recall"]:.3f} · F1 {rec["f1"]:.3f} · '
            f'{len(rec["matched"])} matched, {len(rec["missed"])} missed, '
            f'{len(rec["extra"])} extra</p>'
            f'<p class="text"><b>Generated:</b> '
            f'{highlight(rec["generated"], rec["generated_concepts"], kind)}</p>'
            f'<p class="text"><b>Reference:</b> '
            f'{highlight(rec["reference"], rec["reference_concepts"], kind)}</p></div>')
    parts.append("</body></html>")
    return "\n".join(parts)
