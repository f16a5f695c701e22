"""``jmlr synthesize`` (jmlr/retrieval/synthesis.py) on the tiny task: rows in the contrastive
layout with mined negatives judged by the generator, the same rows whether or not the run was
interrupted, settings checked, and the rows train the warm-up step."""

from __future__ import annotations

import json

import pytest
from test_loop import loop_overrides, task  # noqa: F401  (the tiny task)

from jmlr.training.contrastive_data import read_contrastive_rows

pytestmark = pytest.mark.timeout(600)

SMALL = ["synthesize.passages=4", "synthesize.batch_size=2", "synthesize.min_words=1",
         "synthesize.max_new_tokens=12", "synthesize.hard_negatives=2", "synthesize.mine_depth=4",
         "synthesize.examples=2"]


def synthesize(run_cli, task, out, *extra: str):  # noqa: F811
    return run_cli("synthesize", "-c", task.config_path,
                   *loop_overrides(task, out.parent / "run", *SMALL, f"synthesize.out={out}", *extra))


def test_rows_hold_questions_with_mined_negatives_and_resume_to_the_same_rows(
        task, tmp_path, run_cli):  # noqa: F811
    whole = tmp_path / "whole" / "rows.jsonl"
    code, stdout, err = synthesize(run_cli, task, whole)
    assert code == 0, err
    summary = json.loads(stdout)
    rows = read_contrastive_rows(whole)
    assert summary["written"] == len(rows) >= 3          # a question may be empty, not most
    ids = {p.id for p in task.passages}
    for row in rows:
        assert row.positive_id in ids and row.positive_id not in row.negative_ids
        assert set(row.negative_ids) <= ids and len(row.negatives) <= 2
        assert row.provenance["passage"] == row.positive_id
    meta = json.loads((whole.parent / "rows.jsonl.meta.json").read_text())
    assert meta["finished"] and meta["questions_per_s"] > 0
    assert sum(len(r.negatives) for r in rows) + meta["false_negatives_dropped"] == 4 * len(rows)

    # stopped after the first batch, then continued: the same rows
    parts = tmp_path / "parts" / "rows.jsonl"
    code, _, err = synthesize(run_cli, task, parts, "synthesize.passages=2")
    assert code == 0, err
    code, stdout, err = synthesize(run_cli, task, parts)
    assert code == 0, err
    assert parts.read_text() == whole.read_text()

    # other settings are refused and the rows left as they were
    code, _, err = synthesize(run_cli, task, parts, "synthesize.temperature=0.5")
    assert code == 2 and "other settings" in err and "--overwrite" in err
    assert parts.read_text() == whole.read_text()


def test_the_false_negative_margin_decides_what_stays(task, tmp_path, run_cli):  # noqa: F811
    keep_all = tmp_path / "all" / "rows.jsonl"
    code, _, err = synthesize(run_cli, task, keep_all, "synthesize.false_negative_margin=-1")
    assert code == 0, err
    rows = read_contrastive_rows(keep_all)
    assert all(len(r.negatives) == 2 for r in rows)           # nothing judged away
    drop_all = tmp_path / "none" / "rows.jsonl"
    code, _, err = synthesize(run_cli, task, drop_all, "synthesize.false_negative_margin=1000")
    assert code == 0, err
    assert all(not r.negatives for r in read_contrastive_rows(drop_all))   # all within 1000 nats


def test_the_rows_train_the_warm_up_step(task, tmp_path, run_cli):  # noqa: F811
    rows = tmp_path / "syn" / "rows.jsonl"
    code, _, err = synthesize(run_cli, task, rows)
    assert code == 0, err
    run_dir = tmp_path / "warm"
    code, _, err = run_cli("train", "-c", task.config_path, *loop_overrides(
        task, run_dir, "train.step=retriever_contrastive", f"contrastive.data={rows}",
        "train.max_steps=2", "train.batch_size=2", "train.eval_every=-1"))
    assert code == 0, err
    assert (run_dir / "final" / "retriever").is_dir()


def test_bad_settings_and_missing_inputs_stop_before_any_model(task, tmp_path, run_cli):  # noqa: F811
    out = tmp_path / "rows.jsonl"
    code, _, err = synthesize(run_cli, task, out, "synthesize.mine_depth=1")
    assert code == 2 and "synthesize.mine_depth must be >= hard_negatives" in err
    code, _, err = synthesize(run_cli, task, out, "synthesize.passage_pattern=^NOPE")
    assert code == 2 and "matches no passage id" in err
    code, _, err = synthesize(run_cli, task, out, f"retriever.index_dir={tmp_path / 'no-index'}")
    assert code == 2 and "jmlr index" in err
    assert not out.exists()
