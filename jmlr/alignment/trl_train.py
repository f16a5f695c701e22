"""``jmlr sft`` and ``jmlr dpo``: trl's trainers around the project's generator, writing a run
folder that ``jmlr evaluate`` / ``jmlr report`` read like a trained run's.

- **Start**: the configured base generator, or the trained generator of ``<section>.start_from``
  (its adapters merged in). A fresh LoRA (``generator.lora_*``) goes on top through peft, so
  DPO's frozen reference is the starting model itself (trl disables the adapter for the
  reference forward: no second copy in memory). ``generator.lora_r: 0`` trains every weight
  (DPO then keeps a frozen copy as the reference).
- **Data**: SFT reads ``sft.data``: ``questions`` (the ``sft.split`` questions with their
  reference answers and rationales, ``jmlr.target``, after the passages the retriever reads, in
  the training template) or a jsonl file of chat rows (``{"messages": [...]}``) or
  prompt/completion rows, or ``jmlr synthesize``'s ``{query, positive}`` rows (pre-instruction
  tuning: ``sft.pair_prompt`` around the question, the passage as the answer); DPO reads
  ``{prompt, chosen, rejected}`` rows (``jmlr preferences`` writes them). Every row is checked
  before any model loads (file, line and field named).
- **Resume**: checkpoints every ``save_every`` steps in ``RUN/<kind>-checkpoints``; started
  again with the same settings, the trainer continues from the last one (its optimizer,
  scheduler, RNG states and data position); other settings are refused without ``--overwrite``.
- **Processes**: under ``accelerate launch`` trl's trainer runs on every rank (DDP, each its
  share of a step's rows); the main rank writes the run folder, the export and the summary.
- **Export**: ``RUN/final/generator`` (the adapter, or the whole model when training started
  from a run's generator) and ``RUN/final/retriever`` (the start run's, or the configured
  one), ``RUN/config.yaml`` and ``RUN/<kind>_summary.json`` (losses, seconds per step).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jmlr.errors import ConfigError, DataError

if TYPE_CHECKING:
    from jmlr.config import Config

log = logging.getLogger(__name__)

KINDS = ("sft", "dpo")


# --------------------------------------------------------------------------- data


def _text_field(path: Path, line: int, row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, line, key, "must be non-empty text")
    return value


def _messages(path: Path, line: int, value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(path, line, "messages", "must be a non-empty list of {role, content}")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise DataError(path, line, f"messages[{i}]",
                            "must be {role: system|user|assistant, content: text}")
    if value[-1]["role"] != "assistant":
        raise DataError(path, line, "messages", "must end with an assistant message (what is learnt)")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _layout(row: dict[str, Any]) -> str:
    if "messages" in row:
        return "messages"
    return "query_positive" if "query" in row and "prompt" not in row else "prompt_completion"


def read_sft_rows(path: str | Path, pair_prompt: str = "{query}") -> list[dict[str, Any]]:
    """Chat rows (``messages``), prompt/completion rows, or retrieval rows (``{query,
    positive}``, as ``jmlr synthesize`` writes: pre-instruction tuning, the question as the
    prompt through ``pair_prompt`` and the passage that answers it as the completion), each
    checked; one layout per file."""
    from jmlr.io import read_jsonl
    from jmlr.training.contrastive_data import parse_row

    path = Path(path)
    rows: list[dict[str, Any]] = []
    layout = None
    for line, row in read_jsonl(path):
        this = _layout(row)
        if layout is not None and this != layout:
            first_key = {"messages": "messages", "query_positive": "query"}.get(this, "prompt")
            raise DataError(path, line, first_key,
                            f"a {this} row in a file of {layout} rows (one layout per file)")
        layout = this
        if this == "messages":
            rows.append({"messages": _messages(path, line, row["messages"])})
        elif this == "query_positive":
            pair = parse_row(path, line, row)
            rows.append({"prompt": pair_prompt.format(query=pair.query),
                         "completion": " " + pair.positive.strip()})
        else:
            rows.append({"prompt": _text_field(path, line, row, "prompt"),
                         "completion": _text_field(path, line, row, "completion")})
    return rows


def read_preference_rows(path: str | Path) -> list[dict[str, str]]:
    """``{prompt, chosen, rejected}`` rows, each checked (chosen and rejected must differ)."""
    from jmlr.io import read_jsonl

    path = Path(path)
    rows = []
    for line, row in read_jsonl(path):
        prompt, chosen, rejected = (_text_field(path, line, row, k)
                                    for k in ("prompt", "chosen", "rejected"))
        if chosen == rejected:
            raise DataError(path, line, "rejected", "is the same text as chosen")
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def question_rows(cfg: Config, split: str, start_from: str, device: str,
                  tokenizer: Any) -> list[dict[str, str]]:
    """Prompt/completion rows from a split's questions: the retriever's passages in the
    training template, and the reference answer (``jmlr.target``) as the completion."""
    from jmlr.alignment.reading import passages_read, prompt_text
    from jmlr.data import load_split
    from jmlr.generation.prompts import target_text

    questions = load_split(cfg.data, split)
    reads, corpus = passages_read(cfg, split, questions, start_from, device)
    return [{"prompt": prompt_text(cfg, tokenizer, q, [corpus[p] for p in reads[q.id]]),
             "completion": target_text(q, cfg.jmlr.target)} for q in questions]


# --------------------------------------------------------------------------- checks


def section(cfg: Config, kind: str) -> Any:
    if kind not in KINDS:
        raise ValueError(f"unknown alignment kind {kind!r}")
    return getattr(cfg, kind)


def check_inputs(cfg: Config, kind: str) -> list[dict[str, Any]] | None:
    """Locate (and read, for files) everything before any model loads. Returns the rows of
    a data file, or None for ``sft.data: questions`` (built after the models load)."""
    from jmlr.alignment.reading import check_reading
    from jmlr.data import locate_questions
    from jmlr.evaluation.passages import check_trained_run
    from jmlr.generation.sources import resolve_source
    from jmlr.generation.start import check_generator_start
    from jmlr.resources import resolve_location

    spec = section(cfg, kind)
    if spec.start_from:
        check_trained_run(cfg, Path(spec.start_from))
    resolve_source(cfg.generator.model)
    check_generator_start(cfg.generator)
    if kind == "sft" and spec.data == "questions":
        locate_questions(getattr(cfg.data, spec.split, None) or "", f"data.{spec.split}")
        resolve_location(cfg.data.corpus, "data.corpus")
        check_reading(cfg, spec.split)
        return None
    if not spec.data:
        raise ConfigError(f"{kind}.data is empty: name a jsonl file of "
                          f"{'preference' if kind == 'dpo' else 'instruction'} rows")
    path = Path(resolve_location(spec.data, f"{kind}.data"))
    return read_preference_rows(path) if kind == "dpo" else read_sft_rows(path, spec.pair_prompt)


def _settings(cfg: Config, kind: str) -> dict[str, Any]:
    """What a run's checkpoints depend on; not ``max_steps``: a run may continue for longer."""
    gen = cfg.generator
    spec = {k: v for k, v in asdict(section(cfg, kind)).items() if k != "max_steps"}
    return {"kind": kind, **spec, "generator": gen.model,
            "lora": [gen.lora_r, gen.lora_alpha, gen.lora_dropout, list(gen.lora_targets)],
            "seed": cfg.run.seed, "max_length": gen.max_length}


