"""Questions from where users keep them with Hugging Face ``datasets``: save_to_disk folders,
folders of data files, hub ids in the local cache (offline), in the hub layouts
(GBaker/MedQA-USMLE-4-options-hf, BigBIO QA). Every dataset is built inside the test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import datasets
import pytest

from jmlr.config import load_config
from jmlr.data import load_split
from jmlr.data.formats import load_questions
from jmlr.errors import ConfigError, DataError

GBAKER = "GBaker/MedQA-USMLE-4-options-hf"
GBAKER_ROWS = {
    "id": ["q1", "q2"],
    "sent1": ["A 23-year-old woman has burning on urination. Which organism is most likely?",
              "A 60-year-old man has crushing chest pain. What is the first test?"],
    "sent2": ["", ""],
    "ending0": ["Staphylococcus aureus", "Chest radiograph"],
    "ending1": ["Escherichia coli", "Troponin"],
    "ending2": ["Proteus mirabilis", "Electrocardiogram"],
    "ending3": ["Klebsiella pneumoniae", "Echocardiogram"],
    "label": [1, 2],
}
BIGBIO_ROWS = {
    "id": ["0", "1"], "question_id": ["bb-1", "bb-2"], "document_id": ["d1", "d2"],
    "question": ["Which nerve supplies the deltoid muscle?", "Drug of choice for absence seizures?"],
    "type": ["multiple_choice", "multiple_choice"],
    "choices": [["Radial nerve", "Axillary nerve", "Ulnar nerve"],
                ["Phenytoin", "Ethosuximide", "Carbamazepine", "Valproate"]],
    "context": ["", "Absence seizures respond to ethosuximide."],
    "answer": [["Axillary nerve"], ["Ethosuximide"]],
}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """A private datasets cache: nothing of the user's is read or written."""
    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def gbaker(split_rows: dict | None = None) -> datasets.DatasetDict:
    train = datasets.Dataset.from_dict(split_rows or GBAKER_ROWS)
    test = datasets.Dataset.from_dict({k: v[:1] for k, v in GBAKER_ROWS.items()})
    return datasets.DatasetDict({"train": train, "test": test})


def cache_as_hub_download(dataset: datasets.DatasetDict, hub_id: str, cache: Path) -> None:
    """Put ``dataset`` in the datasets cache where ``load_dataset(hub_id)`` finds a dataset it
    downloaded before (``<owner>___<snake name>/<config>/<version>/<hash>/``)."""
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet

    owner, name = hub_id.split("/")
    snake = camelcase_to_snakecase(name)
    files = {}
    for split, part in dataset.items():
        files[split] = str(cache.parent / f"src-{split}.parquet")
        part.to_parquet(files[split])
    builder = Parquet(cache_dir=str(cache.parent / "build"), dataset_name=snake, data_files=files,
                      hash="0123abcd")
    builder.download_and_prepare()      # arrow files named <snake>-<split>.arrow, as downloads are
    target = cache / f"{owner}___{snake}" / "default" / "0.0.0" / "0123abcd"
    target.parent.mkdir(parents=True)
    Path(builder.cache_dir).rename(target)


def test_medqa_hub_layout_from_a_save_to_disk_folder(tmp_path):
    folder = tmp_path / "medqa_hf"
    gbaker().save_to_disk(folder)
    questions = load_questions(f"{folder}:train")
    assert [q.id for q in questions] == ["q1", "q2"] and [q.answer for q in questions] == ["B", "C"]
    assert questions[0].options == {"A": "Staphylococcus aureus", "B": "Escherichia coli",
                                    "C": "Proteus mirabilis", "D": "Klebsiella pneumoniae"}
    cfg = load_config(None, [f"data.train={folder}", f"data.test={folder}"])
    assert [q.id for q in load_split(cfg.data, "test")] == ["q1"]      # the config key's split
    assert len(load_split(cfg.data, "train")) == 2


