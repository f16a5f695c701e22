"""What a passage is worth to the generator: the utilities that teach the retriever (``jmlr.utility``).

A utility ℓ is one loss-like number per (question, passages) sequence, lower is better,
computed without gradient by the teacher (``jmlr.utility_model``). The rank objective orders the
drawn passages by it; the same number with no passage is the baseline of the gains. Each entry
is a factory ``(cfg, tokenizer) → UtilityFn`` and a ``UtilityFn`` is
``(model, questions[n], passages[n][*]) → Utilities`` (losses ``[n]`` float32, and the
non-padding tokens the forwards read, for the step's throughput).

- ``answer_loss`` (the paper): the generator's mean NLL on the answer's utility span
  (``jmlr.utility_span``) given ``[passage; question]``.
- ``option_contrast``: ``−log`` of the gold option's share of the options, the softmax over
  options of each option text's mean log-probability as the answer given ``[passage;
  question]``. A passage earns utility only by making the right option more likely *than the
  other options*. Why: under ``answer_loss`` a passage that merely contains the answer's generic
  words ("autosomal dominant", "syndrome") lowers the loss of every option that has them, so
  unrelated passages look helpful and the retriever learns to fetch them. Measured on 160
  training questions of a demo-like task (base SmolLM2, mined top-10): the gold passage was the
  best of the ten for 88% of questions by ``answer_loss`` and 100% by ``option_contrast``, and
  other passages that lowered the utility by at least 0.1 nats fell from 4.2 to 1.8 per question
  (docs/METHOD.md, "Which model teaches the retriever").

Adding one: a factory returning a ``UtilityFn``, registered under its name::

    @UTILITIES.register("letter_share")
    def letter_share(cfg, tokenizer):
        def utilities(model, questions, passages):
            ...
            return Utilities(losses, tokens)
        return utilities
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from jmlr.batching import inverse_order, length_buckets
from jmlr.registry import UTILITIES
from jmlr.training.token_losses import eval_mode, passage_utilities

if TYPE_CHECKING:
    from jmlr.config import Config
    from jmlr.data.schema import MCQ



class Utilities(NamedTuple):
    losses: Tensor      # [n] float32, no gradient, lower is better
    tokens: int         # non-padding tokens the forwards read


UtilityFn = Callable[[nn.Module, Sequence["MCQ"], Sequence[Sequence[str]]], Utilities]
"""(generator, questions[n], passages[n][*]) -> utilities ℓ[n] and the tokens read."""


def gold_share_loss(option_scores: Sequence[Sequence[float]], gold: Sequence[int]) -> Tensor:
    """``−log softmax(scores)[gold]`` per row: how far the gold option is from taking all the
    probability among the options. Rows may have different numbers of options.

    ``option_scores[n][options]`` (higher is better), ``gold[n]`` → ``[n]`` float32.

    >>> gold_share_loss([[0.0, 0.0], [2.0, 0.0, 0.0]], [0, 0]).round(decimals=4)
    tensor([0.6931, 0.2395])
    """
    return torch.stack([-torch.log_softmax(torch.tensor(row, dtype=torch.float32), 0)[g]
                        for row, g in zip(option_scores, gold, strict=True)])


def _causal_lm(model: nn.Module) -> nn.Module:
    """The causal LM inside a TargetLogits or DDP wrapper (its forward takes a KV cache)."""
    inner: Any = model
    for _ in range(3):
        if type(inner).__name__ == "FullyShardedDataParallel":
            raise RuntimeError("jmlr.utility=option_contrast scores options with the whole "
                               "generator in one process; under FSDP use jmlr.utility=answer_loss")
        wrapped = getattr(inner, "module", None) or getattr(inner, "lm", None)
        if wrapped is None:
            break
        inner = wrapped
    return inner


@UTILITIES.register("answer_loss")
def answer_loss(cfg: Config, tokenizer: Any) -> UtilityFn:
    """The paper's utility: mean NLL of the utility span given the passages and question."""
    from jmlr.training.components import make_encode_fn

    encode = make_encode_fn(cfg, tokenizer, for_utility=True)
    max_tokens = cfg.jmlr.utility_tokens_per_forward or None

    def utilities(model: nn.Module, questions: Sequence[MCQ],
                  passages: Sequence[Sequence[str]]) -> Utilities:
        batch = encode(list(questions), [list(p) for p in passages])
        return Utilities(passage_utilities(model, batch, "utility_mask", max_tokens).float(),
                         int(batch["attention_mask"].sum()))

    return utilities


@UTILITIES.register("option_contrast")
def option_contrast(cfg: Config, tokenizer: Any) -> UtilityFn:
    """``−log`` share of the gold option among the options' text likelihoods (module docstring).

    The prompts are the evaluation's option-text prompts (``evaluation.mcq.build_item``: the
    training template, cut as training cuts it); each prompt goes through the model once and
    its KV cache serves every option, so a utility costs about one forward of its sequence.
    """
    from jmlr.evaluation.mcq import build_item
    from jmlr.evaluation.scoring import score_options

    max_length, target = cfg.generator.max_length, cfg.jmlr.target
    max_tokens = cfg.jmlr.utility_tokens_per_forward or None

    def utilities(model: nn.Module, questions: Sequence[MCQ],
                  passages: Sequence[Sequence[str]]) -> Utilities:
        lm = _causal_lm(model)
        items = [build_item(tokenizer, q, list(p), max_length, target)
                 for q, p in zip(questions, passages, strict=True)]
        gold = [list(q.options).index(q.answer) for q in questions]
        scores: list[list[float]] = []
        order: list[int] = []
        with eval_mode(lm):
            for rows in length_buckets([len(it.prompt_ids) for it in items], max_tokens):
                found = score_options(lm, [items[i] for i in rows], tokenizer.pad_token_id,
                                      letter=False, option_text=True)
                scores.extend(found.option_text)
                order.extend(rows)
        back = inverse_order(order)
        tokens = sum(len(it.prompt_ids) + sum(map(len, it.continuation_ids)) for it in items)
        return Utilities(gold_share_loss([scores[i] for i in back], gold), tokens)

    return utilities


def utility_fn(cfg: Config, tokenizer: Any) -> UtilityFn:
    """The configured utility (``jmlr.utility``) for this tokenizer."""
    return UTILITIES.get(cfg.jmlr.utility)(cfg, tokenizer)
