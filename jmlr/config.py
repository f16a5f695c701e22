"""One config for every command: a dataclass per section, YAML files, dotted overrides.

Defaults are the paper's settings (docs/METHOD.md); configs/*.yaml change only what differs.
Any key can be overridden on the command line as ``section.key=value`` (the value is read as
YAML, so ``train.lr=2e-5``, ``eval.modes=[none,trained]`` and ``jmlr.train_retriever=false``
all work). Validation happens at load and names the offending key.

Keys may go deeper than ``section.key`` where a value has parts of its own: a rank objective
with its parameters (``jmlr.objective.tie_tolerance=0.2``), an entry of a mapping
(``eval.datasets.medqa=path``). Names that a registry knows (question formats, rank
objectives, retriever backends, training steps) are checked against that registry.

>>> cfg = load_config(None, ["jmlr.k_sample=4", "train.generator_lr=1e-4", "jmlr.objective=listwise"])
>>> cfg.jmlr.k_sample, cfg.train.generator_lr, cfg.jmlr.r_read, cfg.jmlr.objective.name
(4, 0.0001, 7, 'listwise')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jmlr.config_fields import (
    apply_mapping,
    apply_path,
    to_plain,
    validate_tree,
)
from jmlr.config_sections import (  # noqa: F401  (re-exported: jmlr.config.RetrieverConfig)
    CandidatesConfig,
    DataConfig,
    EvalConfig,
    FactualityConfig,
    GeneratorConfig,
    JMLRConfig,
    RetrieverConfig,
    RunConfig,
    TrainConfig,
    _require,
)
from jmlr.errors import ConfigError
from jmlr.textfile import read_text, yaml_key


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
    # Sections that plug-in stages and steps register (jmlr.registry.CONFIG_SECTIONS), by name.
    extra: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Registered sections read like built-in ones: cfg.synthesize
        extra = self.__dict__.get("extra") or {}
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no section {name!r}")

    def validate(self) -> None:
        """Checks across sections (each section checks its own values)."""
        _require([
            (self.jmlr.k_sample <= self.candidates.top_n, "jmlr.k_sample cannot exceed candidates.top_n"),
            (self.jmlr.r_read <= self.candidates.top_n, "jmlr.r_read cannot exceed candidates.top_n"),
            (self.train.step != "joint" or self.jmlr.replay_questions > 0
             or not (self.jmlr.teacher_utilities or self.jmlr.teacher_questions)
             or (self.jmlr.teacher_utilities and self.distill.before_joint_steps > 0),
             "jmlr.teacher_utilities and jmlr.teacher_questions feed the replay (or, the file, "
             "distill.before_joint_steps): set jmlr.replay_questions > 0"),
            (self.jmlr.utility_model != "base" or self.generator.lora_r > 0
             or not self.jmlr.train_generator,
             "jmlr.utility_model=base switches the generator's LoRA adapters off for the "
             "utilities: it needs generator.lora_r > 0 (or use jmlr.utility_model=current)"),
        ])

    # Paths derived from run.out_dir when not set explicitly.
    @property
    def index_dir(self) -> Path:
        return Path(self.retriever.index_dir or Path(self.run.out_dir) / "index")

    @property
    def candidates_dir(self) -> Path:
        return Path(self.candidates.path or Path(self.run.out_dir) / "candidates")

    def to_dict(self) -> dict[str, Any]:
        plain = {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                 if f.name != "extra"}
        plain.update({name: to_plain(section) for name, section in self.extra.items()})
        return plain

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from jmlr.io import atomic_write

        with atomic_write(path) as handle:
            handle.write(self.to_yaml())


# ---------------------------------------------------------------------------------------
# Loading, overriding, validating


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``section.key[.sub...]=value`` into its key path and YAML-parsed value.

    >>> parse_override("train.generator_lr=2e-5")
    (['train', 'generator_lr'], '2e-5')
    >>> parse_override("eval.modes=[none, trained]")
    (['eval', 'modes'], ['none', 'trained'])
    >>> parse_override("jmlr.objective.tie_tolerance=0.2")
    (['jmlr', 'objective', 'tie_tolerance'], 0.2)
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override key {key!r} must look like section.key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _sections(cfg: Config) -> dict[str, Any]:
    """Every section by name: the built-in ones and the registered ones (created here)."""
    from jmlr.registry import CONFIG_SECTIONS

    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "extra"}
    for name, section_type in CONFIG_SECTIONS.items():
        if name in sections:
            raise ConfigError(f"a registered config section is named {name!r}, like a built-in one")
        sections[name] = cfg.extra.setdefault(name, section_type())
    return sections


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} is a directory" if path.is_dir()
                          else f"config file not found: {path}")
    try:
        raw = yaml.safe_load(read_text(path, yaml_key)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file, then ``section.key=value`` overrides; every value and
    every cross-section rule checked here, before any model or data is read."""
    cfg = Config()
    sections = _sections(cfg)
    if path is not None:
        path = Path(path)
        for name, values in _read_yaml(path).items():
            if name not in sections:
                raise ConfigError(
                    f"{path}: unknown config section '{name}' (known: {', '.join(sorted(sections))})")
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section '{name}' must be a mapping")
            apply_mapping(sections[name], values, name)
    for text in overrides or []:
        parts, value = parse_override(text)
        if parts[0] not in sections:
            raise ConfigError(
                f"unknown config section '{parts[0]}' in override {text!r} "
                f"(known: {', '.join(sorted(sections))})")
        apply_path(sections[parts[0]], parts[1:], value, parts[0])
    for name, section in sections.items():
        validate_tree(section, name)
    cfg.validate()
    return cfg
