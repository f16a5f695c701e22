"""``jmlr optimize-prompt``: choose the retriever's query template (``retriever.query_template``).

A template is an instruction around ``{question}``, with or without ``{options}``. Candidates
come from a seed pool (``optimize_prompt.instructions`` x with/without options) and, for
``optimize_prompt.rounds`` rounds, from the generator rewriting the best instructions so far.
Each candidate re-scores the mined candidates of a dev sample with the retriever and is scored:

- ``gold``: MRR of the gold passage, where the questions name gold passages;
- ``teacher`` (label-free): MRR of the passage the base generator finds most useful, from a
  file of its utilities (``jmlr utilities --split dev``): how well the retriever's ranking
  agrees with what helps the LLM answer.

Every candidate is reported with its score on the selection split and on a held-out split
(``--report-split``, test by default, never used to choose). The winner is written into a copy
of the config (``retriever.query_template``); index search, mining, training and evaluation
all read the template from there. Passage vectors do not depend on the template, so each
passage is encoded once and every candidate costs only its queries' encodings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jmlr.errors import ConfigError
from jmlr.registry import CONFIG_SECTIONS

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.data.schema import MCQ

log = logging.getLogger(__name__)

REWRITE_PROMPT = ("An instruction is put in front of a patient's case before a search engine "
                  "looks for the medical passage that answers it. Write one better "
                  "instruction, one sentence.\n\nInstruction: {instruction}\nBetter instruction:")


@CONFIG_SECTIONS.register("optimize_prompt")
@dataclass
class OptimizePromptConfig:
    instructions: list[str] = field(default_factory=lambda: [
        "",
        "Find the passage that describes the condition in this case:",
        "Represent this clinical question for retrieving the disease it describes:",
        "Which disorder has these findings?",
    ])
    with_options: list[bool] = field(default_factory=lambda: [False, True])
    rounds: int = 2                     # rounds of rewriting the best instructions
    rewrites: int = 2                   # new instructions per round (from the best so far)
    questions: int = 60                 # questions of the selection split scored (0: all)
    signal: str = "auto"                # gold | teacher | auto (gold when the data names it)
    teacher_utilities: str = ""         # for signal=teacher: jmlr utilities --split dev

    def validate(self, key: str) -> None:
        if not self.instructions or not self.with_options:
            raise ConfigError(f"{key}.instructions and {key}.with_options need one entry each")
        if self.signal not in ("auto", "gold", "teacher"):
            raise ConfigError(f"{key}.signal must be auto, gold or teacher")
        if self.rounds < 0 or self.rewrites < 0 or self.questions < 0:
            raise ConfigError(f"{key}.rounds, rewrites and questions must be >= 0")


def make_template(instruction: str, with_options: bool) -> str:
    """The query template of an instruction.

    >>> make_template("Find the disease:", True)
    'Find the disease: {question} {options}'
    >>> make_template("", False)
    '{question}'
    """
    body = "{question} {options}" if with_options else "{question}"
    return f"{instruction.strip()} {body}".strip()


def clean_instruction(text: str) -> str:
    """The first line of a generated instruction, without placeholders or quotes; '' if empty.

    >>> clean_instruction(' "Find the condition that fits {question}:"\\nInstruction: x')
    'Find the condition that fits:'
    """
    line = text.strip().split("\n", 1)[0]
    for token in ("{question}", "{options}", "{", "}"):
        line = line.replace(token, "")
    return " ".join(line.strip().strip("\"'").split()).replace(" :", ":")


def reciprocal_rank(ranked: Sequence[str], wanted: set[str]) -> float:
    """1 / rank of the first wanted id in ``ranked`` (0 when none is there).

    >>> reciprocal_rank(["a", "b", "c"], {"c"}), reciprocal_rank(["a"], {"z"})
    (0.3333333333333333, 0.0)
    """
    return next((1.0 / (i + 1) for i, pid in enumerate(ranked) if pid in wanted), 0.0)


def teacher_targets(rows: Sequence[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Per question, the passage(s) with the lowest utility (the teacher's favourite).

    >>> teacher_targets([{"question_id": "q", "passage_ids": ["a", "b"], "utilities": [0.5, 0.2]}])
    {'q': {'b'}}
    """
    out = {}
    for row in rows:
        best = min(row["utilities"])
        out[row["question_id"]] = {p for p, u in zip(row["passage_ids"], row["utilities"],
                                                    strict=True) if u == best}
    return out


