"""``jmlr evaluate``: multiple-choice accuracy with retrieval in the loop, and its baselines.

For every question (``eval.datasets``, or else ``data.<split>``; ``eval.limit`` caps them):

1. **Candidates**: the top-N passages (``candidates.top_n``) from the PLAID index, searched
   once with the index's own checkpoint and shared by the retrieving modes (the mined
   candidates of ``jmlr mine`` are reused when they cover every question of the split);
2. **Modes**: ``trained`` re-scores the candidates with the run's ColBERT
   (``RUN/final/retriever``) and answers with the run's generator (``RUN/final/generator``);
   ``frozen`` re-scores with the initial retriever (``retriever.checkpoint``) and answers with
   the base generator (``generator.model``): the RAG baseline; ``none`` reads no passage.
   A run trained with a frozen retriever (``jmlr.train_retriever=false``) is a separate run:
   evaluate it with ``--mode trained`` on its own run folder;
3. **Reading**: the top-r passages (``jmlr.r_read``) go into the training template
   (:mod:`jmlr.generation.prompts`, the same ids and the same passage cutting);
4. **Answering**, by each method of ``eval.scoring`` (see :mod:`jmlr.evaluation.scoring`):
   ``letter`` (likelihood of each option letter), ``option_text`` (per-token likelihood of
   each option's text), ``generate`` (greedy letter + rationale; unparseable answers count
   as wrong and are listed).

Writes ``RUN/eval/<split>/predictions.jsonl`` and ``metrics.json`` (accuracy with a seeded
bootstrap interval, per-subject accuracy, unparseable counts, recall@k / MRR of gold passages)
and prints the accuracy table in the paper's layout. With ``factuality.kb`` set and
``generate`` run, the UMLS-F report follows.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from jmlr.config import Config
from jmlr.data.schema import MCQ, Candidates
from jmlr.device import resolve_device
from jmlr.errors import ConfigError
from jmlr.evaluation import eval_files
from jmlr.evaluation import passages as passages_mod
from jmlr.evaluation.metrics import (
    MODES,
    Prediction,
    accuracy_table,
    group_predictions,
    markdown_table,
    mode_labels,
    summarise,
)
from jmlr.evaluation.scoring import ScoringItem, greedy_generate, score_options
from jmlr.io import write_json, write_jsonl

log = logging.getLogger(__name__)


def eval_questions(cfg: Config, split: str) -> dict[str, list[MCQ]]:
    """``{dataset name: questions}`` from ``eval.datasets``, or ``{split: data.<split>}``;
    each capped at ``eval.limit`` questions."""
    from jmlr.data import load_split, read_questions

    if cfg.eval.datasets:
        found = {name: read_questions(path, f"eval.datasets.{name}", cfg.data, split)
                 for name, path in cfg.eval.datasets.items()}
    else:
        found = {split: load_split(cfg.data, split)}
    if cfg.eval.limit > 0:
        found = {name: qs[: cfg.eval.limit] for name, qs in found.items()}
    return found


# ---------------------------------------------------------------------------------------
# Questions → token ids, with the training template


def _common_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    """The leading tokens every sequence shares.

    >>> _common_prefix([[1, 2, 3], [1, 2, 4]])
    [1, 2]
    """
    prefix: list[int] = []
    for column in zip(*seqs, strict=False):
        if any(tok != column[0] for tok in column):
            break
        prefix.append(column[0])
    return prefix


def build_item(tokenizer: Any, mcq: MCQ, passages: list[str], max_length: int,
               target: str = "letter_text") -> ScoringItem:
    """Prompt, letter tokens and option-text continuations of one question, with the
    training template's own tokenisation.

    The prompt is cut as training cuts it for the ``target`` it trained on (room left for
    the longest option's target). Letter: the first token of the target's letter piece
    (" B" or " B:") that tells the options apart, so " A" vs "A" is tokenised as training's
    target starts; tokens every option shares before it become the letter prefix. Option
    text: the target's option-text piece (" Gout") right after "Answer:", as lm-eval scores
    continuations.
    """
    from jmlr.generation import prompts

    reserve = prompts.reserve_for_options(tokenizer, mcq, target)
    prompt = prompts.encode_prompt(tokenizer, mcq, passages, max_length, reserve=reserve)
    letter_pieces, continuations = [], []
    for letter in mcq.options:
        as_answer = dataclasses.replace(mcq, answer=letter)
        pieces = dict(prompts.target_pieces(as_answer, target))
        letter_pieces.append(prompts.tokenize_piece(tokenizer, pieces["letter"]))
        text_piece = dict(prompts.target_pieces(as_answer, "letter_text"))["option_text"]
        continuations.append(prompts.tokenize_piece(tokenizer, text_piece))
    shared = _common_prefix(letter_pieces)
    if any(len(ids) <= len(shared) for ids in letter_pieces):
        raise RuntimeError(f"question {mcq.id}: no token tells the option letters apart")
    letter_ids = [ids[len(shared)] for ids in letter_pieces]
    return ScoringItem(prompt_ids=prompt, letter_ids=letter_ids, continuation_ids=continuations,
                       letter_prefix=shared)


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def _by_length(items: Sequence[ScoringItem]) -> list[int]:
    """Indices longest prompt first: batches of similar lengths pad little."""
    return sorted(range(len(items)), key=lambda i: -len(items[i].prompt_ids))


def _argmax_letter(letters: list[str], scores: list[float]) -> str:
    return letters[max(range(len(scores)), key=lambda i: scores[i])]


def split_generation(text: str, letter: str | None, option_text: str | None) -> str | None:
    """The rationale part of a generated answer: what follows the template's
    "Explanation:" cue, else the answer line, else the option text, else the letter; None
    when nothing does.

    >>> split_generation(" C: Measles\\nExplanation: Fever and rash.", "C", "Measles")
    'Fever and rash.'
    >>> split_generation(" C: Measles\\nBecause of the rash.", "C", "Measles")
    'Because of the rash.'
    >>> split_generation(" B", "B", "Gout") is None
    True
    """
    body = text.strip()
    if "Explanation:" in body:
        rest = body.split("Explanation:", 1)[1].strip()
    elif "\n" in body:
        rest = body.split("\n", 1)[1].strip()
    elif option_text and option_text in body:
        rest = body.split(option_text, 1)[1].strip(" .:-")
    elif letter and body.startswith(letter):
        rest = body[len(letter):].strip(" .:-)")
    else:
        rest = body
    return rest or None


def answer_questions(model: Any, tokenizer: Any, questions: list[MCQ], readings: list[list[str]],
                     scorings: Sequence[str], cfg: Config, desc: str = "answer"
                     ) -> dict[str, list[dict[str, Any]]]:
    """``{scoring: [answer per question]}`` where an answer is ``{"predicted",
    "option_scores", "generated", "rationale"}``; batched (``eval.batch_size``)."""
    from jmlr.generation import prompts

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    items = [build_item(tokenizer, q, texts, cfg.generator.max_length, cfg.jmlr.target)
             for q, texts in zip(questions, readings, strict=True)]
    answers: dict[str, list[dict[str, Any]]] = {s: [{} for _ in questions] for s in scorings}
    want_letter, want_text = "letter" in scorings, "option_text" in scorings
    batches = _batches(_by_length(items), max(1, cfg.eval.batch_size))
    if want_letter or want_text:
        for batch in tqdm(batches, desc=f"{desc} (scores)", leave=False):
            scored = score_options(model, [items[i] for i in batch], pad_id,
                                   letter=want_letter, option_text=want_text)
            for row, i in enumerate(batch):
                letters = list(questions[i].options)
                for scoring, values in (("letter", scored.letter), ("option_text", scored.option_text)):
                    if scoring in scorings:
                        answers[scoring][i] = {
                            "predicted": _argmax_letter(letters, values[row]),
                            "option_scores": dict(zip(letters, values[row], strict=True)),
                            "generated": None, "rationale": None}
    if "letter_debiased" in scorings:
        _answer_debiased(model, tokenizer, questions, readings, cfg, pad_id,
                         answers["letter_debiased"], desc)
    if "generate" in scorings:
        eos = [t for t in {tokenizer.eos_token_id} if t is not None]
        generate_batches = _batches(_by_length(items), max(1, cfg.eval.generate_batch_size))
        for batch in tqdm(generate_batches, desc=f"{desc} (generate)", leave=False):
            outputs = greedy_generate(model, [items[i].prompt_ids for i in batch], pad_id, eos,
                                      cfg.eval.max_new_tokens)
            for tokens, i in zip(outputs, batch, strict=True):
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                letter = prompts.parse_answer_letter(text, list(questions[i].options))
                answers["generate"][i] = {
                    "predicted": letter, "option_scores": {}, "generated": text,
                    "rationale": split_generation(
                        text, letter, questions[i].options.get(letter) if letter else None)}
    return answers


def _answer_debiased(model: Any, tokenizer: Any, questions: list[MCQ], readings: list[list[str]],
                     cfg: Config, pad_id: int, out: list[dict[str, Any]], desc: str) -> None:
    """Letter scoring averaged over every cyclic rotation of the options (``letters.py``):
    one letter forward per question and rotation, the same passages read each time."""
    from jmlr.evaluation.letters import debiased_scores, rotated

    jobs = [(i, shift) for i, q in enumerate(questions) for shift in range(len(q.options))]
    shown = {job: rotated(questions[job[0]], job[1]) for job in jobs}
    items = {job: build_item(tokenizer, shown[job][0], readings[job[0]], cfg.generator.max_length,
                             cfg.jmlr.target) for job in jobs}
    scores: dict[tuple[int, int], list[float]] = {}
    order = sorted(jobs, key=lambda job: -len(items[job].prompt_ids))
    for batch in tqdm(_batches(list(range(len(order))), max(1, cfg.eval.batch_size)),
                      desc=f"{desc} (letters, every option order)", leave=False):
        scored = score_options(model, [items[order[k]] for k in batch], pad_id,
                               letter=True, option_text=False)
        for row, k in enumerate(batch):
            scores[order[k]] = scored.letter[row]
    for i, q in enumerate(questions):
        rotations = range(len(q.options))
        values = debiased_scores([scores[(i, s)] for s in rotations],
                                 [shown[(i, s)][1] for s in rotations])
        letters = list(q.options)
        out[i] = {"predicted": _argmax_letter(letters, values),
                  "option_scores": dict(zip(letters, values, strict=True)),
                  "generated": None, "rationale": None}


# ---------------------------------------------------------------------------------------
# The command


def _release_memory() -> None:
    """Collect what the caller just dropped (a model), and return cached GPU blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def scorings_for(cfg: Config, mode: str) -> list[str]:
    """The ways a mode answers: ``eval.scoring``, less "generate" where
    ``eval.generate_modes`` names other modes.

    >>> from jmlr.config import load_config
    >>> cfg = load_config(None, ["eval.scoring=[letter,generate]", "eval.generate_modes=[trained]"])
    >>> scorings_for(cfg, "none"), scorings_for(cfg, "trained")
    (['letter'], ['letter', 'generate'])
    """
    generate_here = not cfg.eval.generate_modes or mode in cfg.eval.generate_modes
    return [s for s in dict.fromkeys(cfg.eval.scoring) if s != "generate" or generate_here]


def run_evaluate(cfg: Config, run_dir: str | Path, split: str | None = None,
                 modes: Sequence[str] | None = None) -> dict[str, Any]:
    """``jmlr evaluate``: see the module docstring. Returns the metrics written."""
    run_dir = Path(run_dir)
    split = split or cfg.eval.split
    modes = [m for m in MODES if m in (modes or cfg.eval.modes)]
    scorings = list(dict.fromkeys(cfg.eval.scoring))
    if not modes or not scorings:
        raise ConfigError("nothing to evaluate: eval.modes and eval.scoring must not be empty")
    eval_files.check_before_loading(cfg, run_dir, modes, scorings)  # before any model loads
    device = resolve_device(cfg.run.device)
    datasets = eval_questions(cfg, split)
    if cfg.eval.qrels:
        from jmlr.evaluation.qrels import read_qrels, with_qrels

        judged = read_qrels(cfg.eval.qrels)
        datasets = {name: with_qrels(qs, judged) for name, qs in datasets.items()}
    out_dir = run_dir / "eval" / split
    started = time.time()

    corpus = pools = None
    if any(m != "none" for m in modes):
        corpus = passages_mod.corpus_texts(cfg)
        pools = {name: passages_mod.candidate_pool(cfg, split, qs, corpus,
                                                   from_split=not cfg.eval.datasets)
                 for name, qs in datasets.items()}

    predictions: list[Prediction] = []
    retrieval: dict[str, dict[str, Any]] = {name: {} for name in datasets}
    timings: dict[str, float] = {}
    generator = tokenizer = None
    loaded_for = None
    for mode in modes:
        mode_start = time.time()
        ranked: dict[str, dict[str, Candidates]] = {}
        if mode != "none":
            assert pools is not None and corpus is not None
            scorer = passages_mod.load_scorer(cfg, run_dir, mode, device)
            for name, qs in datasets.items():
                ranked[name] = passages_mod.rerank(scorer, qs, pools[name], corpus,
                                                   cfg.eval.batch_size, desc=f"{name}/{mode} rerank",
                                                   template=cfg.retriever.query_template)
                retrieval[name][mode] = passages_mod.retrieval_scores(cfg, ranked[name], qs)
            scorer = None
            _release_memory()
        wanted = "trained" if mode == "trained" else "base"
        if loaded_for != wanted:
            generator = tokenizer = None
            _release_memory()
            generator, tokenizer = passages_mod.load_eval_generator(cfg, run_dir, wanted, device)
            loaded_for = wanted
        for name, qs in datasets.items():
            reads = [[] for _ in qs] if mode == "none" else [
                ranked[name][q.id].passage_ids[: cfg.jmlr.r_read] for q in qs]
            texts = [[corpus[pid] for pid in ids] for ids in reads] if corpus else [[] for _ in qs]
            mode_scorings = scorings_for(cfg, mode)
            answers = answer_questions(generator, tokenizer, qs, texts, mode_scorings, cfg,
                                       desc=f"{name}/{mode}")
            for scoring in mode_scorings:
                for q, ans, ids in zip(qs, answers[scoring], reads, strict=True):
                    scores = ranked[name][q.id] if mode != "none" else None
                    ranked_list = [] if scores is None else [
                        {"id": pid, "score": round(float(s), 6)}
                        for pid, s in zip(scores.passage_ids, scores.scores, strict=True)]
                    retrieved = ranked_list[: len(ids)]
                    predictions.append(Prediction(
                        id=q.id, dataset=name, mode=mode, scoring=scoring, gold=q.answer,
                        predicted=ans["predicted"], correct=ans["predicted"] == q.answer,
                        option_scores={k: round(float(v), 6) for k, v in ans["option_scores"].items()},
                        retrieved=retrieved, candidates=ranked_list,
                        generated=ans["generated"], rationale=ans["rationale"],
                        reference_rationale=q.rationale))
        timings[mode] = round(time.time() - mode_start, 3)
    generator = tokenizer = None
    _release_memory()

    metrics = build_metrics(cfg, predictions, datasets, retrieval, split, run_dir)
    metrics["timing_s"] = {**timings, "total": round(time.time() - started, 3)}
    predictions, metrics = eval_files.merge_with_earlier(out_dir, predictions, metrics)
    write_jsonl(out_dir / "predictions.jsonl", (p.to_json() for p in predictions))
    write_json(out_dir / "metrics.json", metrics)
    print(metrics["table_markdown"])
    log.info("wrote %s and %s", out_dir / "predictions.jsonl", out_dir / "metrics.json")
    if cfg.factuality.kb and "generate" in scorings:
        from jmlr.evaluation.factuality import run_factuality

        metrics["factuality"] = run_factuality(cfg, predictions=str(out_dir / "predictions.jsonl"),
                                               kb=cfg.factuality.kb, out_dir=None)
        write_json(out_dir / "metrics.json", metrics)
    return metrics


def build_metrics(cfg: Config, predictions: list[Prediction], datasets: dict[str, list[MCQ]],
                  retrieval: dict[str, dict[str, Any]], split: str, run_dir: Path) -> dict[str, Any]:
    """The content of ``metrics.json`` (see :func:`run_evaluate`)."""
    subjects = {name: {q.id: str(q.metadata["subject"]) for q in qs if "subject" in q.metadata}
                for name, qs in datasets.items()}
    results: dict[str, Any] = {}
    for name, by_mode in group_predictions(predictions).items():
        results[name] = {mode: {scoring: summarise(rows, cfg.eval.bootstrap_samples, cfg.run.seed,
                                                   subjects.get(name))
                                for scoring, rows in by_scoring.items()}
                         for mode, by_scoring in by_mode.items()}
    labels = mode_labels(**passages_mod.what_trained(run_dir))
    table = accuracy_table(results, labels)
    return {
        "run_dir": str(run_dir), "split": split, "mode_labels": labels,
        "datasets": {name: {"n": len(qs)} for name, qs in datasets.items()},
        "modes": sorted({p.mode for p in predictions}, key=MODES.index),
        "scoring": list(dict.fromkeys(p.scoring for p in predictions)),
        "r_read": cfg.jmlr.r_read, "top_n": cfg.candidates.top_n,
        "bootstrap": {"samples": cfg.eval.bootstrap_samples, "seed": cfg.run.seed, "level": 0.95},
        "accuracy_implementation": "mean of correct answers (evaluate's accuracy metric is "
                                   "fetched from the hub, so it is not used offline)",
        "results": results, "retrieval": retrieval,
        "table": table, "table_markdown": markdown_table(table),
    }
