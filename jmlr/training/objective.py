"""The JMLR training step as small functions over scores, losses and models (docs/METHOD.md, steps 2–7).

For B questions with N candidates each:

* retriever scores ``s[B, N]``; ``k`` candidates drawn without replacement from
  ``softmax(norm(s) / tau)`` over all N, or over the top ``sample_pool`` (:func:`sample_passages`);
* the utility ``ℓ[B, k]`` of each drawn passage: the generator's loss on the answer given that
  passage alone and the question, all ``B × k`` sequences in one batched no-grad forward
  (:func:`~jmlr.training.token_losses.passage_utilities`);
* the retriever learns to order the drawn passages as their utilities do, by the configured
  rank objective (``jmlr.training.rank_objectives``: pairwise LLM-rank loss, listwise KL);
* the generator reads the top-r candidates by score (:func:`select_reading_passages`) and
  learns the answer (:func:`~jmlr.training.token_losses.generator_loss`);
* ``L = L_gen + λ · L_rank`` (:func:`joint_step`). Each loss reaches only its own model: the
  utilities carry no gradient and the passages read are chosen by detached scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from jmlr.data.schema import DEFAULT_QUERY_TEMPLATE
from jmlr.registry import RANK_OBJECTIVES
from jmlr.training.stats import Stat, mean
from jmlr.training.teacher import BaseTeacher, teacher_context
from jmlr.training.token_losses import eval_mode, generator_loss, passage_utilities

if TYPE_CHECKING:
    from jmlr.config import JMLRConfig
    from jmlr.data.schema import MCQ
    from jmlr.training.utilities import UtilityFn

log = logging.getLogger(__name__)

ScoreFn = Callable[[list[str], list[list[str]]], Tensor]
"""(queries[B], candidate texts[B][N]) -> scores[B, N]."""
EncodeFn = Callable[[list["MCQ"], list[list[str]]], dict[str, Tensor]]
"""(questions[n], passages to read[n][*], best first) -> batch with input_ids, attention_mask,
target_mask, utility_mask, each [n, T]."""


# --------------------------------------------------------------------------- sampling


def normalize_scores(scores: Tensor, mode: str = "minmax") -> Tensor:
    """Per-row score normalisation before the sampling softmax: ``[B, N] → [B, N]``.

    "minmax" rescales each row to [-1, 1] (the authors' choice); a row whose scores are all
    equal becomes zeros (uniform sampling) instead of dividing by zero. "none" is identity.

    >>> normalize_scores(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    tensor([[-1.,  0.,  1.],
            [ 0.,  0.,  0.]])
    """
    if mode == "none":
        return scores
    if mode != "minmax":
        raise ValueError(f"unknown score normalisation {mode!r} (minmax or none)")
    low = scores.amin(-1, keepdim=True)
    span = scores.amax(-1, keepdim=True) - low
    spread = span > 0
    scaled = 2 * (scores - low) / torch.where(spread, span, torch.ones_like(span)) - 1
    return torch.where(spread, scaled, torch.zeros_like(scores))


def sample_passages(scores: Tensor, k: int, tau: float = 1.0, mode: str = "minmax",
                    generator: torch.Generator | None = None, pool: int = 0) -> Tensor:
    """Draw ``min(k, N)`` distinct candidates per row from ``softmax(norm(s) / tau)``.

    ``scores[B, N] → LongTensor[B, min(k, N)]``, in draw order. Gumbel-top-k: adding Gumbel
    noise to the logits and keeping the k largest is exactly sequential sampling without
    replacement. ``pool`` > 0 draws from each row's top-``pool`` candidates by score only (the
    normalisation spans those); 0 from all N. Deterministic for a given ``generator`` state;
    no gradient.

    >>> sample_passages(torch.tensor([[0.0, 5.0, 1.0]]), k=5, tau=1e-3).sort().values
    tensor([[0, 1, 2]])
    >>> sample_passages(torch.tensor([[0.0, 5.0, 1.0, 3.0]]), k=2, tau=100.0, pool=2).sort().values
    tensor([[1, 3]])
    """
    with torch.no_grad():
        scores = scores.detach().float()
        if 0 < pool < scores.shape[-1]:
            top = scores.topk(pool, dim=-1).indices                               # [B, pool]
            drawn = sample_passages(scores.gather(-1, top), k, tau, mode, generator)
            return top.gather(-1, drawn)
        logits = normalize_scores(scores, mode) / tau
        device = generator.device if generator is not None else logits.device
        exponential = torch.empty(logits.shape, device=device).exponential_(generator=generator)
        gumbel = -exponential.clamp_min(torch.finfo(exponential.dtype).tiny).log()
        keys = logits + gumbel.to(logits.device)
        return keys.topk(min(k, logits.shape[-1]), dim=-1).indices


def select_reading_passages(scores: Tensor | Sequence[Sequence[float]],
                            r: int) -> Tensor | list[list[int]]:
    """Indices of the top-r candidates by score per row, best first (ties: earlier first).

    ``scores[B, N] → LongTensor[B, min(r, N)]``; per-row lists of floats (rows may differ in
    length) give per-row lists of ints.

    >>> select_reading_passages(torch.tensor([[0.1, 0.9, 0.5], [3.0, 1.0, 2.0]]), 2)
    tensor([[1, 2],
            [0, 2]])
    >>> select_reading_passages([[0.2, 0.7], [0.4]], 2)
    [[1, 0], [0]]
    """
    if isinstance(scores, Tensor):
        order = torch.sort(scores.detach(), dim=-1, descending=True, stable=True).indices
        return order[:, :r]
    return [sorted(range(len(row)), key=lambda i, row=row: -row[i])[:r] for row in scores]


# --------------------------------------------------------------------------- diagnostics


def gold_pair_agreement(values: Tensor, gold: Tensor, lower_is_better: bool) -> tuple[int, int]:
    """Pairs (gold passage, other passage) within a row that ``values`` order gold first.

    ``values[B, k]`` (utilities ℓ: lower is better; or retriever scores: higher is better),
    ``gold[B, k]`` bool. Returns ``(ordered_right, pairs)``; ties count as wrong. A
    diagnostic for data with relevance labels: training never sees them.

    >>> gold_pair_agreement(torch.tensor([[0.5, 2.0, 0.1]]), torch.tensor([[True, False, False]]),
    ...                     lower_is_better=True)
    (1, 2)
    """
    values = values.detach().float().cpu()
    gold = gold.bool().cpu()
    diff = values.unsqueeze(2) - values.unsqueeze(1)                 # [B, g, o]: v_g - v_o
    pairs = gold.unsqueeze(2) & ~gold.unsqueeze(1)
    right = (diff < 0) if lower_is_better else (diff > 0)
    return int((right & pairs).sum()), int(pairs.sum())


# --------------------------------------------------------------------------- the joint step


def prompt_encoder(tokenizer: Any, cfg: JMLRConfig, max_length: int,
                   for_utility: bool = False) -> EncodeFn:
    """The :data:`EncodeFn` of the project's one prompt template (``jmlr.generation.prompts``):
    target and utility span from ``cfg``, right padded with the tokenizer's pad id.
    ``for_utility``: the per-passage utility sequences (``encode_utility_example``)."""
    from jmlr.generation.prompts import collate, encode_example, encode_utility_example

    def encode(questions: list[MCQ], passages: list[list[str]]) -> dict[str, Tensor]:
        if for_utility:
            examples = [encode_utility_example(tokenizer, mcq, read, cfg.target, cfg.utility_span,
                                               max_length)
                        for mcq, read in zip(questions, passages, strict=True)]
        else:
            examples = [encode_example(tokenizer, mcq, read, cfg.target, cfg.utility_span, max_length)
                        for mcq, read in zip(questions, passages, strict=True)]
        return collate(examples, tokenizer.pad_token_id)

    return encode


@dataclass
class JointStepOutput:
    loss: Tensor            # L = L_gen + λ·L_rank over the parts that train; backward this
    gen_loss: Tensor        # detached L_gen
    rank_loss: Tensor       # detached retriever loss of the configured objective
    rank_stats: dict[str, Stat]   # the objective's own diagnostics
    n_tokens: int           # non-padding tokens through the generator (utilities + L_gen)
    scores: Tensor          # [B, N] detached retriever scores
    sampled: Tensor         # [B, k] drawn candidate indices, in draw order
    utilities: Tensor       # [B, k] ℓ of each drawn passage (NaN when not computed)
    baseline: Tensor        # [B] ℓ with no passage (NaN when not computed)
    read: Tensor            # [B, r] candidates the generator read, best first


def _rectangular(candidates: Sequence[Sequence[str]]) -> list[list[str]]:
    """Cut every row to the shortest row's length (candidates are best-first)."""
    width = min((len(row) for row in candidates), default=0)
    if width == 0:
        raise ValueError("every question needs at least one candidate passage")
    if any(len(row) != width for row in candidates):
        log.debug("candidate lists differ in length; using the first %d of each", width)
    return [list(row[:width]) for row in candidates]


def joint_step(questions: Sequence[MCQ], candidates: Sequence[Sequence[str]], *,
               score_fn: ScoreFn, model: nn.Module, encode_fn: EncodeFn, cfg: JMLRConfig,
               generator: torch.Generator | None = None,
               max_tokens_per_forward: int | None = None,
               utility_encode_fn: EncodeFn | None = None,
               teacher: BaseTeacher | None = None,
               query_template: str = DEFAULT_QUERY_TEMPLATE,
               utility_fn: UtilityFn | None = None,
               rank_weight: float = 1.0) -> JointStepOutput:
    """One JMLR step for B questions; ``candidates[b]`` are question b's N passage texts.

    ``cfg.train_retriever = False`` is the frozen-retriever RAG baseline: scores without
    gradient and no rank term in ``loss``, everything else (sampling, utilities, reading)
    identical so that logs compare. ``cfg.train_generator = False`` computes L_gen without
    gradient, in eval mode, and leaves it out of ``loss``. With neither training, ``loss`` has
    no gradient. ``model`` is the generator (a causal LM, peft-wrapped or not, or a
    :class:`~jmlr.training.token_losses.TargetLogits` around one); the caller sets train/eval
    modes of both models. Under DDP/FSDP pass the wrapped modules themselves (the scorer's
    ``forward`` is its ``score``; the generator wrapped as ``TargetLogits`` before wrapping),
    so that every forward goes through the wrapper. ``max_tokens_per_forward`` buckets the
    ``B × k`` utility sequences by length (None: one forward). ``utility_encode_fn`` encodes
    the utility sequences (default ``encode_fn``; see ``prompt_encoder(for_utility=True)``).
    ``teacher``: the utilities come from the base generator (``jmlr.utility_model=base``);
    None: from ``model`` as it is now. ``query_template``: the retriever's query
    (``retriever.query_template``). ``utility_fn``: how a passage's utility is computed
    (``jmlr.utility``, ``training/utilities.py``); None: the answer loss over the utility
    sequences of ``utility_encode_fn``. ``rank_weight`` scales this batch's rank term in
    ``loss`` (the caller adds other rank terms, e.g. replayed questions, with the rest).
    """
    texts = _rectangular(candidates)
    if len(texts) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(texts)} candidate lists")
    batch_size = len(questions)

    queries = [q.query(query_template) for q in questions]
    # All N candidates are scored without gradient (sampling and reading need only values);
    # the rank loss touches only the k drawn ones, so only those are re-scored with gradient:
    # the same loss and gradients at k/N of the retriever's backward cost.
    with torch.no_grad():
        scores = score_fn(queries, texts)                                        # [B, N]
    if scores.shape != (batch_size, len(texts[0])):
        raise ValueError(f"score_fn returned {tuple(scores.shape)}, expected "
                         f"{(batch_size, len(texts[0]))}")

    sampled = sample_passages(scores, cfg.k_sample, cfg.tau, cfg.score_norm, generator,
                              cfg.sample_pool)                                    # [B, k]
    k = sampled.shape[1]
    drawn = [[texts[b][j] for j in sampled[b].tolist()] for b in range(batch_size)]
    utility_tokens = 0
    if cfg.train_retriever or cfg.utilities_when_frozen:
        # k sequences [passage_j ; question] per question, then one with no passage: its loss
        # is the baseline that says how much each passage helps (the gain ℓ_none − ℓ_j).
        utility_questions = [q for q in questions for _ in range(k)] + list(questions)
        utility_passages = [[text] for row in drawn for text in row] + [[] for _ in questions]
        if utility_fn is None:
            utility_batch = (utility_encode_fn or encode_fn)(utility_questions, utility_passages)
            with teacher_context(teacher):
                losses = passage_utilities(model, utility_batch, "utility_mask",
                                           max_tokens_per_forward)
            utility_tokens = int(utility_batch["attention_mask"].sum())
        else:
            with teacher_context(teacher):
                losses, utility_tokens = utility_fn(model, utility_questions, utility_passages)
        losses = losses.float()
        utilities, baseline = losses[:batch_size * k].view(batch_size, k), losses[batch_size * k:]
        if cfg.train_retriever:
            sampled_scores = score_fn(queries, drawn)                            # [B, k]
        else:
            sampled_scores = scores.gather(1, sampled.to(scores.device))         # [B, k]
        ranked = RANK_OBJECTIVES.get(cfg.objective.name)(sampled_scores, utilities,
                                                         cfg.objective.params, baseline)
        best_gain = (baseline.view(-1, 1) - utilities).max(-1).values
        rank_loss = ranked.loss
        rank_stats = {**ranked.stats, "best_gain": mean(float(best_gain.sum()), batch_size)}
    else:   # a frozen retriever whose utilities nobody reads: skip those forwards
        utilities = torch.full((batch_size, k), float("nan"))
        baseline = torch.full((batch_size,), float("nan"))
        rank_loss, rank_stats = scores.new_zeros(()), {}

    read = select_reading_passages(scores, cfg.r_read)                           # [B, r]
    gen_batch = encode_fn(list(questions),
                          [[texts[b][j] for j in read[b].tolist()] for b in range(batch_size)])
    if cfg.train_generator:
        gen_loss = generator_loss(model, gen_batch, "target_mask")
    else:
        with torch.no_grad(), eval_mode(model):
            gen_loss = generator_loss(model, gen_batch, "target_mask")

    terms = []
    if cfg.train_generator:
        terms.append(gen_loss)
    if cfg.train_retriever:
        terms.append(cfg.lambda_rank * rank_weight * rank_loss.to(gen_loss.device))
    loss = sum(terms) if terms else (gen_loss + cfg.lambda_rank * rank_loss.to(gen_loss.device)).detach()
    n_tokens = utility_tokens + int(gen_batch["attention_mask"].sum())
    return JointStepOutput(loss=loss, gen_loss=gen_loss.detach(), rank_loss=rank_loss.detach(),
                           rank_stats=rank_stats,
                           n_tokens=n_tokens, scores=scores.detach(), sampled=sampled,
                           utilities=utilities, baseline=baseline, read=read)
