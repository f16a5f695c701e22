"""The built-in config sections, one dataclass each (jmlr/config.py puts them together).

Each field's comment says what it does; a section's ``validate`` checks its own values and
names the key. Sections that other modules register (``CONFIG_SECTIONS``) live beside the code
they configure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jmlr.config_fields import Component, make_component
from jmlr.errors import ConfigError


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


def _registered(kind: str, *also: str) -> dict[str, Any]:
    """A name that the registry of ``kind`` knows (or one of ``also``)."""
    return {"registry": kind, "also": also}


def _require(rules: list[tuple[bool, str]]) -> None:
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)


@dataclass
class RunConfig:
    out_dir: str = "runs/default"          # every command writes under here
    seed: int = 42
    device: str = field(default="auto", metadata=_choices("auto", "cpu", "cuda"))
    cache_dir: str = "~/.cache/jmlr"       # converted models, KB indexes (content-addressed)


@dataclass
class DataConfig:
    corpus: str = ""                        # jsonl / tsv / parquet of passages
    train: str = ""                         # question files; any supported format
    dev: str = ""
    test: str = ""
    # A registered question format (jmlr.data.formats), or "auto" to detect it per file.
    format: str = field(default="auto", metadata=_registered("question format", "auto"))
    # Options of the formats that take some, by format name, e.g. {medmcqa: {one_based: true}}
    # (MedMCQA's hub release numbers answers from 0).
    format_options: dict[str, Any] = field(default_factory=dict)
    corpus_format: str = field(default="auto", metadata=_choices("auto", "jsonl", "tsv", "parquet"))
    chunk_words: int = 0                    # 0 keeps passages whole
    chunk_overlap: int = 0
    dedup: bool = True                      # drop exact-duplicate passage texts
    filter_self_matches: bool = True        # drop a train question's own text/rationale

    def validate(self, key: str) -> None:
        for name, values in self.format_options.items():
            self.format_options[name] = make_component(
                "question format", {"name": name, **(values or {})}, f"{key}.format_options.{name}")
        _require([
            (self.chunk_words >= 0 and self.chunk_overlap >= 0,
             "data.chunk_words and data.chunk_overlap must be >= 0"),
            (self.chunk_words == 0 or self.chunk_overlap < self.chunk_words,
             "data.chunk_overlap must be smaller than data.chunk_words"),
        ])


@dataclass
class RetrieverConfig:
    backend: str = field(default="colbert", metadata=_registered("retriever backend"))
    # The query the retriever searches with, from {question} and {options} ("A: x B: y ..."):
    # the same in mining, training, refresh and evaluation.
    query_template: str = "{question} {options}"
    # A ColBERT checkpoint folder, or a plain HF BERT-family encoder folder (converted once),
    # or "pkg:<package>/<subpath>" for a model that an installed package carries.
    checkpoint: str = ""
    # The weights a training run's retriever starts from, when not retriever.checkpoint: the
    # final/retriever of a `train.step=retriever_distill` (or retriever_contrastive) run.
    # retriever.checkpoint stays the index's encoder and the frozen baseline of evaluation.
    train_from: str = ""
    dim: int = 128
    query_maxlen: int = 128
    doc_maxlen: int = 512
    nbits: int = 2
    kmeans_niters: int = 4
    index_dir: str = ""                     # default: <run.out_dir>/index
    batch_size: int = 64                    # encoding batch for indexing and mining

    def validate(self, key: str) -> None:
        import re

        unknown = set(re.findall(r"{([^}]*)}", self.query_template)) - {"question", "options"}
        _require([
            (self.nbits in (1, 2, 4, 8), "retriever.nbits must be 1, 2, 4 or 8"),
            ("{question}" in self.query_template,
             "retriever.query_template must contain {question}"),
            (not unknown, f"retriever.query_template: unknown placeholder(s) "
                          f"{', '.join(sorted(unknown))} (known: question, options)"),
        ])


@dataclass
class CandidatesConfig:
    # Where training's candidates come from: "mined" (jmlr mine over the index of data.corpus)
    # or "question_docs": each question's own passages (the JMLR authors' "doc" lists,
    # metadata.docs in our jsonl), best first; no corpus, index or mining needed.
    source: str = field(default="mined", metadata=_choices("mined", "question_docs"))
    top_n: int = 30
    path: str = ""                          # default: <run.out_dir>/candidates
    refresh_every: int = 0                  # re-search with the current query encoder every R steps (0: never)
    reindex_every: int = 0                  # full re-index with the current checkpoint (0: never)

    def validate(self, key: str) -> None:
        _require([
            (self.top_n >= 1, "candidates.top_n must be >= 1"),
            (self.source == "mined" or self.refresh_every == self.reindex_every == 0,
             "candidates.refresh_every and reindex_every search an index: they need "
             "candidates.source=mined"),
        ])


@dataclass
class GeneratorConfig:
    # A local HF folder, a .gguf file, or "pkg:<package>/<subpath>" (GGUF or HF folder).
    model: str = ""
    dtype: str = field(default="auto", metadata=_choices("auto", "float32", "bfloat16", "float16"))
    attn_implementation: str = field(default="auto", metadata=_choices(
        "auto", "flash_attention_2", "sdpa", "eager", "s2attn"))
    s2_group_ratio: float = 0.25            # S2-Attn group size as a fraction of the length
    rope_scaling_factor: float = 1.0        # linear RoPE scaling, same in training and inference
    max_length: int = 2048
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    train_embeddings: bool = True           # LongLoRA: embeddings and norms fully trainable
    train_norms: bool = True
    gradient_checkpointing: bool = True
    trust_remote_code: bool = False
    # A run folder (jmlr sft, jmlr train, ...) whose trained generator this run starts from:
    # its weights, adapters merged in, replace generator.model's before this run's own LoRA
    # goes on; base-model utilities and evaluation's base mode read them too. generator.model
    # stays the architecture and tokenizer they were trained from.
    train_from: str = ""

    def validate(self, key: str) -> None:
        _require([
            (0 < self.s2_group_ratio <= 1, "generator.s2_group_ratio must be in (0, 1]"),
            (self.rope_scaling_factor >= 1, "generator.rope_scaling_factor must be >= 1"),
            (self.lora_r >= 0, "generator.lora_r must be >= 0 (0: no LoRA, full fine-tune)"),
        ])


@dataclass
class JMLRConfig:
    k_sample: int = 10                      # passages drawn per question for the rank loss
    r_read: int = 7                         # top passages by score that the generator reads
    tau: float = 1.0                        # sampling temperature of softmax(s / tau)
    # Draw the k passages from the current top-M candidates by score only (0: from all N, as
    # the paper). Pairs among passages far down the list are mostly noise to the teacher.
    sample_pool: int = 0
    score_norm: str = field(default="minmax", metadata=_choices("minmax", "none"))
    # The retriever's loss: a registered rank objective (jmlr.training.rank_objectives) with
    # its own parameters, e.g. {name: pairwise, tie_tolerance: 0.2}.
    objective: Component = field(default_factory=lambda: Component("pairwise"),
                                 metadata=_registered("rank objective"))
    lambda_rank: float = 1.0
    target: str = field(default="letter_text", metadata=_choices(
        "letter", "letter_text", "letter_text_rationale"))
    # What a passage is worth, the number the retriever learns to order by: a registered
    # utility (jmlr/training/utilities.py). "answer_loss": the generator's loss on the
    # utility_span (the paper); "option_contrast": -log of the gold option's share among the
    # options' likelihoods, so that words every option shares earn a passage nothing.
    utility: str = field(default="answer_loss", metadata=_registered("utility"))
    utility_span: str = field(default="option_text", metadata=_choices(
        "option_text", "target", "rationale"))
    # Which model's losses are the utilities (jmlr/training/teacher.py): "current", the generator
    # being trained (the paper); "base", the same generator before training (LoRA switched off).
    utility_model: str = field(default="current", metadata=_choices("current", "base"))
    train_retriever: bool = True            # false: frozen retriever, the paper's RAG baseline
    # With a frozen retriever, still compute the utilities (for the logged diagnostics only:
    # nothing trains on them). false skips those forwards, about 40% of a baseline step.
    utilities_when_frozen: bool = True
    train_generator: bool = True
    # The B x k utility sequences go through the generator in length buckets of at most this
    # many (padded) tokens each; 0: one padded forward (best on a GPU). On a CPU, padding is
    # paid in full, so buckets of ~1-2k tokens save the time that varied passage lengths waste.
    utility_tokens_per_forward: int = 0
    # Each step the retriever also learns from this many earlier questions, by the utilities
    # cached when they were drawn (jmlr/training/replay.py): exact only while the teacher does
    # not change, so it needs utility_model=base or a generator that does not train.
    replay_questions: int = 0
    # A file of the base teacher's utilities written by `jmlr utilities` (jmlr/training/
    # teacher_file.py): the replay starts from all its questions instead of an empty cache.
    teacher_utilities: str = ""
    # > 0: before training, write that file (or, unnamed, candidates.path/train.utilities.jsonl)
    # for the first N training questions where it is missing or shorter, so that one
    # `jmlr train` or `jmlr demo` does both (jmlr/training/teacher_file.py: ensure_teacher_file).
    teacher_questions: int = 0
    # Candidates per question in that file: the retriever's top `teacher_top` mined passages
    # (0: sample_pool, or all candidates.top_n). The file costs questions x (top + 1) forwards.
    teacher_top: int = 0

    def validate(self, key: str) -> None:
        _require([
            (self.replay_questions >= 0, "jmlr.replay_questions must be >= 0"),
            (self.teacher_questions >= 0, "jmlr.teacher_questions must be >= 0"),
            (self.teacher_top == 0 or self.teacher_top >= 2,
             "jmlr.teacher_top must be 0 (jmlr.sample_pool) or at least 2 (an order needs two)"),
            (self.replay_questions == 0 or self.utility_model == "base" or not self.train_generator,
             "jmlr.replay_questions > 0 replays cached utilities, which stay exact only for a "
             "teacher that does not train: set jmlr.utility_model=base"),
            (self.k_sample >= 2, "jmlr.k_sample must be at least 2 (the rank loss needs pairs)"),
            (self.r_read >= 0, "jmlr.r_read must be >= 0"),
            (self.tau > 0, "jmlr.tau must be > 0"),
            (self.sample_pool == 0 or self.sample_pool >= self.k_sample,
             "jmlr.sample_pool must be 0 (all candidates) or at least jmlr.k_sample"),
            (self.lambda_rank >= 0, "jmlr.lambda_rank must be >= 0"),
            (self.utility_tokens_per_forward >= 0,
             "jmlr.utility_tokens_per_forward must be >= 0 (0: one forward)"),
        ])


@dataclass
class TrainConfig:
    # The kind of training: a registered step (jmlr.training.steps); "joint" is JMLR (and,
    # with jmlr.train_retriever=false, the frozen-retriever baseline).
    step: str = field(default="joint", metadata=_registered("training step"))
    generator_lr: float = 2e-5
    retriever_lr: float = 3e-6
    weight_decay: float = 0.0
    batch_size: int = 1
    grad_accum: int = 8
    epochs: float = 1.0
    max_steps: int = 0                      # optimizer steps; >0 overrides epochs
    warmup_steps: int = 0
    lr_scheduler: str = field(default="cosine", metadata=_choices("constant", "linear", "cosine"))
    max_grad_norm: float = 1.0
    # Clip the generator's and the retriever's gradients each on its own (a spike in one
    # must not shrink the other's step); under FSDP / DeepSpeed one joint clip.
    clip_per_model: bool = True
    mixed_precision: str = field(default="auto", metadata=_choices("auto", "no", "bf16", "fp16"))
    log_every: int = 1
    save_every: int = 0                     # 0: only at the end
    # Step checkpoints kept in RUN/checkpoints (the newest ones; older ones are removed once a
    # new one is completely written); 0 keeps all. RUN/final is never removed.
    keep_checkpoints: int = 2
    # Dev retrieval recall before training and every N steps; 0: once, at the end; -1: never.
    eval_every: int = 0
    merge_on_export: bool = False           # also write merged generator weights
    # Trackers the logged rows also go to (jmlr/training/trackers.py): "auto" is TensorBoard
    # under RUN/ when installed; "none"; or accelerate's names (tensorboard, wandb, mlflow...).
    report_to: list[str] = field(default_factory=lambda: ["auto"])

    def validate(self, key: str) -> None:
        from jmlr.training.trackers import check_report_to

        check_report_to(self.report_to, f"{key}.report_to")
        _require([
            (self.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.grad_accum >= 1, "train.grad_accum must be >= 1"),
            (self.generator_lr >= 0 and self.retriever_lr >= 0, "learning rates must be >= 0"),
            (self.eval_every >= -1, "train.eval_every must be >= -1 (-1: no dev evaluation)"),
            (self.log_every >= 1, "train.log_every must be >= 1"),
            (self.save_every >= 0, "train.save_every must be >= 0 (0: only at the end)"),
            (self.keep_checkpoints >= 0, "train.keep_checkpoints must be >= 0 (0: keep all)"),
            (self.max_grad_norm >= 0, "train.max_grad_norm must be >= 0 (0: no clipping)"),
        ])


@dataclass
class EvalConfig:
    split: str = field(default="test", metadata=_choices("train", "dev", "test"))
    modes: list[str] = field(default_factory=lambda: ["none", "frozen", "trained"])
    # letter: likelihood of each option's letter; letter_debiased: the same averaged over every
    # rotation of the options (a favourite letter cancels out; one forward per option);
    # option_text: per-token likelihood of each option's text; generate: greedy answer + rationale.
    scoring: list[str] = field(default_factory=lambda: ["letter", "letter_debiased", "option_text"])
    # With "generate" in scoring: the modes whose answers are also generated (decoding costs
    # far more than scoring); empty: every mode.
    generate_modes: list[str] = field(default_factory=list)
    datasets: dict[str, str] = field(default_factory=dict)  # name -> question file; empty: data.<split>
    batch_size: int = 8
    # Decoding reads every weight once per new token whatever the batch, so it wants bigger
    # batches than scoring: on a 2-core CPU, 16 prompts took 65 s in two batches of 8 and
    # 42 s in one of 16.
    generate_batch_size: int = 16
    max_new_tokens: int = 128
    bootstrap_samples: int = 1000
    limit: int = 0                          # evaluate only the first N questions (0: all)
    # Relevance judgements (BEIR tsv or TREC qrels) for retrieval metrics of questions whose
    # file names no gold passages; judged questions take their gold passages from here.
    qrels: str = ""

    def validate(self, key: str) -> None:
        rules = []
        for mode in [*self.modes, *self.generate_modes]:
            rules.append((mode in ("none", "frozen", "trained"),
                          f"eval.modes: {mode!r} is not one of none, frozen, trained"))
        scorings = ("letter", "letter_debiased", "option_text", "generate")
        for scoring in self.scoring:
            rules.append((scoring in scorings,
                          f"eval.scoring: {scoring!r} is not one of {', '.join(scorings)}"))
        _require(rules)


@dataclass
class FactualityConfig:
    # scispaCy KnowledgeBase jsonl, or a scispaCy linker name (umls, mesh, rxnorm, go, hpo)
    # whose KB file is in scispaCy's download cache ($SCISPACY_CACHE, ~/.scispacy).
    kb: str = ""
    spacy_model: str = ""                   # "" : en_core_sci_sm if installed, else a blank pipeline
    threshold: float = 0.7
    max_entities_per_mention: int = 1
    resolve_abbreviations: bool = True
    semantic_types: list[str] = field(default_factory=list)  # keep only these TUIs (empty: all)
    filter_for_definitions: bool = True     # scispaCy's default: concepts without a definition
    no_definition_threshold: float = 0.95   # link only above this score

    def validate(self, key: str) -> None:
        _require([
            (0 <= self.threshold <= 1, "factuality.threshold must be in [0, 1]"),
            (self.max_entities_per_mention >= 1, "factuality.max_entities_per_mention must be >= 1"),
            (0 <= self.no_definition_threshold <= 1,
             "factuality.no_definition_threshold must be in [0, 1]"),
        ])
