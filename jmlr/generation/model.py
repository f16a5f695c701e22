"""Load the generator: a Llama-family causal LM from an HF folder or a GGUF file.

Where the weights come from (and the one-time GGUF conversion into ``cache_dir``) is in
``jmlr.generation.sources``; this module turns them into a model ready to train or serve.

Trainable parts, from ``GeneratorConfig``: LoRA adapters (peft) on ``lora_targets``, or every
weight when ``lora_r == 0``; with LoRA, optionally the token embeddings and every norm as in
LongLoRA. Those extras are made trainable in place (``requires_grad``) rather than through
peft's ``modules_to_save``: the latter keeps a second copy of each module (a second
embedding matrix for a 32k-vocabulary 13B model) during training, while in place they stay
one tensor. Only the export speaks peft's format (``peft_export.py``): the trained modules
are written as ``modules_to_save`` weights of the adapter, so that plain
``PeftModel.from_pretrained`` rebuilds the trained model. ``load_trained_generator`` reads
those exports and the earlier ones (extras in ``trainable_extras.safetensors``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from jmlr.config import GeneratorConfig
from jmlr.device import resolve_device
from jmlr.errors import ConfigError
from jmlr.generation import peft_export, start
from jmlr.generation.sources import LLAMA_FAMILY, check_architecture, local_model_dir
from jmlr.io import building_folder, write_json

__all__ = ["LLAMA_FAMILY", "load_generator", "load_trained_generator", "local_model_dir",
           "merge_and_save", "save_generator", "trainable_parameter_summary"]

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
EXTRAS_FILE = "trainable_extras.safetensors"
FULL_MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"


# ---------------------------------------------------------------------------------------
# Choices made from the config


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto": bf16 on a CUDA device that supports it, else fp32.

    >>> resolve_dtype("auto", torch.device("cpu")), resolve_dtype("bfloat16", torch.device("cpu"))
    (torch.float32, torch.bfloat16)
    """
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_attention(name: str, dtype: torch.dtype) -> str:
    """The ``attn_implementation`` to pass to transformers.

    >>> resolve_attention("s2attn", torch.float32), resolve_attention("eager", torch.float32)
    ('s2attn', 'eager')
    """
    from transformers.utils import is_flash_attn_2_available

    half = dtype in (torch.float16, torch.bfloat16)
    if name == "auto":
        return "flash_attention_2" if is_flash_attn_2_available() and half else "sdpa"
    if name == "flash_attention_2" and not (is_flash_attn_2_available() and half):
        raise ConfigError("generator.attn_implementation: flash_attention_2 needs the flash-attn "
                          "package and a float16/bfloat16 dtype (use auto or sdpa)")
    if name == "s2attn":
        from jmlr.generation import attention

        attention.register()
    return name


def apply_rope_scaling(config: Any, factor: float) -> None:
    """Linear RoPE scaling (position interpolation) by ``factor`` on a model config.

    transformers 5 keeps it in ``rope_parameters``; 4.x in ``rope_scaling``. A model that
    already carries the same linear factor is left alone; a different scaling is an error.
    """
    if factor <= 1.0:
        return
    if isinstance(getattr(config, "rope_parameters", None), dict):
        params = dict(config.rope_parameters)
        current = params.get("rope_type", "default")
        if current not in ("default", "linear") or (
                current == "linear" and params.get("factor") not in (None, factor)):
            raise ConfigError(f"generator.rope_scaling_factor: the model already uses RoPE "
                              f"scaling {params}; set rope_scaling_factor to 1")
        params.update(rope_type="linear", factor=float(factor))
        config.rope_parameters = params
    else:
        existing = getattr(config, "rope_scaling", None)
        if existing and existing.get("factor") != factor:
            raise ConfigError(f"generator.rope_scaling_factor: the model already uses RoPE "
                              f"scaling {existing}; set rope_scaling_factor to 1")
        config.rope_scaling = {"type": "linear", "rope_type": "linear", "factor": float(factor)}


