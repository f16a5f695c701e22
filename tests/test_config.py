from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jmlr.config import Config, load_config
from jmlr.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_are_the_papers():
    cfg = Config()
    assert (cfg.candidates.top_n, cfg.jmlr.k_sample, cfg.jmlr.r_read) == (30, 10, 7)
    assert (cfg.generator.lora_r, cfg.generator.lora_alpha, cfg.generator.lora_dropout) == (128, 256, 0.05)
    assert cfg.train.retriever_lr == 3e-6
    assert cfg.jmlr.lambda_rank == 1.0
    assert cfg.factuality.threshold == 0.7


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.run.out_dir


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  generator_lr: 1e-4\n  max_steps: 5\n")
    cfg = load_config(path, ["train.max_steps=7", "jmlr.train_retriever=false",
                             "eval.modes=[none, trained]", "generator.lora_targets=[q_proj]"])
    assert cfg.train.generator_lr == 1e-4  # YAML reads "1e-4" as text; coerced to float
    assert cfg.train.max_steps == 7
    assert cfg.jmlr.train_retriever is False
    assert cfg.eval.modes == ["none", "trained"]
    assert cfg.generator.lora_targets == ["q_proj"]


@pytest.mark.parametrize("override, fragment", [
    ("train.lrr=1", "unknown config key 'train.lrr'"),
    ("nosuch.key=1", "unknown config section 'nosuch'"),
    ("train.max_steps=abc", "'train.max_steps': expected an integer"),
    ("jmlr.objective=ranknet", "'jmlr.objective': unknown rank objective 'ranknet' (known: pairwise, listwise"),
    ("jmlr.objective.beta=2", "unknown config key 'jmlr.objective.beta' (known in 'jmlr.objective': tie_tolerance, min_gain)"),
    ("jmlr.objective.tie_tolerance=-1", "jmlr.objective.tie_tolerance and jmlr.objective.min_gain must be >= 0"),
    ("train.step=dpo9", "'train.step': 'dpo9' is not a known training step (known: joint, retriever_contrastive"),
    ("data.format=medqb", "'data.format': 'medqb' is not a known question format (known: auto, "),
    ("data.format_options.medmcqa.zero=1", "unknown config key 'data.format_options.medmcqa.zero'"),
    ("data.format_options.medmcqa.one_based=maybe", "'data.format_options.medmcqa.one_based': expected true or false"),
    ("retriever.backend=faiss", "is not a known retriever backend (known: colbert"),
    ("train.log_every=0", "train.log_every must be >= 1"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints must be >= 0"),
    ("factuality.max_entities_per_mention=0", "factuality.max_entities_per_mention must be >= 1"),
    ("jmlr.train_retriever=maybe", "expected true or false"),
    ("jmlr.k_sample=1", "k_sample must be at least 2"),
    ("jmlr.k_sample=40", "cannot exceed candidates.top_n"),
    ("eval.modes=[none, best]", "eval.modes: 'best'"),
    ("train", "must look like section.key=value"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_bad_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian:\n  x: 1\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown config section 'trian'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["jmlr.tau=0.5", "eval.datasets={medqa: q.jsonl}",
                             "jmlr.objective={name: listwise, beta: 0.5}",
                             "data.format_options.medmcqa.one_based=true"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert again.jmlr.objective.params.beta == 0.5 and again.jmlr.objective.params.tau == 1.0


def test_component_keys_go_one_level_deeper():
    cfg = load_config(None, ["jmlr.objective.tie_tolerance=0.25"])
    assert (cfg.jmlr.objective.name, cfg.jmlr.objective.params.tie_tolerance) == ("pairwise", 0.25)
    # a name alone gives that entry's defaults, whatever the previous entry's parameters were
    cfg = load_config(None, ["jmlr.objective.tie_tolerance=0.25", "jmlr.objective=listwise"])
    assert (cfg.jmlr.objective.name, cfg.jmlr.objective.params.beta) == ("listwise", 1.0)
    cfg = load_config(None, ["eval.datasets.medqa=q.jsonl", "eval.datasets.mmlu=m.jsonl"])
    assert cfg.eval.datasets == {"medqa": "q.jsonl", "mmlu": "m.jsonl"}


@dataclass
class _Expert:
    path: str = ""
    weight: float = 1.0

    def validate(self, key: str) -> None:
        if self.weight <= 0:
            raise ConfigError(f"{key}.weight must be > 0")


@dataclass
class _MergeSection:
    method: str = "linear"
    models: list[_Expert] = field(default_factory=list)


def test_registered_sections_take_nested_records_checked_at_load(tmp_path):
    from jmlr.registry import CONFIG_SECTIONS

    CONFIG_SECTIONS.register("toymerge", _MergeSection)
    try:
        path = tmp_path / "merge.yaml"
        path.write_text("toymerge:\n  models:\n    - {path: a, weight: 0.3}\n    - {path: b}\n")
        cfg = load_config(path, ["toymerge.models.1.weight=0.7"])
        assert [(m.path, m.weight) for m in cfg.toymerge.models] == [("a", 0.3), ("b", 0.7)]
        assert cfg.to_dict()["toymerge"]["models"][1] == {"path": "b", "weight": 0.7}
        with pytest.raises(ConfigError, match="toymerge.models.0.weight must be > 0"):
            load_config(path, ["toymerge.models.0.weight=0"])
        with pytest.raises(ConfigError, match="unknown config key 'toymerge.models.0.wieght'"):
            path.write_text("toymerge:\n  models:\n    - {path: a, wieght: 0.3}\n")
            load_config(path)
    finally:
        CONFIG_SECTIONS.unregister("toymerge")


def test_cli_reports_config_errors_with_exit_2(run_cli, tmp_path):
    code, _, err = run_cli("index", "train.nope=1")
    assert code == 2
    assert "unknown config key 'train.nope'" in err
    assert "Traceback" not in err


def test_atomic_write_leaves_ordinary_permissions(tmp_path):
    import os

    from jmlr.io import atomic_write

    with atomic_write(tmp_path / "out.txt") as handle:
        handle.write("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left


def test_a_config_that_is_not_utf8_or_a_folder_is_one_located_line(run_cli, tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"run:\n  seed: 0\ndata:\n  corpus: caf\xe9.jsonl\n")
    code, _, err = run_cli("index", "-c", bad)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{bad}:4: field 'corpus': byte 0xe9" in err
    code, _, err = run_cli("index", "-c", tmp_path)
    assert code == 2 and f"config file {tmp_path} is a directory" in err
