"""Mining, caching, refreshing and measuring top-N candidates over a real PLAID index."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_retrieval import REPO, SELF_MATCH_PASSAGE, tiny_task

from jmlr.data.schema import MCQ, Candidates, read_candidates
from jmlr.errors import ConfigError, DataError
from jmlr.retrieval import candidates as cd
from jmlr.retrieval import colbert_backend as cb
from jmlr.retrieval.mining import mining_identity, partial_path
from jmlr.retrieval.scorer import TrainableScorer

pytestmark = pytest.mark.timeout(300)   # colbert-ai can hang when a worker dies


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return tiny_task(tmp_path_factory.getbasetemp())


@pytest.fixture
def cfg(task, tmp_path):
    """The shared index, with candidates written under this test's own folder."""
    cfg = copy.deepcopy(task.cfg)
    cfg.candidates.path = str(tmp_path / "candidates")
    cfg.retriever.index_dir = str(task.cfg.index_dir)
    return cfg


def _rows(path: Path) -> dict[str, Candidates]:
    return {c.question_id: c for c in read_candidates(path)}


# --- metrics -----------------------------------------------------------------------------


def test_metrics_count_every_gold_passage_and_missing_questions():
    q = MCQ("q", "?", {"A": "x", "B": "y"}, "A", gold_passage_ids=["g1", "g2"])
    found = {"q": Candidates("q", ["n", "g2", "g1"], [3.0, 2.0, 1.0])}
    assert cd.retrieval_metrics(found, [q], ks=(1, 2, 3)) == {
        "n_questions": 1, "recall@1": 0.0, "recall@2": 0.5, "recall@3": 1.0, "mrr": 0.5}
    assert cd.retrieval_metrics({}, [q], ks=(1,))["recall@1"] == 0.0


# --- mining --------------------------------------------------------------------------------


def test_mine_writes_top_n_per_question_and_filters_train_self_matches(task, cfg, capsys):
    summary = cd.run_mine(cfg, ["train", "dev", "test"])   # test has no file: skipped
    out = capsys.readouterr().out
    assert set(summary["splits"]) == {"train", "dev"}
    ids = {p.id for p in task.passages}
    for split, questions in (("train", task.train), ("dev", task.dev)):
        rows = _rows(cfg.candidates_dir / f"{split}.jsonl")
        assert list(rows) == [q.id for q in questions]
        for row in rows.values():
            assert len(row.passage_ids) == cfg.candidates.top_n == 8
            assert len(set(row.passage_ids)) == 8 and set(row.passage_ids) <= ids
            assert row.scores == sorted(row.scores, reverse=True)
        assert not list(cfg.candidates_dir.glob(f"{split}.*partial*"))
        meta = json.loads((cfg.candidates_dir / f"{split}.meta.json").read_text())
        assert meta["metrics"]["n_questions"] == len(questions)
    self_passage = task.passages[SELF_MATCH_PASSAGE].id
    assert self_passage not in _rows(cfg.candidates_dir / "train.jsonl")["q_self"].passage_ids
    # Unfiltered, the question's own text is what it retrieves first.
    q_self = next(q for q in task.train if q.id == "q_self")
    assert cb.search_questions(cfg, [q_self])["q_self"].passage_ids[0] == self_passage
    assert "recall@1" in out and "recall@8" in out and "mrr" in out
    assert "p50" in out and "p95" in out and "passages/s" in out
    metrics = summary["splits"]["dev"]["metrics"]
    assert 0 <= metrics["recall@1"] <= metrics["recall@7"] <= metrics["recall@8"] <= 1
    assert cd.load_candidates(cfg, "dev") == _rows(cfg.candidates_dir / "dev.jsonl")


