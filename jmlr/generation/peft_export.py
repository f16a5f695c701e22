"""The adapter folder in peft's own format, so that plain ``PeftModel.from_pretrained`` (no
``jmlr`` installed) rebuilds the trained generator.

Training keeps the LongLoRA extras (token embeddings, norms) trainable in place, one tensor
each (``model.py`` says why). peft's ``modules_to_save`` is how a peft adapter carries whole
modules next to its LoRA weights: on load, peft wraps each named module and puts the saved
weights in the wrapper. So the export names the modules whose weights were trained in
``adapter_config.json``'s ``modules_to_save`` and writes their weights into
``adapter_model.safetensors`` under the keys peft itself writes
(``base_model.model.<module>.<param>``). A module whose weight is tied to a trained one (a
tied output head) is written too, with ``ensure_weight_tying`` so peft keeps the pair tied.

Where the base model came from is recorded beside the adapter (``jmlr_base_model.json``) and
in ``base_model_name_or_path``: the user's location, not jmlr's cache.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from jmlr.io import write_json

PEFT_PREFIX = "base_model.model."
BASE_RECORD = "jmlr_base_model.json"


def owners(model: torch.nn.Module) -> dict[int, list[str]]:
    """Every ``module.param`` name of each parameter (by id), tied ones under each name."""
    names: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if full not in names.setdefault(id(param), []):
                names[id(param)].append(full)
    return names


def trained_extras(base: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights trained in place beside LoRA (``requires_grad``, not LoRA), each under
    every name that holds it, keyed as peft keys a ``modules_to_save`` weight."""
    by_id = owners(base)
    found: dict[str, torch.Tensor] = {}
    for param in {id(p): p for p in base.parameters()}.values():
        names = by_id.get(id(param), [])
        if not param.requires_grad or not names or any("lora_" in n for n in names):
            continue
        tensor = param.detach().to("cpu").contiguous()
        for name in names:         # tied copies are separate tensors: safetensors refuses shared
            found[PEFT_PREFIX + name] = tensor.clone() if len(names) > 1 else tensor
    return found


def module_of(key: str) -> str:
    """The module a saved key belongs to.

    >>> module_of("base_model.model.model.layers.0.input_layernorm.weight")
    'model.layers.0.input_layernorm'
    """
    return key.removeprefix(PEFT_PREFIX).rsplit(".", 1)[0]


def _matches(name: str, targets: Iterable[str]) -> bool:
    # peft's own rule for modules_to_save (peft.utils.other._set_trainable)
    return any(name.endswith(target) for target in targets)


def save_targets(modules: set[str], all_modules: Iterable[str]) -> list[str]:
    """The ``modules_to_save`` entries for exactly ``modules``: their last name parts when
    those pick out no other module under peft's suffix rule, else the full names.

    >>> everything = ["model.embed_tokens", "model.layers.0.input_layernorm", "model.norm",
    ...               "model.layers.0.mlp", "lm_head"]
    >>> save_targets({"model.embed_tokens", "model.layers.0.input_layernorm", "model.norm"}, everything)
    ['embed_tokens', 'input_layernorm', 'norm']
    >>> save_targets({"model.layers.0.input_layernorm"}, everything + ["model.layers.1.input_layernorm"])
    ['model.layers.0.input_layernorm']
    """
    short = sorted({name.rsplit(".", 1)[-1] for name in modules})
    picked = {name for name in all_modules if _matches(name, short)}
    return short if picked == modules else sorted(modules)


def tied_pairs(base: torch.nn.Module, extras: dict[str, torch.Tensor]) -> bool:
    """Whether a trained weight is held by more than one module (tied embeddings)."""
    return any(len(names) > 1 for names in owners(base).values()
               if any(PEFT_PREFIX + n in extras for n in names))


def complete_adapter(adapter_dir: Path, base: torch.nn.Module, base_record: dict[str, Any] | None
                     ) -> list[str]:
    """Turn the folder ``PeftModel.save_pretrained`` wrote into one that carries the weights
    trained in place (``modules_to_save``) and names the user's base model. Returns the
    modules added."""
    from safetensors.torch import load_file, save_file

    extras = trained_extras(base)
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    modules = sorted({module_of(key) for key in extras})
    if extras:
        weights_path = adapter_dir / "adapter_model.safetensors"
        weights = load_file(str(weights_path))
        overlap = set(weights) & set(extras)
        if overlap:
            raise ValueError(f"adapter weights already hold {sorted(overlap)[:3]}")
        save_file({**weights, **extras}, str(weights_path), metadata={"format": "pt"})
        all_modules = [name for name, _ in base.named_modules(remove_duplicate=False) if name]
        config["modules_to_save"] = save_targets(set(modules), all_modules)
        if tied_pairs(base, extras):
            config["ensure_weight_tying"] = True
    if base_record is not None:
        config["base_model_name_or_path"] = base_record["base_model_name_or_path"]
        write_json(adapter_dir / BASE_RECORD, base_record)
    config["inference_mode"] = True
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return modules


def split_saved(weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                            dict[str, torch.Tensor]]:
    """(LoRA weights, whole-module weights by base-model parameter name) of an adapter file.

    >>> lora, whole = split_saved({"base_model.model.q.lora_A.weight": 1, "base_model.model.model.norm.weight": 2})
    >>> list(lora), list(whole)
    (['base_model.model.q.lora_A.weight'], ['model.norm.weight'])
    """
    lora = {k: v for k, v in weights.items() if "lora_" in k}
    whole = {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items() if "lora_" not in k}
    return lora, whole