class _Scorer:
    """Re-scores fixed candidate lists under any template, passages encoded once."""

    def __init__(self, cfg: Config, questions: Sequence[MCQ], pools: Mapping[str, list[str]],
                 texts: Mapping[str, str]) -> None:
        import torch

        from jmlr.retrieval.backends import backend_for

        self.questions, self.pools = list(questions), pools
        self.scorer = backend_for(cfg).load_scorer(cfg).eval()
        ids = sorted({pid for q in self.questions for pid in pools[q.id]})
        self.where = {pid: i for i, pid in enumerate(ids)}
        with torch.no_grad():
            parts = [self.scorer.encode_docs([texts[p] for p in ids[i:i + 64]])
                     for i in range(0, len(ids), 64)]
        width = max(d.shape[1] for d, _ in parts)
        self.D = torch.cat([torch.nn.functional.pad(d, (0, 0, 0, width - d.shape[1])) for d, _ in parts])
        self.mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, m in parts])

    def rankings(self, template: str) -> dict[str, list[str]]:
        import torch

        from jmlr.retrieval.scorer import late_interaction

        out = {}
        with torch.no_grad():
            for start in range(0, len(self.questions), 32):
                chunk = self.questions[start:start + 32]
                Q = self.scorer.encode_queries([q.query(template) for q in chunk])
                for q, row in zip(chunk, Q, strict=True):
                    index = torch.tensor([self.where[p] for p in self.pools[q.id]])
                    scores = late_interaction(row[None], self.D[index][None], self.mask[index][None])[0]
                    order = scores.argsort(descending=True).tolist()
                    out[q.id] = [self.pools[q.id][i] for i in order]
        return out


def _split_data(cfg: Config, split: str, limit: int) -> tuple[list[MCQ], dict[str, list[str]]]:
    from jmlr.data import load_split
    from jmlr.retrieval.candidates import load_candidates

    questions = load_split(cfg.data, split)
    pools = {qid: list(c.passage_ids) for qid, c in load_candidates(cfg, split).items()}
    questions = [q for q in questions if pools.get(q.id)]
    return (questions[:limit] if limit else questions), pools


def _targets(cfg: Config, questions: list[MCQ], split: str) -> tuple[str, dict[str, set[str]]]:
    """The signal actually used and, per question id, the passages it rewards."""
    opt = cfg.optimize_prompt
    gold = {q.id: set(q.gold_passage_ids) for q in questions if q.gold_passage_ids}
    if opt.signal == "gold" or (opt.signal == "auto" and gold):
        if not gold:
            raise ConfigError(f"optimize_prompt.signal=gold: the {split} questions name no gold "
                              "passages; use signal=teacher with a utilities file")
        return "gold", gold
    if not opt.teacher_utilities:
        raise ConfigError("optimize_prompt.signal=teacher needs optimize_prompt.teacher_utilities: "
                          f"write it with `jmlr utilities --split {split} --out FILE`")
    from jmlr.training.teacher_file import read_rows

    return "teacher", teacher_targets([row for _, row in read_rows(Path(opt.teacher_utilities))])


