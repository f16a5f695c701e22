"""Question readers on small files written in each public format, as distributed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from jmlr.data.formats import detect_format, load_questions, write_questions
from jmlr.data.schema import MCQ
from jmlr.errors import DataError

MEDQA_ROWS = [
    {"question": "A 23-year-old woman has burning on urination. Which organism is most likely?",
     "answer": "Escherichia coli",
     "options": {"A": "Staphylococcus aureus", "B": "Escherichia coli", "C": "Proteus mirabilis",
                 "D": "Klebsiella pneumoniae", "E": "Candida albicans"},
     "meta_info": "step1", "answer_idx": "B"},
    {"question": "A 60-year-old man has crushing chest pain. What is the first test?",
     "answer": "Electrocardiogram",
     "options": {"A": "Chest radiograph", "B": "Troponin", "C": "Electrocardiogram",
                 "D": "Echocardiogram", "E": "Coronary angiography"},
     "meta_info": "step2&3", "answer_idx": "C"},
]
MEDMCQA_ROWS = [
    {"question": "Which nerve supplies the deltoid muscle?", "exp": "The axillary nerve (C5, C6) "
     "supplies the deltoid and teres minor.", "cop": 1, "opa": "Radial nerve",
     "opb": "Axillary nerve", "opc": "Musculocutaneous nerve", "opd": "Ulnar nerve",
     "subject_name": "Anatomy", "topic_name": "Upper limb", "id": "e9ad821a-c438",
     "choice_type": "single"},
    {"question": "Drug of choice for absence seizures?", "exp": None, "cop": 3,
     "opa": "Phenytoin", "opb": "Carbamazepine", "opc": "Phenobarbital", "opd": "Ethosuximide",
     "subject_name": "Pharmacology", "topic_name": None, "id": "5c38bea6-7f2b",
     "choice_type": "single"},
]
MMLU_ROWS = [
    {"question": "Which of these bones is part of the axial skeleton?",
     "subject": "anatomy", "choices": ["Femur", "Sternum", "Radius", "Scapula"], "answer": 1},
    {"question": "Which enzyme unwinds DNA at the replication fork?",
     "subject": "college_biology", "choices": ["Ligase", "Primase", "Helicase", "Topoisomerase"],
     "answer": "C"},
]
REF_ROWS = [
    {"input": "A 2-year-old girl has recurrent sinusitis, ataxia and telangiectasias. Which "
              "complication is most likely?\nA\nChronic eczema\nB\nLymphoid malignancy\nC\nPes cavus"
              "\nD\nCardiac rhabdomyoma",
     "output": "B: Lymphoid malignancy. Ataxia-telangiectasia predisposes to lymphoma and leukaemia.",
     "doc": ["Ataxia-telangiectasia is a DNA repair disorder.", "Eczema is common in children."]},
    {"input": "Which vitamin deficiency causes scurvy?\nA. Vitamin A\nB. Vitamin B12\n"
              "C. Vitamin C\nD. Vitamin D",
     "output": "C", "doc": []},
    {"input": "Most common site of ectopic pregnancy? (A) Ampulla (B) Isthmus (C) Ovary",
     "output": "A", "doc": ["The ampulla is the most common site."]},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_medqa_five_and_four_options(tmp_path: Path) -> None:
    five = load_questions(write_jsonl(tmp_path / "US_train.jsonl", MEDQA_ROWS))
    assert [q.answer for q in five] == ["B", "C"]
    assert [len(q.options) for q in five] == [5, 5]
    assert five[0].answer_text == "Escherichia coli"
    assert five[0].id == "US_train-1" and five[1].id == "US_train-2"
    assert five[1].metadata == {"meta_info": "step2&3"}
    four_rows = [dict(r, options={k: v for k, v in r["options"].items() if k != "E"})
                 for r in MEDQA_ROWS]
    four = load_questions(write_jsonl(tmp_path / "phrases_no_exclude_test.jsonl", four_rows), "medqa")
    assert [len(q.options) for q in four] == [4, 4]


def test_medmcqa_zero_and_one_based(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dev.json", MEDMCQA_ROWS)
    questions = load_questions(path)
    assert detect_format(path) == "medmcqa"
    assert [q.answer for q in questions] == ["B", "D"]
    assert questions[0].id == "e9ad821a-c438"
    assert questions[0].rationale.startswith("The axillary nerve")
    assert questions[1].rationale is None
    assert questions[0].metadata["subject"] == "Anatomy"
    assert questions[0].metadata["topic"] == "Upper limb"
    one_based = load_questions(path, format_options={"medmcqa": {"one_based": True}})
    assert [q.answer for q in one_based] == ["A", "C"]


def test_medmcqa_one_based_hint(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.json", [dict(MEDMCQA_ROWS[0], cop=4)])
    with pytest.raises(DataError, match="looks 1-based") as err:
        load_questions(path)
    assert err.value.field == "cop" and err.value.line == 1


@pytest.mark.parametrize("cop", [None, -1])
def test_medmcqa_test_split_without_answers_is_rejected(tmp_path: Path, cop) -> None:
    row = dict(MEDMCQA_ROWS[0], cop=cop)
    if cop is None:
        del row["cop"]
    with pytest.raises(DataError, match="without answers") as err:
        load_questions(write_jsonl(tmp_path / "test.json", [row]))
    assert err.value.field == "cop"


def test_mmlu_jsonl_and_parquet(tmp_path: Path) -> None:
    questions = load_questions(write_jsonl(tmp_path / "mmlu_med.jsonl", MMLU_ROWS))
    assert [q.answer for q in questions] == ["B", "C"]
    assert [q.metadata["subject"] for q in questions] == ["anatomy", "college_biology"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [dict(r, answer=i) for i, r in enumerate(MMLU_ROWS)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    from_parquet = load_questions(tmp_path / "test-00000-of-00001.parquet")
    assert [q.answer for q in from_parquet] == ["A", "B"]
    assert from_parquet[0].options["B"] == "Sternum"
    assert from_parquet[1].id == "test-00000-of-00001-2"


def test_mmlu_csv_headerless_with_quoted_multiline_field(tmp_path: Path) -> None:
    path = tmp_path / "clinical_knowledge_test.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Normal adult resting heart rate is:", "20-40", "60-100", "120-140",
                         "150-180", "B"])
        writer.writerow(["Which sign, on two lines,\nsuggests meningitis?", "Kernig sign",
                         "Murphy sign", "Rovsing sign", "Homans sign", "A"])
        writer.writerow(["Third question?", "w", "x", "y", "z", "D"])
    questions = load_questions(path)
    assert detect_format(path) == "mmlu_csv"
    assert [q.answer for q in questions] == ["B", "A", "D"]
    assert questions[1].question.startswith("Which sign, on two lines,\nsuggests")
    # ids name the line each record starts on: the quoted field spans lines 2-3
    assert [q.id for q in questions] == ["clinical_knowledge_test-1", "clinical_knowledge_test-2",
                                         "clinical_knowledge_test-4"]
    assert {q.metadata["subject"] for q in questions} == {"clinical_knowledge"}


def test_jmlr_ref_json_list_and_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "medqa_ref.json"
    path.write_text(json.dumps(REF_ROWS, indent=4), encoding="utf-8")
    questions = load_questions(path)
    assert detect_format(path) == "jmlr_ref"
    first, second, third = questions
    assert first.question.endswith("Which complication is most likely?")
    assert first.options == {"A": "Chronic eczema", "B": "Lymphoid malignancy", "C": "Pes cavus",
                             "D": "Cardiac rhabdomyoma"}
    assert first.answer == "B"
    assert first.rationale == "Ataxia-telangiectasia predisposes to lymphoma and leukaemia."
    assert first.metadata["docs"][0].startswith("Ataxia-telangiectasia")
    assert second.options["C"] == "Vitamin C" and second.answer == "C" and second.rationale is None
    assert "docs" not in second.metadata
    assert third.options == {"A": "Ampulla", "B": "Isthmus", "C": "Ovary"}
    # ids name the line where each item of the JSON list starts
    assert first.id == "medqa_ref-2"
    assert third.id.startswith("medqa_ref-") and third.id != second.id
    same = load_questions(write_jsonl(tmp_path / "ref.jsonl", REF_ROWS))
    assert [q.to_json() | {"id": ""} for q in same] == [q.to_json() | {"id": ""} for q in questions]


def test_jmlr_generic_round_trip(tmp_path: Path) -> None:
    original = [MCQ("q1", "Fever and rash?", {"A": "Measles", "B": "Gout"}, "A",
                    rationale="Measles causes fever and a rash.", gold_passage_ids=["p1"],
                    metadata={"subject": "infectious"}),
                MCQ("q2", "Joint pain at night?", {"A": "Measles", "B": "Gout", "C": "Flu"}, "B")]
    path = tmp_path / "out" / "questions.jsonl"
    assert write_questions(path, original) == 2
    assert detect_format(path) == "jmlr"
    assert load_questions(path) == original
    assert not list(path.parent.glob(".*.tmp"))


def test_source_ids_are_kept_and_checked_for_duplicates(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dup.json", [MEDMCQA_ROWS[0], MEDMCQA_ROWS[1], MEDMCQA_ROWS[0]])
    with pytest.raises(DataError, match="duplicate question id 'e9ad821a-c438'") as err:
        load_questions(path)
    assert err.value.line == 3 and err.value.field == "id"


def test_detection_rejects_unknown_rows_and_corpora(tmp_path: Path) -> None:
    unknown = write_jsonl(tmp_path / "notes.jsonl", [{"note": "nothing to see"}])
    with pytest.raises(DataError, match="jmlr, medqa, medmcqa, mmlu, mmlu_csv, jmlr_ref") as err:
        detect_format(unknown)
    assert str(unknown) in str(err.value)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": "p1", "text": "Gout is arthritis."}])
    with pytest.raises(DataError, match="passage corpus"):
        load_questions(corpus)
    with pytest.raises(DataError, match="unknown question format 'medqa5'"):
        load_questions(unknown, fmt="medqa5")


def test_explicit_format_mismatch_names_missing_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", MMLU_ROWS)
    with pytest.raises(DataError) as err:
        load_questions(path, fmt="medqa")
    assert (err.value.line, err.value.field) == (1, "options")


def test_jmlr_ref_errors_name_the_field(tmp_path: Path) -> None:
    no_options = dict(REF_ROWS[1], input="What causes scurvy?")
    with pytest.raises(DataError, match="found no options") as err:
        load_questions(write_jsonl(tmp_path / "a.jsonl", [no_options]), "jmlr_ref")
    assert err.value.field == "input"
    bad_letter = dict(REF_ROWS[1], output="F: Vitamin F")
    with pytest.raises(DataError, match="letter 'F' is not among the options A-D") as err:
        load_questions(write_jsonl(tmp_path / "b.jsonl", [bad_letter]), "jmlr_ref")
    assert err.value.field == "output"
    no_letter = dict(REF_ROWS[1], output="because of collagen")
    with pytest.raises(DataError, match="must start with the answer letter"):
        load_questions(write_jsonl(tmp_path / "c.jsonl", [no_letter]), "jmlr_ref")


def test_medmcqa_hub_parquet_with_unlabelled_test_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(MEDMCQA_ROWS), tmp_path / "validation-00000-of-00001.parquet")
    questions = load_questions(tmp_path / "validation-00000-of-00001.parquet")
    assert [q.answer for q in questions] == ["B", "D"]
    assert questions[1].id == "5c38bea6-7f2b"
    pq.write_table(pa.Table.from_pylist([dict(r, cop=-1) for r in MEDMCQA_ROWS]),
                   tmp_path / "test-00000-of-00001.parquet")
    with pytest.raises(DataError, match="without answers") as err:
        load_questions(tmp_path / "test-00000-of-00001.parquet")
    assert (err.value.line, err.value.field) == (1, "cop")
