"""The trained retriever in PyLate's folder layout, which late-interaction libraries load with
plain transformers (no colbert-ai, so no transformers-5 fix for colbert-ai's model class).

A colbert-ai checkpoint holds one ``HF_ColBERT`` model: the encoder's weights under its
base-model prefix (``bert.``) and the projection as ``linear.weight``. PyLate (and
sentence-transformers' ``MultiVectorEncoder``, which reads PyLate's saves) loads a
sentence-transformers folder instead: the encoder as a plain transformers model at the top,
the projection as a ``Dense`` module in ``1_Dense/``, and ColBERT's query and document
settings in ``config_sentence_transformers.json``:

- the ``[unused0]`` / ``[unused1]`` markers colbert-ai puts after ``[CLS]``;
- the query padded with ``[MASK]`` to ``query_maxlen`` and not attended to (query expansion,
  colbert-ai's ``attend_to_mask_tokens: false``);
- documents cut at ``doc_maxlen`` and punctuation left out of scoring (``mask_punctuation``).

This module reads and writes files only (safetensors, JSON, tokenizer files): it imports
neither colbert-ai nor PyLate.
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path
from typing import Any

from jmlr.errors import ConfigError
from jmlr.io import building_folder, write_json

DENSE_DIR = "1_Dense"
# What PyLate 1.x writes: its own Dense class (a sentence-transformers Dense with a residual
# option); sentence-transformers maps the name onto its Dense when PyLate is absent.
PYLATE_DENSE = "pylate.models.Dense.Dense"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable ColBERT checkpoint file ({err})") from None


def split_colbert_weights(tensors: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(encoder weights without their base-model prefix, the projection) of an ``HF_ColBERT``.

    >>> enc, linear = split_colbert_weights({"bert.pooler.dense.bias": 1, "bert.embeddings.x": 2, "linear.weight": 3})
    >>> sorted(enc), linear
    (['embeddings.x', 'pooler.dense.bias'], 3)
    """
    if "linear.weight" not in tensors:
        raise ConfigError("the ColBERT checkpoint has no linear.weight (its projection)")
    prefixes = {key.split(".", 1)[0] for key in tensors if key != "linear.weight"}
    if len(prefixes) != 1:
        raise ConfigError(f"the ColBERT checkpoint's encoder weights have several prefixes "
                          f"({', '.join(sorted(prefixes))})")
    prefix = prefixes.pop() + "."
    encoder = {key.removeprefix(prefix): value for key, value in tensors.items()
               if key != "linear.weight"}
    return encoder, tensors["linear.weight"]


def pylate_settings(meta: dict[str, Any], query_maxlen: int, doc_maxlen: int) -> dict[str, Any]:
    """``config_sentence_transformers.json`` as PyLate writes it, from colbert-ai's settings.

    >>> s = pylate_settings({"query_token_id": "[unused0]", "doc_token_id": "[unused1]"}, 32, 180)
    >>> s["model_type"], s["query_prefix"], s["query_length"], s["do_query_expansion"]
    ('ColBERT', '[unused0]', 32, True)
    """
    return {
        "__version__": {"pylate": "1.6.0"},
        "model_type": "ColBERT",          # what PyLate's loader and sentence-transformers key on
        "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "MaxSim",
        "query_prefix": meta.get("query_token_id") or "[unused0]",
        "document_prefix": meta.get("doc_token_id") or "[unused1]",
        "query_length": query_maxlen, "document_length": doc_maxlen,
        "attend_to_expansion_tokens": bool(meta.get("attend_to_mask_tokens", False)),
        "skiplist_words": list(string.punctuation) if meta.get("mask_punctuation", True) else [],
        "do_query_expansion": True,
    }


def export_pylate(checkpoint: Path, out: Path, query_maxlen: int, doc_maxlen: int) -> Path:
    """Write ``checkpoint`` (a colbert-ai checkpoint folder) as a PyLate model folder at
    ``out``, built aside and moved into place."""
    from safetensors.torch import load_file, save_file

    weights = checkpoint / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{checkpoint}: no model.safetensors (a colbert-ai checkpoint saved "
                          "by jmlr has one)")
    config = _read_json(checkpoint / "config.json")
    meta = _read_json(checkpoint / "artifact.metadata")
    encoder, linear = split_colbert_weights(load_file(str(weights)))
    dim, hidden = linear.shape
    with building_folder(out) as tmp:
        write_json(tmp / "config.json", {**config, "architectures": [_encoder_class(config)]})
        save_file({k: v.contiguous() for k, v in encoder.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        for name in TOKENIZER_FILES:
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, tmp / name)
        (tmp / DENSE_DIR).mkdir()
        write_json(tmp / DENSE_DIR / "config.json", {
            "in_features": int(hidden), "out_features": int(dim), "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False})
        save_file({"linear.weight": linear.contiguous()}, str(tmp / DENSE_DIR / "model.safetensors"),
                  metadata={"format": "pt"})
        write_json(tmp / "modules.json", [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": DENSE_DIR, "type": PYLATE_DENSE}])
        write_json(tmp / "sentence_bert_config.json",
                   {"max_seq_length": doc_maxlen, "do_lower_case": False})
        write_json(tmp / "config_sentence_transformers.json",
                   pylate_settings(meta, query_maxlen, doc_maxlen))
    return out


def _encoder_class(config: dict[str, Any]) -> str:
    """The plain transformers class of the encoder (``BertModel`` for ``model_type: bert``).

    >>> _encoder_class({"model_type": "xlm-roberta"})
    'XLMRobertaModel'
    """
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    name = MODEL_MAPPING_NAMES.get(config.get("model_type", ""))
    if name is None:
        raise ConfigError(f"the ColBERT checkpoint's model_type {config.get('model_type')!r} "
                          "has no plain transformers encoder class")
    return name if isinstance(name, str) else name[0]
