"""``jmlr check-data``: summaries of good files, one located line and exit 2 for bad ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MEDQA_ROW = {"question": "A 23-year-old woman has dysuria. Which organism is most likely?",
             "answer": "Escherichia coli", "answer_idx": "B", "meta_info": "step1",
             "options": {"A": "Staphylococcus aureus", "B": "Escherichia coli",
                         "C": "Proteus mirabilis", "D": "Klebsiella pneumoniae"}}
MEDMCQA_ROW = {"id": "m1", "question": "Nerve supply of deltoid?", "opa": "Radial",
               "opb": "Axillary", "opc": "Ulnar", "opd": "Median", "cop": 1,
               "exp": "Axillary nerve.", "subject_name": "Anatomy", "topic_name": "Upper limb"}


def write_lines(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def test_question_counts(run_cli, tmp_path: Path) -> None:
    five = dict(MEDQA_ROW, options=dict(MEDQA_ROW["options"], E="Candida albicans"))
    path = write_lines(tmp_path / "train.jsonl", [MEDQA_ROW, five, dict(MEDQA_ROW, answer_idx="A",
                                                                       answer="Staphylococcus aureus")])
    code, out, err = run_cli("check-data", path)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["format"] == "medqa"
    assert summary["questions"] == 3
    assert summary["with_rationale"] == 0
    assert summary["option_counts"] == {"4": 2, "5": 1}
    assert summary["answers"] == {"A": 1, "B": 2}


def test_medmcqa_counts_subjects_and_one_based_flag(run_cli, tmp_path: Path) -> None:
    rows = [MEDMCQA_ROW, dict(MEDMCQA_ROW, id="m2", exp=None, cop=3, subject_name="Physiology")]
    path = write_lines(tmp_path / "dev.json", rows)
    code, out, _ = run_cli("check-data", path)
    summary = json.loads(out)
    assert code == 0
    assert (summary["format"], summary["questions"], summary["with_rationale"]) == ("medmcqa", 2, 1)
    assert summary["subjects"] == {"Anatomy": 1, "Physiology": 1}
    assert summary["answers"] == {"B": 1, "D": 1}
    code, out, _ = run_cli("check-data", path, "--format", "medmcqa", "--one-based")
    assert code == 0 and json.loads(out)["answers"] == {"A": 1, "C": 1}


def test_corpus_counts(run_cli, tmp_path: Path) -> None:
    tsv = tmp_path / "collection.tsv"
    tsv.write_text("0\tGout is arthritis.\n1\tMeasles is viral.\n2\tGout is arthritis.\n",
                   encoding="utf-8")
    code, out, err = run_cli("check-data", tsv)
    assert code == 0, err
    assert json.loads(out) == {"kind": "corpus", "format": "tsv", "passages": 3,
                               "duplicate_texts": 1}
    jsonl = write_lines(tmp_path / "corpus.jsonl", [{"id": "p1", "text": "Gout."}])
    code, out, _ = run_cli("check-data", jsonl)
    assert code == 0 and json.loads(out)["passages"] == 1
    assert json.loads(out)["format"] == "jsonl"


def _bad_inputs(tmp_path: Path) -> list[tuple[str, Path, list[str], list[str]]]:
    """(case, file, extra CLI args, strings the one error line must contain)."""
    cases = []

    def add(case: str, name: str, rows: list[dict | str], args: list[str], expect: list[str]) -> None:
        path = write_lines(tmp_path / name, rows)
        cases.append((case, path, args, [str(path) + s if s.startswith(":") else s for s in expect]))

    add("malformed json", "malformed.jsonl", [MEDQA_ROW, '{"question": "cut off', MEDQA_ROW], [],
        [":2:", "malformed JSON"])
    missing = {k: v for k, v in MEDQA_ROW.items() if k != "question"}
    add("missing field", "missing.jsonl", [MEDQA_ROW, missing], [],
        [":2:", "field 'question'", "missing"])
    add("answer not among options", "letter.jsonl", [dict(MEDQA_ROW, answer_idx="F")], [],
        [":1:", "field 'answer_idx'", "'F' is not among the options A-D"])
    add("answer text disagrees", "text.jsonl", [dict(MEDQA_ROW, answer="Proteus mirabilis")], [],
        [":1:", "field 'answer'", "not the text of option B"])
    add("duplicate id", "dup.json", [MEDMCQA_ROW, MEDMCQA_ROW], [],
        [":2:", "field 'id'", "duplicate question id 'm1' (first on line 1)"])
    add("medmcqa test split", "test.json", [dict(MEDMCQA_ROW, cop=-1)], [],
        [":1:", "field 'cop'", "without answers"])
    add("unknown format name", "named.jsonl", [MEDQA_ROW], ["--format", "usmle"],
        ["field 'format'", "unknown format 'usmle'", "medqa"])
    add("unrecognised rows", "unknown.jsonl", [{"prompt": "x", "completion": "y"}], [],
        ["field 'format'", "jmlr, medqa, medmcqa, mmlu, mmlu_csv, jmlr_ref"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    cases.append(("empty file", empty, [], [f"{empty}:", "empty"]))
    return cases


@pytest.mark.parametrize("case", [
    "malformed json", "missing field", "answer not among options", "answer text disagrees",
    "duplicate id", "medmcqa test split", "unknown format name", "unrecognised rows", "empty file"])
def test_bad_input_exits_2_with_one_located_line(run_cli, tmp_path: Path, case: str) -> None:
    _, path, args, expected = next(c for c in _bad_inputs(tmp_path) if c[0] == case)
    code, out, err = run_cli("check-data", path, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jmlr check-data: error: ")
    assert "Traceback" not in err
    for text in expected:
        assert text in lines[0], (text, lines[0])


def test_missing_file(run_cli, tmp_path: Path) -> None:
    code, _, err = run_cli("check-data", tmp_path / "nope.jsonl")
    assert code == 2 and "file not found" in err and str(tmp_path / "nope.jsonl") in err


def _unreadable_inputs(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    """case -> (file, strings the one error line must contain): bytes that are not UTF-8,
    binary data, too many options, nesting too deep, a folder instead of a file."""
    row = json.dumps({"id": "q1", "question": "CAFE?", "options": {"A": "x", "B": "y"},
                      "answer": "A"}).encode()
    cases: dict[str, tuple[Path, list[str]]] = {}

    def add(case: str, name: str, data: bytes, expect: list[str]) -> None:
        path = tmp_path / name
        path.write_bytes(data)
        cases[case] = (path, [str(path) + s if s.startswith(":") else s for s in expect])

    add("latin-1 jsonl", "latin1.jsonl", row + b"\n" + row.replace(b"CAFE", b"caf\xe9"),
        [":2:", "field 'question'", "byte 0xe9", "not UTF-8"])
    add("latin-1 csv", "anatomy_test.csv", b"What?,a,b,c,d,A\nWh\xe9re?,a,b,c,d,B\n",
        [":2:", "column 1", "byte 0xe9"])
    add("latin-1 tsv corpus", "collection.tsv", b"p1\tgood\np2\tbad \xff\n",
        [":2:", "field 'text'", "byte 0xff"])
    add("binary named jsonl", "binary.jsonl", bytes([*range(128, 256), *range(128)]) * 4, [":1:", "binary data"])
    many = {chr(65 + i): f"option {i}" for i in range(26)} | {"AA": "one more"}
    add("27 options", "many.jsonl", json.dumps({"id": "q1", "question": "?", "options": many,
                                                "answer": "A"}).encode() + b"\n",
        [":1:", "field 'options'", "at most 26 options", "got 27"])
    add("27 choices", "mmlu.jsonl", json.dumps({"question": "?", "choices": ["c"] * 27,
                                                "answer": 0}).encode() + b"\n",
        [":1:", "field 'choices'", "got 27"])
    deep = b'{"id": "q1", "question": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    add("nested 100000 deep", "deep.jsonl", deep, [":1:", "nested too deeply"])
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    cases["a directory"] = (folder, [f"{folder}: is a directory"])
    return cases


@pytest.mark.parametrize("case", ["latin-1 jsonl", "latin-1 csv", "latin-1 tsv corpus",
                                  "binary named jsonl", "27 options", "27 choices",
                                  "nested 100000 deep", "a directory"])
def test_unreadable_input_exits_2_with_one_located_line(run_cli, tmp_path: Path, case: str) -> None:
    path, expected = _unreadable_inputs(tmp_path)[case]
    code, out, err = run_cli("check-data", path)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], (text, lines[0])


def test_a_byte_order_mark_does_not_turn_the_tsv_header_into_a_passage(tmp_path: Path) -> None:
    from jmlr.data.corpus import load_corpus

    path = tmp_path / "collection.tsv"
    path.write_bytes("\ufeffid\ttext\np1\tGout is arthritis.\n".encode())
    assert [(p.id, p.text) for p in load_corpus(path)] == [("p1", "Gout is arthritis.")]
    csv = tmp_path / "anatomy_test.csv"
    csv.write_bytes("\ufeffWhat?,a,b,c,d,A\n".encode())
    from jmlr.data.formats import load_questions

    assert load_questions(csv)[0].question == "What?"