def test_a_hub_id_reads_the_local_cache_offline_and_fails_at_once_when_absent(
        tmp_path, datasets_cache, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache_as_hub_download(gbaker(), GBAKER, datasets_cache)
    cfg = load_config(None, [f"data.train={GBAKER}", f"eval.datasets.medqa={GBAKER}"])
    assert [q.answer for q in load_split(cfg.data, "train")] == ["B", "C"]
    from jmlr.evaluation.mcq import eval_questions

    assert [q.id for q in eval_questions(cfg, "test")["medqa"]] == ["q1"]
    started = time.perf_counter()
    with pytest.raises(DataError, match="not in the local datasets cache") as err:
        load_questions("someone/not-downloaded-here")
    assert time.perf_counter() - started < 15 and "\n" not in str(err.value)


def test_bigbio_qa_rows_from_a_folder_of_data_files(tmp_path):
    folder = tmp_path / "bigbio"
    folder.mkdir()
    datasets.Dataset.from_dict(BIGBIO_ROWS).to_json(folder / "test.jsonl")
    questions = load_questions(folder, split="test")
    assert [(q.id, q.answer) for q in questions] == [("bb-1", "B"), ("bb-2", "B")]
    assert questions[1].metadata["context"] == "Absence seizures respond to ethosuximide."
    assert len(questions[1].options) == 4


@pytest.mark.parametrize("change, where", [
    ({"label": [1, 7]}, "[train]:2: field 'label': index 7 is out of range 0-3"),
    ({"ending2": ["Proteus mirabilis", ""]}, "[train]:2: field 'ending2': is empty"),
])
def test_errors_name_the_split_row_and_field(tmp_path, change, where):
    folder = tmp_path / "bad"
    gbaker({**GBAKER_ROWS, **change}).save_to_disk(folder)
    with pytest.raises(DataError) as err:
        load_questions(f"{folder}:train")
    assert str(err.value).startswith(f"{folder}{where}")


def test_bigbio_answer_outside_the_choices_is_located(tmp_path):
    folder = tmp_path / "bb"
    bad = {**BIGBIO_ROWS, "answer": [["Axillary nerve"], ["Aspirin"]]}
    datasets.Dataset.from_dict(bad).save_to_disk(folder)
    with pytest.raises(DataError, match=r"bb\[data\]:2: field 'answer': 'Aspirin' is not one"):
        load_questions(folder)


def test_check_data_summarises_every_split_of_a_dataset(run_cli, tmp_path):
    folder = tmp_path / "medqa_hf"
    gbaker().save_to_disk(folder)
    code, out, err = run_cli("check-data", folder)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["source"] == "saved" and set(summary["splits"]) == {"train", "test"}
    assert summary["splits"]["train"]["format"] == "medqa_hf"
    assert summary["splits"]["train"]["answers"] == {"B": 1, "C": 1}
    code, _, err = run_cli("check-data", f"{folder}:validation")
    assert code == 2 and "no split 'validation'" in err and len(err.strip().splitlines()) == 1


# --- the authors' {input, output, doc} questions train on their own passages ---------------


def authors_rows(passages, n: int = 4, docs: int = 5) -> list[dict]:
    rows = []
    for i in range(n):
        gold = passages[i]
        others = [p.text for p in passages[10 + i:10 + i + docs - 1]]
        rows.append({"id": f"ref{i}", "input": f"Which syndrome causes {gold.text.split('causes ')[1]}\n"
                     f"A. Syndrome {i}\nB. Syndrome {i + 10}\nC. Syndrome {i + 20}",
                     "output": f"A. Syndrome {i} fits.", "doc": [gold.text, *others]})
    return rows


@pytest.mark.timeout(600)
def test_training_reads_each_question_s_doc_passages_without_an_index(tmp_path_factory, tmp_path):
    from tiny_retrieval import tiny_task

    from jmlr.config import load_config
    from jmlr.training.components import load_training_data
    from jmlr.training.loop import run_train

    task = tiny_task(tmp_path_factory.getbasetemp())
    path = tmp_path / "ref_train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in authors_rows(task.passages)) + "\n")
    overrides = [f"run.out_dir={tmp_path / 'run'}", f"data.train={path}", "data.dev=",
                 "data.corpus=", "candidates.source=question_docs", "train.max_steps=2",
                 "train.eval_every=-1", f"retriever.index_dir={tmp_path / 'no-index'}"]
    cfg = load_config(task.config_path, overrides)
    data = load_training_data(cfg)
    assert data.train_candidates["ref0"].passage_ids == [f"ref0#doc{i}" for i in range(5)]
    assert data.passages["ref0#doc0"].text == task.passages[0].text
    summary = run_train(cfg)
    assert summary["last_train"]["n_pairs"] > 0
    assert (tmp_path / "run" / "final" / "retriever").is_dir()
    assert not (tmp_path / "no-index").exists() and not (tmp_path / "run" / "candidates").exists()

    few = load_config(task.config_path, [*overrides, "jmlr.k_sample=6", "candidates.top_n=8"])
    with pytest.raises(ConfigError, match="fewer than 6 passages"):
        load_training_data(few)
    with pytest.raises(ConfigError, match="need candidates.source=mined"):
        load_config(task.config_path, [*overrides, "candidates.refresh_every=1"])


# --- corpora: a folder of files, each passage tagged with its source, read as a stream ------


def test_a_corpus_folder_tags_each_passage_with_its_file_and_check_data_streams_it(
        tmp_path, run_cli, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jmlr.data import corpus
    from jmlr.data.schema import Passage

    folder = tmp_path / "corpus"
    folder.mkdir()
    corpus.write_corpus(folder / "pubmed.jsonl", [Passage("pm1", "Fever and rash."),
                                                   Passage("pm2", "Gout causes joint pain.")])
    pq.write_table(pa.table({"id": [f"sp{i}" for i in range(5000)],
                             "text": [f"StatPearls passage {i % 4000}." for i in range(5000)]}),
                   folder / "statpearls.parquet", row_group_size=512)
    (folder / "textbooks.tsv").write_text("tb1\tMeasles causes fever and rash.\tMeasles\n")
    (folder / "notes.txt").write_text("not a corpus file")
    passages = corpus.load_corpus(folder, dedup=False)
    assert len(passages) == 5003
    assert {p.source for p in passages} == {"pubmed", "statpearls", "textbooks"}
    assert passages[0].to_json() == {"id": "pm1", "text": "Fever and rash.", "source": "pubmed"}

    def no_lists(*_a, **_k):
        raise AssertionError("check-data must stream, not load the corpus")

    monkeypatch.setattr(corpus, "load_corpus", no_lists)
    code, out, err = run_cli("check-data", folder)
    assert code == 0, err
    assert json.loads(out) == {"kind": "corpus", "format": "folder", "passages": 5003,
                               "duplicate_texts": 1000,
                               "sources": {"pubmed": 2, "statpearls": 5000, "textbooks": 1}}
    corpus.write_corpus(folder / "zz_more.jsonl", [Passage("pm2", "Another text.")])
    code, _, err = run_cli("check-data", folder)
    assert code == 2 and f"zz_more.jsonl:1: field 'id': duplicate passage id 'pm2' (first on " \
                         f"{folder / 'pubmed.jsonl'}:2)" in err
