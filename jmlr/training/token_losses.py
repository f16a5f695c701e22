"""Per-token and per-sequence answer losses of a causal LM, computing logits only where needed.

A causal LM's full output is ``[n, T, V]`` logits, but the JMLR losses need only the positions
that predict a target token (a few answer tokens per sequence). These functions run the
decoder to its final hidden states, gather the hidden states that precede masked tokens and
apply the output head there alone: on a 32k vocabulary that removes almost all of the head's
time and memory.

Sequences are right padded (any padding side works: positions come from the attention mask).
Position ``t`` predicts token ``t + 1``, so a mask bit on token 0 has no prediction and is
ignored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jmlr.batching import inverse_order, length_buckets


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, float | None]:
    """The decoder (tokens → final hidden states), the output head and the logit soft-cap.

    Works for a transformers ``*ForCausalLM`` and for a peft model wrapping one (LoRA layers
    are injected in place, so the returned modules carry the adapters).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or decoder is base or head is None:
        raise TypeError(f"{type(base).__name__} is not a causal LM with a decoder and an output head")
    config = getattr(base, "config", None)
    return decoder, head, getattr(config, "final_logit_softcapping", None)


class TargetLogits(nn.Module):
    """A causal LM whose forward returns logits only at chosen positions.

    ``forward(input_ids[n,T], attention_mask[n,T], predict_at: bool[n,T]) -> logits[M,V]``
    with ``M = predict_at.sum()``, rows in row-major order of ``predict_at``.

    The functions below wrap a plain model in it on the fly. A distributed training loop wraps
    the generator in it *before* DDP/FSDP, so that these forwards go through the wrapper
    (DDP's gradient sync and FSDP's parameter gathering hook the wrapper's forward).
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: Tensor, attention_mask: Tensor, predict_at: Tensor) -> Tensor:
        decoder, head, softcap = causal_lm_parts(self.lm)
        # Positions from the mask, not from the column index, so padding side does not matter.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=False).last_hidden_state
        logits = head(hidden[predict_at])
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits


def _as_target_logits(model: nn.Module) -> nn.Module:
    if isinstance(model, TargetLogits) or isinstance(getattr(model, "module", None), TargetLogits):
        return model
    return TargetLogits(model)


def token_nll(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
              loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """NLL of every masked (and attended) token, in one forward.

    Shapes: ``input_ids``, ``attention_mask``, ``loss_mask`` ``[n, T]`` →
    ``(nll[M] float32, row[M] long)`` where ``row`` says which sequence each token is in.
    """
    if not input_ids.shape == attention_mask.shape == loss_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)}, attention_mask "
                         f"{tuple(attention_mask.shape)} and loss_mask {tuple(loss_mask.shape)} differ")
    targets = loss_mask[:, 1:].bool() & attention_mask[:, 1:].bool()     # [n, T-1]
    predict_at = F.pad(targets, (0, 1), value=False)                      # [n, T]
    logits = _as_target_logits(model)(input_ids, attention_mask, predict_at)  # [M, V]
    labels = input_ids[:, 1:][targets]                                     # [M]
    nll = F.cross_entropy(logits.float(), labels, reduction="none")
    return nll, targets.nonzero()[:, 0]


def sequence_losses(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                    loss_mask: Tensor, max_tokens_per_forward: int | None = None) -> Tensor:
    """Mean token NLL over the masked positions of each sequence: ``[n, T] → [n]`` (float32).

    One batched forward (or, with ``max_tokens_per_forward``, one per length bucket: sequences
    sorted by length and grouped so that padding stays small). Columns that are padding in
    every row of a forward are dropped first. Gradient flows if grad is enabled.
    Raises ``ValueError`` if a sequence has no masked token to score.
    """
    n = input_ids.shape[0]
    if n == 0:
        return torch.zeros(0, device=input_ids.device)
    counts = (loss_mask[:, 1:].bool() & attention_mask[:, 1:].bool()).sum(1)
    if bool((counts == 0).any()):
        empty = (counts == 0).nonzero()[:, 0].tolist()
        raise ValueError(f"sequences {empty} have no tokens in their loss mask")
    parts: list[Tensor] = []
    order: list[int] = []
    for rows in length_buckets(attention_mask.sum(1).tolist(), max_tokens_per_forward):
        index = torch.tensor(rows, device=input_ids.device)
        keep = attention_mask[index].bool().any(0)
        nll, row = token_nll(model, input_ids[index][:, keep], attention_mask[index][:, keep],
                             loss_mask[index][:, keep])
        sums = torch.zeros(len(rows), dtype=nll.dtype, device=nll.device).index_add(0, row, nll)
        parts.append(sums / counts[index].to(nll.device))
        order.extend(rows)
    inverse = torch.tensor(inverse_order(order), dtype=torch.long, device=parts[0].device)
    return torch.cat(parts)[inverse]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode (no dropout); restore each one's own mode after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _on_device(batch: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    device = next(model.parameters()).device
    return {key: value.to(device) for key, value in batch.items() if isinstance(value, Tensor)}


def passage_utilities(model: nn.Module, batch: Mapping[str, Tensor], mask_key: str = "utility_mask",
                      max_tokens_per_forward: int | None = None) -> Tensor:
    """The utility ℓ_j of each sequence (passage_j + question): ``batch[n, T] → [n]``.

    Mean NLL over ``batch[mask_key]``, under ``torch.no_grad()`` with the model in eval mode
    (no dropout); every submodule's previous train/eval mode is restored afterwards.
    """
    batch = _on_device(batch, model)
    with torch.no_grad(), eval_mode(model):
        return sequence_losses(model, batch["input_ids"], batch["attention_mask"],
                               batch[mask_key], max_tokens_per_forward)


def generator_loss(model: nn.Module, batch: Mapping[str, Tensor],
                   mask_key: str = "target_mask") -> Tensor:
    """L_gen: mean NLL over ALL target tokens of the batch (a token-weighted mean, as a causal
    LM's usual loss: a longer target, e.g. with a rationale, weighs more than a bare letter).

    ``batch[n, T] → scalar`` in one forward, with gradient when grad is enabled.
    """
    batch = _on_device(batch, model)
    nll, _ = token_nll(model, batch["input_ids"], batch["attention_mask"], batch[mask_key])
    if nll.numel() == 0:
        raise ValueError(f"the batch has no tokens in '{mask_key}'")
    return nll.mean()
