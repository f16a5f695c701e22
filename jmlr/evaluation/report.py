"""``jmlr report``: one self-contained HTML page and a Markdown twin for a run folder.

Sections: the accuracy table across modes (none / frozen / trained) and datasets, with
intervals and retrieval recall; the training curves from ``RUN/metrics.jsonl``; the UMLS-F
distribution from the factuality report; a per-example view with the passages read and the
rationale's concepts marked matched / missed / extra. A piece that is missing (no training
log, no evaluation, no factuality report) leaves its section saying so.

The HTML has its CSS inline and its plots as base64 PNG: no file or network access is
needed to read it. ``report.md`` carries the same tables and text (plots only in the HTML).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jmlr.config import Config
from jmlr.errors import DataError, UserError
from jmlr.evaluation import factuality_view as fview
from jmlr.evaluation import plots
from jmlr.evaluation.metrics import MODE_LABELS, Prediction, markdown_table, read_predictions
from jmlr.evaluation.report_render import (
    Section,
    esc,
    fmt,
    html_table,
    md_code,
    md_table,
    md_text,
    missing,
    render_html,
    render_markdown,
)
from jmlr.io import atomic_write, read_jsonl

log = logging.getLogger(__name__)

N_EXAMPLES = 8


@dataclass
class EvalResult:
    """What ``jmlr evaluate`` (and ``jmlr factuality``) left for one split."""

    split: str
    folder: Path
    metrics: dict[str, Any] | None
    predictions: list[Prediction]
    factuality: dict[str, Any] | None


# ---------------------------------------------------------------------------------------
# Reading the run folder


def read_training_log(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, evaluation rows) of ``RUN/metrics.jsonl``; ([], []) when absent."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        return [], []
    rows = [row for _, row in read_jsonl(path)]
    train = [r for r in rows if "split" not in r and "step" in r]
    evals = [r for r in rows if "split" in r and "step" in r]
    return train, evals


def read_eval_results(run_dir: Path) -> list[EvalResult]:
    """Every ``RUN/eval/<split>/`` with a metrics.json or predictions.jsonl."""
    results = []
    for folder in sorted(p for p in (run_dir / "eval").glob("*") if p.is_dir()):
        metrics_path, preds_path = folder / "metrics.json", folder / "predictions.jsonl"
        if not metrics_path.is_file() and not preds_path.is_file():
            continue
        metrics = None
        if metrics_path.is_file():
            try:
                metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise DataError(metrics_path, err.lineno, None, f"malformed JSON ({err.msg})") from None
        predictions = read_predictions(preds_path) if preds_path.is_file() else []
        results.append(EvalResult(folder.name, folder, metrics, predictions,
                                  fview.find_report(folder)))
    return results


# ---------------------------------------------------------------------------------------
# Sections


def accuracy_section(evals: list[EvalResult]) -> Section:
    """The paper's table per split, details with 95% intervals, and retrieval recall."""
    with_metrics = [e for e in evals if e.metrics]
    if not with_metrics:
        h, m = missing("No evaluation found: run `jmlr evaluate -c CONFIG --run RUN` first.")
        return Section("Accuracy", h, m)
    parts_html, parts_md, figures = [], [], []
    for e in with_metrics:
        metrics = e.metrics or {}
        table = metrics.get("table") or {"columns": [], "rows": []}
        parts_md.append(f"### Split {md_code(e.split)}\n\n{markdown_table(table)}")
        header = ["mode", "scoring", *table["columns"]]
        rows = [[r.get("label") or MODE_LABELS.get(r["mode"], r["mode"]), r["scoring"],
                 *("–" if v is None else f"{v:.1f}" for v in r["values"])] for r in table["rows"]]
        parts_html.append(f"<h3>Split <code>{esc(e.split)}</code> (accuracy, %)</h3>"
                          + html_table(header, rows, numeric_from=2))
        detail = []
        for dataset, by_mode in (metrics.get("results") or {}).items():
            for mode, by_scoring in by_mode.items():
                for scoring, s in by_scoring.items():
                    detail.append([dataset, mode, scoring, f"{100 * s['accuracy']:.1f}",
                                   f"[{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]",
                                   s["n"], s.get("unparseable", 0)])
        detail_header = ["dataset", "mode", "scoring", "accuracy %", "95% CI", "n", "unparseable"]
        parts_html.append(html_table(detail_header, detail, numeric_from=3))
        parts_md.append(md_table(detail_header, detail))
        scored = [(dataset, mode, vals) for dataset, by_mode in (metrics.get("retrieval") or {}).items()
                  for mode, vals in by_mode.items() if vals]
        if scored:
            keys = list(dict.fromkeys(k for _, _, vals in scored for k in vals))
            r_header = ["dataset", "mode", *keys]
            retrieval = [[dataset, mode, *(fmt(vals.get(k)) for k in keys)]
                         for dataset, mode, vals in scored]
            parts_html.append("<h4>Retrieval of gold passages</h4>" + html_table(r_header, retrieval, 2))
            parts_md.append("Retrieval of gold passages:\n\n" + md_table(r_header, retrieval))
        else:
            note = "No gold passage ids in these questions (or no retrieving mode): no recall@k."
            parts_html.append(missing(note)[0])
            parts_md.append(missing(note)[1])
        if table["rows"] and table["columns"]:
            # One dataset: its column and the average are the same bars.
            keep = len(table["columns"]) if len(table["columns"]) > 2 else 1
            series = {f"{r['mode']}/{r['scoring']}": r["values"][:keep] for r in table["rows"]}
            figures.append(plots.grouped_bars(table["columns"][:keep], series,
                                              f"accuracy by dataset ({e.split})"))
    return Section("Accuracy", "".join(parts_html), "\n\n".join(parts_md), figures)


