"""A generator that starts from another run's (``generator.train_from``).

Pre-instruction tuning (``jmlr sft``) before a joint run, or any chain of runs, hands the
generator on through a run folder: the later run names it in ``generator.train_from``, and
whenever the later run's generator loads (training, resume, utilities with the adapter off,
evaluation, export) the weights under its own adapter are that run's trained generator, its
adapters merged in. ``generator.model`` stays the architecture and tokenizer both were trained
from. A start run that itself started from another is followed back, so chains compose.

No torch here: the checks run when a command starts, before any model loads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from jmlr.errors import ConfigError
from jmlr.io import saved_section

if TYPE_CHECKING:
    from jmlr.config import GeneratorConfig

SAVED_GENERATOR = Path("final") / "generator"
SAVED_LAYOUTS = ("adapter", "model")     # generation.model.ADAPTER_DIR, FULL_MODEL_DIR
MAX_CHAIN = 16                           # runs followed back before a loop is assumed


def start_folder(train_from: str) -> Path:
    """The saved generator of the run ``train_from`` names.

    >>> start_folder("runs/pretune").as_posix()
    'runs/pretune/final/generator'
    """
    return Path(train_from).expanduser() / SAVED_GENERATOR


def saved_train_from(run_dir: str | Path) -> str | None:
    """The ``generator.train_from`` a run's saved ``config.yaml`` records ("" for none), or
    None when that config does not say (no file, or a run from before the setting)."""
    saved = saved_section(Path(run_dir).expanduser(), "generator")
    return str(saved["train_from"] or "") if "train_from" in saved else None


def start_config(gen_cfg: GeneratorConfig) -> GeneratorConfig:
    """The config the start run's generator loads with: this one's, with the start run's own
    ``train_from`` (what its adapter was trained on top of; none when its config is silent)."""
    return dataclasses.replace(gen_cfg, train_from=saved_train_from(gen_cfg.train_from) or "")


def check_generator_start(gen_cfg: GeneratorConfig, key: str = "generator.train_from") -> None:
    """Every run in the chain holds a saved generator (ConfigError naming the first that does
    not, or a chain that loops), before any model loads."""
    seen: list[Path] = []
    cfg = gen_cfg
    while cfg.train_from:
        run_dir = Path(cfg.train_from).expanduser().resolve()
        if run_dir in seen or len(seen) >= MAX_CHAIN:
            raise ConfigError(f"{key}: the runs name each other in a loop "
                              f"({' -> '.join(str(p) for p in [*seen, run_dir])})")
        saved = run_dir / SAVED_GENERATOR
        if not any((saved / layout).is_dir() for layout in SAVED_LAYOUTS):
            raise ConfigError(f"{key}: {saved} holds no trained generator (adapter/ or model/): "
                              "name the folder of a finished jmlr sft / jmlr train run")
        seen.append(run_dir)
        cfg = start_config(cfg)


def describe_start(gen_cfg: GeneratorConfig) -> dict[str, str]:
    """For an adapter's base record: the run whose generator lies under it ({} when none),
    since ``generator.model`` alone no longer loads what the adapter was trained on.

    >>> from jmlr.config import GeneratorConfig
    >>> describe_start(GeneratorConfig(model="m"))
    {}
    """
    if not gen_cfg.train_from:
        return {}
    return {"started_from_run": str(Path(gen_cfg.train_from).expanduser().resolve()),
            "note": "the adapter was trained on that run's generator (adapters merged), not on "
                    "base_model_name_or_path alone: use `jmlr export` for a model that loads "
                    "on its own"}
