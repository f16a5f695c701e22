"""`jmlr demo`: the whole pipeline on the embedded default task, in one command.

The demo runs every registered stage that has a demo function (``jmlr/stages.py``), in
registration order: prepare-demo -> index -> mine -> train -> evaluate (none / frozen /
trained, with factuality) -> report. Each calls the same code its own subcommand calls.

Run again, the demo keeps every stage whose inputs are unchanged since it finished (the
records in ``RUN/.demo``, see ``jmlr/demo_stamps.py``), redoes a stage whose inputs changed
and every stage after it, and continues an interrupted stage where it stopped (training from
its checkpoint). A log line says which, for each stage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from jmlr.config import Config
from jmlr.demo_stamps import STAMPS, Decision, Stamps, decide, fingerprint, remove_outputs

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
                      jmlr=replace(cfg.jmlr, k_sample=min(cfg.jmlr.k_sample, QUICK["k_sample"]),
                                   teacher_questions=min(cfg.jmlr.teacher_questions,
                                                         QUICK["teacher_questions"])),
                      eval=replace(cfg.eval, limit=QUICK["eval_limit"],
                                   max_new_tokens=min(cfg.eval.max_new_tokens, QUICK["max_new_tokens"])))
        distill = cfg.distill
        if distill.before_joint_steps > 0:
            distill = replace(distill, questions=min(distill.questions, QUICK["teacher_questions"]),
                              before_joint_steps=min(distill.before_joint_steps, QUICK["max_steps"]))
            cfg = replace(cfg, extra={**cfg.extra, "distill": distill})
        warmup = cfg.contrastive
        if warmup.before_joint_steps > 0:
            passages = cfg.synthesize.passages or QUICK["teacher_questions"]
            cfg = replace(cfg, extra={
                **cfg.extra,
                "contrastive": replace(warmup, before_joint_steps=min(warmup.before_joint_steps,
                                                                      QUICK["max_steps"])),
                "synthesize": replace(cfg.synthesize,
                                      passages=min(passages, QUICK["teacher_questions"]))})
    return _with_data_dir(cfg, Path(cfg.run.out_dir) / "data")


def run_demo(cfg: Config, quick: bool = False) -> dict:
    from jmlr.errors import Busy
    from jmlr.io import exclusive

    cfg = demo_config(cfg, quick)
    out = Path(cfg.run.out_dir)
    stamps = Stamps(out / STAMPS)
    try:
        # Two demos in one folder would remove each other's outputs when they redo a stage.
        with exclusive(stamps.folder / "demo.lock", "jmlr demo", wait=False):
            return _run_stages(cfg, quick, stamps)
    except Busy as err:
        raise Busy(f"{out} is in use by another jmlr demo ({err.holder}): wait for it to end",
                   holder=err.holder) from None


def _run_stages(cfg: Config, quick: bool, stamps: Stamps) -> dict:
    from jmlr.registry import STAGES
    from jmlr.stage import resolve

    stages = [(name, stage) for name, stage in STAGES.items() if stage.demo is not None]
    start = time.perf_counter()
    seconds: dict[str, float] = {}          # the stages that ran, in order
    kept: list[str] = []
    results: dict[str, object] = {}
    for position, (name, stage) in enumerate(stages):
        started = time.perf_counter()
        io, inputs = None, {}
        if stage.demo_io is None:           # it cannot say what it reads: it always runs
            decision = Decision(False, False, f"demo: {name}")
        else:
            io = resolve(stage.demo_io)(cfg, quick)
            inputs = fingerprint(cfg, io)
            decision = decide(name, io, stamps.read(name), inputs, list(seconds))
        log.info("%s", decision.line)
        if decision.keep:
            kept.append(name)
            continue
        for later, _ in stages[position + 1:]:
            stamps.forget(later)            # they were made from what this stage now replaces
        if io is not None:
            if decision.redo:
                remove_outputs(io)
            stamps.started(name, inputs)
        results[name] = resolve(stage.demo)(cfg, quick)
        seconds[name] = round(time.perf_counter() - started, 1)
        if io is not None:                  # fingerprinted again: a stage may touch what it reads
            stamps.finished(name, fingerprint(cfg, io), seconds[name])
    total = round(time.perf_counter() - start, 1)
    print(f"\nDemo finished in {total} s.")
    print(f"Kept (inputs unchanged): {', '.join(kept) or 'none'}.")
    print(f"Ran: {', '.join(f'{name} {s} s' for name, s in seconds.items()) or 'none'}.")
    print(f"Report: {Path(cfg.run.out_dir) / 'report.html'}")
    return {"timings": seconds, "total_s": total, "kept": kept, "ran": list(seconds),
            "metrics": results.get("evaluate")}