TRAIN_CURVES = (("loss", "total loss"), ("gen_loss", "generator loss"),
                ("rank_loss", "retriever (rank) loss"), ("rank_accuracy", "rank accuracy"))


def training_section(train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]]) -> Section:
    """Curves of the logged losses, rank accuracy and dev recall@k / MRR over steps."""
    if not train_rows and not eval_rows:
        h, m = missing("No training log (RUN/metrics.jsonl is missing or empty).")
        return Section("Training curves", h, m)
    figures, lines = [], []
    for key, title in TRAIN_CURVES:
        points = [(r["step"], r[key]) for r in train_rows if isinstance(r.get(key), int | float)]
        if points:
            xs, ys = zip(*points, strict=True)
            figures.append(plots.line_plot({key: (xs, ys)}, title))
            lines.append([key, len(points), fmt(float(ys[0])), fmt(float(ys[-1]))])
    lr_keys = sorted({k for r in train_rows for k in r if k.startswith("lr")})
    if lr_keys:
        series = {k: tuple(zip(*[(r["step"], r[k]) for r in train_rows if k in r], strict=True))
                  for k in lr_keys}
        figures.append(plots.line_plot(series, "learning rates"))
    retrieval_keys = sorted({k for r in eval_rows for k, v in r.items()
                             if isinstance(v, int | float) and (k.startswith("recall") or k.lower().startswith("mrr"))})
    if retrieval_keys:
        series = {}
        for k in retrieval_keys:
            pts = [(r["step"], r[k]) for r in eval_rows if isinstance(r.get(k), int | float)]
            series[k] = tuple(zip(*pts, strict=True))
            lines.append([f"{eval_rows[0].get('split', 'dev')} {k}", len(pts), fmt(float(pts[0][1])),
                          fmt(float(pts[-1][1]))])
        figures.append(plots.line_plot(series, "retrieval of gold passages (dev)"))
    header = ["metric", "points", "first", "last"]
    body_html = html_table(header, lines)
    body_md = md_table(header, lines)
    if not retrieval_keys:
        note = "No retrieval evaluation rows (train.eval_every = 0 or no dev gold passages)."
        body_html += missing(note)[0]
        body_md += "\n\n" + missing(note)[1]
    return Section("Training curves", body_html, body_md, figures)


