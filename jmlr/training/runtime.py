"""What the training loop needs around the model: the accelerator, data order, metrics, signals.

Kept apart from ``loop.py`` so that the loop reads as the algorithm and these pieces can be
tested alone. Nothing here creates an accelerator or a process group at import time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jmlr.config import Config
from jmlr.device import resolve_device
from jmlr.errors import Busy, ConfigError, DataError
from jmlr.io import exclusive, write_jsonl
from jmlr.training.trackers import resolve_trackers

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOCK_FILE = "train.lock"            # held by the process that trains into the run folder


# --------------------------------------------------------------------------- accelerator


def resolve_mixed_precision(setting: str, on_cuda: bool, bf16_supported: bool) -> str:
    """``train.mixed_precision`` → accelerate's setting; "auto" is bf16 on a CUDA device that
    supports it, otherwise full precision.

    >>> resolve_mixed_precision("auto", on_cuda=True, bf16_supported=True)
    'bf16'
    >>> resolve_mixed_precision("auto", on_cuda=False, bf16_supported=False)
    'no'
    >>> resolve_mixed_precision("fp16", on_cuda=True, bf16_supported=True)
    'fp16'
    """
    if setting != "auto":
        return setting
    return "bf16" if on_cuda and bf16_supported else "no"


def check_accumulation(grad_accum: int, launched: str | None) -> None:
    """``train.grad_accum`` is the one accumulation setting: the loop counts it, and
    accelerate takes ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS`` (what ``accelerate launch``
    sets from a DeepSpeed config's ``gradient_accumulation_steps``) over it. Stop at start
    when the two disagree, instead of accumulating twice or not at all.

    >>> check_accumulation(8, None); check_accumulation(8, "8")
    >>> check_accumulation(1, "8")
    Traceback (most recent call last):
    jmlr.errors.ConfigError: the accelerate launch config sets gradient_accumulation_steps 8 but train.grad_accum is 1: remove it from the launch config (train.grad_accum is the one the loop counts) or make the two equal
    """
    if launched is not None and launched.strip() != str(grad_accum):
        raise ConfigError(
            f"the accelerate launch config sets gradient_accumulation_steps {launched} but "
            f"train.grad_accum is {grad_accum}: remove it from the launch config "
            "(train.grad_accum is the one the loop counts) or make the two equal")


def check_clipping(max_grad_norm: float, launched: str | None) -> None:
    """``train.max_grad_norm`` is the one clipping setting. DeepSpeed clips by its own config's
    ``gradient_clipping`` (``ACCELERATE_GRADIENT_CLIPPING`` once launched) and ignores the
    loop's clip; stop at start when the two disagree ("auto" or "none": not set).

    >>> check_clipping(1.0, None); check_clipping(1.0, "1.0"); check_clipping(0.5, "auto")
    >>> check_clipping(0.5, "1.0")
    Traceback (most recent call last):
    jmlr.errors.ConfigError: the accelerate launch config sets gradient_clipping 1.0 but train.max_grad_norm is 0.5: make the two equal (DeepSpeed clips by its config, not by the loop)
    """
    if launched is None or launched.strip().lower() in ("auto", "none", ""):
        return
    if abs(float(launched) - max_grad_norm) > 1e-12:
        raise ConfigError(
            f"the accelerate launch config sets gradient_clipping {launched} but "
            f"train.max_grad_norm is {max_grad_norm}: make the two equal (DeepSpeed clips by "
            "its config, not by the loop)")


def make_accelerator(cfg: Config, run_dir: Path) -> Any:
    """The Accelerator for this run: device from ``run.device``, precision from
    ``train.mixed_precision``, accumulation from ``train.grad_accum``. The distributed setup
    (DDP, FSDP, DeepSpeed, number of processes) comes from ``accelerate launch`` alone."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    check_accumulation(cfg.train.grad_accum, os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS"))
    check_clipping(cfg.train.max_grad_norm, os.environ.get("ACCELERATE_GRADIENT_CLIPPING"))
    trackers = resolve_trackers(cfg.train.report_to)
    on_cuda = resolve_device(cfg.run.device) == "cuda"
    bf16 = on_cuda and torch.cuda.is_bf16_supported()
    precision = resolve_mixed_precision(cfg.train.mixed_precision, on_cuda, bf16)
    if precision == "fp16" and not on_cuda:
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA device; use bf16, no or auto")
    # Utility forwards run without gradient and the rank loss may use no pair in a batch:
    # let DDP find the parameters that a step leaves unused, and skip per-forward buffer syncs
    # (rotary caches are deterministic) since forwards per step need not match across ranks.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
    return Accelerator(
        cpu=cfg.run.device == "cpu", mixed_precision=precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        step_scheduler_with_optimizer=False,   # stepped once per optimizer step, by the loop
        log_with=trackers or None, project_dir=str(run_dir),
        kwargs_handlers=[ddp])


