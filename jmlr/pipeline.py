"""`jmlr demo`: the whole pipeline on the embedded default task, in one command.

prepare-demo -> index -> mine -> train -> evaluate (none / frozen / trained) -> factuality ->
report. Each stage is the same function its own subcommand calls, so the demo is nothing but
those commands in order; every stage skips work whose output is already complete, so an
interrupted demo continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from jmlr.config import Config

log = logging.getLogger(__name__)

# --quick: a smaller task and a shorter run, same stages (minutes on a 2-core CPU).
QUICK = {"diseases": 60, "questions": 60, "max_steps": 2, "k_sample": 4, "eval_limit": 12,
         "max_new_tokens": 32}
FULL = {"diseases": 400, "questions": 400}


def _with_data_dir(cfg: Config, data_dir: Path) -> Config:
    data = replace(cfg.data, corpus=str(data_dir / "corpus.jsonl"),
                   train=str(data_dir / "train.jsonl"), dev=str(data_dir / "dev.jsonl"),
                   test=str(data_dir / "test.jsonl"))
    fact = replace(cfg.factuality, kb=str(data_dir / "kb.jsonl"))
    return replace(cfg, data=data, factuality=fact)


def demo_config(cfg: Config, quick: bool) -> Config:
    """The config the demo runs with: data under ``run.out_dir/data``; smaller when quick."""
    if quick:
        cfg = replace(cfg, run=replace(cfg.run, out_dir=cfg.run.out_dir.rstrip("/") + "-quick"))
        cfg = replace(cfg, train=replace(cfg.train, max_steps=QUICK["max_steps"], eval_every=-1),
                      jmlr=replace(cfg.jmlr, k_sample=min(cfg.jmlr.k_sample, QUICK["k_sample"])),
                      eval=replace(cfg.eval, limit=QUICK["eval_limit"],
                                   max_new_tokens=min(cfg.eval.max_new_tokens, QUICK["max_new_tokens"])))
    return _with_data_dir(cfg, Path(cfg.run.out_dir) / "data")


def run_demo(cfg: Config, quick: bool = False) -> dict:
    from jmlr.data.demo import prepare_demo
    from jmlr.evaluation.mcq import run_evaluate
    from jmlr.evaluation.report import run_report
    from jmlr.retrieval.candidates import run_index, run_mine
    from jmlr.training.loop import run_train

    cfg = demo_config(cfg, quick)
    out = Path(cfg.run.out_dir)
    sizes = QUICK if quick else FULL
    timings: dict[str, float] = {}

    def stage(name: str, fn, *args, **kwargs):
        log.info("demo: %s", name)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - start, 1)
        return result

    data_dir = out / "data"
    if not (data_dir / "README.md").exists():  # README is written last by prepare_demo
        stage("prepare-demo", prepare_demo, out_dir=data_dir, seed=cfg.run.seed,
              n_diseases=sizes["diseases"], n_questions=sizes["questions"])
    if not (cfg.index_dir / "manifest.json").exists():
        stage("index", run_index, cfg, overwrite=False)
    stage("mine", run_mine, cfg, splits=["train", "dev", "test"])
    stage("train", run_train, cfg, resume=(out / "checkpoints").exists())
    metrics = stage("evaluate", run_evaluate, cfg, run_dir=out, split=cfg.eval.split,
                    modes=["none", "frozen", "trained"])
    stage("report", run_report, cfg, run_dir=out)
    total = round(sum(timings.values()), 1)
    print(f"\nDemo finished in {total} s ({', '.join(f'{k} {v} s' for k, v in timings.items())}).")
    print(f"Report: {out / 'report.html'}")
    return {"timings": timings, "total_s": total, "metrics": metrics}
