"""Training's links to the other stages: data, candidates, models, exports.

Each function is a thin adapter over the module that owns the work (``jmlr.data``,
``jmlr.retrieval``, ``jmlr.generation``), so that ``loop.py`` and the steps read as the
training algorithm alone. Collective helpers (``broadcast``, ``gather``) are no-ops in a
single process.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jmlr.config import Config
from jmlr.data.schema import MCQ, Candidates, Passage, read_candidates, write_candidates
from jmlr.errors import ConfigError, UserError
from jmlr.training.distributed import is_sharded

log = logging.getLogger(__name__)

CANDIDATES_FILE = "train_candidates.jsonl"   # refreshed candidates, saved with a checkpoint
DEV_KS = (1, 7)


# --------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """Questions, the corpus by id, and the candidates the loop reads passages from."""

    train: list[MCQ]
    passages: dict[str, Passage]
    train_candidates: dict[str, Candidates]
    dev: list[MCQ] = field(default_factory=list)
    dev_candidates: dict[str, Candidates] = field(default_factory=dict)
    corpus_fingerprint: str = ""            # of the mined corpus ("" for question_docs)

    def candidate_texts(self, questions: list[MCQ]) -> list[list[str]]:
        """Passage texts of each question's candidates, best first (what joint_step takes),
        cut to the micro-batch's shortest list (the scorer takes one width; mined lists all
        have top_n, the authors' doc lists may differ)."""
        width = min(len(self.train_candidates[q.id].passage_ids) for q in questions)
        return [[self.passages[pid].full_text
                 for pid in self.train_candidates[q.id].passage_ids[:width]] for q in questions]

    def drawn_gold(self, questions: list[MCQ], drawn: torch.Tensor) -> torch.Tensor:
        """``[B, k]`` bool: which drawn candidates (indices into each question's candidate
        list) are gold passages of their question. For logging only; training never sees it."""
        rows = []
        for q, row in zip(questions, drawn.tolist(), strict=True):
            ids, gold = self.train_candidates[q.id].passage_ids, set(q.gold_passage_ids)
            rows.append([ids[j] in gold for j in row])
        return torch.tensor(rows, dtype=torch.bool).view(len(rows), -1)

    def dev_rows(self, questions: list[MCQ]) -> tuple[list[list[str]], list[list[str]]]:
        """(candidate ids, texts) per dev question; texts padded to one width by repeating
        the last candidate (the scorer takes rectangular batches; callers cut the padding)."""
        ids = [list(self.dev_candidates[q.id].passage_ids) for q in questions]
        width = max(len(row) for row in ids)
        texts = [[self.passages[pid].full_text for pid in row + row[-1:] * (width - len(row))]
                 for row in ids]
        return ids, texts

    def set_train_candidates(self, candidates: dict[str, Candidates]) -> None:
        check_candidates(candidates, self.train, self.passages, "train")
        self.train_candidates = candidates


def check_candidates(candidates: dict[str, Candidates], questions: list[MCQ],
                     passages: dict[str, Passage], split: str) -> None:
    """Every question has at least one candidate, and every candidate is in the corpus."""
    missing = [q.id for q in questions if not candidates.get(q.id)
               or not candidates[q.id].passage_ids]
    if missing:
        raise ConfigError(f"{len(missing)} {split} question(s) have no mined candidates (e.g. "
                          f"{missing[:3]}): run `jmlr mine` again with this config")
    unknown = sorted({pid for q in questions for pid in candidates[q.id].passage_ids
                      if pid not in passages})
    if unknown:
        raise ConfigError(f"{split} candidates name {len(unknown)} passage(s) not in data.corpus "
                          f"(e.g. {unknown[:3]}): the corpus changed since `jmlr mine`; mine again")


