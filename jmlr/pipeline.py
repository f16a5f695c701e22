"""`jmlr demo`: the whole pipeline on the embedded default task, in one command.

The demo runs every registered stage that has a demo function (``jmlr/stages.py``), in
registration order: prepare-demo -> index -> mine -> train -> evaluate (none / frozen /
trained, with factuality) -> report. Each calls the same code its own subcommand calls, and
skips work whose output is already complete, so an interrupted demo continues where it
stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from jmlr.config import Config

log = logging.getLogger(__name__)

def _with_data_dir(cfg: Config, data_dir: Path) -> Config:
    data = replace(cfg.data, corpus=str(data_dir / "corpus.jsonl"),
                   train=str(data_dir / "train.jsonl"), dev=str(data_dir / "dev.jsonl"),
                   test=str(data_dir / "test.jsonl"))
    fact = replace(cfg.factuality, kb=str(data_dir / "kb.jsonl"))
    return replace(cfg, data=data, factuality=fact)


def demo_config(cfg: Config, quick: bool) -> Config:
    """The config the demo runs with: data under ``run.out_dir/data``; smaller when quick."""
    from jmlr.stages import QUICK

    if quick:
        cfg = replace(cfg, run=replace(cfg.run, out_dir=cfg.run.out_dir.rstrip("/") + "-quick"))
        cfg = replace(cfg, train=replace(cfg.train, max_steps=QUICK["max_steps"], eval_every=-1),
                      jmlr=replace(cfg.jmlr, k_sample=min(cfg.jmlr.k_sample, QUICK["k_sample"])),
                      eval=replace(cfg.eval, limit=QUICK["eval_limit"],
                                   max_new_tokens=min(cfg.eval.max_new_tokens, QUICK["max_new_tokens"])))
    return _with_data_dir(cfg, Path(cfg.run.out_dir) / "data")


def run_demo(cfg: Config, quick: bool = False) -> dict:
    from jmlr.registry import STAGES
    from jmlr.stage import resolve

    cfg = demo_config(cfg, quick)
    out = Path(cfg.run.out_dir)
    timings: dict[str, float] = {}
    results: dict[str, object] = {}
    for name, stage in STAGES.items():
        if stage.demo is None:
            continue
        log.info("demo: %s", name)
        start = time.perf_counter()
        results[name] = resolve(stage.demo)(cfg, quick)
        timings[name] = round(time.perf_counter() - start, 1)
    total = round(sum(timings.values()), 1)
    print(f"\nDemo finished in {total} s ({', '.join(f'{k} {v} s' for k, v in timings.items())}).")
    print(f"Report: {out / 'report.html'}")
    return {"timings": timings, "total_s": total, "metrics": results.get("evaluate")}
