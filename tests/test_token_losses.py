"""Answer losses of a causal LM: one batched forward, logits only at targets, eval-mode
utilities; checked against one-at-a-time full-logit computation on a tiny random Llama (fp32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import VOCAB, tiny_llama
from transformers import LlamaForCausalLM

from jmlr.training.token_losses import (
    TargetLogits,
    generator_loss,
    passage_utilities,
    sequence_losses,
)


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    return tiny_llama()


def padded_batch(lengths: list[int], n_target: int, seed: int = 0, left: bool = False):
    """Random sequences, padded, with the last ``n_target`` real tokens in the loss mask."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    attn = torch.zeros_like(ids)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, n in enumerate(lengths):
        cols = slice(width - n, width) if left else slice(0, n)
        ids[i, cols] = torch.randint(3, VOCAB, (n,), generator=gen)
        attn[i, cols] = 1
        end = width if left else n
        mask[i, end - n_target:end] = True
    return ids, attn, mask


def reference_losses(model, ids, attn, mask) -> torch.Tensor:
    """One unpadded sequence at a time, full logits from the model's own forward."""
    out = []
    for i in range(ids.shape[0]):
        keep = attn[i].bool()
        seq, m = ids[i][keep][None], mask[i][keep]
        with torch.no_grad():
            logits = model(input_ids=seq).logits[0, :-1]
        nll = F.cross_entropy(logits.float(), seq[0, 1:], reduction="none")
        out.append(nll[m[1:]].mean())
    return torch.stack(out)


# --------------------------------------------------------------------------- LM losses


def test_batched_sequence_losses_equal_one_at_a_time_full_logits(llama):
    lengths = [7, 19, 12, 4, 16]
    ids, attn, mask = padded_batch(lengths, n_target=3)
    expected = reference_losses(llama, ids, attn, mask)
    with torch.no_grad():
        batched = sequence_losses(llama, ids, attn, mask)
        bucketed = sequence_losses(llama, ids, attn, mask, max_tokens_per_forward=40)
        singles = torch.stack([sequence_losses(llama, ids[i:i + 1, :n], attn[i:i + 1, :n],
                                               mask[i:i + 1, :n])[0]
                               for i, n in enumerate(lengths)])
        left = sequence_losses(llama, *padded_batch(lengths, n_target=3, left=True))
    assert batched.shape == (5,) and batched.dtype == torch.float32
    assert torch.allclose(singles, expected, atol=1e-5)
    assert torch.allclose(batched, singles, atol=1e-5)
    assert torch.allclose(bucketed, singles, atol=1e-5)
    assert torch.allclose(left, singles, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def test_sequence_losses_work_through_peft_lora_including_the_head():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(1), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False))
    ids, attn, mask = padded_batch([9, 14, 6], n_target=4, seed=2)
    with torch.no_grad():
        ours = sequence_losses(model, ids, attn, mask)
        with model.disable_adapter():
            without = sequence_losses(model, ids, attn, mask)
    assert torch.allclose(ours, reference_losses(model, ids, attn, mask), atol=1e-5)
    assert not torch.allclose(ours, without, atol=1e-3)   # the adapters were really applied


def test_sequence_losses_reject_a_sequence_without_target_tokens(llama):
    ids, attn, mask = padded_batch([6, 8], n_target=2)
    mask[1] = False
    with pytest.raises(ValueError, match=r"\[1\]"):
        sequence_losses(llama, ids, attn, mask)


def test_utilities_run_in_eval_mode_without_grad_and_restore_every_mode():
    model = tiny_llama(2, attention_dropout=0.5).train()
    model.model.layers[1].eval()                       # a mixed state must come back as it was
    before = {name: m.training for name, m in model.named_modules()}
    seen = []
    hook = model.model.layers[0].register_forward_pre_hook(lambda m, _: seen.append(m.training))
    ids, attn, mask = padded_batch([10, 13, 8], n_target=3, seed=4)
    batch = {"input_ids": ids, "attention_mask": attn, "utility_mask": mask}
    with torch.no_grad():
        dropped = sequence_losses(model, ids, attn, mask)   # train mode: dropout active
    seen.clear()
    utilities = passage_utilities(model, batch)
    hook.remove()
    assert seen == [False]
    assert {name: m.training for name, m in model.named_modules()} == before
    assert not utilities.requires_grad
    model.eval()
    with torch.no_grad():
        assert torch.allclose(utilities, sequence_losses(model, ids, attn, mask), atol=1e-6)
    assert not torch.allclose(utilities, dropped, atol=1e-4)   # so eval mode mattered


def test_generator_loss_is_the_token_weighted_mean_with_gradient(llama):
    ids, attn, mask = padded_batch([8, 12], n_target=2, seed=5)
    mask[1, 5:12] = True                                 # 2 and 7 target tokens
    batch = {"input_ids": ids, "attention_mask": attn, "target_mask": mask}
    loss = generator_loss(llama, batch)
    per_seq = reference_losses(llama, ids, attn, mask)
    assert loss.item() == pytest.approx(((per_seq[0] * 2 + per_seq[1] * 7) / 9).item(), abs=1e-5)
    assert loss.item() != pytest.approx(per_seq.mean().item(), abs=1e-4)
    loss.backward()
    assert llama.model.embed_tokens.weight.grad.abs().sum() > 0
    llama.zero_grad(set_to_none=True)


def test_a_prewrapped_target_logits_model_gives_the_same_losses(llama):
    ids, attn, mask = padded_batch([5, 9], n_target=2, seed=6)
    with torch.no_grad():
        assert torch.allclose(sequence_losses(TargetLogits(llama), ids, attn, mask),
                              sequence_losses(llama, ids, attn, mask))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_padding_does_not_change_losses_for_either_attention(attn):
    model = tiny_llama(3)
    model.set_attn_implementation(attn)
    lengths = [11, 3, 17]
    ids, attn_mask, mask = padded_batch(lengths, n_target=2, seed=7)
    with torch.no_grad():
        batched = sequence_losses(model, ids, attn_mask, mask)
    assert torch.allclose(batched, reference_losses(model, ids, attn_mask, mask), atol=1e-5)