def prepare_run_dir(cfg: Config, kind: str, overwrite: bool, processes: Any = None) -> Path:
    """The run folder, checked: a run of other settings (or of another kind) is refused
    unless ``overwrite``, which removes what this command wrote there. Under ``accelerate
    launch`` (``processes``: accelerate's ``PartialState``) every rank checks, then the main
    one writes while the others wait."""
    run_dir = Path(cfg.run.out_dir)
    record = run_dir / f"{kind}_settings.json"
    wanted = _settings(cfg, kind)
    if record.is_file() and json.loads(record.read_text()) != wanted and not overwrite:
        old = json.loads(record.read_text())
        differing = sorted(k for k in wanted if old.get(k) != wanted[k])
        raise ConfigError(f"{run_dir} holds a {kind} run with other settings "
                          f"({', '.join(differing)}): pass --overwrite to start again, or set "
                          "run.out_dir")
    if not record.is_file() and (run_dir / "final").exists() and not overwrite:
        raise ConfigError(f"{run_dir} already holds a trained run (final/): pass --overwrite to "
                          "replace it, or set run.out_dir")
    if processes is not None:
        processes.wait_for_everyone()       # every rank has seen the folder as it was
        if not processes.is_main_process:
            processes.wait_for_everyone()
            return run_dir
    if overwrite:
        for stale in (run_dir / f"{kind}-checkpoints", run_dir / "final", record):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    from jmlr.io import write_json

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, wanted)
    if processes is not None:
        processes.wait_for_everyone()
    return run_dir