def factuality_section(evals: list[EvalResult]) -> Section:
    """UMLS-F: macro precision / recall / F1 and the distribution of per-example F1."""
    reports = [(e.split, e.factuality) for e in evals if e.factuality]
    if not reports:
        h, m = missing("No UMLS-F report: run `jmlr evaluate` with eval.scoring including "
                        "generate and factuality.kb set (or `jmlr factuality`).")
        return Section("UMLS-F (factuality of rationales)", h, m)
    rows, figures = [], []
    for split, report in reports:
        for summary in fview.summaries(report):
            rows.append([split, summary["group"], fmt(summary.get("precision")),
                         fmt(summary.get("recall")), fmt(summary.get("f1")), summary.get("n", "–")])
        by_group: dict[str, list[float]] = {}
        for ex in fview.examples(report):
            if isinstance(ex.get("f1"), int | float):
                group = "/".join(str(ex[k]) for k in ("dataset", "mode") if ex.get(k)) or "all"
                by_group.setdefault(group, []).append(float(ex["f1"]))
        if by_group:
            figures.append(plots.histogram(by_group, f"UMLS-F per example ({split})", "F1"))
    header = ["split", "group", "precision", "recall", "F1", "n"]
    return Section("UMLS-F (factuality of rationales)", html_table(header, rows, 2),
                   md_table(header, rows), figures)


def examples_section(evals: list[EvalResult], cfg: Config, n_examples: int) -> Section:
    """The first ``n_examples`` questions: answers per mode/scoring, passages read, and the
    generated rationale's concepts against the reference (matched / missed / extra)."""
    preds = [p for e in evals for p in e.predictions]
    if not preds:
        h, m = missing("No predictions to show.")
        return Section("Examples", h, m)
    questions, corpus = _question_and_corpus_texts(cfg, evals)
    records: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in evals:
        if e.factuality:
            records.update(fview.records_by_prediction(e.factuality))
    order: list[tuple[str, str]] = []
    for p in preds:
        if (p.dataset, p.id) not in order:
            order.append((p.dataset, p.id))
    html_parts = ['<p class="legend">Concepts: <mark class="matched">matched</mark> '
                  '<mark class="missed">missed</mark> <mark class="extra">extra</mark>; '
                  '<span class="gold">gold passage</span></p>']
    md_parts = []
    for dataset, qid in order[:n_examples]:
        rows = [p for p in preds if p.dataset == dataset and p.id == qid]
        mcq = questions.get(qid)
        gold_ids = set(mcq.gold_passage_ids) if mcq else set()
        h = [f'<div class="example"><h3>{esc(dataset)} / {esc(qid)}</h3>']
        md = [f"### {md_text(dataset)} / {md_text(qid)}"]
        if mcq:
            opts = "<br>".join(f"{esc(k)}: {esc(v)}" for k, v in mcq.options.items())
            h.append(f"<p>{esc(mcq.question)}</p><p>{opts}</p>")
            md.append(md_text(mcq.question) + "\n\n"
                      + "\n".join(f"- {md_text(k)}: {md_text(v)}" for k, v in mcq.options.items()))
        h.append(f"<p>Gold answer: <b>{esc(rows[0].gold)}</b></p>")
        md.append(f"Gold answer: **{md_text(rows[0].gold)}**")
        answer_rows = [[p.mode, p.scoring, p.predicted or "unparseable", "yes" if p.correct else "no"]
                       for p in rows]
        h.append(html_table(["mode", "scoring", "predicted", "correct"], answer_rows, 9))
        md.append(md_table(["mode", "scoring", "predicted", "correct"], answer_rows))
        shown_modes = set()
        for p in rows:
            if p.retrieved and p.mode not in shown_modes:
                shown_modes.add(p.mode)
                h.append(f"<p><b>Passages read ({esc(p.mode)})</b></p>")
                md.append(f"Passages read ({p.mode}):")
                for r in p.retrieved:
                    text = corpus.get(str(r["id"]), "")
                    snippet = text if len(text) <= 400 else text[:400] + "…"
                    cls = "passage gold" if str(r["id"]) in gold_ids else "passage"
                    h.append(f'<div class="{cls}"><code>{esc(r["id"])}</code> '
                             f'({fmt(r.get("score"))}) {esc(snippet)}</div>')
                    gold = " [gold]" if str(r["id"]) in gold_ids else ""
                    md.append(f"- {md_code(r['id'])} ({fmt(r.get('score'))}){gold} {md_text(snippet)}")
        for p in rows:
            if p.generated is None:
                continue
            record = records.get((p.dataset, p.mode, p.id))
            if record is not None:
                h.append(f"<p><b>Generated ({esc(p.mode)})</b>: "
                         f"{fview.highlighted(record, 'generated')}</p>"
                         f"<p><b>Reference</b>: {fview.highlighted(record, 'reference')}</p>"
                         f"<p>{esc(fview.record_summary(record))}</p>")
                md.append(f"Generated ({p.mode}): {md_text(record.get('generated', ''))}\n\n"
                          f"Reference: {md_text(record.get('reference', ''))}\n\n"
                          f"{md_text(fview.record_summary(record))}")
                continue
            h.append(f"<p><b>Generated ({esc(p.mode)})</b>: {esc(p.rationale or p.generated)}</p>")
            md.append(f"Generated ({p.mode}): {md_text(p.rationale or p.generated)}")
            if p.reference_rationale:
                h.append(f"<p><b>Reference</b>: {esc(p.reference_rationale)}</p>")
                md.append(f"Reference: {md_text(p.reference_rationale)}")
        h.append("</div>")
        html_parts.append("".join(h))
        md_parts.append("\n\n".join(md))
    return Section("Examples", "".join(html_parts), "\n\n".join(md_parts))


