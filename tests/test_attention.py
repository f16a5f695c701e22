"""S2-Attn: the grouped computation against a dense reference, padding, batches, and a real
tiny Llama running with attn_implementation="s2attn" (training and eval)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jmlr.generation.attention import group_size, s2_attention


def segment_ids(length: int, group: int, shifted: bool) -> torch.Tensor:
    """Which group each position belongs to, written out directly (independent of the
    implementation): plain groups [0,G), [G,2G)...; shifted ones [0,s), [s,s+G)... ."""
    pos = torch.arange(length)
    shift = group // 2
    if not shifted or shift == 0:
        return pos // group
    return torch.where(pos < shift, torch.zeros_like(pos), 1 + (pos - shift) // group)


def dense_s2(q, k, v, valid, ratio):
    """Reference: full [T, T] attention per head with the S2 mask spelled out."""
    batch, heads, length, _ = q.shape
    group = group_size(length, ratio)
    padded = length + (-length) % group
    n_shifted = heads // 2 if group < padded else 0
    pos = torch.arange(length)
    outs = []
    for h in range(heads):
        seg = segment_ids(length, group, shifted=h >= heads - n_shifted)
        allowed = (seg[:, None] == seg[None, :]) & (pos[None, :] <= pos[:, None])
        mask = allowed[None] & valid[:, None, :]
        mask |= torch.eye(length, dtype=torch.bool) & ~mask.any(-1, keepdim=True)
        outs.append(F.scaled_dot_product_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1],
                                                   attn_mask=mask[:, None]))
    return torch.cat(outs, dim=1)


def qkv(batch=2, heads=4, length=16, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, length, dim, generator=gen) for _ in range(3))


@pytest.mark.parametrize("length", [16, 15, 7, 33])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.1])
def test_grouped_equals_dense_reference(length, ratio):
    q, k, v = qkv(length=length)
    valid = torch.ones(2, length, dtype=torch.bool)
    valid[1, length - 3:] = False     # right padding
    valid[0, :2] = False              # left padding
    out = s2_attention(q, k, v, valid, ratio)
    torch.testing.assert_close(out, dense_s2(q, k, v, valid, ratio), atol=1e-5, rtol=1e-5)
    no_pad = s2_attention(q, k, v, None, ratio)
    torch.testing.assert_close(no_pad, dense_s2(q, k, v, torch.ones(2, length, dtype=torch.bool),
                                                ratio), atol=1e-5, rtol=1e-5)


def test_one_group_is_full_causal_attention():
    q, k, v = qkv(length=12)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(s2_attention(q, k, v, None, 1.0), full, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(s2_attention(q, k, v, None, 0.25), full, atol=1e-3)


def test_padding_content_never_reaches_real_tokens():
    q, k, v = qkv(length=16)
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[0, :3] = False   # left padding: real tokens come after the pads
    valid[1, 12:] = False
    out = s2_attention(q, k, v, valid, 0.5)
    k2, v2 = k.clone(), v.clone()
    k2[0, :, :3] += 5.0
    v2[0, :, :3] -= 5.0
    k2[1, :, 12:] *= 3.0
    v2[1, :, 12:] += 7.0
    out2 = s2_attention(q, k2, v2, valid, 0.5)
    torch.testing.assert_close(out2[0, :, 3:], out[0, :, 3:])
    torch.testing.assert_close(out2[1, :, :12], out[1, :, :12])
    assert torch.isfinite(out).all()
    # Without the mask the pads do leak: the test above can fail.
    leaked = s2_attention(q, k2, v2, None, 0.5)
    assert not torch.allclose(leaked[0, :, 3:], out[0, :, 3:], atol=1e-3)


def test_batch_of_two_lengths_equals_each_alone():
    # 16 and 15 tokens give the same group size (4), so each alone must match its batch row.
    q, k, v = qkv(length=16)
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, 15:] = False
    batch = s2_attention(q, k, v, valid, 0.25)
    first = s2_attention(q[:1], k[:1], v[:1], None, 0.25)
    second = s2_attention(q[1:, :, :15], k[1:, :, :15], v[1:, :, :15], None, 0.25)
    torch.testing.assert_close(batch[:1], first, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(batch[1:, :, :15], second, atol=1e-6, rtol=1e-6)


def test_shift_happens_with_batch_above_one():
    """Across the plain group boundary at G, only the shifted half of the heads sees the
    previous group's last token, in every row of the batch."""
    q, k, v = qkv(batch=3, heads=4, length=16)
    group = group_size(16, 0.25)
    out = s2_attention(q, k, v, None, 0.25)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, group - 1] += 3.0
    v2[:, :, group - 1] += 3.0
    out2 = s2_attention(q, k2, v2, None, 0.25)
    for row in range(3):
        plain, shifted = slice(0, 2), slice(2, 4)
        torch.testing.assert_close(out2[row, plain, group], out[row, plain, group])
        assert not torch.allclose(out2[row, shifted, group], out[row, shifted, group], atol=1e-4)


