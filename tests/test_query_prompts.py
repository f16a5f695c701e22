"""``jmlr optimize-prompt`` (jmlr/retrieval/query_prompts.py) on the tiny task: every candidate
reported with a score that re-computes by hand, the winner written into a config, and the
label-free signal read from a teacher utilities file."""

from __future__ import annotations

import json

import pytest
import torch
from test_loop import loop_config, loop_overrides, task  # noqa: F401  (the tiny task)

pytestmark = pytest.mark.timeout(600)

SMALL = ["optimize_prompt.rounds=1", "optimize_prompt.rewrites=1"]


def optimize(run_cli, task, out, *extra: str, split_args=("--report-split", "train")):  # noqa: F811
    return run_cli("optimize-prompt", "-c", task.config_path,
                   *loop_overrides(task, out / "run", *SMALL, *extra), "--out", out, *split_args)


def mrr_by_hand(cfg, template, questions, pools, texts, wanted) -> float:
    from jmlr.training import components as parts

    scorer = parts.load_retriever_for_training(cfg).eval()
    total = 0.0
    with torch.no_grad():
        for q in questions:
            ids = pools[q.id]
            scores = scorer.score([q.query(template)], [[texts[p] for p in ids]])[0]
            ranked = [ids[i] for i in scores.argsort(descending=True).tolist()]
            total += next((1 / (r + 1) for r, p in enumerate(ranked) if p in wanted[q.id]), 0.0)
    return total / len(questions)


def test_candidates_are_scored_by_gold_mrr_and_the_winner_is_written(task, tmp_path, run_cli):  # noqa: F811
    from jmlr.config import load_config
    from jmlr.data import load_split
    from jmlr.retrieval.candidates import load_candidates

    out = tmp_path / "prompt"
    code, stdout, err = optimize(run_cli, task, out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["signal"] == "gold" and report["split"] == "dev"
    seeds = [c for c in report["candidates"] if c["origin"] == "seed"]
    assert len(seeds) == 8 and all("train" in c for c in report["candidates"])
    assert report["winner"]["dev"] == max(c["dev"] for c in report["candidates"])
    written = load_config(out / "config.yaml")
    assert written.retriever.query_template == report["winner"]["template"]
    assert "winner:" in stdout and "mine again" in stdout

    cfg = loop_config(task, tmp_path / "unused")
    dev = [q for q in load_split(cfg.data, "dev")]
    pools = {k: list(c.passage_ids) for k, c in load_candidates(cfg, "dev").items()}
    texts = {p.id: p.full_text for p in task.passages}
    for entry in (report["winner"], report["candidates"][-1]):
        assert entry["dev"] == pytest.approx(mrr_by_hand(
            cfg, entry["template"], dev, pools, texts,
            {q.id: set(q.gold_passage_ids) for q in dev}), abs=1e-5)


def test_the_label_free_signal_reads_the_teachers_utilities(task, tmp_path, run_cli):  # noqa: F811
    utilities = tmp_path / "dev.utilities.jsonl"
    code, _, err = run_cli("utilities", "-c", task.config_path,
                           *loop_overrides(task, tmp_path / "run"), "--split", "dev",
                           "--out", utilities)
    assert code == 0, err
    out = tmp_path / "prompt"
    code, _, err = optimize(run_cli, task, out, "optimize_prompt.signal=teacher",
                            f"optimize_prompt.teacher_utilities={utilities}",
                            "optimize_prompt.rounds=0", split_args=("--report-split", ""))
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["signal"] == "teacher" and report["report_split"] is None
    assert all(0 < c["dev"] <= 1 for c in report["candidates"])

    code, _, err = optimize(run_cli, task, tmp_path / "p2", "optimize_prompt.signal=teacher")
    assert code == 2 and "needs optimize_prompt.teacher_utilities" in err
    code, _, err = optimize(run_cli, task, tmp_path / "p3", "optimize_prompt.signal=best")
    assert code == 2 and "optimize_prompt.signal must be auto, gold or teacher" in err