def test_mining_resumes_from_a_partial_file(task, cfg):
    cd.run_mine(cfg, ["dev"])
    complete = _rows(cfg.candidates_dir / "dev.jsonl")
    (cfg.candidates_dir / "dev.jsonl").unlink()
    # An interrupted run: the identity file, two finished rows (marked by their scores, so
    # that re-mining them would show), and half a row cut off mid-write.
    first, second = task.dev[0].id, task.dev[1].id
    marked = {qid: Candidates(qid, complete[qid].passage_ids, [99.0 - i for i in range(8)])
              for qid in (first, second)}
    index = cb._open_index(cfg)
    identity = mining_identity(index.manifest, index.checkpoint, 8, False)
    (cfg.candidates_dir / "dev.partial.json").write_text(json.dumps(identity))
    lines = [json.dumps(marked[q].to_json()) + "\n" for q in (first, second)]
    partial = partial_path(cfg.candidates_dir, "dev", 0, 1)
    partial.write_text("".join(lines) + json.dumps(complete[task.dev[2].id].to_json())[:30])
    summary = cd.run_mine(cfg, ["dev"])
    assert summary["splits"]["dev"]["mined_now"] == len(task.dev) - 2
    rows = _rows(cfg.candidates_dir / "dev.jsonl")
    assert list(rows) == [q.id for q in task.dev]
    assert rows[first].scores[0] == 99.0 and rows[second].scores[0] == 99.0
    for qid in list(rows)[2:]:
        assert rows[qid].passage_ids == complete[qid].passage_ids
    assert not partial.exists()


def test_partial_rows_of_another_run_are_discarded(task, cfg):
    cfg.candidates_dir.mkdir(parents=True)
    stale = Candidates(task.dev[0].id, ["p0"], [1.0])
    partial_path(cfg.candidates_dir, "dev", 0, 1).write_text(json.dumps(stale.to_json()) + "\n")
    (cfg.candidates_dir / "dev.partial.json").write_text(json.dumps({"top_n": 3}))
    cd.run_mine(cfg, ["dev"])
    assert len(_rows(cfg.candidates_dir / "dev.jsonl")[task.dev[0].id].passage_ids) == 8


def test_mining_needs_a_question_file_and_an_index(task, cfg, tmp_path):
    cfg.data = type(cfg.data)(**{**vars(cfg.data), "train": "", "dev": ""})
    with pytest.raises(ConfigError, match="no question file"):
        cd.run_mine(cfg, ["train", "dev"])
    with pytest.raises(DataError, match="jmlr mine"):
        cd.load_candidates(cfg, "dev")


