"""Tiny random-weight causal LMs for tests of the generator-side math (no files needed)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 97


def tiny_llama(seed: int = 0, attention_dropout: float = 0.0) -> LlamaForCausalLM:
    """A 2-layer, 32-hidden Llama in fp32 and eval mode; pad 0, bos 1, eos 2."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, attention_dropout=attention_dropout,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).float().eval()
