"""The JMLR step with the loop structure of the authors' training code, for comparison.

Same math as :func:`jmlr.training.objective.joint_step`, same models, same prompt encoder,
but organised as the authors' code organises it (docs/METHOD.md, "Where this implementation differs"):

- batch size 1: one question per step;
- the utility of each drawn passage comes from its own no-grad forward, ONE AT A TIME in a
  Python loop, with the generator left in TRAIN mode (LoRA dropout active where configured)
  and the FULL logits ``[T, V]`` over the vocabulary, turned into a loss by the model's own
  ``labels=`` path (what a Hugging Face causal LM computes when given labels);
- the rank loss is a Python double loop over pairs;
- the generator loss is one forward with full logits and ``labels=``.

Two of the authors' bugs are NOT reproduced, so that both implementations compute the same
value and the comparison is about cost alone: the pair count starts at 0 (theirs started at
1, dividing by pairs + 1) and the min-max score normalisation guards the all-equal case (the
sampling itself is shared: the benchmark passes the passages that our step drew).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jmlr.training.objective import EncodeFn, ScoreFn, sample_passages

if TYPE_CHECKING:
    from jmlr.config import JMLRConfig
    from jmlr.data.schema import MCQ

IGNORE_INDEX = -100           # what Hugging Face losses skip

PhaseFn = Callable[[str], Any]
"""``phase(name)`` → a context manager timing one region (``benchmarks.common.PhaseTimer``)."""


@dataclass
class ReferenceStepOutput:
    loss: Tensor            # gen_loss + λ·rank_loss, to backward
    gen_loss: Tensor        # detached
    rank_loss: Tensor       # detached
    n_pairs: int
    n_tokens: int           # tokens through the generator (utilities + generator loss)
    scores: Tensor          # [N] detached
    sampled: Tensor         # [k]
    utilities: Tensor       # [k]
    read: Tensor            # [r]


def _no_phase(name: str) -> nullcontext:
    return nullcontext()


def labels_from_mask(input_ids: Tensor, mask: Tensor) -> Tensor:
    """Hugging Face labels: the token where ``mask`` is set, ``-100`` elsewhere.

    >>> labels_from_mask(torch.tensor([[5, 6, 7]]), torch.tensor([[False, True, True]])).tolist()
    [[-100, 6, 7]]
    """
    return torch.where(mask.bool(), input_ids, torch.full_like(input_ids, IGNORE_INDEX))


def full_logits_loss(model: nn.Module, batch: dict[str, Tensor], mask_key: str) -> Tensor:
    """Mean NLL of the masked tokens of ONE sequence through the model's ``labels=`` path:
    logits at every position over the whole vocabulary, ``[1, T, V]``, then cross-entropy."""
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    labels = labels_from_mask(input_ids, batch[mask_key].to(device) & attention_mask.bool())
    return model(input_ids=input_ids, attention_mask=attention_mask.long(), labels=labels).loss


def reference_utilities(model: nn.Module, encode_fn: EncodeFn, question: MCQ,
                        passages: Sequence[str], mask_key: str = "utility_mask",
                        phase: PhaseFn = _no_phase) -> tuple[Tensor, int]:
    """(ℓ [k] float32, tokens) with one no-grad forward per passage, in the model's current
    mode (the authors' loop leaves it in train mode); then one more with no passage (the
    baseline of the gains, as ours computes it), its loss last: ``[k + 1]``."""
    losses, tokens = [], 0
    for text in [*passages, None]:
        with phase("encode"):
            batch = encode_fn([question], [[text] if text is not None else []])
        with phase("per_passage_losses"), torch.no_grad():
            losses.append(full_logits_loss(model, batch, mask_key).float())
        tokens += int(batch["attention_mask"].sum())
    return torch.stack(losses), tokens


def reference_rank_loss(scores: Tensor, utilities: Tensor,
                        tie_tolerance: float = 1e-6) -> tuple[Tensor, int]:
    """The pairwise rank loss as a Python double loop: ``scores[k]`` (with gradient),
    ``utilities[k]`` → (mean BCE over the pairs used, pairs used). Pairs whose utilities
    differ by at most ``tie_tolerance`` are ties, left out (as ``pairwise_rank_loss``).

    >>> loss, n = reference_rank_loss(torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.5, 0.9, 0.5]))
    >>> n, round(loss.item(), 6)
    (2, 0.813262)
    """
    total = scores.new_zeros((), dtype=torch.float32)
    n_pairs = 0                      # the authors' counter started at 1
    values = utilities.detach().float().cpu().tolist()
    for a in range(len(values)):
        for b in range(a + 1, len(values)):
            gap = values[a] - values[b]
            if abs(gap) <= tie_tolerance:
                continue
            target = torch.tensor(1.0 if gap < 0 else 0.0, device=scores.device)
            margin = (scores[a] - scores[b]).float()
            total = total + F.binary_cross_entropy_with_logits(margin, target)
            n_pairs += 1
    return total / max(n_pairs, 1), n_pairs


def pairwise_tie_tolerance(cfg: JMLRConfig) -> float:
    """The configured pairwise objective's tie tolerance: the reference computes the same
    loss as ours only for the pairwise objective, with the same ties left out."""
    if cfg.objective.name != "pairwise":
        raise ValueError(f"the reference loop implements the pairwise rank loss, not "
                         f"{cfg.objective.name!r}: set jmlr.objective=pairwise")
    params = cfg.objective.params
    return params.tie_tolerance if params is not None else 1e-6


def reference_step(question: MCQ, candidates: Sequence[str], *, score_fn: ScoreFn,
                   model: nn.Module, encode_fn: EncodeFn, cfg: JMLRConfig,
                   sampled: Tensor | None = None, generator: torch.Generator | None = None,
                   phase: PhaseFn = _no_phase) -> ReferenceStepOutput:
    """One question, the authors' way. ``sampled`` ([k] candidate indices) reuses another
    implementation's draw; otherwise the same Gumbel-top-k sampler draws with ``generator``.
    The caller sets the models' train/eval modes, calls ``loss.backward()`` and steps."""
    texts = list(candidates)
    with phase("retriever_scoring"):
        scores = score_fn([question.retrieval_query], [texts])[0]                 # [N]
    if sampled is None:
        sampled = sample_passages(scores[None], cfg.k_sample, cfg.tau, cfg.score_norm, generator)[0]
    sampled = sampled.reshape(-1).cpu()
    with_baseline, util_tokens = reference_utilities(
        model, encode_fn, question, [texts[j] for j in sampled.tolist()], "utility_mask", phase)
    utilities = with_baseline[:-1]
    with phase("rank_loss"):
        rank_loss, n_pairs = reference_rank_loss(scores[sampled.to(scores.device)], utilities,
                                                 pairwise_tie_tolerance(cfg))

    read = torch.sort(scores.detach(), descending=True, stable=True).indices[:cfg.r_read].cpu()
    with phase("encode"):
        gen_batch = encode_fn([question], [[texts[j] for j in read.tolist()]])
    with phase("generator_forward"):
        gen_loss = full_logits_loss(model, gen_batch, "target_mask")
    loss = gen_loss + cfg.lambda_rank * rank_loss.to(gen_loss.device)
    n_tokens = util_tokens + int(gen_batch["attention_mask"].sum())
    return ReferenceStepOutput(loss=loss, gen_loss=gen_loss.detach(), rank_loss=rank_loss.detach(),
                               n_pairs=n_pairs, n_tokens=n_tokens, scores=scores.detach(),
                               sampled=sampled, utilities=utilities, read=read)
