"""Corpus readers, chunking, deduplication, fingerprint and the self-match (leakage) test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jmlr.config import DataConfig
from jmlr.data import load_corpus_from_config, load_split
from jmlr.data.corpus import (
    chunk_text,
    corpus_fingerprint,
    is_self_match,
    load_corpus,
    source_passage_id,
    write_corpus,
)
from jmlr.data.schema import MCQ, Passage
from jmlr.errors import ConfigError, DataError

ROWS = [
    {"id": "g1", "title": "Gout", "text": "Gout is an inflammatory arthritis caused by urate crystals."},
    {"id": "g2", "title": "Measles", "text": "Measles is a viral infection with fever and rash."},
    {"id": "g3", "text": "Kawasaki disease is a vasculitis of childhood."},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_tsv_and_parquet_read_the_same_passages(tmp_path: Path) -> None:
    from_jsonl = load_corpus(write_jsonl(tmp_path / "c.jsonl", ROWS))
    tsv = tmp_path / "collection.tsv"
    tsv.write_text("pid\ttext\ttitle\n" + "".join(
        f"{r['id']}\t{r['text']}\t{r.get('title', '')}\n" for r in ROWS), encoding="utf-8")
    from_tsv = load_corpus(tsv)

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([dict(r, title=r.get("title")) for r in ROWS]),
                   tmp_path / "c.parquet")
    from_parquet = load_corpus(tmp_path / "c.parquet")
    assert from_jsonl == from_tsv == from_parquet
    assert from_jsonl[0] == Passage("g1", ROWS[0]["text"], "Gout")
    assert from_jsonl[2].title is None


def test_tsv_without_header_and_two_columns(tmp_path: Path) -> None:
    tsv = tmp_path / "collection.tsv"
    tsv.write_text("0\tFirst passage text.\n1\tSecond passage text.\n", encoding="utf-8")
    passages = load_corpus(tsv)
    assert [(p.id, p.text, p.title) for p in passages] == [
        ("0", "First passage text.", None), ("1", "Second passage text.", None)]


def test_contents_and_beir_id_fields(tmp_path: Path) -> None:
    rows = [{"_id": "s1", "title": "T", "contents": "StatPearls snippet one."},
            {"_id": "s2", "title": "T", "contents": "StatPearls snippet two."}]
    passages = load_corpus(write_jsonl(tmp_path / "statpearls.jsonl", rows))
    assert [p.id for p in passages] == ["s1", "s2"]
    assert passages[1].text == "StatPearls snippet two."


def test_chunking_with_overlap_gives_chunk_ids(tmp_path: Path) -> None:
    words = [f"w{i}" for i in range(10)]
    assert chunk_text(" ".join(words), 4, 2) == [
        "w0 w1 w2 w3", "w2 w3 w4 w5", "w4 w5 w6 w7", "w6 w7 w8 w9"]
    assert chunk_text(" ".join(words), 4, 0) == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]
    with pytest.raises(ValueError):
        chunk_text("a b c", 2, 2)
    rows = [{"id": "long", "text": " ".join(words)}, {"id": "short", "text": "w0 w1"}]
    passages = load_corpus(write_jsonl(tmp_path / "c.jsonl", rows), chunk_words=4, chunk_overlap=2)
    assert [p.id for p in passages] == ["long#0", "long#1", "long#2", "long#3", "short"]
    assert {source_passage_id(p.id) for p in passages} == {"long", "short"}
    with pytest.raises(ConfigError, match="chunk_overlap"):
        load_corpus(tmp_path / "c.jsonl", chunk_words=4, chunk_overlap=4)


def test_dedup_keeps_first_of_each_exact_text(tmp_path: Path) -> None:
    rows = ROWS + [{"id": "copy", "text": ROWS[1]["text"]}, {"id": "near", "text": ROWS[1]["text"] + "!"}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    assert [p.id for p in load_corpus(path)] == ["g1", "g2", "g3", "near"]
    assert len(load_corpus(path, dedup=False)) == 5


def test_write_corpus_round_trip(tmp_path: Path) -> None:
    passages = load_corpus(write_jsonl(tmp_path / "c.jsonl", ROWS))
    assert write_corpus(tmp_path / "out" / "corpus.jsonl", passages) == 3
    assert load_corpus(tmp_path / "out" / "corpus.jsonl") == passages


def test_fingerprint_changes_with_text_id_title_and_order() -> None:
    base = [Passage(r["id"], r["text"], r.get("title")) for r in ROWS]
    reference = corpus_fingerprint(base)
    assert len(reference) == 64 and reference == corpus_fingerprint(list(base))
    changed_text = [*base[:2], Passage("g3", base[2].text + " Usually in infants.")]
    changed_id = [Passage("g9", base[0].text, base[0].title), *base[1:]]
    changed_title = [Passage("g1", base[0].text, "Podagra"), *base[1:]]
    reordered = [base[1], base[0], base[2]]
    fingerprints = {corpus_fingerprint(p) for p in (changed_text, changed_id, changed_title, reordered)}
    assert reference not in fingerprints and len(fingerprints) == 4


QUESTION = MCQ(
    "q1", "A 4-year-old boy has had fever for six days, a rash, red eyes and cracked lips. "
    "Which is the diagnosis?", {"A": "Measles", "B": "Kawasaki disease"}, "B",
    rationale="Fever for more than five days with conjunctival injection, oral changes and rash "
              "fulfils the criteria for Kawasaki disease; measles brings cough and coryza.")


@pytest.mark.parametrize("text", [
    QUESTION.rationale,
    "Explanation. " + QUESTION.rationale.upper() + " See also: vasculitis.",
    "fever for more  than five days with conjunctival injection, oral changes and rash",
    "Q: " + QUESTION.question.replace(" ", "\n"),
])
def test_self_match_catches_own_question_and_rationale(text: str) -> None:
    assert is_self_match(text, QUESTION)


@pytest.mark.parametrize("text", [
    "Kawasaki disease",                                   # too short to count as contained
    "fever for more than five days",                      # a short common phrase
    "Kawasaki disease is a vasculitis of childhood with fever for five days or more.",
    "",
])
def test_self_match_leaves_other_passages(text: str) -> None:
    assert not is_self_match(text, QUESTION)


def test_self_match_without_rationale_uses_question_only() -> None:
    bare = MCQ("q2", QUESTION.question, QUESTION.options, "B")
    assert not is_self_match(QUESTION.rationale, bare)
    assert is_self_match(QUESTION.question, bare)


def test_bad_corpora_are_located(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        load_corpus(empty)
    no_text = write_jsonl(tmp_path / "no_text.jsonl", [ROWS[0], {"id": "x", "title": "only"}])
    with pytest.raises(DataError) as err:
        load_corpus(no_text)
    assert (err.value.line, err.value.field) == (2, "text")
    dup = write_jsonl(tmp_path / "dup.jsonl", [ROWS[0], ROWS[1], ROWS[0]])
    with pytest.raises(DataError, match="duplicate passage id 'g1'") as err:
        load_corpus(dup)
    assert err.value.line == 3
    bad_tsv = tmp_path / "bad.tsv"
    bad_tsv.write_text("1\tfine\n2\n", encoding="utf-8")
    with pytest.raises(DataError, match="2 or 3 tab-separated fields") as err:
        load_corpus(bad_tsv)
    assert err.value.line == 2
    with pytest.raises(DataError, match="jsonl, tsv, parquet"):
        load_corpus(tmp_path / "corpus.txt")


def test_config_loaders(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "c.jsonl", ROWS + [{"id": "copy", "text": ROWS[0]["text"]}])
    write_jsonl(tmp_path / "dev.jsonl", [MCQ("q1", "Fever?", {"A": "x", "B": "y"}, "A").to_json()])
    cfg = DataConfig(corpus=str(tmp_path / "c.jsonl"), dev=str(tmp_path / "dev.jsonl"))
    assert [p.id for p in load_corpus_from_config(cfg)] == ["g1", "g2", "g3"]
    cfg.dedup = False
    assert len(load_corpus_from_config(cfg)) == 4
    assert [q.id for q in load_split(cfg, "dev")] == ["q1"]
    with pytest.raises(ConfigError, match="data.train is not set"):
        load_split(cfg, "train")
    with pytest.raises(ConfigError, match="data.corpus is not set"):
        load_corpus_from_config(DataConfig())