def flat_config(cfg: Config) -> dict[str, Any]:
    """The config as ``section.key`` → scalar, for trackers that accept only scalars."""
    flat: dict[str, Any] = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, int | float | str | bool) \
                else json.dumps(value)
    return flat


# --------------------------------------------------------------------------- data order


def batches_per_epoch(n_items: int, batch_size: int, world: int) -> int:
    """Micro-batches each rank sees per epoch (ranks get equal shards; a short last batch).

    >>> batches_per_epoch(10, 3, 2), batches_per_epoch(4, 2, 2)
    (2, 1)
    """
    per_rank = n_items // world
    if per_rank == 0:
        raise ConfigError(f"{n_items} training questions cannot be split over {world} processes")
    return math.ceil(per_rank / batch_size)


def epoch_batches(n_items: int, batch_size: int, seed: int, epoch: int, rank: int,
                  world: int) -> list[list[int]]:
    """This rank's micro-batches (item indices) for one epoch.

    The order is a permutation drawn from ``(seed, epoch)`` alone, so any rank can rebuild it
    after a restart; each rank takes an equal contiguous shard (the remainder of
    ``n_items / world`` sits the epoch out), cut into batches of ``batch_size``.

    >>> epoch_batches(10, 3, seed=0, epoch=0, rank=0, world=2) == epoch_batches(10, 3, 0, 0, 0, 2)
    True
    >>> a, b = epoch_batches(10, 3, 0, 0, 0, 2), epoch_batches(10, 3, 0, 0, 1, 2)
    >>> [len(x) for x in a], set(sum(a, [])) & set(sum(b, []))
    ([3, 2], set())
    """
    order = np.random.default_rng([seed, epoch]).permutation(n_items).tolist()
    per_rank = n_items // world
    shard = order[rank * per_rank:(rank + 1) * per_rank]
    return [shard[i:i + batch_size] for i in range(0, per_rank, batch_size)]


def total_optimizer_steps(max_steps: int, epochs: float, per_epoch: int, grad_accum: int) -> int:
    """Optimizer steps of the run: ``max_steps`` when set, else ``epochs`` worth of batches.

    >>> total_optimizer_steps(0, 1.0, 10, 4), total_optimizer_steps(7, 1.0, 10, 4)
    (3, 7)
    """
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(math.ceil(epochs * per_epoch) / grad_accum))


# --------------------------------------------------------------------------- metrics