def run_optimize_prompt(cfg: Config, split: str = "dev", report_split: str = "test",
                        out_dir: str | Path | None = None) -> dict[str, Any]:
    """Score the seed templates and the generator's rewrites; write the report and the
    winning config. Returns the report."""
    from jmlr.data import load_corpus_from_config
    from jmlr.generation.sources import resolve_source
    from jmlr.generation.start import check_generator_start
    from jmlr.io import write_json
    from jmlr.retrieval.backends import backend_for

    opt = cfg.optimize_prompt
    out = Path(out_dir or Path(cfg.run.out_dir) / "prompt").expanduser()
    backend_for(cfg).check_checkpoint(cfg)
    if opt.rounds and opt.rewrites:
        resolve_source(cfg.generator.model)
        check_generator_start(cfg.generator)
    questions, pools = _split_data(cfg, split, opt.questions)
    signal, targets = _targets(cfg, questions, split)
    questions = [q for q in questions if q.id in targets]
    held_out: list[MCQ] = []
    if report_split and (cfg.candidates_dir / f"{report_split}.jsonl").is_file():
        held, held_pools = _split_data(cfg, report_split, 0)
        held_out = [q for q in held if q.gold_passage_ids]
        pools = {**pools, **held_pools}
    if not questions:
        raise ConfigError(f"no {split} question has both mined candidates and a {signal} target")
    texts = {p.id: p.full_text for p in load_corpus_from_config(cfg.data)}
    selection = _Scorer(cfg, questions, pools, texts)
    report_scorer = _Scorer(cfg, held_out, pools, texts) if held_out else None
    gold_held = {q.id: set(q.gold_passage_ids) for q in held_out}

    scored: dict[str, dict[str, Any]] = {}

    def score(instruction: str, with_options: bool, origin: str) -> None:
        template = make_template(instruction, with_options)
        if template in scored:
            return
        ranked = selection.rankings(template)
        entry: dict[str, Any] = {"template": template, "instruction": instruction,
                                 "with_options": with_options, "origin": origin,
                                 split: sum(reciprocal_rank(ranked[q.id], targets[q.id])
                                            for q in questions) / len(questions)}
        if report_scorer is not None:
            held = report_scorer.rankings(template)
            entry[report_split] = sum(reciprocal_rank(held[q.id], gold_held[q.id])
                                      for q in held_out) / len(held_out)
        scored[template] = entry
        log.info("%.4f  %s", entry[split], template)

    for instruction in opt.instructions:
        for with_options in opt.with_options:
            score(instruction, with_options, "seed")
    if opt.rounds and opt.rewrites:
        rewrite = _Rewriter(cfg)
        for round_no in range(1, opt.rounds + 1):
            best = sorted(scored.values(), key=lambda e: -e[split])[:opt.rewrites]
            for entry, new in zip(best, rewrite(e["instruction"] for e in best), strict=True):
                if new:
                    score(new, entry["with_options"], f"rewrite, round {round_no}")
    ranked = sorted(scored.values(), key=lambda e: -e[split])
    winner = ranked[0]
    plain = scored.get("{question}") or scored.get(make_template("", False))
    report = {"signal": signal, "split": split, "report_split": report_split if held_out else None,
              "questions": len(questions), "held_out_questions": len(held_out),
              "metric": "MRR over the mined candidates", "winner": winner, "plain": plain,
              "candidates": ranked}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    chosen = replace(cfg, retriever=replace(cfg.retriever, query_template=winner["template"]))
    chosen.save(out / "config.yaml")
    report["config"] = str(out / "config.yaml")
    return report


class _Rewriter:
    """The generator (base, greedy) rewriting instructions."""

    def __init__(self, cfg: Config) -> None:
        from jmlr.device import resolve_device
        from jmlr.generation.model import load_generator

        self.model, self.tokenizer = load_generator(cfg.generator, cfg.run.cache_dir,
                                                    device=resolve_device(cfg.run.device),
                                                    for_training=False)

    def __call__(self, instructions: Any) -> list[str]:
        from jmlr.evaluation.scoring import greedy_generate

        tok = self.tokenizer
        prompts = [tok(REWRITE_PROMPT.format(instruction=i or "(none)"))["input_ids"]
                   for i in instructions]
        made = greedy_generate(self.model, prompts, tok.pad_token_id,
                               [tok.eos_token_id] if tok.eos_token_id is not None else [], 32)
        return [clean_instruction(tok.decode(ids, skip_special_tokens=True)) for ids in made]


def print_report(report: Mapping[str, Any]) -> None:
    split, held = report["split"], report["report_split"]
    print(f"signal: {report['signal']} ({report['questions']} {split} questions"
          + (f", {report['held_out_questions']} {held} questions held out)" if held else ")"))
    print(f"{split:>8} " + (f"{held:>8} " if held else "") + " template (origin)")
    for entry in report["candidates"]:
        print(f"{entry[split]:8.4f} " + (f"{entry[held]:8.4f} " if held else "")
              + f" {entry['template']!r} ({entry['origin']})")
    print(f"winner: {report['winner']['template']!r} -> {report['config']}")
    print("the index's search and the mined candidates use the template: mine again with "
          "that config before training")