def check_inputs(cfg: Config) -> None:
    """Every input training names, located before anything is read or loaded (the corpus
    can take minutes, a generator seconds to hours): the question files, the corpus and
    the train candidates (``candidates.source=mined``), the retriever checkpoint (checked
    from its files) and the generator. ConfigError naming the first missing one. The dev
    candidates are needed only when dev questions name gold passages, so
    :func:`load_training_data` locates them once it has read those (still before the corpus)."""
    from jmlr.data import locate_questions
    from jmlr.generation.sources import resolve_source
    from jmlr.generation.start import check_generator_start
    from jmlr.resources import resolve_location
    from jmlr.retrieval.backends import backend_for

    locate_questions(cfg.data.train, "data.train")
    if cfg.data.dev:
        locate_questions(cfg.data.dev, "data.dev")
    if cfg.candidates.source == "mined":
        resolve_location(cfg.data.corpus, "data.corpus")
        mined_file(cfg, "train")
    backend_for(cfg).check_checkpoint(cfg)
    check_train_from(cfg)
    resolve_source(cfg.generator.model)
    check_generator_start(cfg.generator)


def check_train_from(cfg: Config) -> None:
    """``retriever.train_from``, when set, is a retriever folder (ConfigError otherwise)."""
    from jmlr.retrieval.folders import check_model_files

    if cfg.retriever.train_from:
        check_model_files(Path(cfg.retriever.train_from).expanduser().resolve(),
                          "retriever.train_from")


def mined_file(cfg: Config, split: str) -> Path:
    """The mined candidates file of ``split``; ConfigError saying to mine when it is absent."""
    path = cfg.candidates_dir / f"{split}.jsonl"
    if not path.is_file():
        raise ConfigError(f"no mined candidates for the {split} split at {path}: run "
                          "`jmlr mine` with this config before `jmlr train`")
    return path


def mined_candidates(cfg: Config, split: str, corpus_fingerprint: str) -> dict[str, Candidates]:
    """A split's mined candidates by question id, mined over this corpus; ConfigError saying
    to mine otherwise."""
    from jmlr.retrieval.candidates import load_candidates

    try:
        return load_candidates(cfg, split, corpus_fingerprint)
    except (FileNotFoundError, UserError) as err:
        raise ConfigError(f"no usable mined candidates for the {split} split under "
                          f"{cfg.candidates_dir} ({err}): run `jmlr mine` with this config "
                          "before `jmlr train`") from None


def question_doc_candidates(questions: list[MCQ], top_n: int, need: int, split: str
                            ) -> tuple[dict[str, Candidates], dict[str, Passage]]:
    """Each question's own passages (``metadata["docs"]``, best first) as its candidates:
    the first ``top_n``, as passages ``<question id>#doc<i>``. ConfigError when a question
    has fewer than ``need`` (the rank loss draws that many)."""
    candidates, passages = {}, {}
    short = [q.id for q in questions if len(q.metadata.get("docs") or []) < need]
    if short:
        raise ConfigError(f"candidates.source=question_docs: {len(short)} {split} question(s) "
                          f"have fewer than {need} passages in their doc list (jmlr.k_sample and "
                          f"jmlr.r_read; e.g. {short[:3]}); lower those or use "
                          "candidates.source=mined")
    for q in questions:
        ids = []
        for i, text in enumerate(q.metadata["docs"][:top_n]):
            pid = f"{q.id}#doc{i}"
            passages[pid] = Passage(pid, text)
            ids.append(pid)
        candidates[q.id] = Candidates(q.id, ids, [0.0] * len(ids))
    return candidates, passages


def _training_data_from_docs(cfg: Config, train: list[MCQ]) -> TrainingData:
    from jmlr.data import load_split

    need, top_n = max(cfg.jmlr.k_sample, cfg.jmlr.r_read), cfg.candidates.top_n
    candidates, passages = question_doc_candidates(train, top_n, need, "train")
    data = TrainingData(train=train, passages=passages, train_candidates=candidates)
    if cfg.data.dev:
        dev = [q for q in load_split(cfg.data, "dev") if q.gold_passage_ids and q.metadata.get("docs")]
        if dev:
            data.dev_candidates, dev_passages = question_doc_candidates(dev, top_n, 1, "dev")
            data.passages.update(dev_passages)
            # gold ids name passages of the doc lists by position: "<question id>#doc<i>"
            data.dev = [q for q in dev if set(q.gold_passage_ids) & set(data.dev_candidates[q.id].passage_ids)]
    return data


