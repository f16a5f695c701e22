"""jmlr eval-retriever: the BEIR layout read and written, exact ranking over the corpus,
ir_measures' numbers checked by hand, and the command on the tiny task."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from jmlr.data.beir import read_beir, write_beir
from jmlr.errors import DataError
from jmlr.evaluation.retriever_eval import measure, rank_corpus
from tests.test_loop import task, train  # noqa: F401  (the tiny task with mined candidates)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def small_beir(folder: Path, qrels: list[str] | None = None) -> Path:
    write_lines(folder / "corpus.jsonl", [json.dumps({"_id": "p1", "title": "Gout", "text": "Uric acid."}),
                                          json.dumps({"_id": "p2", "title": "", "text": "Rash."})])
    write_lines(folder / "queries.jsonl", [json.dumps({"_id": "q1", "text": "joint pain"}),
                                           json.dumps({"_id": "q2", "text": "not judged"})])
    write_lines(folder / "qrels" / "test.tsv", qrels or ["query-id\tcorpus-id\tscore", "q1\tp1\t1"])
    return folder


def test_read_beir_keeps_judged_queries_and_names_bad_lines(tmp_path):
    found = read_beir(small_beir(tmp_path / "ok"))
    assert found.queries == {"q1": "joint pain"} and found.qrels == {"q1": {"p1": 1}}
    assert found.corpus == {"p1": "Gout | Uric acid.", "p2": "Rash."}
    bad = small_beir(tmp_path / "bad", ["query-id\tcorpus-id\tscore", "q1\tp1\t1", "q1\tp2\thigh"])
    with pytest.raises(DataError, match=r"test.tsv:3: field 'score'"):
        read_beir(bad)
    unknown = small_beir(tmp_path / "unknown", ["q1\tp9\t1"])
    with pytest.raises(DataError, match=r"judged passages are not in corpus.jsonl \(e.g. 'p9'\)"):
        read_beir(unknown)
    with pytest.raises(DataError, match=r"dev.tsv"):
        read_beir(tmp_path / "ok", split="dev")


def test_measures_by_hand():
    qrels = {"q1": {"p1": 1}, "q2": {"p3": 1, "p4": 1}}
    run = {"q1": {"p2": 2.0, "p1": 1.0}, "q2": {"p3": 3.0, "p5": 2.0, "p4": 1.0}}
    means, per_query = measure(qrels, run)
    assert per_query["q1"]["R@1"] == 0 and per_query["q1"]["RR@10"] == 0.5
    assert per_query["q1"]["nDCG@10"] == pytest.approx(1 / math.log2(3))
    ideal = 1 + 1 / math.log2(3)
    assert per_query["q2"]["nDCG@10"] == pytest.approx((1 + 1 / math.log2(4)) / ideal)
    assert per_query["q2"]["R@1"] == 0.5 and per_query["q2"]["R@10"] == 1
    assert means["RR@10"] == pytest.approx(0.75) and means["R@1"] == pytest.approx(0.25)


def test_exact_ranking_equals_the_scorers_own_scores(task):  # noqa: F811
    from jmlr.retrieval.backends import backend_for

    scorer = backend_for(task.cfg).load_scorer(task.cfg).eval()
    corpus = {p.id: p.full_text for p in task.passages}
    queries = {q.id: q.query(task.cfg.retriever.query_template) for q in task.dev[:3]}
    ranked = rank_corpus(scorer, queries, corpus, top_k=5, doc_batch=7, query_batch=2)
    for q in task.dev[:3]:
        with torch.no_grad():
            full = scorer.score([queries[q.id]], [list(corpus.values())])[0]
        order = full.argsort(descending=True)[:5]
        assert list(ranked[q.id]) == [list(corpus)[i] for i in order.tolist()]
        assert list(ranked[q.id].values()) == pytest.approx(full[order].tolist(), abs=1e-4)


def test_the_command_compares_untrained_and_trained_on_the_demo_layout(task, tmp_path, run_cli):  # noqa: F811
    beir = tmp_path / "beir"
    counts = write_beir(beir, task.passages, {"train": task.train, "dev": task.dev})
    assert counts["qrels/dev"] == sum(len(q.gold_passage_ids) for q in task.dev)
    run_dir = tmp_path / "run"
    train(task, run_dir, "train.max_steps=1", "train.eval_every=-1")
    out = tmp_path / "eval.json"
    code, stdout, err = run_cli("eval-retriever", "-c", task.config_path, "--beir", beir,
                                "--split", "dev", "--run", run_dir, "--out", out)
    assert code == 0, err
    assert "| untrained |" in stdout and "| run |" in stdout
    result = json.loads(out.read_text())
    assert result["queries"] == len(task.dev) and set(result["retrievers"]) == {"untrained", "run"}
    for r in result["retrievers"].values():
        assert 0 <= r["measures"]["nDCG@10"] <= 1 and len(r["per_query"]) == len(task.dev)
    code, _, err = run_cli("eval-retriever", "-c", task.config_path, "--beir", tmp_path / "nope")
    assert code == 2 and "corpus.jsonl" in err and len(err.strip().splitlines()) == 1


MTEB_CARD = """---
configs:
- config_name: corpus
  data_files:
  - split: corpus
    path: corpus.jsonl
- config_name: queries
  data_files:
  - split: queries
    path: queries.jsonl
- config_name: default
  data_files:
  - split: test
    path: qrels/test.jsonl
---
"""


def test_an_mteb_task_by_name_reads_a_local_copy_and_says_when_its_data_is_absent(
        task, tmp_path, run_cli):  # noqa: F811
    """`--mteb NAME --mteb-data DIR`: mteb's own loader on a local copy of a dataset repository
    in MTEB's layout (here the tiny task's, as a Hugging Face dataset folder) gives the numbers
    of the same data read as a BEIR folder; with no copy and no network, one line."""
    pytest.importorskip("mteb")
    folder = tmp_path / "mteb-copy"
    write_beir(folder, task.passages, {"test": task.dev})
    header, *rows = (folder / "qrels" / "test.tsv").read_text().splitlines()
    assert header.split("\t") == ["query-id", "corpus-id", "score"]
    write_lines(folder / "qrels" / "test.jsonl", [json.dumps(
        {"query-id": q, "corpus-id": c, "score": int(v)}) for q, c, v in (r.split("\t") for r in rows)])
    (folder / "README.md").write_text(MTEB_CARD)
    results = {}
    for name, source in (("beir", ["--beir", folder]),
                         ("mteb", ["--mteb", "NFCorpus", "--mteb-data", folder])):
        out = tmp_path / f"{name}.json"
        code, _, err = run_cli("eval-retriever", "-c", task.config_path, *source, "--out", out)
        assert code == 0, err
        results[name] = json.loads(out.read_text())
    assert results["mteb"]["queries"] == len(task.dev) == results["beir"]["queries"]
    assert results["mteb"]["passages"] == len(task.passages)
    assert results["mteb"]["retrievers"]["untrained"]["measures"] == \
        results["beir"]["retrievers"]["untrained"]["measures"]

    code, _, err = run_cli("eval-retriever", "-c", task.config_path, "--mteb", "NFCorpus")
    assert code == 2 and "not on this machine" in err and "--mteb-data" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli("eval-retriever", "-c", task.config_path, "--mteb", "Banking77Classification")
    assert code == 2 and "not a retrieval task" in err