# --------------------------------------------------------------------------- training


def _start_model(cfg: Config, start_from: str, device: str) -> tuple[Any, Any]:
    """The starting generator as one plain model (a run's adapters merged in)."""
    from jmlr.evaluation.passages import FINAL_GENERATOR, trained_generator_config
    from jmlr.generation.model import load_generator, load_trained_generator

    if start_from:
        return load_trained_generator(trained_generator_config(cfg, Path(start_from)),
                                      cfg.run.cache_dir, Path(start_from) / FINAL_GENERATOR,
                                      device=device, for_training=False)
    return load_generator(cfg.generator, cfg.run.cache_dir, device=device, for_training=False)


def _trainer_args(cfg: Config, kind: str, run_dir: Path, device: str) -> dict[str, Any]:
    spec = section(cfg, kind)
    return {"output_dir": str(run_dir / f"{kind}-checkpoints"), "max_steps": spec.max_steps,
            "per_device_train_batch_size": spec.batch_size,
            "gradient_accumulation_steps": spec.grad_accum, "learning_rate": spec.learning_rate,
            "warmup_steps": spec.warmup_steps, "lr_scheduler_type": "constant_with_warmup",
            "save_strategy": "steps", "save_steps": spec.save_every, "save_total_limit": 2,
            "logging_steps": spec.logging_steps, "report_to": [], "seed": cfg.run.seed,
            "data_seed": cfg.run.seed, "bf16": cfg.train.mixed_precision == "bf16",
            "fp16": cfg.train.mixed_precision == "fp16", "use_cpu": device == "cpu",
            "max_length": spec.max_length or cfg.generator.max_length,
            "dataloader_num_workers": 0, "disable_tqdm": False}


def _peft_config(cfg: Config) -> Any:
    if cfg.generator.lora_r == 0:
        return None
    from peft import LoraConfig

    gen = cfg.generator
    return LoraConfig(r=gen.lora_r, lora_alpha=gen.lora_alpha, lora_dropout=gen.lora_dropout,
                      target_modules=list(gen.lora_targets), task_type="CAUSAL_LM")


