"""``jmlr preferences``: preference pairs that reward grounded, factual rationales, built from
the model's own answers.

For each question of ``preferences.split``:

1. the retriever orders the question's candidates (the mined top-N, or a fresh index search)
   and the top ``jmlr.r_read`` passages go into the training template, as in evaluation;
2. the generator samples ``preferences.samples`` answers with rationales (temperature, top-p);
   ``preferences.start_from`` names a trained run whose generator samples and whose retriever
   reads (empty: the base generator and the configured retriever);
3. each answer is scored: correct or not (its parsed letter), UMLS-F F1 of its rationale
   against the reference rationale (scispaCy linking over ``factuality.kb``), and its
   unsupported concepts: those in neither the question and its options, nor the passages
   read, nor the reference (a hallucination proxy);
4. :mod:`jmlr.alignment.preferences` ranks them (``preferences.signal``) and draws pairs.

Two files: ``samples.jsonl`` (every scored answer, one row per question; appended batch by
batch, so a stopped run continues, each batch seeded by ``run.seed`` and its first question)
and the pairs file (``preferences.out``, default ``RUN/preferences/pairs.jsonl``) in trl's
preference layout ``{prompt, chosen, rejected}`` with the scores beside them, rewritten from the
samples at the end: another signal or number of pairs needs no new sampling.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jmlr.alignment.preferences import (
    Sample,
    preference_pairs,
    preference_row,
    unsupported_concepts,
)
from jmlr.errors import ConfigError

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.data.schema import MCQ

log = logging.getLogger(__name__)

FORMAT = "jmlr-preference-samples/1"


def out_dir(cfg: Config) -> Path:
    return Path(cfg.run.out_dir) / "preferences"


def pairs_path(cfg: Config) -> Path:
    return Path(cfg.preferences.out).expanduser() if cfg.preferences.out \
        else out_dir(cfg) / "pairs.jsonl"


def samples_path(cfg: Config) -> Path:
    return out_dir(cfg) / "samples.jsonl"


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def question_text(mcq: MCQ) -> str:
    """What the model was asked: the question and its options, one text for concept linking.

    >>> from jmlr.data.schema import MCQ
    >>> question_text(MCQ("q", "A boy has a rash.", {"A": "Measles", "B": "Gout"}, "A"))
    'A boy has a rash.\\nA. Measles\\nB. Gout'
    """
    return "\n".join([mcq.question, *(f"{k}. {v}" for k, v in mcq.options.items())])


def score_sample(text: str, mcq: MCQ, rationale_cuis: set[str] | None,
                 context_cuis: tuple[set[str], set[str], set[str]] | None) -> Sample:
    """One sampled answer as a :class:`Sample`: its parsed letter against the answer, UMLS-F F1
    of its rationale against the reference (None when the question has no reference or no KB
    is used), and its unsupported concepts. ``context_cuis`` is (question, passages, reference).

    >>> from jmlr.data.schema import MCQ
    >>> q = MCQ("q", "Rash?", {"A": "Measles", "B": "Gout"}, "A", rationale="Measles: rash.")
    >>> s = score_sample(" A: Measles\\nExplanation: rash, fever", q, {"C1", "C2", "C9"},
    ...                  ({"C1"}, set(), {"C1", "C2"}))
    >>> s.correct, round(s.umls_f1, 3), s.concepts, s.unsupported
    (True, 0.8, 3, 1)
    >>> score_sample(" B", q, None, None)
    Sample(text=' B', correct=False, umls_f1=None, concepts=0, unsupported=0)
    """
    from jmlr.evaluation.umls_f import set_scores
    from jmlr.generation.prompts import parse_answer_letter

    letter = parse_answer_letter(text, list(mcq.options))
    if rationale_cuis is None or context_cuis is None:
        return Sample(text, letter == mcq.answer, None, 0, 0)
    question, passages, reference = context_cuis
    f1 = set_scores(rationale_cuis, reference).f1 if mcq.rationale else None
    unsupported = unsupported_concepts(rationale_cuis, question, passages, reference)
    return Sample(text, letter == mcq.answer, f1, len(rationale_cuis), len(unsupported))


def pairs_from_samples(rows: Sequence[dict[str, Any]], signal: str, per_question: int
                       ) -> list[dict[str, Any]]:
    """Preference rows (trl's layout) from ``samples.jsonl`` rows, question by question.

    >>> row = {"question_id": "q1", "prompt": "Q?\\nAnswer:", "samples": [
    ...     {"text": " A", "correct": False, "umls_f1": 0.0, "concepts": 1, "unsupported": 1},
    ...     {"text": " B", "correct": True, "umls_f1": 0.5, "concepts": 2, "unsupported": 0}]}
    >>> [(r["chosen"], r["rejected"]) for r in pairs_from_samples([row], "correctness", 2)]
    [(' B', ' A')]
    """
    out = []
    fields = {f.name for f in dataclasses.fields(Sample)}
    for row in rows:
        samples = [Sample(**{k: v for k, v in s.items() if k in fields}) for s in row["samples"]]
        for pair in preference_pairs(samples, signal, per_question):
            out.append(preference_row(row["question_id"], row["prompt"], samples, pair, signal))
    return out


# --------------------------------------------------------------------------- the command


def check_inputs(cfg: Config) -> None:
    """Everything the command reads, located before anything loads."""
    from jmlr.alignment.reading import check_reading
    from jmlr.data import locate_questions
    from jmlr.data.kb import resolve_kb
    from jmlr.evaluation.passages import check_trained_run
    from jmlr.generation.sources import resolve_source
    from jmlr.generation.start import check_generator_start
    from jmlr.resources import resolve_location
    from jmlr.retrieval.backends import backend_for

    pref = cfg.preferences
    split_path = getattr(cfg.data, pref.split, None) if pref.split in ("train", "dev", "test") else None
    if split_path is None:
        raise ConfigError(f"preferences.split must be train, dev or test, got {pref.split!r}")
    locate_questions(split_path, f"data.{pref.split}")
    resolve_location(cfg.data.corpus, "data.corpus")
    if pref.signal == "factuality" and not cfg.factuality.kb:
        raise ConfigError("preferences.signal=factuality scores rationales by UMLS concepts: set "
                          "factuality.kb (or preferences.signal=correctness)")
    if cfg.factuality.kb:
        resolve_kb(cfg.factuality.kb)
    if pref.start_from:
        check_trained_run(cfg, Path(pref.start_from))
    resolve_source(cfg.generator.model)
    check_generator_start(cfg.generator)
    backend = backend_for(cfg)
    backend.check_checkpoint(cfg)
    check_reading(cfg, pref.split)


def _settings(cfg: Config) -> dict[str, Any]:
    """What the samples depend on: a file for other settings is refused, not mixed."""
    pref = cfg.preferences
    return {"split": pref.split, "start_from": pref.start_from, "samples": pref.samples,
            "temperature": pref.temperature, "top_p": pref.top_p,
            "max_new_tokens": pref.max_new_tokens, "seed": cfg.run.seed,
            "generator": cfg.generator.model, "retriever": cfg.retriever.checkpoint,
            "query_template": cfg.retriever.query_template, "r_read": cfg.jmlr.r_read,
            "target": cfg.jmlr.target, "max_length": cfg.generator.max_length,
            "kb": cfg.factuality.kb, "factuality": dataclasses.asdict(cfg.factuality)}


def _resume(path: Path, meta: dict[str, Any], overwrite: bool) -> set[str]:
    from jmlr.io import earlier_meta

    old = earlier_meta(path, meta_path(path), overwrite)
    if old is None:
        return set()
    if {k: old.get(k) for k in ("format", "settings")} != {k: meta[k] for k in ("format", "settings")}:
        differing = sorted(k for k in meta["settings"]
                           if (old.get("settings") or {}).get(k) != meta["settings"][k])
        raise ConfigError(f"{path} holds samples drawn with other settings "
                          f"({', '.join(differing) or 'format'}): pass --overwrite to replace "
                          "them, or set run.out_dir to write elsewhere")
    done = set()
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                done.add(json.loads(line)["question_id"])
    return done


def run_preferences(cfg: Config, overwrite: bool = False) -> dict[str, Any]:
    """Sample, score and pair (module docstring); returns a summary."""
    from jmlr.alignment.reading import reading_config
    from jmlr.data import load_split
    from jmlr.io import atomic_write, write_json

    cfg = reading_config(cfg, cfg.preferences.start_from)      # the start run's passages
    pref = cfg.preferences
    check_inputs(cfg)
    questions = load_split(cfg.data, pref.split)
    questions = questions[:pref.limit] if pref.limit else questions
    path = samples_path(cfg)
    meta: dict[str, Any] = {"format": FORMAT, "settings": _settings(cfg), "finished": False}
    done = _resume(path, meta, overwrite)
    todo = [q for q in questions if q.id not in done]
    seconds = 0.0
    if todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(meta_path(path), meta)
        started = time.perf_counter()
        _sample_and_score(cfg, todo, path)
        seconds = time.perf_counter() - started
    wanted = {q.id for q in questions}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["question_id"] in wanted]
    old_meta = json.loads(meta_path(path).read_text()) if meta_path(path).is_file() else meta
    meta.update(finished=True, questions=len(rows),
                seconds=round(seconds, 1) if todo else old_meta.get("seconds"),
                samples_per_s=(round(len(todo) * pref.samples / seconds, 4) if todo and seconds
                               else old_meta.get("samples_per_s")))
    write_json(meta_path(path), meta)

    pairs = pairs_from_samples(rows, pref.signal, pref.pairs_per_question)
    out = pairs_path(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as handle:
        handle.write("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    summary = summarize_samples(rows)
    summary.update(pairs=len(pairs), signal=pref.signal, samples_file=str(path), pairs_file=str(out),
                   sampled_now=len(todo), kept=len(done & wanted), seconds=meta["seconds"],
                   samples_per_s=meta["samples_per_s"])
    log.info("%d pairs (%s) from %d questions -> %s", len(pairs), pref.signal, len(rows), out)
    return summary


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def summarize_samples(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Share correct, mean UMLS-F F1 and mean unsupported share over every sampled answer.

    >>> summarize_samples([{"samples": [{"correct": True, "umls_f1": 0.5, "concepts": 4,
    ...     "unsupported": 1}, {"correct": False, "umls_f1": None, "concepts": 0, "unsupported": 0}]}])
    {'questions': 1, 'answers': 2, 'correct': 0.5, 'umls_f1': 0.5, 'unsupported_share': 0.125}
    """
    answers = [s for r in rows for s in r["samples"]]
    f1s = [s["umls_f1"] for s in answers if s["umls_f1"] is not None]
    shares = [s["unsupported"] / s["concepts"] if s["concepts"] else 0.0 for s in answers]
    return {"questions": len(rows), "answers": len(answers),
            "correct": _mean([float(s["correct"]) for s in answers]), "umls_f1": _mean(f1s),
            "unsupported_share": _mean(shares)}


def _sample_and_score(cfg: Config, todo: list[MCQ], path: Path) -> None:
    """Read, sample and score ``todo``, appending one row per question to ``path``."""
    import torch
    from tqdm.auto import tqdm

    from jmlr.alignment.reading import passages_read
    from jmlr.device import resolve_device
    from jmlr.evaluation import passages as passages_mod
    from jmlr.retrieval.synthesis import batch_seed

    pref = cfg.preferences
    device = resolve_device(cfg.run.device)
    reads, corpus = passages_read(cfg, pref.split, todo, pref.start_from, device)
    run_dir = Path(pref.start_from) if pref.start_from else Path(cfg.run.out_dir)
    model, tokenizer = passages_mod.load_eval_generator(
        cfg, run_dir, "trained" if pref.start_from else "base", device)
    extractor = None
    if cfg.factuality.kb:
        from jmlr.data.kb import resolve_kb
        from jmlr.evaluation.factuality import ConceptExtractor

        extractor = ConceptExtractor(resolve_kb(cfg.factuality.kb), cfg.factuality, cfg.run.cache_dir)
    with path.open("a", encoding="utf-8") as handle, torch.no_grad(), \
            tqdm(total=len(todo), desc="preferences", unit="question") as bar:
        for start in range(0, len(todo), pref.batch_size):
            batch = todo[start:start + pref.batch_size]
            torch.manual_seed(batch_seed(cfg.run.seed, batch[0].id))
            rows = _batch_rows(cfg, model, tokenizer, extractor, batch,
                               [reads[q.id] for q in batch], corpus)
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            handle.flush()      # a stopped run keeps every finished batch
            bar.update(len(batch))


def _batch_rows(cfg: Config, model: Any, tokenizer: Any, extractor: Any, batch: list[MCQ],
                reads: list[list[str]], corpus: dict[str, str]) -> list[dict[str, Any]]:
    from jmlr.alignment.reading import prompt_ids as make_prompt_ids
    from jmlr.evaluation.mcq import split_generation
    from jmlr.evaluation.scoring import left_pad
    from jmlr.generation.prompts import parse_answer_letter

    pref = cfg.preferences
    prompt_ids = [make_prompt_ids(cfg, tokenizer, q, [corpus[p] for p in ids])
                  for q, ids in zip(batch, reads, strict=True)]
    input_ids, mask, _ = (t.to(model.device) for t in left_pad(prompt_ids, tokenizer.pad_token_id))
    made = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True,
                          temperature=pref.temperature, top_p=pref.top_p, top_k=None,
                          num_return_sequences=pref.samples, max_new_tokens=pref.max_new_tokens,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(made[:, input_ids.shape[1]:], skip_special_tokens=True)
    per_question = [texts[i * pref.samples:(i + 1) * pref.samples] for i in range(len(batch))]

    concepts: dict[str, set[str]] = {}
    if extractor is not None:
        wanted = []
        for q, ids, answers in zip(batch, reads, per_question, strict=True):
            wanted += [question_text(q), *(corpus[p] for p in ids), q.rationale or ""]
            for text in answers:
                letter = parse_answer_letter(text, list(q.options))
                wanted.append(split_generation(text, letter, q.options.get(letter or "")) or "")
        unique = list(dict.fromkeys(wanted))
        found = extractor.extract_many(unique, progress=False)
        concepts = {t: {c.cui for c in cs} for t, cs in zip(unique, found, strict=True)}

    rows = []
    for q, ids, answers, p_ids in zip(batch, reads, per_question, prompt_ids, strict=True):
        context = None
        if extractor is not None:
            passages = set().union(*(concepts[corpus[p]] for p in ids)) if ids else set()
            context = (concepts[question_text(q)], passages, concepts[q.rationale or ""])
        scored = []
        for text in answers:
            letter = parse_answer_letter(text, list(q.options))
            rationale = split_generation(text, letter, q.options.get(letter or ""))
            cuis = concepts.get(rationale or "", set()) if extractor is not None else None
            sample = score_sample(text, q, cuis, context)
            scored.append({**dataclasses.asdict(sample), "letter": letter, "rationale": rationale,
                           "unsupported_concepts": sorted(
                               unsupported_concepts(cuis, *context)) if context and cuis else []})
        rows.append({"question_id": q.id, "prompt": tokenizer.decode(p_ids, skip_special_tokens=True),
                     "answer": q.answer, "read": ids, "samples": scored})
    return rows