def load_training_data(cfg: Config) -> TrainingData:
    """Train (and, when configured, dev) questions, the corpus and their mined candidates,
    or (``candidates.source=question_docs``) each question's own passages."""
    from jmlr.data import load_corpus_from_config, load_split
    from jmlr.data.corpus import corpus_fingerprint

    train = load_split(cfg.data, "train")
    if cfg.candidates.source == "question_docs":
        return _training_data_from_docs(cfg, train)
    # The questions and the candidate files first: they are small, the corpus may not be.
    dev: list[MCQ] = []
    if cfg.data.dev:
        dev = [q for q in load_split(cfg.data, "dev") if q.gold_passage_ids]
        if dev:
            mined_file(cfg, "dev")
        else:
            log.info("dev questions name no gold passages: no dev retrieval metrics")
    corpus = load_corpus_from_config(cfg.data)
    fingerprint = corpus_fingerprint(corpus)   # the candidates must be mined over this corpus
    passages = {p.id: p for p in corpus}
    data = TrainingData(train=train, passages=passages,
                        train_candidates=mined_candidates(cfg, "train", fingerprint), dev=dev,
                        corpus_fingerprint=fingerprint)
    check_candidates(data.train_candidates, train, passages, "train")
    if dev:
        data.dev_candidates = mined_candidates(cfg, "dev", fingerprint)
        check_candidates(data.dev_candidates, dev, passages, "dev")
    return data


def read_candidate_file(path: Path) -> dict[str, Candidates]:
    return {c.question_id: c for c in read_candidates(path)}


def write_candidate_file(path: Path, candidates: dict[str, Candidates]) -> None:
    write_candidates(path, list(candidates.values()))


# --------------------------------------------------------------------------- models


def load_generator_for_training(cfg: Config) -> tuple[nn.Module, Any]:
    """The generator (LoRA applied when it trains) and its tokenizer, on the CPU; frozen
    entirely when ``jmlr.train_generator`` is false."""
    from jmlr.generation.model import load_generator

    model, tokenizer = load_generator(cfg.generator, cfg.run.cache_dir, device="cpu",
                                      for_training=cfg.jmlr.train_generator)
    if not cfg.jmlr.train_generator:
        model.requires_grad_(False)
    return model, tokenizer


def load_retriever_for_training(cfg: Config) -> nn.Module:
    """The configured backend's trainable scorer (``retriever.train_from``, or else
    ``retriever.checkpoint``); every weight frozen when ``jmlr.train_retriever`` is false (the
    RAG baseline), all trainable otherwise."""
    from jmlr.retrieval.backends import backend_for

    start = Path(cfg.retriever.train_from).expanduser() if cfg.retriever.train_from else None
    scorer = backend_for(cfg).load_scorer(cfg, start)
    scorer.requires_grad_(cfg.jmlr.train_retriever)
    return scorer


def make_encode_fn(cfg: Config, tokenizer: Any, for_utility: bool = False):
    """(questions[n], passages[n][*] best first) → padded batch, with the one prompt template;
    ``for_utility``: the per-passage utility sequences."""
    from jmlr.training.objective import prompt_encoder

    return prompt_encoder(tokenizer, cfg.jmlr, cfg.generator.max_length, for_utility)


def save_generator(model: nn.Module, tokenizer: Any, path: Path, merge: bool = False,
                   cfg: Config | None = None) -> None:
    """A peft adapter (LoRA + the extras trained in place, as ``modules_to_save``) + tokenizer
    into ``path`` (``generation.model.save_generator``), naming ``cfg.generator.model`` as
    its base; merged weights into ``path/merged`` when asked (that merges the adapters into
    ``model``: do it last)."""
    from jmlr.generation import model as generation
    from jmlr.generation.sources import describe_source
    from jmlr.generation.start import describe_start

    base = None if cfg is None else {**describe_source(cfg.generator.model, cfg.run.cache_dir),
                                     **describe_start(cfg.generator)}
    generation.save_generator(model, tokenizer, path, base=base)
    if merge:
        generation.merge_and_save(model, tokenizer, path / "merged")


