"""Answering multiple-choice questions with a causal LM, at the level of token ids.

Three ways to answer, each batched over questions:

- **letter**: the log-probability of each option's letter token at the prompt's last
  position (one forward per batch, only the last position projected onto the vocabulary);
- **option_text**: the per-token mean log-probability of each option's text as a
  continuation of the prompt. The prompts go through the model once; their key/value cache
  is then reused for every option, so a prompt of thousands of tokens is not re-encoded
  once per option;
- **generate**: greedy decoding.

Prompts are left-padded with explicit position ids, so a padded row computes what the
same row computes alone. Nothing here knows about questions or templates: ``mcq.py`` turns
questions into :class:`ScoringItem` token ids with the training template.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ScoringItem:
    """Token ids for one question.

    ``prompt_ids`` is the prompt exactly as training encodes it, up to the first target
    token; ``letter_ids[k]`` the first token that tells option k's target apart from the
    others, and ``letter_prefix`` the target tokens that every option shares before it
    (usually none); ``continuation_ids[k]`` option k's text as it continues the prompt.
    """

    prompt_ids: list[int]
    letter_ids: list[int]
    continuation_ids: list[list[int]]
    letter_prefix: list[int] = field(default_factory=list)


@dataclass
class OptionScores:
    """Per question, one score per option (same order as the options)."""

    letter: list[list[float]]
    option_text: list[list[float]]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Left-pad token lists: ``(input_ids, attention_mask, position_ids)``, each [B, T].

    Position ids count real tokens only, so padding does not shift a row's positions.

    >>> ids, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0)
    >>> ids.tolist(), mask.tolist(), pos.tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]], [[0, 1, 2], [0, 0, 0]])
    """
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("left_pad needs at least one sequence and no empty sequence")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: ``(ids [B, T], mask [B, T])``; an empty list becomes one pad.

    >>> ids, mask = right_pad([[5, 6], []], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [0, 0]], [[1, 1], [0, 0]])
    """
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, : len(seq)] = 1
    return ids, mask


def continuation_mean_logprob(first_logprobs: torch.Tensor, cont_logprobs: torch.Tensor,
                              cont_ids: torch.Tensor, cont_mask: torch.Tensor) -> torch.Tensor:
    """Mean log-probability per token of each row's continuation.

    ``first_logprobs`` [B, V]: the prompt's last-position log-probs (they predict the first
    continuation token); ``cont_logprobs`` [B, L, V]: log-probs at the continuation
    positions (position j predicts token j + 1); ``cont_ids``, ``cont_mask`` [B, L].
    Returns [B]; a row with an empty continuation gets -inf.

    >>> first = torch.log(torch.tensor([[0.5, 0.5]]))
    >>> cont = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5]]]))
    >>> out = continuation_mean_logprob(first, cont, torch.tensor([[0, 1]]), torch.tensor([[1, 1]]))
    >>> round(out.item(), 4) == round((torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.75))).item() / 2, 4)
    True
    """
    predictors = torch.cat([first_logprobs[:, None, :], cont_logprobs[:, :-1, :]], dim=1)  # [B, L, V]
    token_lp = predictors.gather(-1, cont_ids[..., None]).squeeze(-1)  # [B, L]
    weights = cont_mask.to(token_lp.dtype)
    counts = weights.sum(-1)
    total = (token_lp * weights).sum(-1)
    return torch.where(counts > 0, total / counts.clamp(min=1), torch.full_like(total, float("-inf")))


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _cache_argument(model: torch.nn.Module) -> str:
    """The name a causal LM's forward takes its KV cache by: transformers renamed
    ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _returned_cache(out: Any) -> Any:
    """The KV cache a forward with ``use_cache=True`` returned, under either name."""
    cache = out.get("cache")       # older transformers return it as past_key_values
    return cache if cache is not None else out.past_key_values