class MetricsLog:
    """``RUN/metrics.jsonl`` (one JSON object per logged step) plus accelerate's trackers.

    Only the main process writes. Each row is appended with one write and flushed; a run
    killed during that write leaves a torn last line. On resume, rows past the checkpoint
    and a torn last line are dropped.
    """

    def __init__(self, accelerator: Any, run_dir: Path) -> None:
        self.accelerator = accelerator
        self.path = run_dir / METRICS_FILE

    def reset(self) -> None:
        if self.accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("", encoding="utf-8")

    def truncate_after(self, step: int) -> None:
        """Keep only rows up to ``step`` (what a checkpoint at ``step`` has already seen), and
        drop a last line that is not JSON (cut off by a kill: it came after the checkpoint,
        which is written after the rows of its step); one log line says what went. A
        malformed line before the last is no torn write: DataError naming it."""
        if not self.accelerator.is_main_process or not self.path.is_file():
            return
        # errors="replace": a torn line may end inside a multi-byte character.
        lines = [(number, line) for number, line in enumerate(
            self.path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1)
            if line.strip()]
        kept, dropped, torn = [], 0, False
        for position, (number, line) in enumerate(lines):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if position == len(lines) - 1:
                    torn = True
                    continue
                raise DataError(self.path, number, None, f"malformed JSON ({err.msg}); only "
                                "the last line can be cut off by a kill: fix or delete this "
                                "one") from None
            if not isinstance(row, dict):
                raise DataError(self.path, number, None, "expected a JSON object on each line")
            if int(row.get("step", 0)) <= step:
                kept.append(row)
            else:
                dropped += 1
        if dropped or torn:
            write_jsonl(self.path, kept)
            what = [f"{dropped} row(s) after step {step}"] if dropped else []
            what += ["a torn last line (cut off by a kill)"] if torn else []
            log.info("%s: dropped %s, resuming from the checkpoint of step %d", self.path,
                     " and ".join(what), step)

    def write(self, row: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
        scalars = {k: v for k, v in row.items() if isinstance(v, int | float) and k != "step"}
        prefix = f"{row['split']}/" if "split" in row else "train/"
        self.accelerator.log({prefix + k: v for k, v in scalars.items()}, step=int(row["step"]))


# --------------------------------------------------------------------------- run folder


@contextmanager
def lock_run_folder(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN/train.lock`` while training writes ``run_dir``: a second ``jmlr train`` into
    the same folder would share its temporary checkpoint folders, rewrite config.yaml and
    interleave metrics.jsonl. Busy (one line, exit 2) when another live process holds it;
    a lock that a killed process left is taken over with a log line (``jmlr.io.exclusive``)."""
    try:
        with exclusive(run_dir / LOCK_FILE, "jmlr train", wait=False):
            yield
    except Busy as err:
        raise Busy(f"{run_dir} is in use by another jmlr train ({err.holder}): wait for it to "
                   "end, or choose another run.out_dir", holder=err.holder) from None


# --------------------------------------------------------------------------- signals


class StopRequest:
    """Set by SIGTERM / SIGINT; the loop checks it at step boundaries (all ranks agree)."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """While active, SIGTERM and SIGINT ask the loop to checkpoint and stop at the next step
    boundary instead of killing it; a second SIGINT interrupts at once. Handlers can only be
    installed from the main thread; elsewhere the defaults stay."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if request.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.requested, request.signal_name = True, name
        log.warning("%s received: saving a checkpoint at the next step boundary, then stopping", name)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def progress_fields(row: dict[str, Any]) -> dict[str, str]:
    """The progress bar's postfix: loss, the rank loss and accuracy when the step logs them,
    throughput (when the step counts tokens).

    >>> progress_fields({"loss": 1.5, "rank_accuracy": None, "tokens_per_s": 9.6})
    {'loss': '1.5000', 'tok_s': '10'}
    >>> progress_fields({"loss": 0.25, "positive_top1": 0.5, "tokens_per_s": 0.0})
    {'loss': '0.2500', 'top1': '0.50'}
    """
    fields = {}
    for key, label, spec in (("loss", "loss", ".4f"), ("rank_loss", "rank", ".4f"),
                             ("rank_accuracy", "acc", ".2f"), ("positive_top1", "top1", ".2f"),
                             ("tokens_per_s", "tok_s", ".0f")):
        if key == "tokens_per_s" and not row.get(key):
            continue
        if isinstance(row.get(key), int | float):
            fields[label] = format(row[key], spec)
    return fields
