"""The training loop behind ``jmlr train`` and ``accelerate launch -m jmlr train``.

One loop for every kind of training: the *step* (``train.step``, a registered
:class:`~jmlr.training.steps.base.TrainingStep`; ``joint`` is JMLR) says which named models
it needs and which of them train, and computes each micro-batch; this loop does the rest.
Read top to bottom, :class:`TrainRecipe` does:

1. ``setup``: the accelerator (created here, never at import), the run folder's lock (one
   ``jmlr train`` per folder), the resolved config saved to ``RUN/config.yaml``, the step's
   data and models (one :class:`~jmlr.training.steps.base.ModelSet`), explicit optimizer
   groups for the models that train (checked and printed), the warm-up schedule,
   ``accelerator.prepare`` and, with ``--resume``, the last checkpoint;
2. ``train``: per optimizer step, ``train.grad_accum`` micro-batches of ``train.batch_size``
   items through the step, clipping (each model on its own), the optimizer and scheduler
   steps; then the step's own after-step work (JMLR: candidate refresh), logging of the
   step's named statistics, dev metrics and checkpoints; SIGTERM / SIGINT end the loop at a
   step boundary with a checkpoint;
3. ``finish``: final checkpoint, the step's export to ``RUN/final/``, summary.

The data order is a permutation drawn from ``(run.seed, epoch)``, so a resumed run sees
exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from jmlr.config import Config
from jmlr.errors import Busy, ConfigError, UserError
from jmlr.io import building_folder, write_json
from jmlr.registry import TRAINING_STEPS
from jmlr.training import checkpoint as ckpt
from jmlr.training import components as parts
from jmlr.training.optim import (
    build_optimizer,
    build_scheduler,
    check_groups,
    describe_groups,
    model_groups,
)
from jmlr.training.runtime import (
    MetricsLog,
    batches_per_epoch,
    epoch_batches,
    flat_config,
    lock_run_folder,
    make_accelerator,
    progress_fields,
    stop_on_signals,
    total_optimizer_steps,
)
from jmlr.training.sharded import ExportCopies
from jmlr.training.stats import Stat, combine, finalize
from jmlr.training.steps.base import ModelSet, TrainingStep

log = logging.getLogger(__name__)

# Throughput estimate: 6·N FLOPs per token (forward 2·N + backward 4·N) over the parameters N
# the step counts (JMLR: the generator's) and every token of its "tokens" statistic (JMLR:
# utility forwards included). An upper bound: the utility forwards need 2·N only, and LoRA
# skips most weight gradients.
FLOPS_FORMULA = "6 * N_params * tokens_per_s"


class TrainRecipe:
    """One training run: ``setup()``, ``train()``, ``finish()`` (see the module docstring)."""

    def __init__(self, cfg: Config, resume: bool = False) -> None:
        self.cfg, self.resume = cfg, resume
        self.step: TrainingStep = TRAINING_STEPS.get(cfg.train.step)(cfg)
        self.step.check()
        self.run_dir = Path(cfg.run.out_dir)
        self.final_dev: dict[str, Any] = {}
        self.last_row: dict[str, Any] = {}
        self.stopped_by: str | None = None      # the signal that ended training early
        self.lock = contextlib.ExitStack()        # the run folder's lock, once taken
        self.copies = ExportCopies(self.step.export_copies)   # used under FSDP / ZeRO-3 only

    # ------------------------------------------------------------------ 1. setup

    def setup(self) -> None:
        from accelerate.utils import set_seed

        cfg = self.cfg
        self.accelerator = acc = make_accelerator(cfg, self.run_dir)
        self.main = acc.is_main_process
        self.take_run_folder()
        latest = ckpt.find_latest(self.run_dir)
        if latest is not None and not self.resume:
            raise ConfigError(f"{self.run_dir} already holds checkpoints: pass --resume to continue "
                              "that run, or choose another run.out_dir")
        if self.resume and latest is None:
            log.warning("--resume: no checkpoint under %s, starting from scratch", self.run_dir)
        if latest is not None and ckpt.read_state(latest).world_size != acc.num_processes:
            raise ConfigError(f"{latest} was written by {ckpt.read_state(latest).world_size} "
                              "process(es): resume with the same number (the data order depends on it)")
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_partial(self.run_dir)
            cfg.save(self.run_dir / "config.yaml")
        set_seed(cfg.run.seed)

        self.items = self.step.load_data()
        # The main process builds first: a model that must be converted once into the cache
        # (a GGUF generator, an encoder made a ColBERT checkpoint) is then converted by it,
        # since transformers writes a model's files on rank 0 alone once a process group is up
        # (a conversion by another rank would leave a folder without them).
        with acc.main_process_first():
            models = self.step.build_models()
        rates = self.step.learning_rates()
        unknown = [name for name in rates if name not in models]
        if unknown or not rates:
            raise ConfigError(f"training step {cfg.train.step!r} trains {unknown or 'no model'} "
                              f"but builds {list(models)}")
        for name, model in models.items():
            if name not in rates:
                model.requires_grad_(False)         # frozen: in no group, eval mode
        self.model = ModelSet(models)
        if latest is not None:
            ckpt.load_weights(latest, self.model)   # before prepare: sharding sees restored weights

        self.groups = [group for name, lr in rates.items()
                       for group in model_groups(name, models[name], lr, cfg.train.weight_decay)]
        check_groups(self.groups, models)
        if self.main:
            log.info("optimizer groups:\n%s", describe_groups(self.groups))
        self.n_flops_params = self.step.flops_params(models)
        optimizer = build_optimizer(self.groups)

        world, rank = acc.num_processes, acc.process_index
        self.per_epoch = batches_per_epoch(len(self.items), cfg.train.batch_size, world)
        self.total_steps = total_optimizer_steps(cfg.train.max_steps, cfg.train.epochs,
                                                 self.per_epoch, cfg.train.grad_accum)
        scheduler = build_scheduler(optimizer, cfg.train.warmup_steps, self.total_steps,
                                    cfg.train.lr_scheduler)
        with warnings.catch_warnings():   # DDP's broadcast_buffers is still what accelerate passes
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            self.model, self.optimizer, self.scheduler = acc.prepare(self.model, optimizer, scheduler)
        self.sampler = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + rank)

        self.metrics = MetricsLog(acc, self.run_dir)
        names = [g.name for g in self.groups]
        if latest is not None:
            self.state = ckpt.load_training_state(acc, latest, optimizer=self.optimizer,
                                                  scheduler=self.scheduler, sampler=self.sampler,
                                                  group_names=names)
            self.state.interrupted = False
            self.step.restore(latest, self)
            self.metrics.truncate_after(self.state.step)
            log.info("resumed from %s (step %d of %d)", latest, self.state.step, self.total_steps)
        else:
            self.state = ckpt.TrainState(sampler_seed=cfg.run.seed, world_size=world,
                                         total_steps=self.total_steps, group_names=names)
            self.metrics.reset()
        self.state.total_steps = self.total_steps
        self.saved_at = self.state.step if latest is not None else -1
        if self.main:
            log.info("training step %r: %d items, %d process(es), %d micro-batches of %d per epoch "
                     "per process, %d optimizer steps (x%d accumulation)", cfg.train.step,
                     len(self.items), world,
                     self.per_epoch, cfg.train.batch_size, self.total_steps, cfg.train.grad_accum)
        acc.init_trackers("jmlr", config=flat_config(cfg))
        for name, model in self.unwrapped_models().items():
            model.train(name in rates)              # frozen models score without dropout

    def take_run_folder(self) -> None:
        """The run folder's lock (``runtime.lock_run_folder``), before anything in the folder
        is read or written. The main process alone takes it (the others write nothing
        there), and every process learns whether it was refused, so that all stop together
        instead of waiting in a collective for a process that has left."""
        refusal = None
        if self.main:
            try:
                self.lock.enter_context(lock_run_folder(self.run_dir))
            except UserError as err:
                refusal = str(err)
        refusal = parts.broadcast(refusal)
        if refusal is not None:
            raise Busy(refusal)

    def release(self) -> None:
        """Let go of the run folder (after ``finish``, or after an error)."""
        self.lock.close()

    # ------------------------------------------------------------------ 2. train

    def next_batch(self) -> list:
        """The next micro-batch of this rank's questions; advances the data position."""
        st = self.state
        if st.batch_index >= self.per_epoch:
            st.epoch, st.batch_index = st.epoch + 1, 0
        order = epoch_batches(len(self.items), self.cfg.train.batch_size, st.sampler_seed,
                              st.epoch, self.accelerator.process_index, self.accelerator.num_processes)
        st.batch_index += 1
        return [self.items[i] for i in order[st.batch_index - 1]]

    def train_step(self) -> tuple[dict[str, Stat], dict[str, float], dict[str, float]]:
        """One optimizer step over ``grad_accum`` micro-batches (gradients sync on the last).

        Returns the step's statistics summed by name over micro-batches and processes, the
        gradient norms before clipping, and each group's lr.
        """
        cfg, acc = self.cfg, self.accelerator
        rows: list[dict[str, Stat]] = []
        grad_norms: dict[str, float] = {}
        for _ in range(cfg.train.grad_accum):
            batch = self.next_batch()
            with acc.accumulate(self.model):
                out = self.model(self.step.compute, batch, self.sampler)
                acc.backward(out.loss)
                if acc.sync_gradients and cfg.train.max_grad_norm > 0:
                    grad_norms = self.clip_gradients()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            rows.append(out.stats)
        lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}   # the lrs just used
        self.scheduler.step()
        self.state.step += 1
        return combine(parts.gather([combine(rows)])), grad_norms, lrs

    def clip_gradients(self) -> dict[str, float]:
        """Clip to ``train.max_grad_norm``: each model on its own (``train.clip_per_model``),
        or both together; returns the norms before clipping ("total" over both).

        Per model, a large generator gradient does not scale the retriever's step down with
        it. Under FSDP and DeepSpeed, which own the (sharded) gradients, the clip is joint.
        """
        from accelerate.utils import DistributedType

        acc, max_norm = self.accelerator, self.cfg.train.max_grad_norm
        sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if sharded or not self.cfg.train.clip_per_model:
            total = acc.clip_grad_norm_(self.model.parameters(), max_norm)
            return {} if total is None else {"total": float(total)}
        acc.unscale_gradients()         # fp16: the scaler's factor out before measuring
        norms = {}
        for name, model in self.unwrapped_models().items():
            params = [p for p in model.parameters() if p.grad is not None]
            if params:
                norms[name] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        norms["total"] = sum(n * n for n in norms.values()) ** 0.5
        return norms

    def log_row(self, stats: dict[str, Stat], grad_norms: dict[str, float], lrs: dict[str, float],
                tokens_per_s: float) -> dict[str, Any]:
        """The metrics.jsonl row of this step: the step's statistics (means over micro-batches
        and processes, or totals), gradient norms, learning rates, throughput."""
        st = self.state
        return {"step": st.step, "epoch": round(st.epoch + st.batch_index / self.per_epoch, 4),
                **finalize(stats),
                "grad_norm": grad_norms.get("total"),
                **{f"grad_norm_{name}": v for name, v in grad_norms.items() if name != "total"},
                **{f"lr_{name}": lr for name, lr in lrs.items()},
                "tokens_per_s": round(tokens_per_s, 2),
                "flops_per_s_est": 6.0 * self.n_flops_params * tokens_per_s,
                "elapsed": round(st.elapsed_s, 3)}

    def train(self) -> None:
        cfg, acc, st = self.cfg, self.accelerator, self.state
        progress = tqdm(total=self.total_steps, initial=st.step, disable=not self.main,
                        desc="train", dynamic_ncols=True)
        started, elapsed_before = time.time(), st.elapsed_s
        step_seconds, tokens_since_log = 0.0, 0        # throughput counts training steps only
        if st.step == 0 and cfg.train.eval_every > 0:
            self.evaluate_dev()
        with stop_on_signals() as stop:
            while st.step < self.total_steps:
                step_started = time.time()
                stats, grad_norms, lrs = self.train_step()
                step_seconds += time.time() - step_started
                tokens = int(stats["tokens"].total) if "tokens" in stats else 0
                tokens_since_log += tokens
                st.tokens_seen += tokens
                st.elapsed_s = elapsed_before + time.time() - started
                progress.update(1)

                self.step.after_step(self)
                if st.step % cfg.train.log_every == 0 or st.step == self.total_steps:
                    row = self.log_row(stats, grad_norms, lrs, tokens_since_log / max(step_seconds, 1e-9))
                    self.metrics.write(row)
                    self.last_row = row
                    progress.set_postfix(progress_fields(row))
                    step_seconds, tokens_since_log = 0.0, 0
                before_end = st.step < self.total_steps
                if cfg.train.eval_every > 0 and st.step % cfg.train.eval_every == 0 and before_end:
                    self.evaluate_dev()
                if stop.requested:
                    acc.set_trigger()
                if acc.check_trigger():              # any rank signalled: all stop together
                    st.interrupted = True
                    # the signal's name, from whichever rank received it
                    self.stopped_by = next(
                        (name for name in parts.gather([stop.signal_name]) if name), "SIGTERM")
                    saved = self.save_checkpoint()
                    log.warning("stopped by %s at step %d; checkpoint %s", self.stopped_by,
                                st.step, saved)
                    break
                if cfg.train.save_every > 0 and st.step % cfg.train.save_every == 0 and before_end:
                    self.save_checkpoint()
        progress.close()

    # ------------------------------------------------------------------ candidates, eval

    def unwrapped_models(self) -> dict[str, torch.nn.Module]:
        """The step's models by name, outside any distributed wrapper."""
        return self.accelerator.unwrap_model(self.model).as_dict()

    def export_models(self) -> dict[str, torch.nn.Module]:
        """The models to save or search with on the main process: the unwrapped ones, or
        under FSDP / ZeRO-3 unsharded copies holding the gathered weights
        (``training/sharded.py``). Every rank must call it."""
        return self.copies.models(self.accelerator, self.model, self.unwrapped_models())

    def evaluate_dev(self) -> dict[str, Any]:
        """The step's dev metrics, logged as a ``split: dev`` row (every rank calls this)."""
        metrics = self.step.evaluate(self)
        self.state.last_dev_step = self.state.step
        if not metrics:
            return {}
        row = {"step": self.state.step, "split": "dev", **metrics}
        self.metrics.write(row)
        self.final_dev = row
        return row

    # ------------------------------------------------------------------ 3. save, export

    def save_checkpoint(self) -> Path:
        exporters = self.step.exporters(self.export_models(), self)
        self.saved_at = self.state.step
        return ckpt.save_checkpoint(self.accelerator, self.run_dir, self.state, model=self.model,
                                    optimizer=self.optimizer, scheduler=self.scheduler,
                                    sampler=self.sampler, exporters=exporters,
                                    keep=self.cfg.train.keep_checkpoints)

    def finish(self) -> dict[str, Any]:
        acc, st = self.accelerator, self.state
        if not st.interrupted:
            if st.last_dev_step != st.step and self.cfg.train.eval_every >= 0:
                self.evaluate_dev()
            if self.saved_at != st.step:
                self.save_checkpoint()
        checksums = parts.gather([parts.checksums(self.unwrapped_models(), acc)])
        models = self.export_models() if not st.interrupted else {}
        if not st.interrupted and self.main:
            with building_folder(self.run_dir / "final") as tmp:
                self.step.export_final(models, tmp)
            log.info("exported %s to %s", ", ".join(self.unwrapped_models()), self.run_dir / "final")
        weights = [{k: v for k, v in c.items() if k != "rank"} for c in checksums]
        in_sync = (all(w == weights[0] for w in weights)
                   if all(v is not None for v in weights[0].values()) else None)
        for c in checksums if self.main else []:
            log.info("rank %d parameter checksums: %s", c["rank"],
                     " ".join(f"{k} {v}" for k, v in c.items() if k != "rank"))
        summary = {
            "step_kind": self.cfg.train.step, "steps": st.step, "total_steps": self.total_steps,
            "interrupted": st.interrupted, "stopped_by": self.stopped_by,
            "world_size": acc.num_processes, "mixed_precision": str(acc.mixed_precision),
            "train_time_s": round(st.elapsed_s, 3),
            "tokens_seen": st.tokens_seen,
            "tokens_per_s": round(st.tokens_seen / max(st.elapsed_s, 1e-9), 2),
            "flops_per_s_est": 6.0 * self.n_flops_params * st.tokens_seen / max(st.elapsed_s, 1e-9),
            "flops_formula": FLOPS_FORMULA,
            "optimizer_groups": [{"name": g.name, "tensors": len(g.params), "params": g.n_params,
                                  "lr": g.lr, "weight_decay": g.weight_decay} for g in self.groups],
            "last_train": self.last_row, "final_dev": self.final_dev,
            "rank_checksums": checksums, "ranks_in_sync": in_sync,
        }
        if self.main:
            write_json(self.run_dir / "train_summary.json", summary)
        if in_sync is False:
            log.error("ranks ended with different parameters: %s", checksums)
        acc.wait_for_everyone()
        acc.end_training()
        return summary


def run_train(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """``jmlr train``: set up, train, finish; returns the summary written to
    ``RUN/train_summary.json``."""
    cfg = TRAINING_STEPS.get(cfg.train.step).before_run(cfg, resume)
    recipe = TrainRecipe(cfg, resume)
    try:
        recipe.setup()
        recipe.train()
        return recipe.finish()
    finally:
        recipe.release()

