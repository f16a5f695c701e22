"""S2-Attn: LongLoRA's shifted sparse attention, as a transformers attention implementation.

In training, a sequence of length T is cut into groups of G tokens (G = ratio × T, rounded).
Half of the heads attend causally inside their group; the other half attend causally inside
groups whose boundaries are moved by s = G // 2, so information flows between neighbouring
groups from one layer to the next. Cost per layer is O(T·G) instead of O(T²).

LongLoRA writes the shifted half as "roll the sequence by -s, group, roll back". Grouping the
rolled sequence is the same as grouping the original with boundaries at s, s + G, s + 2G, ...,
except for the group that wraps around, which holds the last G - s tokens *and* the first s.
With a causal mask over rolled order, those first s tokens would see the last ones (a leak of
the future). Here the wrapped group is split into its two true segments, [0, s) and [T-G+s, T),
each causal on its own, so no token ever sees a later one.

When one group covers the whole sequence (G >= T) there is nothing to bridge, no head is
shifted, and the result is ordinary causal attention.

Padding: the mask function registered under the same name hands the 2-D padding mask
(B, T) to the attention function instead of a dense (B, 1, T, T) mask; padded keys are never
attended, and a query with nothing else to attend to (in a group of pads) attends to itself,
so it stays finite (a NaN there would spread into real tokens through the next layer).

Inference: in eval mode (``model.eval()``), with a KV cache, or with any mask that is not the
plain causal-plus-padding one, the call goes to transformers' own sdpa attention with the
mask sdpa would have built, so the same weights serve training and inference.

Registration happens on import of this module: ``attn_implementation="s2attn"``.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask

logger = logging.getLogger(__name__)

NAME = "s2attn"
DEFAULT_GROUP_RATIO = 0.25
_warned_fallback = False


def group_size(length: int, ratio: float) -> int:
    """Tokens per group: ``ratio × length`` rounded half up, at least 1, at most ``length``.

    >>> group_size(16, 0.25), group_size(15, 0.25), group_size(10, 0.25), group_size(7, 1.0)
    (4, 4, 3, 7)
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"group ratio must be in (0, 1], got {ratio}")
    return max(1, min(length, math.floor(ratio * length + 0.5)))


def blockwise_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               key_valid: torch.Tensor | None, block: int,
                               dropout: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """Causal attention inside consecutive blocks of ``block`` tokens, none across blocks.

    query/key/value: [B, h, L, D] with L a multiple of ``block``; key_valid: [B, L] bool
    (False for padding) or None (no padding). Returns [B, h, L, D].
    """
    batch, heads, length, dim = query.shape
    if length == 0:
        return query.new_zeros(batch, heads, 0, value.shape[-1])
    n_blocks = length // block
    if n_blocks * block != length:
        raise ValueError(f"length {length} is not a multiple of the block size {block}")

    def to_blocks(x: torch.Tensor) -> torch.Tensor:  # [B,h,L,d] -> [B*n,h,block,d]
        d = x.shape[-1]
        return x.reshape(batch, heads, n_blocks, block, d).transpose(1, 2).reshape(
            batch * n_blocks, heads, block, d)

    q, k, v = to_blocks(query), to_blocks(key), to_blocks(value)
    if key_valid is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale,
                                             is_causal=True)
    else:
        causal = torch.ones(block, block, dtype=torch.bool, device=query.device).tril()
        valid = key_valid.reshape(batch * n_blocks, 1, 1, block)
        allowed = causal & valid
        # A query with nothing to attend to (a block of pads) keeps itself: no empty rows.
        empty = ~allowed.any(dim=-1, keepdim=True)
        mask = allowed | (torch.eye(block, dtype=torch.bool, device=query.device) & empty)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                             scale=scale)
    return out.reshape(batch, n_blocks, heads, block, -1).transpose(1, 2).reshape(
        batch, heads, length, -1)


