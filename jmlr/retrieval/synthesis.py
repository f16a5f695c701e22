"""``jmlr synthesize``: label-free training rows for the retriever, written by the generator.

For passages of the corpus (``synthesize.passage_pattern`` chooses which, by id), the generator
writes questions in the style of the task's own training questions (a few of their texts are
the prompt's examples: no answer, no gold passage, no label is read). Each synthetic question
gets hard negatives:

- **mined**: the passages the current retriever ranks highest for it in the index, minus
  likely false negatives. The generator judges them: a passage is a false negative when the
  question is about as likely given it as given the positive (query likelihood, mean NLL of the
  question's tokens after ``Passage: ... Question:``, within ``false_negative_margin`` nats).
  Why query likelihood: a synthetic question has no options or answer to score, and a passage
  that explains the question as well as the one it was written from is as good an answer.
- **written** (``written_negatives`` > 0): near-miss passages the generator rewrites from the
  positive with a key fact changed.

Rows go to a JSON-lines file in the layout of :mod:`jmlr.training.contrastive_data` (query,
positive, negatives, their ids and provenance), which the ``retriever_contrastive`` step and
other tools train from. Batches are appended as they finish, so a stopped run continues; the
sampling of each batch is seeded by ``run.seed`` and the batch's first passage, so a run
gives the same rows whether or not it was interrupted. The meta file beside the rows records
the settings and the throughput (questions per second).

This module imports no torch at import time (its config section registers when configs load).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jmlr.errors import ConfigError
from jmlr.registry import CONFIG_SECTIONS

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.data.schema import Passage

log = logging.getLogger(__name__)

FORMAT = "jmlr-synthetic-rows/1"
QUESTION_INSTRUCTION = ("Write one question in the style of the example questions, about the "
                        "passage. The question describes a patient and asks what fits; it "
                        "does not name the answer.")
REWRITE_INSTRUCTION = ("Rewrite the passage so that it describes a different condition: change "
                       "its key facts, keep its style and length.")


@CONFIG_SECTIONS.register("synthesize")
@dataclass
class SynthesizeConfig:
    out: str = ""                       # the rows file (default RUN/synthetic.jsonl)
    passage_pattern: str = ""           # a regex on passage ids: which passages get questions
    passages: int = 0                   # the first N of those (0: all)
    per_passage: int = 1                # questions written per passage
    examples: int = 3                   # training questions (text only) shown as examples
    max_new_tokens: int = 80
    temperature: float = 0.8            # sampling; 0: greedy
    top_p: float = 0.95
    batch_size: int = 8                 # passages per generation batch
    hard_negatives: int = 7             # mined negatives kept per question
    mine_depth: int = 12                # mined candidates judged per question
    false_negative_margin: float = 0.1  # nats; < 0 keeps every mined negative
    written_negatives: int = 0          # near misses written per question (0: none)
    min_words: int = 6                  # shorter generated questions are dropped

    def validate(self, key: str) -> None:
        checks = [(self.passages >= 0, "passages must be >= 0"),
                  (self.per_passage >= 1, "per_passage must be >= 1"),
                  (self.examples >= 0, "examples must be >= 0"),
                  (self.max_new_tokens >= 8, "max_new_tokens must be >= 8"),
                  (self.temperature >= 0, "temperature must be >= 0"),
                  (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                  (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.hard_negatives >= 0, "hard_negatives must be >= 0"),
                  (self.mine_depth >= self.hard_negatives, "mine_depth must be >= hard_negatives"),
                  (self.written_negatives >= 0, "written_negatives must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{key}.{message}")
        try:
            re.compile(self.passage_pattern)
        except re.error as err:
            raise ConfigError(f"{key}.passage_pattern is not a regular expression ({err})") from None


# --------------------------------------------------------------------------- pure pieces


def choose_passages(passages: Sequence[Passage], pattern: str, limit: int) -> list[Passage]:
    """The passages whose id matches ``pattern`` (all when empty), the first ``limit`` (0: all).

    >>> from jmlr.data.schema import Passage
    >>> ps = [Passage("OMIM:1", "a"), Passage("HP:2", "b"), Passage("OMIM:3", "c")]
    >>> [p.id for p in choose_passages(ps, "^OMIM:", 0)], [p.id for p in choose_passages(ps, "", 2)]
    (['OMIM:1', 'OMIM:3'], ['OMIM:1', 'HP:2'])
    """
    chosen = [p for p in passages if not pattern or re.search(pattern, p.id)]
    return chosen[:limit] if limit > 0 else chosen


def question_prompt(examples: Sequence[str], passage: str) -> str:
    """The prompt that asks for one question about ``passage``, in the examples' style.

    >>> print(question_prompt(["A boy has a rash. Which disease fits?"], "Measles is ..."))
    Write one question in the style of the example questions, about the passage. The question describes a patient and asks what fits; it does not name the answer.
    <BLANKLINE>
    Example question: A boy has a rash. Which disease fits?
    <BLANKLINE>
    Passage: Measles is ...
    Question:
    """
    shown = "".join(f"Example question: {e}\n" for e in examples)
    return f"{QUESTION_INSTRUCTION}\n\n{shown}\nPassage: {passage}\nQuestion:"


def rewrite_prompt(passage: str) -> str:
    return f"{REWRITE_INSTRUCTION}\n\nPassage: {passage}\nRewritten passage:"


def likelihood_prefix(passage: str) -> str:
    """What the query likelihood conditions on; the question's tokens follow it."""
    return f"Passage: {passage}\nQuestion:"


