"""The retriever warm-up step (``train.step=retriever_contrastive``, jmlr.training.steps.retriever_contrastive.py):
the loss is InfoNCE over the scorer's own scores, training lowers it, no generator loads, the
output is a checkpoint a joint run starts from, and bad rows stop the command before any model."""

from __future__ import annotations

import json

import pytest
import torch
from test_loop import loop_config, loop_overrides, task  # noqa: F401  (the tiny task)

from jmlr.training.contrastive_data import ContrastiveRow, read_contrastive_rows

pytestmark = pytest.mark.timeout(600)

STEP = ["train.step=retriever_contrastive", "train.batch_size=4", "train.grad_accum=1",
        "train.eval_every=-1", "train.retriever_lr=3e-4", "train.save_every=4",
        "contrastive.hard_negatives=2"]


@pytest.fixture(scope="module")
def rows_file(task, tmp_path_factory):  # noqa: F811
    """A gold-labelled set in the layout: each training question, its gold passage, and the
    mined candidates that are not gold as hard negatives."""
    from jmlr.training import components as parts

    data = parts.load_training_data(loop_config(task, task.root / "unused"))
    out = tmp_path_factory.mktemp("contrastive") / "rows.jsonl"
    lines = []
    for q in data.train:
        gold = q.gold_passage_ids[0]
        negatives = [p for p in data.train_candidates[q.id].passage_ids if p != gold][:3]
        lines.append(ContrastiveRow(q.id, q.question, gold, data.passages[gold].full_text,
                                    tuple(negatives),
                                    tuple(data.passages[p].full_text for p in negatives),
                                    {"source": "gold"}).to_json())
    out.write_text("".join(json.dumps(row) + "\n" for row in lines))
    return out


def batch_loss(cfg, retriever, rows) -> float:
    from jmlr.training.steps.retriever_contrastive import ContrastiveStep

    with torch.no_grad():
        out = ContrastiveStep(cfg).compute({"retriever": retriever}, rows, torch.Generator())
    return float(out.loss)


def test_the_loss_is_infonce_over_the_scorers_own_scores(task, rows_file, tmp_path):  # noqa: F811
    from jmlr.training import components as parts
    from jmlr.training.steps.retriever_contrastive import batch_passages, info_nce

    cfg = loop_config(task, tmp_path / "run", *STEP, f"contrastive.data={rows_file}")
    retriever = parts.load_retriever_for_training(cfg).eval()
    rows = read_contrastive_rows(rows_file)[:3]
    texts, positive, seen = batch_passages(rows, 2, in_batch=True)
    with torch.no_grad():   # the plain scorer, every query against every text: B x M encodings
        scores = retriever.score([r.query for r in rows], [texts] * len(rows))
    expected = info_nce(scores, torch.tensor(positive), torch.tensor(seen), 1.0)
    assert batch_loss(cfg, retriever, rows) == pytest.approx(float(expected), abs=1e-4)
    # by hand: every query sees every text here, so the loss is the mean of −log shares
    assert all(all(row) for row in seen)
    by_hand = sum(-float(scores[b].log_softmax(0)[positive[b]]) for b in range(3)) / 3
    assert float(expected) == pytest.approx(by_hand, abs=1e-5)


def test_training_lowers_the_loss_loads_no_generator_and_exports_a_checkpoint(
        task, rows_file, tmp_path, run_cli, monkeypatch):  # noqa: F811
    from jmlr.generation import model as generation
    from jmlr.retrieval.scorer import TrainableScorer
    from jmlr.training import components as parts

    def no_generator(*args, **kwargs):
        raise AssertionError("the warm-up loaded the generator")

    monkeypatch.setattr(generation, "load_generator", no_generator)
    run_dir = tmp_path / "run"
    over = loop_overrides(task, run_dir, *STEP, f"contrastive.data={rows_file}", "train.max_steps=8")
    code, _, err = run_cli("train", "-c", task.config_path, *over)
    assert code == 0, err
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("positive_top1" in r and "grad_norm_retriever" in r for r in logged if "step" in r)
    assert sorted(p.name for p in (run_dir / "final").iterdir()) == ["retriever"]

    cfg = loop_config(task, run_dir, *STEP, f"contrastive.data={rows_file}")
    rows = read_contrastive_rows(rows_file)
    before = batch_loss(cfg, parts.load_retriever_for_training(cfg).eval(), rows)
    warmed = TrainableScorer.from_checkpoint(run_dir / "final" / "retriever",
                                             cfg.retriever.query_maxlen, cfg.retriever.doc_maxlen)
    after = batch_loss(cfg, warmed, rows)
    assert after < before - 0.05, (before, after)
    # a joint run starts from it
    joint = loop_config(task, tmp_path / "joint", f"retriever.checkpoint={run_dir / 'final' / 'retriever'}")
    assert batch_loss(cfg, parts.load_retriever_for_training(joint).eval(), rows) == pytest.approx(after, abs=1e-5)


def test_bad_rows_stop_the_command_before_any_model_loads(task, tmp_path, run_cli, monkeypatch):  # noqa: F811
    from jmlr.training import components as parts

    def no_model(*args, **kwargs):
        raise AssertionError("a model loaded before the rows were checked")

    monkeypatch.setattr(parts, "load_retriever_for_training", no_model)
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n"
                   + json.dumps({"query": "q", "positive": "", "negatives": []}) + "\n")
    over = loop_overrides(task, tmp_path / "run", *STEP, f"contrastive.data={bad}")
    code, _, err = run_cli("train", "-c", task.config_path, *over)
    assert code == 2 and f"{bad}:2: field 'positive': expected a non-empty string" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    code, _, err = run_cli("train", "-c", task.config_path,
                           *loop_overrides(task, tmp_path / "run", *STEP))
    assert code == 2 and "needs contrastive.data" in err
    code, _, err = run_cli("train", "-c", task.config_path,
                           *loop_overrides(task, tmp_path / "run", *STEP, "contrastive.temperature=0"))
    assert code == 2 and "contrastive.temperature must be > 0" in err
