"""``jmlr prepare-demo --specialties K`` (jmlr/data/demo_specialties.py): the task's questions
split by the organ system of their answer disease, each sub-task a usable task folder."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from jmlr.data.demo import load_source
from jmlr.data.demo_specialties import PHENOTYPIC_ABNORMALITY, specialty_of

SPLITS = ("train", "dev", "test")


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def split_task(tmp_path_factory):
    from jmlr.cli import main

    out = tmp_path_factory.mktemp("specialties") / "demo"
    assert main(["prepare-demo", "--out", str(out), "--diseases", "120", "--questions", "120",
                 "--specialties", "2"]) == 0
    return out


def test_each_question_goes_to_the_organ_system_of_its_answer(split_task):
    summary = json.loads((split_task / "specialties" / "specialties.json").read_text())
    assert len(summary["specialties"]) == 2
    source = load_source()
    onto, diseases = source.onto, {d.id: d for d in source.pool}
    tops = set(onto.children(PHENOTYPIC_ABNORMALITY))
    whole = {s: rows(split_task / f"{s}.jsonl") for s in SPLITS}
    answers = {r["gold_passage_ids"][0] for s in SPLITS for r in whole[s]}

    def top_levels(term):
        return set(onto.ancestors(term)) & tops

    prevalence = Counter(t for d in answers for t in {x for p in diseases[d].phenotypes
                                                      for x in top_levels(p)})
    seen: set[str] = set()
    for entry in summary["specialties"]:
        folder = split_task / "specialties" / entry["name"]
        assert entry["hpo_id"] in tops
        for split in SPLITS:
            mine = rows(folder / f"{split}.jsonl")
            assert len(mine) == entry["questions"][split]
            ids = {r["id"] for r in mine}
            assert ids <= {r["id"] for r in whole[split]} and not ids & seen   # own split, disjoint
            seen |= ids
            for r in mine:
                disease = diseases[r["gold_passage_ids"][0]]
                assert specialty_of(disease.phenotypes, top_levels, prevalence) == entry["hpo_id"]
        assert (folder / "corpus.jsonl").read_bytes() == (split_task / "corpus.jsonl").read_bytes()
        assert entry["questions"]["train"] > 0 and entry["questions"]["test"] > 0
    total = sum(len(whole[s]) for s in SPLITS)
    assert len(seen) + summary["left_out_questions"] == total


def test_a_sub_task_reads_as_a_task(split_task, run_cli):
    name = json.loads((split_task / "specialties" / "specialties.json").read_text())["specialties"][0]["name"]
    code, out, err = run_cli("check-data", split_task / "specialties" / name / "train.jsonl")
    assert code == 0, err


def test_one_specialty_is_refused_before_any_work(run_cli, tmp_path):
    code, _, err = run_cli("prepare-demo", "--out", tmp_path / "d", "--specialties", "1")
    assert code == 2 and "give 0 (no split) or at least 2" in err
    assert not (tmp_path / "d").exists()
