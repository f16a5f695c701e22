"""Warm the retriever up on synthetic rows before a joint run (``contrastive.before_joint_steps``).

A joint run whose config asks for it first takes that many ``train.step=retriever_contrastive``
steps into ``RUN/warmup`` (``contrastive.batch_size`` rows and ``contrastive.lr`` per step), over
``contrastive.data`` when set, else over the rows ``jmlr synthesize`` writes for this config
(``synthesize.out``, default ``RUN/synthetic.jsonl``: written, or completed, first; no gold
label is read), then trains with ``retriever.train_from`` set to what it exported
(jmlr/training/before_joint.py). The pipeline by hand is README, "Adapting the retriever
before joint training".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from jmlr.training.before_joint import FirstRun, retriever_run_config

if TYPE_CHECKING:
    from jmlr.config import Config


def rows_path(cfg: Config) -> str:
    """The warm-up's rows: ``contrastive.data``, else where ``jmlr synthesize`` writes them."""
    from jmlr.retrieval.synthesis import default_out

    return cfg.contrastive.data or str(default_out(cfg))


def warmup_config(cfg: Config) -> Config:
    """The config of the warm-up run before ``cfg``'s joint run (``RUN/warmup``).

    >>> from jmlr.config import load_config
    >>> w = warmup_config(load_config(None, ["run.out_dir=runs/x", "contrastive.before_joint_steps=30"]))
    >>> w.train.step, w.train.max_steps, w.train.batch_size, w.contrastive.data, w.run.out_dir
    ('retriever_contrastive', 30, 16, 'runs/x/synthetic.jsonl', 'runs/x/warmup')
    """
    section = cfg.contrastive
    return retriever_run_config(cfg, "warmup", "retriever_contrastive", section.before_joint_steps,
                                section.batch_size, section.lr,
                                [("contrastive.data", rows_path(cfg))])


def write_rows(cfg: Config, sub: Config) -> None:
    """Synthesise (or complete) the rows when the config names none; in one process only."""
    import json

    from jmlr.errors import ConfigError
    from jmlr.retrieval.synthesis import meta_path, run_synthesize

    if cfg.contrastive.data:
        return                      # the user's rows: the step checks that they are there
    path = Path(sub.contrastive.data)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        meta = json.loads(meta_path(path).read_text()) if meta_path(path).is_file() else {}
        if meta.get("finished"):
            return
        raise ConfigError(f"contrastive.before_joint_steps: write {path} before a multi-process "
                          "run, in one process: jmlr synthesize -c CONFIG")
    run_synthesize(cfg)


def written_rows(cfg: Config) -> list[Path]:
    """The rows file and its meta when the warm-up synthesises them (none for named rows)."""
    from jmlr.retrieval.synthesis import meta_path

    if cfg.contrastive.data:
        return []
    rows = Path(rows_path(cfg))
    return [rows, meta_path(rows)]


WARMUP = FirstRun(name="warmup", noun="warm-up", section="contrastive",
                  what="warming the retriever up on synthetic rows", sub_config=warmup_config,
                  prepare=write_rows, sections=("synthesize",), writes=written_rows)
