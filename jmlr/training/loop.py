"""The training loop behind ``jmlr train`` and ``accelerate launch -m jmlr train``.

Read top to bottom, :class:`TrainRecipe` does:

1. ``setup``: the accelerator (created here, never at import), the resolved config saved to
   ``RUN/config.yaml``, questions, corpus and mined candidates, the generator and the ColBERT
   scorer in one :class:`~jmlr.training.components.JointModel`, explicit optimizer groups
   (checked and printed), the warm-up schedule, ``accelerator.prepare`` and, with
   ``--resume``, the last checkpoint;
2. ``train``: per optimizer step, ``train.grad_accum`` micro-batches of ``train.batch_size``
   questions through :func:`~jmlr.training.objective.joint_step`, clipping, the optimizer and
   scheduler steps; then, when due, candidate refresh / re-index, logging, dev retrieval
   metrics and checkpoints; SIGTERM / SIGINT end the loop at a step boundary with a checkpoint;
3. ``finish``: final checkpoint, export to ``RUN/final/{generator,retriever}``, summary.

Each data item is one question with its mined candidates; the order is a permutation drawn
from ``(run.seed, epoch)``, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from jmlr.config import Config
from jmlr.errors import ConfigError
from jmlr.io import write_json
from jmlr.training import checkpoint as ckpt
from jmlr.training import components as parts
from jmlr.training.objective import gold_pair_agreement
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
    make_accelerator,
    stop_on_signals,
    total_optimizer_steps,
)
from jmlr.training.token_losses import eval_mode

log = logging.getLogger(__name__)

# Throughput estimate: 6·N FLOPs per token (forward 2·N + backward 4·N) over all generator
# parameters N and every generator token (utility forwards included). An upper bound: the
# utility forwards need 2·N only, and LoRA skips most weight gradients.
FLOPS_FORMULA = "6 * N_generator_params * generator_tokens_per_s"


class TrainRecipe:
    """One training run: ``setup()``, ``train()``, ``finish()`` (see the module docstring)."""

    def __init__(self, cfg: Config, resume: bool = False) -> None:
        if not (cfg.jmlr.train_generator or cfg.jmlr.train_retriever):
            raise ConfigError("jmlr.train_generator and jmlr.train_retriever are both false: nothing to train")
        self.cfg, self.resume = cfg, resume
        self.run_dir = Path(cfg.run.out_dir)
        self.final_dev: dict[str, Any] = {}
        self.last_row: dict[str, Any] = {}

    # ------------------------------------------------------------------ 1. setup

    def setup(self) -> None:
        from accelerate.utils import set_seed

        cfg = self.cfg
        self.accelerator = acc = make_accelerator(cfg, self.run_dir)
        self.main = acc.is_main_process
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

        self.data = parts.load_training_data(cfg)
        generator, self.tokenizer = parts.load_generator_for_training(cfg)
        retriever = parts.load_retriever_for_training(cfg)
        self.model = parts.JointModel(generator, retriever, parts.make_encode_fn(cfg, self.tokenizer), cfg,
                                parts.make_encode_fn(cfg, self.tokenizer, for_utility=True))
        if latest is not None:
            ckpt.load_weights(latest, self.model)   # before prepare: sharding sees restored weights

        self.groups = (model_groups("generator", generator, cfg.train.generator_lr, cfg.train.weight_decay)
                       + model_groups("retriever", retriever, cfg.train.retriever_lr, cfg.train.weight_decay))
        check_groups(self.groups, {"generator": generator, "retriever": retriever})
        if self.main:
            log.info("optimizer groups:\n%s", describe_groups(self.groups))
        self.n_generator_params = sum(p.numel() for p in generator.parameters())
        optimizer = build_optimizer(self.groups)

        world, rank = acc.num_processes, acc.process_index
        self.per_epoch = batches_per_epoch(len(self.data.train), cfg.train.batch_size, world)
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
            if self.state.candidates_refreshed_at >= 0:
                self.data.train_candidates = parts.read_candidate_file(
                    latest / parts.CANDIDATES_FILE)
            self.metrics.truncate_after(self.state.step)
            log.info("resumed from %s (step %d of %d)", latest, self.state.step, self.total_steps)
        else:
            self.state = ckpt.TrainState(sampler_seed=cfg.run.seed, world_size=world,
                                         total_steps=self.total_steps, group_names=names)
            self.metrics.reset()
        self.state.total_steps = self.total_steps
        self.saved_at = self.state.step if latest is not None else -1
        if self.main:
            log.info("%d training questions, %d process(es), %d micro-batches of %d per epoch per "
                     "process, %d optimizer steps (x%d accumulation)", len(self.data.train), world,
                     self.per_epoch, cfg.train.batch_size, self.total_steps, cfg.train.grad_accum)
        acc.init_trackers("jmlr", config=flat_config(cfg))
        self.model.train()
        if not cfg.jmlr.train_retriever:
            self._unwrapped().retriever.eval()      # frozen: the RAG baseline scores without dropout
        if not cfg.jmlr.train_generator:
            self._unwrapped().generator.eval()

    # ------------------------------------------------------------------ 2. train

    def next_batch(self) -> list:
        """The next micro-batch of this rank's questions; advances the data position."""
        st = self.state
        if st.batch_index >= self.per_epoch:
            st.epoch, st.batch_index = st.epoch + 1, 0
        order = epoch_batches(len(self.data.train), self.cfg.train.batch_size, st.sampler_seed,
                              st.epoch, self.accelerator.process_index, self.accelerator.num_processes)
        st.batch_index += 1
        return [self.data.train[i] for i in order[st.batch_index - 1]]

    def train_step(self) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
        """One optimizer step over ``grad_accum`` micro-batches (gradients sync on the last).

        Returns the sums over micro-batches and ranks of [loss, gen_loss, rank_loss, pairs
        ordered right, pairs, tokens, gold pairs the LLM orders right, gold pairs the
        retriever orders right, gold pairs], the gradient norms before clipping, and each
        group's lr. Gold pairs (a gold passage against another drawn passage) are counted
        where the questions name gold passages: a diagnostic, never a training signal.
        """
        cfg, acc = self.cfg, self.accelerator
        sums = torch.zeros(9, dtype=torch.float64)
        grad_norms: dict[str, float] = {}
        for _ in range(cfg.train.grad_accum):
            questions = self.next_batch()
            with acc.accumulate(self.model):
                out = self.model(questions, self.data.candidate_texts(questions), self.sampler)
                acc.backward(out.loss)
                if acc.sync_gradients and cfg.train.max_grad_norm > 0:
                    grad_norms = self.clip_gradients()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            gold = self.data.drawn_gold(questions, out.sampled)
            llm_right, gold_pairs = gold_pair_agreement(out.utilities, gold, lower_is_better=True)
            drawn_scores = out.scores.gather(1, out.sampled.to(out.scores.device))
            retriever_right, _ = gold_pair_agreement(drawn_scores, gold, lower_is_better=False)
            sums += torch.tensor([float(out.loss.detach()), float(out.gen_loss), float(out.rank_loss),
                                  out.rank_accuracy * out.n_pairs, out.n_pairs, out.n_tokens,
                                  llm_right, retriever_right, gold_pairs], dtype=torch.float64)
        lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}   # the lrs just used
        self.scheduler.step()
        self.state.step += 1
        totals = acc.reduce(sums.to(acc.device), reduction="sum").cpu()
        return totals, grad_norms, lrs

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
        for name in ("generator", "retriever"):
            params = [p for p in getattr(self._unwrapped(), name).parameters() if p.grad is not None]
            if params:
                norms[name] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        norms["total"] = sum(n * n for n in norms.values()) ** 0.5
        return norms

    def log_row(self, totals: torch.Tensor, grad_norms: dict[str, float], lrs: dict[str, float],
                tokens_per_s: float) -> dict[str, Any]:
        """The metrics.jsonl row of this step: means over micro-batches and ranks."""
        st = self.state
        n = self.cfg.train.grad_accum * self.accelerator.num_processes
        gold_pairs = int(totals[8])
        return {"step": st.step, "epoch": round(st.epoch + st.batch_index / self.per_epoch, 4),
                "loss": float(totals[0]) / n, "gen_loss": float(totals[1]) / n,
                "rank_loss": float(totals[2]) / n,
                "rank_accuracy": float(totals[3] / totals[4]) if totals[4] else 0.0,
                "n_pairs": int(totals[4]),
                "gold_pairs": gold_pairs,
                "llm_gold_accuracy": float(totals[6]) / gold_pairs if gold_pairs else None,
                "retriever_gold_accuracy": float(totals[7]) / gold_pairs if gold_pairs else None,
                "grad_norm": grad_norms.get("total"),
                **{f"grad_norm_{name}": v for name, v in grad_norms.items() if name != "total"},
                **{f"lr_{name}": lr for name, lr in lrs.items()},
                "tokens_per_s": round(tokens_per_s, 2),
                "flops_per_s_est": 6.0 * self.n_generator_params * tokens_per_s,
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
                totals, grad_norms, lrs = self.train_step()
                step_seconds += time.time() - step_started
                tokens_since_log += int(totals[5])
                st.tokens_seen += int(totals[5])
                st.elapsed_s = elapsed_before + time.time() - started
                progress.update(1)

                self.maybe_refresh_candidates()
                if st.step % cfg.train.log_every == 0 or st.step == self.total_steps:
                    row = self.log_row(totals, grad_norms, lrs, tokens_since_log / max(step_seconds, 1e-9))
                    self.metrics.write(row)
                    self.last_row = row
                    progress.set_postfix(loss=f"{row['loss']:.4f}", rank=f"{row['rank_loss']:.4f}",
                                         acc=f"{row['rank_accuracy']:.2f}",
                                         tok_s=f"{row['tokens_per_s']:.0f}")
                    step_seconds, tokens_since_log = 0.0, 0
                before_end = st.step < self.total_steps
                if cfg.train.eval_every > 0 and st.step % cfg.train.eval_every == 0 and before_end:
                    self.evaluate_dev()
                if stop.requested:
                    acc.set_trigger()
                if acc.check_trigger():              # any rank signalled: all stop together
                    st.interrupted = True
                    self.save_checkpoint()
                    log.warning("stopped at step %d; continue with `jmlr train --resume`", st.step)
                    break
                if cfg.train.save_every > 0 and st.step % cfg.train.save_every == 0 and before_end:
                    self.save_checkpoint()
        progress.close()

    # ------------------------------------------------------------------ candidates, eval

    def _unwrapped(self) -> parts.JointModel:
        return self.accelerator.unwrap_model(self.model)

    def maybe_refresh_candidates(self) -> None:
        """Every ``candidates.refresh_every`` steps, re-search the index with the current query
        encoder (after re-indexing every ``candidates.reindex_every`` steps)."""
        cand, step = self.cfg.candidates, self.state.step
        reindex = cand.reindex_every > 0 and step % cand.reindex_every == 0
        refresh = reindex or (cand.refresh_every > 0 and step % cand.refresh_every == 0)
        if not refresh or step >= self.total_steps:
            return
        new = None
        if self.main:
            retriever = self._unwrapped().retriever
            with torch.no_grad(), eval_mode(retriever):
                if reindex:
                    self.state.index_dir = parts.reindex(self.cfg, retriever, self.run_dir)
                new = parts.refresh(self.cfg, retriever, self.data.train, self.state.index_dir)
        self.data.set_train_candidates(parts.broadcast(new))
        self.state.candidates_refreshed_at = step
        self.state.index_dir = parts.broadcast(self.state.index_dir if self.main else None)

    def evaluate_dev(self) -> dict[str, Any]:
        """Dev retrieval metrics (recall@1/7, MRR of gold passages) with the current scorer
        re-ranking the mined dev candidates; every rank scores a share."""
        if not self.data.dev:
            return {}
        acc = self.accelerator
        bs = max(1, self.cfg.eval.batch_size)
        mine = self.data.dev[acc.process_index::acc.num_processes]
        per_rank = -(-len(self.data.dev) // acc.num_processes)
        scored: list[tuple[str, list[str], list[float]]] = []
        with torch.no_grad(), eval_mode(self.model):
            for start in range(0, per_rank, bs):      # same number of forwards on every rank
                chunk = mine[start:start + bs] or self.data.dev[:1]
                real = mine[start:start + bs]
                ids, texts = self.data.dev_rows(chunk)
                scores = self.model(queries=[q.retrieval_query for q in chunk], docs=texts)
                for q, pids, row in zip(real, ids, scores.float().cpu().tolist(), strict=False):
                    scored.append((q.id, pids, row[:len(pids)]))
        metrics = parts.dev_metrics(self.data.dev, parts.gather(scored))
        self.state.last_dev_step = self.state.step
        row = {"step": self.state.step, "split": "dev", **metrics}
        self.metrics.write(row)
        self.final_dev = row
        return row

    # ------------------------------------------------------------------ 3. save, export

    def save_checkpoint(self) -> Path:
        unwrapped = self._unwrapped()
        exporters = {}      # a frozen model is not copied into every checkpoint
        if self.cfg.jmlr.train_generator:
            exporters["generator"] = lambda path: parts.save_generator(unwrapped.generator,
                                                                       self.tokenizer, path)
        if self.cfg.jmlr.train_retriever:
            exporters["retriever"] = lambda path: unwrapped.retriever.save(path)
        if self.state.candidates_refreshed_at >= 0:
            exporters[parts.CANDIDATES_FILE] = lambda path: parts.write_candidate_file(
                path, self.data.train_candidates)
        self.saved_at = self.state.step
        return ckpt.save_checkpoint(self.accelerator, self.run_dir, self.state, model=self.model,
                                    optimizer=self.optimizer, scheduler=self.scheduler,
                                    sampler=self.sampler, exporters=exporters)

    def finish(self) -> dict[str, Any]:
        acc, st = self.accelerator, self.state
        if not st.interrupted:
            if self.data.dev and st.last_dev_step != st.step and self.cfg.train.eval_every >= 0:
                self.evaluate_dev()
            if self.saved_at != st.step:
                self.save_checkpoint()
        checksums = parts.gather([parts.checksums(self._unwrapped(), acc)])
        if not st.interrupted and self.main:
            unwrapped = self._unwrapped()
            parts.export_final(self.run_dir / "final", unwrapped.generator, unwrapped.retriever,
                                 self.tokenizer, merge=self.cfg.train.merge_on_export)
        weights = [(c["generator"], c["retriever"]) for c in checksums]
        in_sync = all(w == weights[0] for w in weights) if weights[0][0] else None
        for c in checksums if self.main else []:
            log.info("rank %d parameter checksums: generator %s retriever %s",
                     c["rank"], c["generator"], c["retriever"])
        summary = {
            "steps": st.step, "total_steps": self.total_steps, "interrupted": st.interrupted,
            "world_size": acc.num_processes, "mixed_precision": str(acc.mixed_precision),
            "train_time_s": round(st.elapsed_s, 3),
            "tokens_seen": st.tokens_seen,
            "tokens_per_s": round(st.tokens_seen / max(st.elapsed_s, 1e-9), 2),
            "flops_per_s_est": 6.0 * self.n_generator_params * st.tokens_seen / max(st.elapsed_s, 1e-9),
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
    recipe = TrainRecipe(cfg, resume)
    recipe.setup()
    recipe.train()
    return recipe.finish()

