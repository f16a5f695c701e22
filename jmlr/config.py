"""One config for every command: a dataclass per section, YAML files, dotted overrides.

Defaults are the paper's settings (METHOD.md); configs/*.yaml change only what differs.
Any key can be overridden on the command line as ``section.key=value`` (the value is read as
YAML, so ``train.lr=2e-5``, ``eval.modes=[none,trained]`` and ``jmlr.train_retriever=false``
all work). Validation happens at load and names the offending key.

>>> cfg = load_config(None, ["jmlr.k_sample=4", "train.generator_lr=1e-4"])
>>> cfg.jmlr.k_sample, cfg.train.generator_lr, cfg.jmlr.r_read
(4, 0.0001, 7)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jmlr.errors import ConfigError
from jmlr.textfile import read_text, yaml_key


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


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
    format: str = field(default="auto", metadata=_choices(
        "auto", "jmlr", "medqa", "medmcqa", "mmlu", "mmlu_csv", "jmlr_ref"))
    corpus_format: str = field(default="auto", metadata=_choices("auto", "jsonl", "tsv", "parquet"))
    medmcqa_one_based: bool = False         # the hub's json release is 0-based
    chunk_words: int = 0                    # 0 keeps passages whole
    chunk_overlap: int = 0
    dedup: bool = True                      # drop exact-duplicate passage texts
    filter_self_matches: bool = True        # drop a train question's own text/rationale


@dataclass
class RetrieverConfig:
    # A ColBERT checkpoint folder, or a plain HF BERT-family encoder folder (converted once),
    # or "pkg:<package>/<subpath>" for a model that an installed package carries.
    checkpoint: str = ""
    dim: int = 128
    query_maxlen: int = 128
    doc_maxlen: int = 512
    nbits: int = 2
    kmeans_niters: int = 4
    index_dir: str = ""                     # default: <run.out_dir>/index
    batch_size: int = 64                    # encoding batch for indexing and mining


@dataclass
class CandidatesConfig:
    top_n: int = 30
    path: str = ""                          # default: <run.out_dir>/candidates
    refresh_every: int = 0                  # re-search with the current query encoder every R steps (0: never)
    reindex_every: int = 0                  # full re-index with the current checkpoint (0: never)


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


@dataclass
class JMLRConfig:
    k_sample: int = 10                      # passages drawn per question for the rank loss
    r_read: int = 7                         # top passages by score that the generator reads
    tau: float = 1.0                        # sampling temperature of softmax(s / tau)
    score_norm: str = field(default="minmax", metadata=_choices("minmax", "none"))
    objective: str = field(default="pairwise", metadata=_choices("pairwise", "listwise"))
    lambda_rank: float = 1.0
    # Pairs whose utilities differ by at most this many nats are ties, left out of the rank
    # loss: the LLM cannot tell those passages apart, and ordering them trains on noise.
    tie_tolerance: float = 1e-6
    listwise_beta: float = 1.0              # temperature of softmax(-loss / beta) in listwise KL
    target: str = field(default="letter_text", metadata=_choices(
        "letter", "letter_text", "letter_text_rationale"))
    utility_span: str = field(default="option_text", metadata=_choices(
        "option_text", "target", "rationale"))
    train_retriever: bool = True            # false: frozen retriever, the paper's RAG baseline
    train_generator: bool = True
    # The B x k utility sequences go through the generator in length buckets of at most this
    # many (padded) tokens each; 0: one padded forward (best on a GPU). On a CPU, padding is
    # paid in full, so buckets of ~1-2k tokens save the time that varied passage lengths waste.
    utility_tokens_per_forward: int = 0


@dataclass
class TrainConfig:
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
    # Dev retrieval recall before training and every N steps; 0: once, at the end; -1: never.
    eval_every: int = 0
    merge_on_export: bool = False           # also write merged generator weights


@dataclass
class EvalConfig:
    split: str = field(default="test", metadata=_choices("train", "dev", "test"))
    modes: list[str] = field(default_factory=lambda: ["none", "frozen", "trained"])
    scoring: list[str] = field(default_factory=lambda: ["letter", "option_text"])
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


@dataclass
class FactualityConfig:
    kb: str = ""                            # scispaCy KnowledgeBase jsonl
    spacy_model: str = ""                   # "" : en_core_sci_sm if installed, else a blank pipeline
    threshold: float = 0.7
    max_entities_per_mention: int = 1
    resolve_abbreviations: bool = True
    semantic_types: list[str] = field(default_factory=list)  # keep only these TUIs (empty: all)
    filter_for_definitions: bool = True     # scispaCy's default: concepts without a definition
    no_definition_threshold: float = 0.95   # link only above this score


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    jmlr: JMLRConfig = field(default_factory=JMLRConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    factuality: FactualityConfig = field(default_factory=FactualityConfig)

    # Paths derived from run.out_dir when not set explicitly.
    @property
    def index_dir(self) -> Path:
        return Path(self.retriever.index_dir or Path(self.run.out_dir) / "index")

    @property
    def candidates_dir(self) -> Path:
        return Path(self.candidates.path or Path(self.run.out_dir) / "candidates")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from jmlr.io import atomic_write

        with atomic_write(path) as handle:
            handle.write(self.to_yaml())


# ---------------------------------------------------------------------------------------
# Loading, overriding, validating


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML value to the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(v, item, key) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected text, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {hint}")


def _apply(section: Any, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(section))
    known = {f.name: f for f in dataclasses.fields(section)}
    for key, value in values.items():
        dotted = f"{prefix}.{key}"
        if key not in known:
            raise ConfigError(
                f"unknown config key '{dotted}' (known in '{prefix}': {', '.join(known)})")
        choices = known[key].metadata.get("choices")
        coerced = _coerce(value, hints[key], dotted)
        if choices and coerced not in choices:
            raise ConfigError(
                f"config key '{dotted}': {coerced!r} is not one of {', '.join(choices)}")
        setattr(section, key, coerced)


def _check_ranges(cfg: Config) -> None:
    """Cross-field and range checks that types alone cannot express."""
    rules: list[tuple[bool, str]] = [
        (cfg.jmlr.k_sample >= 2, "jmlr.k_sample must be at least 2 (the rank loss needs pairs)"),
        (cfg.jmlr.r_read >= 0, "jmlr.r_read must be >= 0"),
        (cfg.jmlr.k_sample <= cfg.candidates.top_n,
         "jmlr.k_sample cannot exceed candidates.top_n"),
        (cfg.jmlr.r_read <= cfg.candidates.top_n, "jmlr.r_read cannot exceed candidates.top_n"),
        (cfg.jmlr.tau > 0, "jmlr.tau must be > 0"),
        (cfg.jmlr.listwise_beta > 0, "jmlr.listwise_beta must be > 0"),
        (cfg.jmlr.lambda_rank >= 0, "jmlr.lambda_rank must be >= 0"),
        (cfg.jmlr.tie_tolerance >= 0, "jmlr.tie_tolerance must be >= 0"),
        (cfg.train.eval_every >= -1, "train.eval_every must be >= -1 (-1: no dev evaluation)"),
        (cfg.jmlr.utility_tokens_per_forward >= 0,
         "jmlr.utility_tokens_per_forward must be >= 0 (0: one forward)"),
        (cfg.candidates.top_n >= 1, "candidates.top_n must be >= 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (cfg.train.grad_accum >= 1, "train.grad_accum must be >= 1"),
        (cfg.train.generator_lr >= 0 and cfg.train.retriever_lr >= 0, "learning rates must be >= 0"),
        (0 < cfg.generator.s2_group_ratio <= 1, "generator.s2_group_ratio must be in (0, 1]"),
        (cfg.generator.rope_scaling_factor >= 1, "generator.rope_scaling_factor must be >= 1"),
        (cfg.generator.lora_r >= 0, "generator.lora_r must be >= 0 (0: no LoRA, full fine-tune)"),
        (cfg.retriever.nbits in (1, 2, 4, 8), "retriever.nbits must be 1, 2, 4 or 8"),
        (0 <= cfg.factuality.threshold <= 1, "factuality.threshold must be in [0, 1]"),
        (cfg.data.chunk_words >= 0 and cfg.data.chunk_overlap >= 0,
         "data.chunk_words and data.chunk_overlap must be >= 0"),
        (cfg.data.chunk_words == 0 or cfg.data.chunk_overlap < cfg.data.chunk_words,
         "data.chunk_overlap must be smaller than data.chunk_words"),
    ]
    for mode in [*cfg.eval.modes, *cfg.eval.generate_modes]:
        rules.append((mode in ("none", "frozen", "trained"),
                      f"eval.modes: {mode!r} is not one of none, frozen, trained"))
    for scoring in cfg.eval.scoring:
        rules.append((scoring in ("letter", "option_text", "generate"),
                      f"eval.scoring: {scoring!r} is not one of letter, option_text, generate"))
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into its key path and YAML-parsed value.

    >>> parse_override("train.generator_lr=2e-5")
    (['train', 'generator_lr'], '2e-5')
    >>> parse_override("eval.modes=[none, trained]")
    (['eval', 'modes'], ['none', 'trained'])
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key {key!r} must look like section.key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then ``section.key=value`` overrides; validated."""
    cfg = Config()
    sections = {f.name for f in dataclasses.fields(cfg)}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} is a directory" if path.is_dir()
                              else f"config file not found: {path}")
        try:
            raw = yaml.safe_load(read_text(path, yaml_key)) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        for name, values in raw.items():
            if name not in sections:
                raise ConfigError(
                    f"{path}: unknown config section '{name}' (known: {', '.join(sorted(sections))})")
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section '{name}' must be a mapping")
            _apply(getattr(cfg, name), values, name)
    for text in overrides or []:
        (name, key), value = parse_override(text)
        if name not in sections:
            raise ConfigError(
                f"unknown config section '{name}' in override {text!r} "
                f"(known: {', '.join(sorted(sections))})")
        _apply(getattr(cfg, name), {key: value}, name)
    _check_ranges(cfg)
    return cfg
