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
    ("jmlr.objective=ranknet", "'jmlr.objective': 'ranknet' is not one of pairwise, listwise"),
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
    cfg = load_config(None, ["jmlr.tau=0.5", "eval.datasets={medqa: q.jsonl}"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


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