def test_mine_checks_every_question_file_before_it_opens_the_index(task, cfg, tmp_path,
                                                                   monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the index was opened before the question files were read")

    (tmp_path / "dev.jsonl").write_text('{"id": "d1", "question": ', encoding="utf-8")
    cfg.data = type(cfg.data)(**{**vars(cfg.data), "dev": str(tmp_path / "dev.jsonl")})
    monkeypatch.setattr(cb.ColbertBackend, "open_index", never)
    with pytest.raises(DataError, match=r"dev\.jsonl:1: malformed JSON"):
        cd.run_mine(cfg, ["train", "dev"])
    assert not cfg.candidates_dir.exists()


# --- refresh and re-index -------------------------------------------------------------------


def test_refresh_searches_with_the_current_query_encoder(task, cfg):
    checkpoint = Path(task.manifest["checkpoint"]["path"])
    scorer = TrainableScorer.from_checkpoint(checkpoint, 32, 48).train()
    mined = cb.search_questions(cfg, task.dev)
    refreshed = cb.refresh_candidates(cfg, scorer, task.dev)
    for q in task.dev:   # same encoder as the index: same candidates, same scores
        assert refreshed[q.id].passage_ids == mined[q.id].passage_ids
        assert refreshed[q.id].scores == pytest.approx(mined[q.id].scores, abs=1e-4)
    with torch.no_grad():
        scorer.colbert.linear.weight.add_(torch.randn_like(scorer.colbert.linear.weight))
    changed = cb.refresh_candidates(cfg, scorer, task.dev)
    assert any(changed[q.id].scores != refreshed[q.id].scores for q in task.dev)
    assert scorer.training   # the scorer is left in the mode it was in
    # Training questions drop their self-matches when refreshed.
    q_self = next(q for q in task.train if q.id == "q_self")
    kept = cb.refresh_candidates(cfg, scorer, [q_self])["q_self"].passage_ids
    assert task.passages[SELF_MATCH_PASSAGE].id not in kept and len(kept) == 8


def test_reindex_builds_with_the_current_weights(task, tmp_path):
    from tiny_retrieval import tiny_config

    cfg = tiny_config(tmp_path, task.bert, task.root / "corpus.jsonl")
    cfg.run.cache_dir = task.cfg.run.cache_dir
    checkpoint = Path(task.manifest["checkpoint"]["path"])
    scorer = TrainableScorer.from_checkpoint(checkpoint, 32, 48)
    with torch.no_grad():
        scorer.colbert.linear.weight.mul_(-1.0)
    manifest = cb.reindex(cfg, scorer)
    saved = Path(manifest["checkpoint"]["path"])
    assert saved.parent == tmp_path / "run" / "index-checkpoints" and saved.is_dir()
    reloaded = TrainableScorer.from_checkpoint(saved, 32, 48)
    assert torch.equal(reloaded.colbert.linear.weight, scorer.colbert.linear.weight)
    found = cb.search_questions(cfg, task.dev)
    assert all(len(c.passage_ids) == 8 for c in found.values())
    again = cb.reindex(cfg, scorer)     # replaces the index; the store keeps one checkpoint
    assert again["build_id"] != manifest["build_id"]
    assert len(list(saved.parent.iterdir())) == 1


@pytest.mark.slow
def test_distributed_mining_splits_questions_and_merges_on_rank_0(task, cfg, tmp_path):
    """Two real CPU ranks (gloo) under ``accelerate launch``; the same file as one process."""
    cd.run_mine(cfg, ["dev"])
    alone = _rows(cfg.candidates_dir / "dev.jsonl")
    out = tmp_path / "distributed"
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"), "-m", "jmlr", "mine",
               "-c", str(task.config_path), f"candidates.path={out}", "--splits", "dev"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=280, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    together = _rows(out / "dev.jsonl")
    assert list(together) == list(alone)
    assert all(together[q].passage_ids == alone[q].passage_ids for q in alone)
    assert done.stdout.count("dev: 8 questions") == 1   # rank 0 alone reports
    assert not list(out.glob("dev.jsonl.partial*"))


def test_candidates_of_a_changed_corpus_are_refused_by_training_and_evaluation(task, cfg, tmp_path,
                                                                              caplog):
    import dataclasses
    import logging

    from jmlr.data.corpus import write_corpus
    from jmlr.evaluation.passages import candidate_pool, corpus_texts
    from jmlr.training.components import load_training_data

    cd.run_mine(cfg, ["train", "dev"])
    meta = json.loads((cfg.candidates_dir / "dev.meta.json").read_text())
    assert meta["corpus_fingerprint"] == task.manifest["corpus"]["fingerprint"]
    assert meta["index_build_id"] == task.manifest["build_id"]
    assert meta["retriever_sha256"] == task.manifest["checkpoint"]["sha256"]
    assert len(load_training_data(cfg).train_candidates) == len(task.train)   # unchanged: fine

    # one passage's text changes, its id stays: every candidate id is still in the corpus
    changed = [dataclasses.replace(p, text=p.text + " Revised.") if i == 3 else p
               for i, p in enumerate(task.passages)]
    write_corpus(tmp_path / "corpus.jsonl", changed)
    cfg.data = dataclasses.replace(cfg.data, corpus=str(tmp_path / "corpus.jsonl"))
    with pytest.raises(ConfigError, match=r"mined over another corpus.*"
                                          r"`jmlr index --overwrite` and `jmlr mine`"):
        load_training_data(cfg)
    # evaluation says so and searches afresh, which the index (of the old corpus) refuses
    with caplog.at_level(logging.INFO, logger="jmlr.evaluation.passages"), \
            pytest.raises(ConfigError, match="rebuild it with `jmlr index --overwrite`"):
        candidate_pool(cfg, "dev", task.dev, corpus_texts(cfg), from_split=True)
    assert "mined over another corpus" in caplog.text