def clean_question(text: str, min_words: int) -> str:
    """The first line of a generation, trimmed; '' when it is shorter than ``min_words``.

    >>> clean_question("  A girl has seizures. What fits?\\nExample question: ...", 3)
    'A girl has seizures. What fits?'
    >>> clean_question("Fever?", 3)
    ''
    """
    line = text.strip().split("\n", 1)[0].strip()
    return line if len(line.split()) >= min_words else ""


def keep_negatives(positive_loss: float, negative_losses: Sequence[float], margin: float
                   ) -> list[bool]:
    """Which mined negatives stay: those whose query likelihood is worse than the positive's by
    more than ``margin`` nats (a negative within the margin is likely a false negative). A
    negative ``margin`` keeps every one.

    >>> keep_negatives(1.0, [0.8, 1.05, 1.2, 3.0], 0.1)
    [False, False, True, True]
    >>> keep_negatives(1.0, [0.8], -1)
    [True]
    """
    if margin < 0:
        return [True] * len(negative_losses)
    return [loss > positive_loss + margin for loss in negative_losses]


def batch_seed(seed: int, first_passage_id: str) -> int:
    """The sampling seed of a batch: the run's seed and the batch's first passage.

    >>> batch_seed(0, "OMIM:1") == batch_seed(0, "OMIM:1") != batch_seed(1, "OMIM:1")
    True
    """
    digest = hashlib.sha256(f"{seed}:{first_passage_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def default_out(cfg: Config) -> Path:
    return Path(cfg.synthesize.out or Path(cfg.run.out_dir) / "synthetic.jsonl").expanduser()


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


# --------------------------------------------------------------------------- the command


def check_inputs(cfg: Config) -> None:
    """Everything the command reads, located before anything loads."""
    from jmlr.data import locate_questions
    from jmlr.generation.sources import resolve_source
    from jmlr.generation.start import check_generator_start
    from jmlr.resources import resolve_location
    from jmlr.retrieval.backends import backend_for

    resolve_location(cfg.data.corpus, "data.corpus")
    if cfg.synthesize.examples > 0:
        locate_questions(cfg.data.train, "data.train")
    backend = backend_for(cfg)
    backend.check_checkpoint(cfg)
    if cfg.synthesize.hard_negatives > 0 and not backend.index_exists(cfg):
        raise ConfigError(f"no index at {cfg.index_dir}: run `jmlr index` with this config first "
                          "(mined negatives come from it), or set synthesize.hard_negatives=0")
    resolve_source(cfg.generator.model)
    check_generator_start(cfg.generator)


def _resume(path: Path, meta: dict[str, Any], overwrite: bool) -> set[str]:
    """Passage ids already done in ``path`` when it was written with these settings."""
    from jmlr.io import earlier_meta

    old = earlier_meta(path, meta_path(path), overwrite)
    if old is None:
        return set()
    if {k: old.get(k) for k in ("format", "settings")} != {k: meta[k] for k in ("format", "settings")}:
        raise ConfigError(f"{path} holds rows written with other settings: pass --overwrite to "
                          "replace them, or set synthesize.out to write elsewhere")
    # Passages whose batch finished (some give no row: a question too short is dropped), and
    # any with a row written just before a stop left the meta behind.
    done = set(old.get("done", []))
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                done.add(json.loads(line)["provenance"]["passage"])
    meta["done"] = sorted(done)
    return done


def run_synthesize(cfg: Config, overwrite: bool = False) -> dict[str, Any]:
    """Write synthetic rows for the chosen passages (module docstring); returns a summary."""
    import torch
    from tqdm.auto import tqdm

    from jmlr.data import load_corpus_from_config, load_split
    from jmlr.device import resolve_device
    from jmlr.generation.model import load_generator
    from jmlr.io import write_json

    syn = cfg.synthesize
    check_inputs(cfg)
    path = default_out(cfg)
    corpus = load_corpus_from_config(cfg.data)
    chosen = choose_passages(corpus, syn.passage_pattern, syn.passages)
    if not chosen:
        raise ConfigError(f"synthesize.passage_pattern {syn.passage_pattern!r} matches no "
                          "passage id of data.corpus")
    examples = [q.question for q in load_split(cfg.data, "train")[:syn.examples]] \
        if syn.examples > 0 else []
    # How rows are written (not how many, nor where): a run may continue with more passages.
    how = {k: v for k, v in asdict(syn).items() if k not in ("passages", "out")}
    meta = {"format": FORMAT, "settings": {**how, "generator": cfg.generator.model,
                                           "retriever": cfg.retriever.checkpoint,
                                           "seed": cfg.run.seed, "examples": examples},
            "finished": False, "done": []}
    done = _resume(path, meta, overwrite)
    todo = [p for p in chosen if p.id not in done]
    if not todo:
        write_json(meta_path(path), {**json.loads(meta_path(path).read_text()), "finished": True})
        return {"path": str(path), "passages": len(chosen), "written": 0,
                "kept_from_earlier_run": len(done)}

    device = resolve_device(cfg.run.device)
    model, tokenizer = load_generator(cfg.generator, cfg.run.cache_dir, device=device,
                                      for_training=False)
    writer = _Writer(cfg, model, tokenizer, corpus, examples)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(meta_path(path), meta)
    started, rows_written, dropped = time.perf_counter(), 0, 0
    with path.open("a", encoding="utf-8") as handle, torch.no_grad(), \
            tqdm(total=len(todo), desc="synthesize", unit="passage") as bar:
        for start in range(0, len(todo), syn.batch_size):
            batch = todo[start:start + syn.batch_size]
            torch.manual_seed(batch_seed(cfg.run.seed, batch[0].id))
            rows, n_dropped = writer.rows(batch)
            handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
            handle.flush()      # a stopped run keeps every finished batch
            meta["done"] = [*meta["done"], *(p.id for p in batch)]
            write_json(meta_path(path), meta)
            rows_written, dropped = rows_written + len(rows), dropped + n_dropped
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    meta.update(finished=True, seconds=round(seconds, 1), device=device,
                questions_per_s=round(rows_written / max(seconds, 1e-9), 4),
                false_negatives_dropped=dropped)
    write_json(meta_path(path), meta)
    log.info("%d synthetic questions from %d passages in %.0f s (%.3f per s) -> %s",
             rows_written, len(todo), seconds, meta["questions_per_s"], path)
    return {"path": str(path), "passages": len(chosen), "written": rows_written,
            "kept_from_earlier_run": len(done), "seconds": round(seconds, 1),
            "questions_per_s": meta["questions_per_s"], "false_negatives_dropped": dropped}


class _Writer:
    """The generator's three jobs for a batch of passages: write questions, judge the mined
    negatives by query likelihood, and (optionally) write near misses."""

    def __init__(self, cfg: Config, model: Any, tokenizer: Any, corpus: Sequence[Passage],
                 examples: list[str]) -> None:
        self.cfg, self.model, self.tokenizer, self.examples = cfg, model, tokenizer, examples
        self.texts = {p.id: p.full_text for p in corpus}

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        from jmlr.evaluation.scoring import left_pad

        syn, tok = self.cfg.synthesize, self.tokenizer
        ids = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
        input_ids, mask, _ = (t.to(self.model.device) for t in left_pad(ids, tok.pad_token_id))
        sampling = {"do_sample": True, "temperature": syn.temperature, "top_p": syn.top_p,
                    "top_k": None} if syn.temperature > 0 else {
                    "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        out = self.model.generate(input_ids=input_ids, attention_mask=mask,
                                  max_new_tokens=max_new_tokens, num_beams=1,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                  **sampling)
        return tok.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)

    def question_losses(self, question: str, passages: list[str]) -> list[float]:
        """Mean NLL of the question's tokens given each passage (lower: more likely)."""
        import torch

        from jmlr.training.token_losses import sequence_losses

        tok = self.tokenizer
        q_ids = tok(" " + question, add_special_tokens=False)["input_ids"]
        budget = self.cfg.generator.max_length - len(q_ids)
        rows = [tok(likelihood_prefix(p), add_special_tokens=True)["input_ids"][:max(budget, 8)] + q_ids
                for p in passages]
        width = max(map(len, rows))
        pad = tok.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        target = torch.tensor([[0] * (len(r) - len(q_ids)) + [1] * len(q_ids) + [0] * (width - len(r))
                               for r in rows])
        losses = sequence_losses(self.model, ids.to(self.model.device),
                                 attention.to(self.model.device), target.to(self.model.device),
                                 self.cfg.jmlr.utility_tokens_per_forward or 2048)
        return losses.float().cpu().tolist()

    def mined(self, queries: list[tuple[str, str]]) -> dict[str, list[str]]:
        """query id → mined passage ids, best first (``synthesize.mine_depth`` + 1 deep)."""
        from dataclasses import replace

        from jmlr.data.schema import MCQ
        from jmlr.retrieval.backends import backend_for

        syn = self.cfg.synthesize
        if syn.hard_negatives == 0 or not queries:
            return {qid: [] for qid, _ in queries}
        cfg = replace(self.cfg, retriever=replace(self.cfg.retriever, query_template="{question}"),
                      candidates=replace(self.cfg.candidates, top_n=syn.mine_depth + 1))
        as_questions = [MCQ(qid, text, {"A": "-", "B": "-"}, "A") for qid, text in queries]
        found = backend_for(cfg).search(cfg, as_questions)
        return {qid: list(found[qid].passage_ids) if qid in found else [] for qid, _ in queries}

    def rows(self, batch: list[Passage]) -> tuple[list[dict[str, Any]], int]:
        syn = self.cfg.synthesize
        prompts = [question_prompt(self.examples, p.full_text) for p in batch for _ in range(syn.per_passage)]
        owners = [p for p in batch for _ in range(syn.per_passage)]
        written = self.generate(prompts, syn.max_new_tokens)
        queries = []
        for k, (passage, text) in enumerate(zip(owners, written, strict=True)):
            question = clean_question(text, syn.min_words)
            if question:
                queries.append((f"syn-{passage.id}-{k % syn.per_passage}", question, passage))
        mined = self.mined([(qid, q) for qid, q, _ in queries])
        rows, dropped = [], 0
        for qid, question, passage in queries:
            candidates = [pid for pid in mined[qid] if pid != passage.id][:syn.mine_depth]
            kept_ids: list[str] = []
            if candidates:
                losses = self.question_losses(question, [passage.full_text,
                                                         *(self.texts[c] for c in candidates)])
                keep = keep_negatives(losses[0], losses[1:], syn.false_negative_margin)
                kept_ids = [c for c, ok in zip(candidates, keep, strict=True) if ok][:syn.hard_negatives]
                dropped += keep.count(False)
            negatives = [self.texts[c] for c in kept_ids]
            near = []
            if syn.written_negatives:
                near = [clean_question(t, 4) for t in self.generate(
                    [rewrite_prompt(passage.full_text)] * syn.written_negatives, syn.max_new_tokens)]
                near = [t for t in near if t]
            rows.append({"query_id": qid, "query": question, "positive_id": passage.id,
                         "positive": passage.full_text,
                         "negative_ids": kept_ids + [f"{qid}-written-{i}" for i in range(len(near))],
                         "negatives": negatives + near,
                         "provenance": {"passage": passage.id, "prompt": "question_prompt/1",
                                        "model": self.cfg.generator.model,
                                        "seed": self.cfg.run.seed, "examples": len(self.examples),
                                        "mined_from": self.cfg.retriever.checkpoint,
                                        "written_negatives": len(near)}})
        return rows, dropped