def _question_and_corpus_texts(cfg: Config, evals: list[EvalResult]) -> tuple[dict, dict[str, str]]:
    """Question objects by id and passage texts by id, as far as the config can load them
    (the report still renders without them, showing ids only)."""
    from jmlr.evaluation.mcq import eval_questions
    from jmlr.evaluation.passages import corpus_texts

    questions: dict[str, Any] = {}
    for e in evals:
        try:
            for qs in eval_questions(cfg, e.split).values():
                questions.update({q.id: q for q in qs})
        except (UserError, ValueError) as err:
            log.info("question texts for %s not available (%s)", e.split, err)
    corpus: dict[str, str] = {}
    if cfg.data.corpus:
        try:
            corpus = corpus_texts(cfg)
        except UserError as err:
            log.info("passage texts not available (%s)", err)
    return questions, corpus


# ---------------------------------------------------------------------------------------
# The command


def evaluation_report(cfg: Config, run_dir: Path) -> list[Section]:
    """The evaluate stage's sections: the accuracy table (first in the report), examples."""
    evals = read_eval_results(run_dir)
    accuracy = accuracy_section(evals)
    accuracy.order = 0
    return [accuracy, examples_section(evals, cfg, N_EXAMPLES)]


def training_report(cfg: Config, run_dir: Path) -> list[Section]:
    """The train stage's section: the curves of ``RUN/metrics.jsonl``."""
    training = training_section(*read_training_log(run_dir))
    training.order = 10
    return [training]


def factuality_report(cfg: Config, run_dir: Path) -> list[Section]:
    """The factuality stage's section: the UMLS-F distribution."""
    factuality = factuality_section(read_eval_results(run_dir))
    factuality.order = 50
    return [factuality]


def run_report(cfg: Config, run_dir: str | Path) -> dict[str, str]:
    """``jmlr report``: write ``RUN/report.html`` and ``RUN/report.md``, with the sections
    every registered stage contributes (``Stage.report``); returns their paths."""
    from jmlr.registry import STAGES
    from jmlr.stage import resolve

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(run_dir, None, None, "run folder not found")
    sections = [section for _, stage in STAGES.items() if stage.report is not None
                for section in resolve(stage.report)(cfg, run_dir) or []]
    sections.sort(key=lambda section: section.order)      # stable: stage order within a rank
    title = f"jmlr run report: {run_dir.name}"
    paths = {"html": str(run_dir / "report.html"), "markdown": str(run_dir / "report.md")}
    with atomic_write(paths["html"]) as handle:
        handle.write(render_html(title, sections))
    with atomic_write(paths["markdown"]) as handle:
        handle.write(render_markdown(title, sections))
    log.info("wrote %s and %s", paths["html"], paths["markdown"])
    print(paths["html"])
    return paths