def shifted_segments(length: int, group: int) -> list[tuple[int, int, int]]:
    """Spans (start, end, block) that tile [0, length) for the shifted heads.

    ``length`` is a multiple of ``group``; boundaries sit at s, s + G, ... with s = G // 2,
    and the two ends form their own short blocks.

    >>> shifted_segments(16, 4)
    [(0, 2, 2), (2, 14, 4), (14, 16, 2)]
    >>> shifted_segments(15, 5)
    [(0, 2, 2), (2, 12, 5), (12, 15, 3)]
    """
    shift = group // 2
    if shift == 0 or group >= length:
        return [(0, length, group)]
    middle_end = shift + (length // group - 1) * group
    spans = [(0, shift, shift), (shift, middle_end, group), (middle_end, length, length - middle_end)]
    return [span for span in spans if span[1] > span[0]]


def s2_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 key_valid: torch.Tensor | None, ratio: float,
                 dropout: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """Shifted sparse attention over a whole (training) sequence.

    query/key/value: [B, H, T, D] (key/value already expanded to H heads); key_valid: [B, T]
    bool, False at padding, or None. The first H - H//2 heads use plain groups, the last
    H//2 the shifted ones. Returns [B, H, T, D].
    """
    batch, heads, length, _ = query.shape
    group = group_size(length, ratio)
    pad = (-length) % group
    if pad:  # pad to a multiple of G with keys nobody may attend to
        query, key, value = (F.pad(x, (0, 0, 0, pad)) for x in (query, key, value))
        if key_valid is None:
            key_valid = torch.ones(batch, length, dtype=torch.bool, device=query.device)
        key_valid = F.pad(key_valid, (0, pad), value=False)
    padded = length + pad
    n_shifted = heads // 2 if group < padded else 0
    n_plain = heads - n_shifted

    outputs = [blockwise_causal_attention(query[:, :n_plain], key[:, :n_plain],
                                          value[:, :n_plain], key_valid, group, dropout, scale)]
    if n_shifted:
        pieces = []
        for start, end, block in shifted_segments(padded, group):
            valid = None if key_valid is None else key_valid[:, start:end]
            pieces.append(blockwise_causal_attention(
                query[:, n_plain:, start:end], key[:, n_plain:, start:end],
                value[:, n_plain:, start:end], valid, block, dropout, scale))
        outputs.append(torch.cat(pieces, dim=2))
    return torch.cat(outputs, dim=1)[:, :, :length]


def s2attn_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0,
                kv_offset: int = 0, mask_function=causal_mask_function,
                attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """Mask builder registered beside the attention function.

    For a plain causal pass over a whole sequence (training, or a prefill without cache)
    it returns the 2-D padding mask [B, T] (None when nothing is padded), which S2-Attn
    needs and which costs O(T) memory; otherwise exactly what sdpa would get.
    """
    plain = (mask_function is causal_mask_function and isinstance(q_offset, int)
             and q_offset == 0 and kv_offset == 0 and q_length == kv_length)
    if plain and (attention_mask is None or attention_mask.ndim == 2):
        if attention_mask is None or bool(attention_mask.all()):
            return None
        return attention_mask[:, -kv_length:].to(torch.bool)
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                     q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
                     attention_mask=attention_mask, **kwargs)


def s2attn_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                   value: torch.Tensor, attention_mask: torch.Tensor | None,
                   dropout: float = 0.0, scaling: float | None = None,
                   **kwargs) -> tuple[torch.Tensor, None]:
    """The registered attention function: query [B, H, T, D], key/value [B, Hkv, S, D],
    attention_mask from ``s2attn_mask``. Returns ([B, T, H, D], None) like sdpa."""
    global _warned_fallback
    is_2d = attention_mask is not None and attention_mask.ndim == 2
    whole_sequence = query.shape[2] == key.shape[2] and query.shape[2] > 1
    use_s2 = (module.training and whole_sequence and (attention_mask is None or is_2d)
              and kwargs.get("position_bias") is None)
    if not use_s2:
        if module.training and not _warned_fallback and whole_sequence:
            logger.warning("S2-Attn: unsupported mask in training (cache, packed sequences or a "
                           "custom 4-D mask); using full sdpa attention for it")
            _warned_fallback = True
        if is_2d:  # rebuild what sdpa itself would have received
            attention_mask = sdpa_mask(batch_size=query.shape[0], q_length=query.shape[2],
                                       kv_length=key.shape[2], attention_mask=attention_mask,
                                       device=query.device)
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)

    n_rep = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    ratio = getattr(module.config, "s2_group_ratio", DEFAULT_GROUP_RATIO)
    out = s2_attention(query, key, value, attention_mask if is_2d else None, ratio,
                       dropout=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``attn_implementation="s2attn"`` available (idempotent)."""
    AttentionInterface.register(NAME, s2attn_forward)
    AttentionMaskInterface.register(NAME, s2attn_mask)


register()