def test_no_token_sees_the_future():
    q, k, v = qkv(length=16)
    out = s2_attention(q, k, v, None, 0.25)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 10:] = torch.randn_like(k2[:, :, 10:])
    v2[:, :, 10:] = torch.randn_like(v2[:, :, 10:])
    torch.testing.assert_close(s2_attention(q, k2, v2, None, 0.25)[:, :, :10], out[:, :, :10])


# --------------------------------------------------------------------------- in a real Llama


def tiny_llama(attn: str, ratio: float = 0.25, seed: int = 0):
    """A random 2-layer Llama (4 query heads, 2 key/value heads) with the given attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import jmlr.generation.attention  # noqa: F401  (registers "s2attn")

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    config.s2_group_ratio = ratio
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.set_attn_implementation(attn)
    return model


def batch_with_padding():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 64, (2, 16), generator=gen)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    ids[1, 12:] = 0
    return ids, mask


def test_llama_trains_with_s2attn_and_gives_finite_grads():
    model = tiny_llama("s2attn").train()
    ids, mask = batch_with_padding()
    out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_llama_eval_mode_equals_sdpa_and_train_mode_differs():
    s2 = tiny_llama("s2attn")
    sdpa = tiny_llama("sdpa")
    sdpa.load_state_dict(s2.state_dict())
    ids, mask = batch_with_padding()
    s2.eval()
    sdpa.eval()
    with torch.no_grad():
        torch.testing.assert_close(s2(input_ids=ids, attention_mask=mask).logits,
                                   sdpa(input_ids=ids, attention_mask=mask).logits)
        s2.train()
        sdpa.train()  # no dropout configured: train mode changes only the attention pattern
        trained = s2(input_ids=ids, attention_mask=mask).logits
        assert not torch.allclose(trained, sdpa(input_ids=ids, attention_mask=mask).logits,
                                  atol=1e-4)


def test_llama_ratio_one_matches_sdpa_in_training():
    s2 = tiny_llama("s2attn", ratio=1.0).train()
    sdpa = tiny_llama("sdpa").train()
    sdpa.load_state_dict(s2.state_dict())
    ids, mask = batch_with_padding()
    with torch.no_grad():
        torch.testing.assert_close(s2(input_ids=ids, attention_mask=mask).logits,
                                   sdpa(input_ids=ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=1e-5)


def test_llama_s2attn_respects_left_padding_mask():
    """The mask reaches the attention function (registered mask builder): changing the pad
    tokens before real ones changes nothing, unless the mask is dropped."""
    model = tiny_llama("s2attn", ratio=0.5).train()
    ids, _ = batch_with_padding()
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :4] = 0
    other = ids.clone()
    other[0, :4] = torch.tensor([5, 6, 7, 8])
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = model(input_ids=other, attention_mask=mask).logits
        torch.testing.assert_close(a[0, 4:], b[0, 4:])
        unmasked = model(input_ids=other).logits
        assert not torch.allclose(a[0, 4:], unmasked[0, 4:], atol=1e-4)


def test_llama_s2attn_generates_like_sdpa():
    s2 = tiny_llama("s2attn").eval()
    sdpa = tiny_llama("sdpa").eval()
    sdpa.load_state_dict(s2.state_dict())
    ids = torch.randint(3, 64, (1, 10), generator=torch.Generator().manual_seed(2))
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    assert s2.generate(ids, **kwargs).tolist() == sdpa.generate(ids, **kwargs).tolist()


def test_llama_s2attn_with_gradient_checkpointing():
    model = tiny_llama("s2attn")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids, mask = batch_with_padding()
    loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
