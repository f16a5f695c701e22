"""jmlr report: a self-contained HTML page and a Markdown twin from a run folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jmlr.config import load_config
from jmlr.data.corpus import write_corpus
from jmlr.data.formats import write_questions
from jmlr.data.schema import MCQ, Passage
from jmlr.evaluation.mcq import build_metrics
from jmlr.evaluation.metrics import Prediction, markdown_table
from jmlr.io import write_json, write_jsonl

KB_ROWS = [
    {"concept_id": "C0015967", "canonical_name": "Fever", "aliases": ["pyrexia"], "types": ["T184"],
     "definition": "Raised body temperature."},
    {"concept_id": "C0015230", "canonical_name": "Exanthema", "aliases": ["rash"], "types": ["T047"],
     "definition": "Eruption of the skin."},
    {"concept_id": "C0010200", "canonical_name": "Cough", "aliases": ["coughing"], "types": ["T184"],
     "definition": "Sudden expulsion of air."},
    {"concept_id": "C0018681", "canonical_name": "Headache", "aliases": ["cephalalgia"],
     "types": ["T184"], "definition": "Pain in the head."},
]
PASSAGES = [Passage("p0", "Measles brings fever and a rash.", "Measles"),
            Passage("p1", "Gout brings pain in the big toe.", "Gout"),
            Passage("p2", "Migraine brings headache and nausea.", "Migraine")]
QUESTIONS = [MCQ(f"q{i}", f"Patient {i} has pyrexia and a rash. Which disease?",
                 {"A": "Measles", "B": "Gout", "C": "Migraine"}, "A",
                 rationale="Fever with rash points to measles, not cough or headache.",
                 gold_passage_ids=["p0"], metadata={"subject": "infection" if i % 2 else "skin"})
             for i in range(5)]
TRAIN_ROWS = [{"step": s, "epoch": s / 5, "loss": 2.0 / s, "gen_loss": 1.2 / s, "rank_loss": 0.8 / s,
               "rank_accuracy": 0.5 + 0.05 * s, "n_pairs": 6, "lr_generator": 1e-3,
               "lr_retriever": 1e-4, "tokens_per_s": 900.0} for s in range(1, 6)]
DEV_ROWS = [{"step": s, "split": "dev", "n_questions": 5, "recall@1": 0.2 * (1 + s // 5),
             "recall@7": 0.8, "mrr": 0.3 + 0.02 * s} for s in (0, 5)]
GENERATED = {"none": "Nothing of note.", "frozen": "Pyrexia and coughing.",
             "trained": "Fever and rash, with headache but no cough."}


def predictions() -> list[Prediction]:
    rows = []
    for mode in ("none", "frozen", "trained"):
        for i, q in enumerate(QUESTIONS):
            retrieved = [] if mode == "none" else [{"id": "p0" if mode == "trained" else "p1", "score": 9.5},
                                                   {"id": "p2", "score": 3.25}]
            letter = "A" if (i + len(mode)) % 3 else "B"
            rows.append(Prediction(q.id, "test", mode, "letter", q.answer, letter, letter == q.answer,
                                   {"A": -1.0, "B": -1.5, "C": -2.0}, retrieved,
                                   reference_rationale=q.rationale))
            parsed = None if i == 4 else "A"
            rows.append(Prediction(q.id, "test", mode, "generate", q.answer, parsed, parsed == q.answer,
                                   {}, retrieved, f" A: Measles\nExplanation: {GENERATED[mode]}",
                                   GENERATED[mode], q.rationale))
    return rows


def make_run(root: Path, *, training: bool = True, evaluation: bool = True, factuality: bool = True):
    """A run folder as `jmlr train` + `jmlr evaluate` (+ UMLS-F) leave it; returns (cfg, run)."""
    root.mkdir(parents=True, exist_ok=True)
    write_corpus(root / "corpus.jsonl", PASSAGES)
    write_questions(root / "test.jsonl", QUESTIONS)
    write_jsonl(root / "kb.jsonl", KB_ROWS)
    run = root / "run"
    cfg = load_config(None, [f"run.out_dir={run}", f"run.cache_dir={root.parent / 'cache'}",
                             f"data.corpus={root / 'corpus.jsonl'}", f"data.test={root / 'test.jsonl'}",
                             f"factuality.kb={root / 'kb.jsonl'}", "jmlr.r_read=2",
                             "eval.bootstrap_samples=200"])
    run.mkdir()
    cfg.save(run / "config.yaml")
    cfg.save(root / "config.yaml")
    if training:
        write_jsonl(run / "metrics.jsonl", [DEV_ROWS[0], *TRAIN_ROWS, DEV_ROWS[1]])
    if evaluation:
        rows = predictions()
        folder = run / "eval" / "test"
        write_jsonl(folder / "predictions.jsonl", (p.to_json() for p in rows))
        retrieval = {"test": {"frozen": {"n_questions": 5, "recall@1": 0.0, "recall@2": 0.0, "mrr": 0.1},
                              "trained": {"n_questions": 5, "recall@1": 1.0, "recall@2": 1.0, "mrr": 1.0}}}
        write_json(folder / "metrics.json",
                   build_metrics(cfg, rows, {"test": QUESTIONS}, retrieval, "test", run))
        if factuality:
            from jmlr.evaluation.factuality import run_factuality

            run_factuality(cfg, folder / "predictions.jsonl", cfg.factuality.kb)
    return cfg, run


LINKS = re.compile(r"""(?:src|href)\s*=\s*["']([^"']*)""", re.IGNORECASE)


def test_the_report_has_every_section_and_is_self_contained(tmp_path, run_cli):
    cfg, run = make_run(tmp_path / "full")
    code, out, err = run_cli("report", "-c", tmp_path / "full" / "config.yaml", "--run", run)
    assert code == 0, err
    html = (run / "report.html").read_text(encoding="utf-8")
    md = (run / "report.md").read_text(encoding="utf-8")

    for title in ("Accuracy", "Training curves", "UMLS-F (factuality of rationales)", "Examples"):
        assert f">{title}</h2>" in html and f"## {title}" in md
    links = LINKS.findall(html)
    assert links and all(link.startswith(("data:image/png;base64,", "#")) for link in links)
    assert "http://" not in html and "https://" not in html and "@import" not in html
    assert html.count('src="data:image/png;base64,') >= 6   # accuracy, 4 curves + lr + recall, UMLS-F

    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert markdown_table(metrics["table"]) in md            # the paper-layout table
    assert "trained retriever (JMLR)" in html and "frozen retriever (RAG)" in html
    letter_trained = metrics["results"]["test"]["trained"]["letter"]
    assert f"{100 * letter_trained['accuracy']:.1f}" in html
    assert "| loss | 5 | 2.000 | 0.400 |" in md                # first and last logged loss
    assert "| dev mrr | 2 | 0.300 | 0.400 |" in md

    report = json.loads((run / "eval" / "test" / "report.json").read_text())
    assert f"{report['summary']['f1']:.3f}" in md
    assert '<mark class="matched"' in html and '<mark class="missed"' in html
    assert '<mark class="extra"' in html
    assert QUESTIONS[0].question in html and "Measles | Measles brings fever and a rash." in html
    assert 'class="passage gold"' in html                      # the gold passage is marked
    assert all(f"test / q{i}</h3>" in html for i in range(5))
    assert "unparseable" in html                               # q4's generated answer


def test_missing_pieces_are_said_not_fatal(tmp_path):
    from jmlr.evaluation.report import run_report

    cfg, run = make_run(tmp_path / "bare", training=False, factuality=False)
    run_report(cfg, run)
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "No training log" in html and "No UMLS-F report" in html
    assert ">Accuracy</h2>" in html and "test / q0</h3>" in html

    cfg, run = make_run(tmp_path / "empty", training=False, evaluation=False)
    run_report(cfg, run)
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "No evaluation found" in md and "No predictions to show" in md


def test_a_malformed_predictions_file_is_a_clear_error(tmp_path, run_cli):
    cfg, run = make_run(tmp_path / "bad", training=False, factuality=False)
    path = run / "eval" / "test" / "predictions.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    broken = json.loads(lines[1])
    del broken["correct"]
    path.write_text("\n".join([lines[0], json.dumps(broken), *lines[2:]]) + "\n", encoding="utf-8")
    code, _, err = run_cli("report", "-c", tmp_path / "bad" / "config.yaml", "--run", run)
    assert code == 2
    assert "predictions.jsonl:2: field 'correct'" in err
    assert not (run / "report.html").exists()


@pytest.mark.parametrize("missing", ["run"])
def test_a_missing_run_folder_is_a_clear_error(tmp_path, run_cli, missing):
    code, _, err = run_cli("report", "--run", tmp_path / missing)
    assert code == 2 and "run folder not found" in err


def test_markup_in_questions_options_and_passages_is_escaped_in_both_reports(tmp_path):
    import dataclasses

    from jmlr.evaluation.report import run_report

    hostile = dataclasses.replace(
        QUESTIONS[0], question="<script>alert('q')</script> Which *disease*? [x](javascript:y)",
        options={"A": "<img src=x onerror=alert(1)>", "B": "Gout", "C": "Migraine"})
    passages = [dataclasses.replace(PASSAGES[0], text="<iframe src=evil></iframe> fever")]
    cfg, run = make_run(tmp_path / "hostile", training=False, factuality=False)
    write_questions(tmp_path / "hostile" / "test.jsonl", [hostile, *QUESTIONS[1:]])
    write_corpus(tmp_path / "hostile" / "corpus.jsonl", [*passages, *PASSAGES[1:]])
    run_report(cfg, run)
    for name in ("report.md", "report.html"):
        text = (run / name).read_text(encoding="utf-8")
        for raw in ("<script", "<img src=x", "<iframe"):   # (the HTML's plots are <img> tags)
            assert raw not in text, (name, raw)
        assert "&lt;script&gt;alert(" in text and "&lt;iframe src=evil&gt;" in text
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "\\*disease\\*" in md and "\\[x\\](javascript:y)" in md