def _last_checkpoint(run_dir: Path, kind: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = run_dir / f"{kind}-checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def run_alignment(cfg: Config, kind: str, overwrite: bool = False) -> dict[str, Any]:
    """Train with trl's SFT or DPO trainer and export the run (module docstring)."""
    import torch
    from datasets import Dataset

    from jmlr.alignment.reading import reading_config
    from jmlr.device import resolve_device

    cfg = reading_config(cfg, section(cfg, kind).start_from)   # the start run's passages
    spec = section(cfg, kind)
    rows = check_inputs(cfg, kind)
    device = resolve_device(cfg.run.device)
    processes = _processes(device)
    run_dir = prepare_run_dir(cfg, kind, overwrite, processes)
    torch.manual_seed(cfg.run.seed)
    model, tokenizer = _start_model(cfg, spec.start_from, device)
    if rows is None:
        rows = question_rows(cfg, spec.split, spec.start_from, device, tokenizer)
    if not rows:
        raise ConfigError(f"{kind}: no training rows")
    if cfg.generator.lora_r == 0:
        model.requires_grad_(True)
    model.train()
    dataset = Dataset.from_list(rows)
    args = _trainer_args(cfg, kind, run_dir, device)
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(**args), train_dataset=dataset,
                             processing_class=tokenizer, peft_config=_peft_config(cfg))
    else:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=model, args=DPOConfig(**args, beta=spec.beta,
                                                         loss_type=[spec.loss_type]),
                             train_dataset=dataset, processing_class=tokenizer,
                             peft_config=_peft_config(cfg))
    resume = _last_checkpoint(run_dir, kind)
    if resume:
        log.info("%s: continuing from %s", kind, resume)
    started = time.perf_counter()
    # transformers' progress callback prints each log row to stdout: keep stdout for the summary.
    with contextlib.redirect_stdout(sys.stderr):
        result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    if processes.is_main_process:
        export_run(cfg, kind, trainer.model, tokenizer, run_dir)
    history = [r for r in trainer.state.log_history if "loss" in r]
    steps_now = trainer.state.global_step - (int(resume.rsplit("-", 1)[1]) if resume else 0)
    summary = {"kind": kind, "run_dir": str(run_dir), "rows": len(rows),
               "steps": trainer.state.global_step, "resumed_from": resume,
               "train_loss": round(float(result.training_loss), 6),
               "first_loss": history[0]["loss"] if history else None,
               "last_loss": history[-1]["loss"] if history else None,
               "seconds": round(seconds, 1),
               "s_per_step": round(seconds / steps_now, 3) if steps_now else None,
               "device": device, "processes": processes.num_processes, "history": history}
    from jmlr.io import write_json

    if processes.is_main_process:
        write_json(run_dir / f"{kind}_summary.json", summary)
    processes.wait_for_everyone()          # the export is in place when any rank returns
    return {k: v for k, v in summary.items() if k != "history"}


def _processes(device: str) -> Any:
    """accelerate's process state (one process, or the ranks of ``accelerate launch``), as
    trl's trainer will use it: the CPU's gloo group when training on the CPU."""
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


def export_run(cfg: Config, kind: str, model: Any, tokenizer: Any, run_dir: Path) -> None:
    """``RUN/final`` as a trained run's, plus ``RUN/config.yaml``."""
    from peft import PeftModel

    from jmlr.evaluation.passages import FINAL_RETRIEVER
    from jmlr.generation.model import save_generator
    from jmlr.generation.sources import describe_source
    from jmlr.generation.start import describe_start
    from jmlr.io import building_folder

    spec = section(cfg, kind)
    # a start run's generator is saved whole (below): nothing of generator.train_from under it
    base = {**describe_source(cfg.generator.model, cfg.run.cache_dir),
            **({} if spec.start_from else describe_start(cfg.generator))}
    with building_folder(run_dir / "final") as tmp:
        if spec.start_from and isinstance(model, PeftModel):
            # The adapter sits on the start run's merged weights, not on generator.model:
            # written as a whole model, it loads on its own.
            model = model.merge_and_unload()
        save_generator(model, tokenizer, tmp / "generator", base=base)
        if spec.start_from:
            shutil.copytree(Path(spec.start_from) / FINAL_RETRIEVER, tmp / "retriever")
        else:
            from jmlr.retrieval.backends import backend_for

            backend_for(cfg).load_scorer(cfg, None, device="cpu").save(tmp / "retriever")
    cfg.save(run_dir / "config.yaml")
    log.info("%s: exported %s", kind, run_dir / "final")
