"""The JMLR step, registered as ``joint``: a generator and a retriever trained together.

Per micro-batch of questions, :func:`~jmlr.training.objective.joint_step` (docs/METHOD.md):
the retriever scores the mined candidates, passages are drawn by that score, the
generator's loss with each drawn passage is its utility, the configured rank objective
teaches the retriever that order, and the generator learns the answer from the top-r
passages. ``jmlr.train_retriever=false`` is the frozen-retriever (RAG) baseline and
``jmlr.train_generator=false`` trains the retriever alone, with everything else identical.

Around the steps: candidate refresh (re-search with the current query encoder every
``candidates.refresh_every`` steps, re-index every ``candidates.reindex_every``), dev
retrieval metrics, and the exports ``final/generator`` (peft adapters) and
``final/retriever`` (colbert-ai checkpoint).
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from jmlr.errors import ConfigError
from jmlr.io import write_json
from jmlr.registry import RANK_OBJECTIVES, TRAINING_STEPS
from jmlr.training import components as parts
from jmlr.training.objective import gold_pair_agreement, joint_step
from jmlr.training.replay import UtilityCache, replay_loss, replay_weight
from jmlr.training.stats import mean, total
from jmlr.training.steps.base import StepOutput, TrainingStep
from jmlr.training.teacher import BaseTeacher, teacher_context
from jmlr.training.token_losses import eval_mode
from jmlr.training.utilities import utility_fn

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.data.schema import MCQ
    from jmlr.training.loop import TrainRecipe

log = logging.getLogger(__name__)

READING_QUESTIONS = 32      # dev questions of the reading-gain diagnostic
REPLAY_FILE = "utility_cache.json"      # a checkpoint's cached utilities, per rank


@TRAINING_STEPS.register("joint")
class JointStep(TrainingStep):
    """JMLR: see the module docstring."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        if not (cfg.jmlr.train_generator or cfg.jmlr.train_retriever):
            raise ConfigError("jmlr.train_generator and jmlr.train_retriever are both false: "
                              "nothing to train")
        self.data: parts.TrainingData | None = None
        self.tokenizer: Any = None
        # The teacher's utilities of the questions seen so far, replayed to the retriever
        # (jmlr.replay_questions; jmlr/training/replay.py).
        self.cache = UtilityCache()

    # ------------------------------------------------------------ set-up

    @classmethod
    def before_run(cls, cfg: Config, resume: bool) -> Config:
        """With ``contrastive.before_joint_steps`` or ``distill.before_joint_steps`` > 0: the
        retriever first warms up on synthetic rows, or distils the base teacher's utilities, or
        both in that order (jmlr/training/before_joint.py)."""
        from jmlr.training.before_joint import before_joint

        return before_joint(cfg)

    def check(self) -> None:
        from jmlr.training.teacher_file import ensure_teacher_file

        parts.check_inputs(self.cfg)
        # Before the run's own models load: the replay's starting file, when
        # jmlr.teacher_questions asks for one that is not there yet (one process only).
        ensure_teacher_file(self.cfg)

    def load_data(self) -> list[MCQ]:
        from jmlr.training.teacher_file import teacher_path

        self.data = parts.load_training_data(self.cfg)
        self.by_id = {q.id: q for q in self.data.train}
        path = teacher_path(self.cfg)
        if path and self.cfg.jmlr.train_retriever:
            self.prefill(path)
        return self.data.train

    def prefill(self, path: str) -> None:
        """Start the replay cache from a file of the base teacher's utilities (``jmlr utilities``)."""
        from jmlr.training.teacher_file import load_teacher_rows

        assert self.data is not None
        rows = load_teacher_rows(path, self.cfg, self.by_id, self.data.passages,
                                 self.data.corpus_fingerprint)
        for row in rows:
            self.cache.add(row["question_id"], row["passage_ids"], row["utilities"], row["baseline"])
        log.info("replay starts from the teacher's utilities of %d questions (%s)", len(rows), path)

    def build_models(self) -> dict[str, nn.Module]:
        generator, self.tokenizer = parts.load_generator_for_training(self.cfg)
        retriever = parts.load_retriever_for_training(self.cfg)
        self.encode = parts.make_encode_fn(self.cfg, self.tokenizer)
        self.utility = utility_fn(self.cfg, self.tokenizer)
        # The generator as it was before training: the teacher when jmlr.utility_model=base,
        # and the reference of the dev reading-gain diagnostic in any case.
        self.base = None
        if self.cfg.jmlr.train_generator and self.cfg.generator.lora_r > 0:
            self.base = BaseTeacher(generator)
        self.teacher = self.base if self.cfg.jmlr.utility_model == "base" else None
        return {"generator": generator, "retriever": retriever}

    def export_copies(self) -> dict[str, nn.Module]:
        generator, _ = parts.load_generator_for_training(self.cfg)
        return {"generator": generator, "retriever": parts.load_retriever_for_training(self.cfg)}

    def learning_rates(self) -> dict[str, float]:
        train, jmlr = self.cfg.train, self.cfg.jmlr
        rates = {}
        if jmlr.train_generator:
            rates["generator"] = train.generator_lr
        if jmlr.train_retriever:
            rates["retriever"] = train.retriever_lr
        return rates

    def flops_params(self, models: Mapping[str, nn.Module]) -> int:
        return sum(p.numel() for p in models["generator"].parameters())

    # ------------------------------------------------------------ one micro-batch

    def compute(self, models: Mapping[str, nn.Module], questions: list[MCQ],
                sampler: torch.Generator) -> StepOutput:
        assert self.data is not None
        jmlr = self.cfg.jmlr
        replaying = jmlr.replay_questions > 0 and jmlr.train_retriever
        replayed = self.cache.draw(jmlr.replay_questions, sampler,
                                   exclude={q.id for q in questions}) if replaying else []
        batch_weight, replay_share = replay_weight(len(questions), len(replayed))
        out = joint_step(questions, self.data.candidate_texts(questions),
                         score_fn=models["retriever"].score, model=models["generator"],
                         encode_fn=self.encode, cfg=jmlr, generator=sampler,
                         utility_fn=self.utility,
                         teacher=self.teacher,
                         query_template=self.cfg.retriever.query_template,
                         max_tokens_per_forward=jmlr.utility_tokens_per_forward or None,
                         rank_weight=batch_weight)
        loss, replay_stats = out.loss, {}
        if replaying:
            self.remember(questions, out.sampled, out.utilities, out.baseline)
            replay, replay_stats = self.replay(models["retriever"], replayed)
            if replay is not None:
                loss = loss + jmlr.lambda_rank * replay_share * replay.to(loss.device)
        # Gold pairs (a gold passage against another drawn one), where the questions name
        # gold passages: a diagnostic of the teacher and the retriever, never a training signal.
        stats = {"loss": mean(float(loss.detach())), "gen_loss": mean(float(out.gen_loss)),
                 "rank_loss": mean(float(out.rank_loss)), **out.rank_stats, **replay_stats,
                 "tokens": total(out.n_tokens)}
        if not bool(out.utilities.isnan().any()):
            gold = self.data.drawn_gold(questions, out.sampled)
            llm_right, gold_pairs = gold_pair_agreement(out.utilities, gold, lower_is_better=True)
            drawn_scores = out.scores.gather(1, out.sampled.to(out.scores.device))
            retriever_right, _ = gold_pair_agreement(drawn_scores, gold, lower_is_better=False)
            stats.update(gold_pairs=total(gold_pairs),
                         llm_gold_accuracy=mean(llm_right, gold_pairs),
                         retriever_gold_accuracy=mean(retriever_right, gold_pairs))
        return StepOutput(loss, stats)

    def remember(self, questions: list[MCQ], sampled: Tensor, utilities: Tensor,
                 baseline: Tensor) -> None:
        """Cache this batch's utilities by question and passage id (for later replay)."""
        assert self.data is not None
        for q, drawn, values, none in zip(questions, sampled.tolist(), utilities.tolist(),
                                          baseline.tolist(), strict=True):
            ids = self.data.train_candidates[q.id].passage_ids
            self.cache.add(q.id, [ids[j] for j in drawn], values, none)

    def replay(self, retriever: nn.Module, question_ids: list[str]) -> tuple[Tensor | None, dict]:
        """The configured rank objective over cached questions, scored by the retriever now."""
        assert self.data is not None
        data, template = self.data, self.cfg.retriever.query_template
        entry, params = RANK_OBJECTIVES.get(self.cfg.jmlr.objective.name), self.cfg.jmlr.objective.params

        def score(qids: list[str], passage_ids: list[list[str]]) -> Tensor:
            return retriever.score([self.by_id[q].query(template) for q in qids],
                                   [[data.passages[p].full_text for p in row] for row in passage_ids])

        return replay_loss(self.cache, question_ids, score,
                           lambda s, u, b: entry(s, u, params, b))

    # ------------------------------------------------------------ around the steps

    def after_step(self, loop: TrainRecipe) -> None:
        """Every ``candidates.refresh_every`` steps, re-search the index with the current query
        encoder (after re-indexing every ``candidates.reindex_every`` steps)."""
        assert self.data is not None
        cand, step, st = self.cfg.candidates, loop.state.step, loop.state
        reindex = cand.reindex_every > 0 and step % cand.reindex_every == 0
        refresh = reindex or (cand.refresh_every > 0 and step % cand.refresh_every == 0)
        if not refresh or step >= loop.total_steps:
            return
        new = None
        models = loop.export_models()           # collective when the weights are sharded
        if loop.main:
            retriever = models["retriever"]
            with torch.no_grad(), eval_mode(retriever):
                if reindex:
                    st.index_dir = parts.reindex(self.cfg, retriever, loop.run_dir)
                new = parts.refresh(self.cfg, retriever, self.data.train, st.index_dir)
        self.data.set_train_candidates(parts.broadcast(new))
        st.candidates_refreshed_at = step
        st.index_dir = parts.broadcast(st.index_dir if loop.main else None)

    def evaluate(self, loop: TrainRecipe) -> dict[str, Any]:
        """Dev retrieval metrics (recall@1/7, MRR of gold passages) with the current scorer
        re-ranking the mined dev candidates, and the generator's reading gain."""
        assert self.data is not None
        if not self.data.dev:
            return {}
        return {**parts.dev_retrieval(loop, self.data, self.cfg), **self.reading_gain(loop)}

    def reading_gain(self, loop: TrainRecipe) -> dict[str, Any]:
        """How much the gold passage lowers the generator's loss on the utility span against
        no passage, median over up to ``READING_QUESTIONS`` dev questions: for the generator
        as it is now (``reading_gain``) and as it was before training
        (``reading_gain_base``). A generator that stops reading shows it here first."""
        assert self.data is not None
        acc, data = loop.accelerator, self.data
        chosen = [q for q in data.dev if q.gold_passage_ids[0] in data.passages][:READING_QUESTIONS]
        if not chosen:
            return {}
        mine = chosen[acc.process_index::acc.num_processes]
        per_rank = -(-len(chosen) // acc.num_processes)
        bs = max(1, self.cfg.eval.batch_size)

        def gains(models: Mapping[str, nn.Module], questions: list[MCQ], teacher: Any) -> Tensor:
            gold = [[data.passages[q.gold_passage_ids[0]].full_text] for q in questions]
            with teacher_context(teacher):
                losses = self.utility(models["generator"], [*questions, *questions],
                                      [[] for _ in questions] + gold).losses
            return losses[:len(questions)] - losses[len(questions):]       # ℓ_none − ℓ_gold

        found: dict[str, list[float]] = {"reading_gain": [], "reading_gain_base": []}
        references = {"reading_gain": None, "reading_gain_base": self.base}
        with torch.no_grad(), eval_mode(loop.model):
            for start in range(0, per_rank, bs):      # same number of forwards on every rank
                chunk, real = mine[start:start + bs] or chosen[:1], mine[start:start + bs]
                for name, teacher in references.items():
                    if name == "reading_gain_base" and teacher is None:
                        continue
                    values = loop.model(gains, chunk, teacher).float().cpu().tolist()
                    found[name].extend(values[:len(real)])
        return {name: round(statistics.median(values), 4)
                for name, values in ((n, parts.gather(v)) for n, v in found.items()) if values}

    def restore(self, checkpoint: Path, loop: TrainRecipe) -> None:
        assert self.data is not None
        if loop.state.candidates_refreshed_at >= 0:
            self.data.train_candidates = parts.read_candidate_file(checkpoint / parts.CANDIDATES_FILE)
        if (checkpoint / REPLAY_FILE).is_file():
            per_rank = json.loads((checkpoint / REPLAY_FILE).read_text())
            self.cache.load_state_dict(per_rank.get(str(loop.accelerator.process_index), {}))

    # ------------------------------------------------------------ saving

    def save_model(self, name: str, model: nn.Module, path: Path) -> None:
        if name == "generator":
            parts.save_generator(model, self.tokenizer, path, cfg=self.cfg)
        else:
            model.save(path)

    def exporters(self, models: Mapping[str, nn.Module], loop: TrainRecipe
                  ) -> dict[str, Callable[[Path], None]]:
        found = super().exporters(models, loop)     # a frozen model is not copied into each
        if loop.state.candidates_refreshed_at >= 0:
            assert self.data is not None
            data = self.data
            found[parts.CANDIDATES_FILE] = lambda path: parts.write_candidate_file(
                path, data.train_candidates)
        if self.cfg.jmlr.replay_questions > 0:
            # every rank calls exporters: each rank's cache, gathered for the main process
            caches = parts.gather([(loop.accelerator.process_index, self.cache.state_dict())])
            found[REPLAY_FILE] = lambda path: write_json(path, {str(r): c for r, c in caches})
        return found

    def export_final(self, models: Mapping[str, nn.Module], folder: Path) -> None:
        parts.save_generator(models["generator"], self.tokenizer, folder / "generator",
                             merge=self.cfg.train.merge_on_export, cfg=self.cfg)
        models["retriever"].save(folder / "retriever")