def ensure_pad_token(tokenizer: Any) -> None:
    """Right padding with an existing token: the pad, else unk, else eos (vocab unchanged)."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is not None:
        return
    for candidate in (tokenizer.unk_token, tokenizer.eos_token):
        if candidate is not None:
            tokenizer.pad_token = candidate
            return
    raise ConfigError("generator.model: the tokenizer has no pad, unk or eos token to pad with")


# ---------------------------------------------------------------------------------------
# Trainable parts


def _extra_trainable_params(model: torch.nn.Module, gen_cfg: GeneratorConfig
                            ) -> list[torch.nn.Parameter]:
    """Embedding and norm weights that LongLoRA trains fully next to the adapters."""
    params: list[torch.nn.Parameter] = []
    if gen_cfg.train_embeddings:
        params.extend(model.get_input_embeddings().parameters())
    if gen_cfg.train_norms:
        for module in model.modules():
            if "norm" in type(module).__name__.lower():
                params.extend(module.parameters(recurse=False))
    return params


def apply_trainable_parts(model: Any, gen_cfg: GeneratorConfig) -> Any:
    """LoRA (+ embeddings/norms) when lora_r > 0, else everything trainable."""
    if gen_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if gen_cfg.lora_r == 0:
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    if gen_cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input with grad
    lora = LoraConfig(r=gen_cfg.lora_r, lora_alpha=gen_cfg.lora_alpha,
                      lora_dropout=gen_cfg.lora_dropout, target_modules=list(gen_cfg.lora_targets),
                      bias="none", task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as err:
        raise ConfigError(f"generator.lora_targets: {err}") from None
    for param in _extra_trainable_params(model.get_base_model(), gen_cfg):
        param.requires_grad_(True)
    return model


def trainable_parameter_summary(model: torch.nn.Module) -> dict[str, Any]:
    """Counts of all and trainable parameters, the trainable ones split by kind."""
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding)
                     for p in m.parameters(recurse=False)}
    norm_ids = {id(p) for m in model.modules() if "norm" in type(m).__name__.lower()
                for p in m.parameters(recurse=False)}
    groups = {"lora": 0, "embeddings": 0, "norms": 0, "other": 0}
    total = trainable = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if not param.requires_grad:
            continue
        trainable += param.numel()
        kind = ("lora" if "lora_" in name else "embeddings" if id(param) in embedding_ids
                else "norms" if id(param) in norm_ids else "other")
        groups[kind] += param.numel()
    return {"total": total, "trainable": trainable,
            "trainable_fraction": trainable / total if total else 0.0, "trainable_by_kind": groups}


# ---------------------------------------------------------------------------------------
# Loading


def load_generator(gen_cfg: GeneratorConfig, cache_dir: str | Path, device: str = "cpu",
                   for_training: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) ready to train (train mode, trainable parts set) or to infer (eval
    mode, nothing trainable). The tokenizer pads on the right with an existing token."""
    if gen_cfg.train_from:
        return _load_started(gen_cfg, cache_dir, device, for_training)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = local_model_dir(gen_cfg.model, cache_dir)
    remote = gen_cfg.trust_remote_code
    config = AutoConfig.from_pretrained(folder, trust_remote_code=remote)
    check_architecture(config.model_type, remote, str(folder))
    apply_rope_scaling(config, gen_cfg.rope_scaling_factor)
    config.s2_group_ratio = gen_cfg.s2_group_ratio  # read by the S2-Attn function
    torch_device = torch.device(resolve_device(device))
    dtype = resolve_dtype(gen_cfg.dtype, torch_device)
    attn = resolve_attention(gen_cfg.attn_implementation, dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=dtype,
                                                 attn_implementation=attn, trust_remote_code=remote)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
    ensure_pad_token(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(torch_device)
    if for_training:
        model = apply_trainable_parts(model, gen_cfg)
        model.train()
    else:
        model.requires_grad_(False)
        model.eval()
    return model, tokenizer


def _load_started(gen_cfg: GeneratorConfig, cache_dir: str | Path, device: str,
                  for_training: bool) -> tuple[Any, Any]:
    """``generator.train_from``'s trained generator as the base (jmlr/generation/start.py),
    with this run's trainable parts on top when it trains."""
    logger.info("generator: the trained generator of %s (generator.train_from)%s",
                gen_cfg.train_from, ", under this run's adapter" if for_training else "")
    model, tokenizer = load_trained_generator(start.start_config(gen_cfg), cache_dir,
                                              start.start_folder(gen_cfg.train_from),
                                              device=device, for_training=False)
    if for_training:
        model = apply_trainable_parts(model, gen_cfg)
        model.train()
    return model, tokenizer


# ---------------------------------------------------------------------------------------
# Saving and loading what was trained


def _write_folder(out_dir: str | Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder aside with ``fill(tmp)`` and swap it in for ``out_dir``."""
    with building_folder(out_dir) as tmp:
        fill(tmp)
    return Path(out_dir)


def save_generator(model: Any, tokenizer: Any, out_dir: str | Path,
                   base: dict[str, Any] | None = None) -> Path:
    """Write what was trained: ``adapter/`` (a peft adapter that plain ``PeftModel`` loads:
    LoRA weights plus the embeddings/norms trained in place as ``modules_to_save``, and the
    tokenizer), or ``model/`` after a full fine-tune; and ``tokenizer/``. ``base``
    (``sources.describe_source``) names the user's base model in the adapter. Pass the
    unwrapped model (not a DDP/accelerate wrapper)."""
    from peft import PeftModel

    def fill(tmp: Path) -> None:
        if isinstance(model, PeftModel):
            model.save_pretrained(tmp / ADAPTER_DIR)
            peft_export.complete_adapter(tmp / ADAPTER_DIR, model.get_base_model(), base)
            tokenizer.save_pretrained(tmp / ADAPTER_DIR)
        else:  # a complete HF folder, loadable on its own
            model.save_pretrained(tmp / FULL_MODEL_DIR)
            tokenizer.save_pretrained(tmp / FULL_MODEL_DIR)
            if base is not None:
                write_json(tmp / FULL_MODEL_DIR / peft_export.BASE_RECORD, base)
        tokenizer.save_pretrained(tmp / TOKENIZER_DIR)

    return _write_folder(out_dir, fill)


def merge_and_save(model: Any, tokenizer: Any, out_dir: str | Path) -> Any:
    """Save merged weights (a plain HF model folder). Merges the adapters INTO ``model``:
    call it last, and use the returned plain model from then on."""
    from peft import PeftModel

    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model

    def fill(tmp: Path) -> None:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    _write_folder(out_dir, fill)
    return merged


def _copy_extras(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path,
                 trainable: bool) -> None:
    """Weights trained in place, by base-model parameter name, copied into ``model``."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, tensor in tensors.items():
        if name not in params or params[name].shape != tensor.shape:
            raise ConfigError(f"{path}: weight {name!r} does not fit this generator "
                              "(different base model or LoRA targets?)")
        with torch.no_grad():
            params[name].copy_(tensor)
        params[name].requires_grad_(trainable)


def _load_extras(model: torch.nn.Module, path: Path, trainable: bool) -> None:
    from safetensors.torch import load_file

    _copy_extras(model, load_file(str(path)), path, trainable)


def load_trained_generator(gen_cfg: GeneratorConfig, cache_dir: str | Path,
                           saved_dir: str | Path, device: str = "cpu",
                           for_training: bool = False) -> tuple[Any, Any]:
    """Load a ``save_generator`` folder on top of the configured base model.

    For inference the adapters are merged, giving a plain (faster) model in eval mode; for
    training (resume) they stay separate and trainable, as ``load_generator`` sets them.
    """
    saved = Path(saved_dir)
    if (saved / FULL_MODEL_DIR).is_dir():
        # the whole model was saved: nothing of generator.train_from lies under it
        full_cfg = dataclasses.replace(gen_cfg, model=str(saved / FULL_MODEL_DIR), lora_r=0,
                                       train_from="")
        return load_generator(full_cfg, cache_dir, device, for_training)
    adapter = saved / ADAPTER_DIR
    if not adapter.is_dir():
        raise ConfigError(f"{saved}: no {ADAPTER_DIR}/ or {FULL_MODEL_DIR}/ (not a saved generator)")
    from peft import PeftModel
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    extras = saved / EXTRAS_FILE          # exports before modules_to_save
    if for_training:
        model, tokenizer = load_generator(gen_cfg, cache_dir, device, for_training=True)
        weights = adapter / "adapter_model.safetensors"
        lora, whole = peft_export.split_saved(load_file(str(weights)))
        set_peft_model_state_dict(model, lora)
        # trained in place again (model.py's docstring: one tensor each while training)
        _copy_extras(model.get_base_model(), whole, weights, trainable=True)
        if extras.is_file():
            _load_extras(model.get_base_model(), extras, trainable=True)
        return model, tokenizer
    base, tokenizer = load_generator(gen_cfg, cache_dir, device, for_training=False)
    model = PeftModel.from_pretrained(base, adapter, is_trainable=False)
    if extras.is_file():
        _load_extras(model.get_base_model(), extras, trainable=False)
    merged = model.merge_and_unload()
    merged.eval()
    return merged, tokenizer