def _digest(params: list[tuple[str, nn.Parameter]]) -> str:
    digest = hashlib.sha256()
    for name, param in params:
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def checksums(models: dict[str, nn.Module], accelerator: Any) -> dict[str, Any]:
    """sha256 prefixes of this rank's weights per model (the trainable ones, or all of a
    frozen model): equal on every rank when ranks stayed in sync. None where the backend
    shards weights (each rank holds a different part)."""
    row: dict[str, Any] = {"rank": accelerator.process_index}
    sharded = is_sharded(accelerator)
    for name, model in models.items():
        params = list(model.named_parameters())
        chosen = [(n, p) for n, p in params if p.requires_grad] or params
        row[name] = None if sharded else _digest(chosen)
    return row


# --------------------------------------------------------------------------- retrieval during training


def refresh(cfg: Config, retriever: nn.Module, questions: list[MCQ],
            index_dir: str = "") -> dict[str, Candidates]:
    """Re-search the index with the current query encoder (main process)."""
    from jmlr.retrieval.backends import backend_for

    if index_dir:
        cfg = _with_index(cfg, index_dir)
    return backend_for(cfg).refresh(cfg, retriever, questions)


def reindex(cfg: Config, retriever: nn.Module, run_dir: Path) -> str:
    """Rebuild an index of the corpus with the current retriever into ``RUN/reindexed`` (never
    over the index the candidates were mined from); returns its folder. Main process only."""
    from jmlr.retrieval.backends import backend_for

    index_dir = str((run_dir / "reindexed").resolve())
    backend_for(cfg).reindex(_with_index(cfg, index_dir), retriever)
    return index_dir


def _with_index(cfg: Config, index_dir: str) -> Config:
    import copy

    new = copy.deepcopy(cfg)
    new.retriever.index_dir = index_dir
    return new


def dev_retrieval(loop: Any, data: TrainingData, cfg: Config) -> dict:
    """Dev retrieval metrics of the loop's current retriever (``models["retriever"]``)
    re-ranking the mined dev candidates; every rank scores a share (same number of forwards
    on each), the metrics are over all of them."""
    from jmlr.training.token_losses import eval_mode

    acc = loop.accelerator
    bs = max(1, cfg.eval.batch_size)
    mine = data.dev[acc.process_index::acc.num_processes]
    per_rank = -(-len(data.dev) // acc.num_processes)
    scored: list[tuple[str, list[str], list[float]]] = []

    def score(models: Any, queries: list[str], docs: list[list[str]]) -> Any:
        return models["retriever"].score(queries, docs)

    with torch.no_grad(), eval_mode(loop.model):
        for start in range(0, per_rank, bs):
            chunk = mine[start:start + bs] or data.dev[:1]
            real = mine[start:start + bs]
            ids, texts = data.dev_rows(chunk)
            scores = loop.model(score, [q.query(cfg.retriever.query_template) for q in chunk], texts)
            for q, pids, row in zip(real, ids, scores.float().cpu().tolist(), strict=False):
                scored.append((q.id, pids, row[:len(pids)]))
    return dev_metrics(data.dev, gather(scored))


def dev_metrics(questions: list[MCQ], scored: list[tuple[str, list[str], list[float]]]) -> dict:
    """Retrieval metrics of gold passages after re-ranking candidates by the given scores."""
    from jmlr.retrieval.candidates import retrieval_metrics

    reranked = {}
    for qid, pids, scores in scored:
        order = sorted(range(len(pids)), key=lambda i, s=scores: -s[i])
        reranked[qid] = Candidates(qid, [pids[i] for i in order], [float(scores[i]) for i in order])
    return retrieval_metrics(reranked, questions, ks=DEV_KS)


def broadcast(obj: Any) -> Any:
    """The main process's ``obj`` on every process."""
    from accelerate.state import PartialState
    from accelerate.utils import broadcast_object_list

    if PartialState().num_processes == 1:
        return obj
    return broadcast_object_list([obj])[0]


def gather(items: list) -> list:
    """Every process's list items, concatenated in rank order, on every process."""
    from accelerate.state import PartialState
    from accelerate.utils import gather_object

    if PartialState().num_processes == 1:
        return list(items)
    return gather_object(items)
