"""The alignment config sections: ``preferences`` (what ``jmlr preferences`` samples and how it
ranks), ``sft`` and ``dpo`` (trl's trainers around the project's generator). No torch here: the
sections register when configs load.

    preferences: {samples: 4, temperature: 1.0, signal: factuality, pairs_per_question: 2}
    sft: {data: questions, max_steps: 60, learning_rate: 2.0e-4}
    dpo: {data: runs/demo/preferences.jsonl, beta: 0.1, max_steps: 40}

``start_from`` (sft, dpo, preferences) names a run whose trained generator is the starting
point (and whose retriever reads the passages); empty means the configured base generator and
retriever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jmlr.alignment.preferences import SIGNALS
from jmlr.errors import ConfigError
from jmlr.registry import CONFIG_SECTIONS

SFT_SOURCES = ("questions",)        # besides a path to a jsonl file
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")


def _require(key: str, checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{key}.{message}")


@CONFIG_SECTIONS.register("preferences")
@dataclass
class PreferencesConfig:
    out: str = ""                       # pairs file (default RUN/preferences/pairs.jsonl)
    split: str = "train"
    start_from: str = ""                # a run: its generator samples, its retriever reads
    limit: int = 0                      # the first N questions (0: all)
    samples: int = 4                    # answers sampled per question
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 96
    batch_size: int = 4                 # questions per generation batch
    signal: str = "factuality"          # factuality | correctness
    pairs_per_question: int = 2

    def validate(self, key: str) -> None:
        _require(key, [(self.limit >= 0, "limit must be >= 0"),
                       (self.samples >= 2, "samples must be >= 2 (a pair needs two answers)"),
                       (self.temperature > 0, "temperature must be > 0 (the answers are sampled)"),
                       (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                       (self.max_new_tokens >= 8, "max_new_tokens must be >= 8"),
                       (self.batch_size >= 1, "batch_size must be >= 1"),
                       (self.signal in SIGNALS, f"signal must be one of {', '.join(SIGNALS)}"),
                       (self.pairs_per_question >= 1, "pairs_per_question must be >= 1")])


@dataclass
class _TrlTraining:
    """What SFT and DPO share: where to start, and the trainer's schedule."""

    data: str = ""
    start_from: str = ""                # a run whose trained generator is the starting point
    max_steps: int = 40
    learning_rate: float = 5.0e-5
    batch_size: int = 2
    grad_accum: int = 1
    warmup_steps: int = 0
    save_every: int = 10                # checkpoint every N steps (resume continues from it)
    logging_steps: int = 1
    max_length: int = 0                 # tokens of prompt + answer (0: generator.max_length)

    def _shared_checks(self, key: str) -> None:
        _require(key, [(self.max_steps >= 1, "max_steps must be >= 1"),
                       (self.learning_rate > 0, "learning_rate must be > 0"),
                       (self.batch_size >= 1, "batch_size must be >= 1"),
                       (self.grad_accum >= 1, "grad_accum must be >= 1"),
                       (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
                       (self.save_every >= 1, "save_every must be >= 1"),
                       (self.logging_steps >= 1, "logging_steps must be >= 1"),
                       (self.max_length >= 0, "max_length must be >= 0")])


@CONFIG_SECTIONS.register("sft")
@dataclass
class SftConfig(_TrlTraining):
    # "questions": the split's questions with their reference rationales, after the passages
    # the retriever reads (the setting the model will answer in); or a jsonl file of chat rows
    # ({"messages": [...]}) or prompt/completion rows, such as the user's instruction data;
    # or the {query, positive} rows of `jmlr synthesize`: pre-instruction tuning on the corpus,
    # each question (through pair_prompt) answered by the passage it was written from.
    data: str = "questions"
    split: str = "train"
    learning_rate: float = 2.0e-4
    pair_prompt: str = "Question: {query}\nThe medical knowledge that answers it:"

    def validate(self, key: str) -> None:
        self._shared_checks(key)
        _require(key, [(bool(self.data), "data is empty: 'questions' or a jsonl file"),
                       ("{query}" in self.pair_prompt, "pair_prompt must contain {query}"),
                       (not set(re.findall(r"{([^}]*)}", self.pair_prompt)) - {"query"},
                        "pair_prompt: the only placeholder is {query}")])


@CONFIG_SECTIONS.register("dpo")
@dataclass
class DpoConfig(_TrlTraining):
    data: str = ""                      # {prompt, chosen, rejected} rows (jmlr preferences)
    beta: float = 0.1
    loss_type: str = "sigmoid"

    def validate(self, key: str) -> None:
        self._shared_checks(key)
        _require(key, [(self.beta > 0, "beta must be > 0"),
                       (self.loss_type in DPO_LOSSES,
                        f"loss_type must be one of {', '.join(DPO_LOSSES)}")])