def _continue(model: torch.nn.Module, prompt_kv: list[tuple[torch.Tensor, torch.Tensor]],
              prompt_mask: torch.Tensor, conts: Sequence[Sequence[int]], pad_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run right-padded continuations [B, L] after the cached prompts (a fresh copy of the
    cache, so the prompts' own cache is reused unchanged by the next call).

    Returns (log-probs [B, L, V] float32, continuation ids [B, L], mask [B, L]).
    """
    from transformers import DynamicCache

    device = prompt_mask.device
    cont_ids, cont_mask = (t.to(device) for t in right_pad(conts, pad_id))
    positions = prompt_mask.sum(-1, keepdim=True) + torch.arange(cont_ids.shape[1], device=device)
    out = model(input_ids=cont_ids, attention_mask=torch.cat([prompt_mask, cont_mask], dim=1),
                position_ids=positions, use_cache=True,
                **{_cache_argument(model): DynamicCache(prompt_kv)})
    return out.logits.float().log_softmax(-1), cont_ids, cont_mask


@torch.no_grad()
def score_options(model: torch.nn.Module, items: Sequence[ScoringItem], pad_id: int,
                  letter: bool = True, option_text: bool = True) -> OptionScores:
    """Letter and/or option-text scores for a batch of questions (see module docstring).

    One forward over the left-padded prompts [B, T] (only the last position projected to
    the vocabulary); with ``option_text``, one cached forward per option index k over the
    B continuations of option k [B, L_k] (questions with fewer options get an empty row);
    a shared letter prefix, if any tokenizer makes one, costs one more cached forward.
    """
    device = _model_device(model)
    ids, mask, positions = (t.to(device) for t in left_pad([it.prompt_ids for it in items], pad_id))
    has_prefix = letter and any(it.letter_prefix for it in items)
    use_cache = option_text or has_prefix
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                use_cache=use_cache, logits_to_keep=1)
    last = out.logits[:, -1, :].float().log_softmax(-1)  # [B, V]
    prompt_kv = ([(layer.keys, layer.values) for layer in _returned_cache(out).layers]
                 if use_cache else [])
    del out
    letters: list[list[float]] = []
    if letter:
        before_letter = last
        if has_prefix:
            # The distribution after the shared prefix: the prefix's last position.
            prefix_lp, _, prefix_mask = _continue(model, prompt_kv, mask,
                                                  [it.letter_prefix for it in items], pad_id)
            at = (prefix_mask.sum(-1) - 1).clamp(min=0)  # [B]
            after = prefix_lp[torch.arange(len(items), device=device), at]  # [B, V]
            no_prefix = (prefix_mask.sum(-1) == 0)[:, None]
            before_letter = torch.where(no_prefix, last, after)
        for row, item in enumerate(items):
            letters.append(before_letter[row, torch.tensor(item.letter_ids, device=device)].tolist())
    texts: list[list[float]] = [[] for _ in items]
    if option_text:
        n_options = max(len(it.continuation_ids) for it in items)
        for k in range(n_options):
            conts = [it.continuation_ids[k] if k < len(it.continuation_ids) else [] for it in items]
            cont_lp, cont_ids, cont_mask = _continue(model, prompt_kv, mask, conts, pad_id)
            means = continuation_mean_logprob(last, cont_lp, cont_ids, cont_mask)
            for row, item in enumerate(items):
                if k < len(item.continuation_ids):
                    texts[row].append(means[row].item())
    return OptionScores(letter=letters, option_text=texts)


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], pad_id: int,
                    eos_ids: Sequence[int], max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations of left-padded prompts; each cut before its first EOS token."""
    device = _model_device(model)
    ids, mask, _ = (t.to(device) for t in left_pad(prompts, pad_id))
    output = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                            do_sample=False, num_beams=1, pad_token_id=pad_id,
                            eos_token_id=list(eos_ids) or None, top_p=None, top_k=None,
                            temperature=None)
    new_tokens = output[:, ids.shape[1]:].tolist()
    stops = set(eos_ids)
    results = []
    for row in new_tokens:
        cut = next((i for i, tok in enumerate(row) if tok in stops), len(row))
        results.append(row[:cut])
    return results
